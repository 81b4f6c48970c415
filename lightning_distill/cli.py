"""The ``lightning-distill`` command: LightningCLI with recipes chosen by ``class_path``.

Usage::

    lightning-distill list                                   # every recipe and its paper
    lightning-distill fit --config recipes/meal_v2/config.yaml
    lightning-distill fit --recipe meal_v2 --trainer.max_epochs=5   # same, by slug
    lightning-distill test --config recipes/meal_v2/config.yaml --ckpt_path runs/.../last.ckpt
    lightning-distill fit --config ... --print_config         # the full resolved config

Model and data are given by ``class_path`` (any recipe, student, teacher or datamodule can be
swapped from the command line). Defaults: a CSV logger under ``runs/`` (use
``--trainer.logger=WandbLogger`` for W&B), a progress bar, and checkpoints of the student (teachers
are left out of checkpoints, see :class:`~lightning_distill.DistillationModule`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_distill.recipes import RECIPES, load_recipe

__all__ = ["DistillCLI", "main", "recipe_config_path"]

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
}


class DistillCLI(LightningCLI):
    """LightningCLI for distillation recipes.

    Adds ``--test_after_fit`` (run ``test`` on the final weights once ``fit`` ends, printing the
    student's and the teacher's test metrics side by side).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` on the final weights and print the metrics table.",
        )

    def after_fit(self) -> None:
        if (
            self.config.get(self.subcommand, {}).get("test_after_fit", False)
            and not self.trainer.fast_dev_run
        ):
            self.trainer.test(self.model, datamodule=self.datamodule)


def recipe_config_path(slug: str) -> Path:
    """``recipes/<slug>/<config>`` (``config.yaml`` unless the recipe names another), looked up from
    the working directory, then the repository.

    Raises:
        KeyError: unknown slug (with close matches).
        FileNotFoundError: the config file is not found.
    """
    if slug not in RECIPES:
        load_recipe(slug)  # raises KeyError naming the closest slugs
    name = RECIPES[slug].config
    candidates = [
        Path.cwd() / "recipes" / slug / name,
        Path(__file__).resolve().parents[1] / "recipes" / slug / name,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No config for recipe {slug!r} in {[str(c) for c in candidates]}; run from the repository root "
        "or pass `--config <path>`."
    )


def _print_recipes(out=None) -> None:
    out = out or sys.stdout
    width = max(len(s) for s in RECIPES)
    out.write(f"{'recipe'.ljust(width)}  {'family'.ljust(14)}  paper\n")
    for slug, info in sorted(RECIPES.items(), key=lambda kv: (kv[1].family, kv[0])):
        out.write(f"{slug.ljust(width)}  {info.family.ljust(14)}  {info.title} (arXiv {info.arxiv})\n")


def _expand_recipe_flag(argv: list[str]) -> list[str]:
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--recipe":
            slug = next(args, None)
            if slug is None:
                raise SystemExit("`--recipe` needs a recipe name; `lightning-distill list` names them.")
            out += ["--config", str(recipe_config_path(slug))]
        elif arg.startswith("--recipe="):
            out += ["--config", str(recipe_config_path(arg.split("=", 1)[1]))]
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-distill``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "list":
        _print_recipes()
        return
    try:
        argv = _expand_recipe_flag(argv)
    except (KeyError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err.args[0]}") from None
    DistillCLI(args=argv)


if __name__ == "__main__":  # pragma: no cover
    main()
