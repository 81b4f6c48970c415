"""The ``lightning-distill`` command: LightningCLI with recipes chosen by ``class_path``.

Usage::

    lightning-distill list                                   # every recipe and its paper
    lightning-distill fit --config recipes/meal_v2/config.yaml
    lightning-distill fit --recipe meal_v2 --trainer.max_epochs=5   # same, by slug
    lightning-distill test --config recipes/meal_v2/config.yaml --ckpt_path runs/.../last.ckpt
    lightning-distill fit --config ... --print_config         # the full resolved config
    lightning-distill export --ckpt_path runs/.../last.ckpt --out student/   # the student alone

Model and data are given by ``class_path`` (any recipe, student, teacher or datamodule can be
swapped from the command line). Defaults: a CSV logger under ``runs/`` (use
``--trainer.logger=WandbLogger`` for W&B), a progress bar, and checkpoints of the student (teachers
are left out of checkpoints, see :class:`~lightning_distill.DistillationModule`): ``fit`` writes
``last.ckpt`` next to the latest epoch's checkpoint, and on SIGTERM (what a cluster scheduler sends)
saves ``last.ckpt`` mid-epoch and exits with code 143 (0 when SLURM requeues the job).

Size: past 500 lines because ``export`` lives here; it moves to its own module once the layer
test (tests/test_architecture.py) names one above ``module.py``.

Every run keeps its config in its own folder and logs it, nested, to its loggers
(:class:`~lightning_distill.callbacks.run_config.RunConfig`); ``test`` ends with a line that labels the student
(``student acc 97.4% vs teachers 99.3% / 98.9%``). ``--recipe NAME`` reads ``recipes/NAME/`` of the
working directory, else the copy installed with the package, else the repository's.

Errors: a checkpoint is read with ``weights_only=True`` and checked against the config's recipe before
anything is built; an error our code raises while building the recipe is printed as its message, the
config key and a hint, without the traceback (``--debug`` or ``LIGHTNING_DISTILL_DEBUG=1`` shows it);
a mistyped key gets the closest argument names.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_module_type, _InstantiatorFn
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_distill.callbacks.run_config import RunConfig, result_summary
from lightning_distill.module import DistillationModule
from lightning_distill.recipes import RECIPES, load_recipe
from lightning_distill.utils.checkpoints import (
    CKPT_KEY,
    CheckpointError,
    architecture_config,
    build_from_config,
    check_recipe_class,
    class_path_of,
    is_from,
    read_checkpoint,
    save_student_files,
)

__all__ = ["DistillCLI", "SigtermCheckpoint", "export_student", "main", "recipe_config_path"]

_PACKAGE = Path(__file__).resolve().parent
_SIGTERM_EXIT = 143  # 128 + SIGTERM, what shells report for a process ended by SIGTERM
_CKPT_ALIASES = {"last", "best", "hpc"}  # Lightning's named checkpoints, resolved by the Trainer

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
}


class DistillCLI(LightningCLI):
    """LightningCLI for distillation recipes.

    Adds ``--test_after_fit`` (run ``test`` on the final weights once ``fit`` ends, printing the
    student's and the teacher's test metrics side by side).
    """

    def __init__(
        self, args: list[str] | None = None, run: bool = True, *, debug: bool = False, **kwargs
    ) -> None:
        self.debug = debug  # parse errors in full
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_callback", RunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # No abbreviated options: `--trainer.max_epoch` is a typo to report, not `--trainer.max_epochs`.
        kwargs.setdefault(
            "parser_kwargs",
            {"allow_abbrev": False, **{s: {"allow_abbrev": False} for s in self.subcommands()}},
        )
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

    def _add_instantiators(self) -> None:
        # LightningCLI hands every LightningModule / LightningDataModule it builds the top-level `model:` /
        # `data:` section as its hyper-parameters, also one nested in another's arguments (a teacher's own
        # training data in the model's config), which would then read the student's data settings.
        self.parser.add_instantiator(
            _SectionInstantiator(cli=self, key="model"),
            _get_module_type(self._model_class),
            subclasses=self.subclass_mode_model,
        )
        self.parser.add_instantiator(
            _SectionInstantiator(cli=self, key="data"),
            _get_module_type(self._datamodule_class),
            subclasses=self.subclass_mode_data,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` on the final weights and print the metrics table.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (``main`` passes the command line itself, so LightningCLI's warning about
        ``args`` next to ``sys.argv`` does not apply); a parse error is printed briefly with the
        closest argument names, and exits with code 2."""
        parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
        for p in parsers:
            p.exit_on_error = False
        try:
            if isinstance(args, dict):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except ArgumentError as err:
            known = sorted(
                {o for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")}
            )
            _report_parse_error(str(err), list(args or []), options=known, debug=self.debug)
            raise SystemExit(2) from None
        finally:
            for p in parsers:
                p.exit_on_error = True

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` safely, check its recipe against the config's before anything is built,
        then take its hyper-parameters into the config (as LightningCLI does)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in _CKPT_ALIASES or str(ckpt_path).startswith("registry"):
            return
        checkpoint = read_checkpoint(ckpt_path, metadata_only=True)  # a sharded checkpoint folder too
        self._ckpt_dirpath = next(
            (state.get("dirpath") for key, state in (checkpoint.get("callbacks") or {}).items()
             if str(key).startswith("ModelCheckpoint") and isinstance(state, dict)),
            None,
        )  # fmt: skip
        model = self.config[subcommand].get("model")
        expected = model.get("class_path") if hasattr(model, "get") else None
        if isinstance(expected, str):
            how = {info.class_path.rpartition(".")[2]: f"--recipe {slug}" for slug, info in RECIPES.items()}
            check_recipe_class(checkpoint, ckpt_path, expected, how=how)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        recipe = hparams.get("class_path")
        accepted = _init_arguments(recipe) if isinstance(recipe, str) else None
        unknown = sorted(set(hparams.get("dict_kwargs", {})) - set(accepted)) if accepted is not None else []
        if unknown:
            raise CheckpointError(
                f"Checkpoint {str(ckpt_path)!r} records hyper-parameters {unknown} that {recipe} does not take "
                "(its arguments changed since the checkpoint was written); use the version of the recipe that "
                "wrote it, or load the weights with `load_state_dict`."
            )
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer, with ``ModelCheckpoint(save_last=True)`` when ``fit`` lists no ModelCheckpoint
        (so ``last.ckpt`` exists) and :class:`SigtermCheckpoint`."""
        config = (self.config_init[self.subcommand].get("trainer") or {}) if self.subcommand else {}
        given = kwargs.get("callbacks", config.get("callbacks")) or []
        given = list(given) if isinstance(given, (list, tuple)) else [given]
        listed = any(isinstance(c, ModelCheckpoint) for c in given)
        if self.subcommand == "fit":
            extra: list[Callback] = [SigtermCheckpoint()]
            if config.get("enable_checkpointing") is not False and not listed:
                extra.append(ModelCheckpoint(save_last=True))
            kwargs["callbacks"] = [*given, *extra]
        elif self.subcommand is not None and not listed and config.get("enable_checkpointing") is None:
            # test/validate/predict write no checkpoint. Lightning restores the ModelCheckpoint state of
            # `--ckpt_path` and warns when its folder differs from this run's, or when there is none.
            dirpath = getattr(self, "_ckpt_dirpath", None)
            if dirpath:
                restored = ModelCheckpoint(save_last=True)
                restored.dirpath = dirpath  # as recorded (the constructor would make it absolute)
                kwargs["callbacks"] = [*given, restored]
            else:
                kwargs["enable_checkpointing"] = False
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        # Checkpoints record how the recipe was built, so it loads without this config.
        if isinstance(self.model, DistillationModule) and self.subcommand is not None:
            dumped = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False, skip_none=False))
            self.model.build_config = (dumped.get(self.subcommand) or {}).get("model")

    def after_fit(self) -> None:
        if (
            self.config.get(self.subcommand, {}).get("test_after_fit", False)
            and not self.trainer.fast_dev_run
        ):
            self.trainer.test(self.model, datamodule=self.datamodule)
            self._print_result("test")

    def after_test(self) -> None:
        self._print_result("test")

    def _print_result(self, stage: str) -> None:
        """Print the line that labels the student's metrics next to the teachers' (recipes with teachers)."""
        line = result_summary(self.trainer.callback_metrics, stage) if self.trainer.is_global_zero else None
        if line:
            print(line, flush=True)


class SigtermCheckpoint(Callback):
    """On SIGTERM during ``fit``, save a resumable ``last.ckpt`` (mid-epoch) where ``ModelCheckpoint`` writes.

    Lightning turns SIGTERM into ``SIGTERMException`` at the next batch boundary; this callback
    saves the checkpoint then and notes its path and whether SLURM requeues the job on the
    exception, which :func:`main` turns into the exit code (143, or 0 when requeued).
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None) or os.path.join(
            trainer.default_root_dir, "checkpoints"
        )
        path = os.path.join(dirpath, "last.ckpt")
        trainer.save_checkpoint(path, weights_only=False)  # optimizer and loop state too: resumable
        environment = getattr(trainer.strategy, "cluster_environment", None)
        exception.checkpoint_path = path  # type: ignore[attr-defined]
        exception.requeued = isinstance(environment, SLURMEnvironment) and environment.auto_requeue  # type: ignore[attr-defined]


class _SectionInstantiator(_InstantiatorFn):
    """LightningCLI's instantiator, applied only to the object that the ``model:`` / ``data:`` section describes.

    Another module of the same kind nested in the config (a data module in a teacher's arguments) is
    built as a plain call, so ``save_hyperparameters`` records its own arguments.
    """

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        self.cli._dump_config()
        if _describes(self.cli.config_dump.get(self.key), class_type, kwargs):
            return super().__call__(
                class_type, *args, applied_instantiation_links=applied_instantiation_links, **kwargs
            )
        return class_type(*args, **kwargs)


def _describes(section: Any, class_type: type, kwargs: dict[str, Any]) -> bool:
    """Whether a config section (``{class_path, init_args}``) is the call ``class_type(**kwargs)``.

    Compares the class and every argument that is plain data (numbers, strings, lists, dicts);
    built objects among the arguments are not compared.
    """
    if not isinstance(section, dict):
        return False
    init_args = section.get("init_args") or {}
    path = section.get("class_path")
    if isinstance(path, str):
        if _import(path) is not class_type:
            return False
    else:
        init_args = section
    return all(
        _plain(init_args[name]) == _plain(value)
        for name, value in kwargs.items()
        if name in init_args and _is_plain(value)
    )


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (a dumped config has no tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def recipe_config_path(slug: str) -> Path:
    """``recipes/<slug>/<config>`` (``config.yaml`` unless the recipe names another), looked up in
    the working directory, then in the package (``lightning_distill/recipe_configs/<slug>/``, where a
    wheel installs ``recipes/``), then in the repository the package was imported from.

    Raises:
        KeyError: unknown slug (with close matches).
        FileNotFoundError: the config file is not found.
    """
    if slug not in RECIPES:
        load_recipe(slug)  # raises KeyError naming the closest slugs
    name = RECIPES[slug].config
    candidates = [
        Path.cwd() / "recipes" / slug / name,
        _PACKAGE / "recipe_configs" / slug / name,
        _PACKAGE.parent / "recipes" / slug / name,
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


# ------------------------------------------------------------------ errors
def _report_parse_error(
    message: str, argv: list[str], *, options: Sequence[str] = (), debug: bool = False
) -> None:
    """Print a jsonargparse error briefly: its informative lines and, for an unknown argument, the closest names."""
    lines = []
    for line in message.splitlines():
        text = line.strip()
        if debug or not text.startswith(
            ("Subtypes:", "Does not validate", "Errors:", "Given value", "- Expected a <class 'NoneType'>")
        ):
            lines.append(line if debug else line[:300])
    sys.stderr.write("error: " + "\n".join(lines).strip() + "\n")
    for class_path, name in re.findall(
        r"class_path '([\w.]+)':\s+(?:Key \"[\w.]*?)?[Oo]ption '(\w+)' is not accepted", message
    ):
        accepted = _init_arguments(class_path) or []
        close = difflib.get_close_matches(name, accepted, n=3, cutoff=0.6)
        flag = next((a.split("=")[0] for a in argv if re.search(rf"[.]{name}(=|$)", a)), name)
        if close:
            sys.stderr.write(
                f"  did you mean {' or '.join(f'`{c}`' for c in close)}? (`{flag.lstrip('-')}` is not an argument of {class_path})\n"
            )
        elif accepted:
            sys.stderr.write(f"  {class_path} takes: {', '.join(accepted)}\n")
    unknown = re.search(r"nrecognized arguments: (.*)", message)
    for flag in shlex.split(unknown.group(1)) if unknown else []:
        close = difflib.get_close_matches(flag.split("=")[0], options, n=1, cutoff=0.75)
        if close:
            sys.stderr.write(
                f"  did you mean {' or '.join(f'`{c}`' for c in close)}? (not `{flag.split('=')[0]}`)\n"
            )
    sys.stderr.write(
        "  hint: `--help` lists the options, `--print_config` the resolved config; `--debug` shows the full message.\n"
    )


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _init_arguments(class_path: str) -> list[str] | None:
    """The argument names of ``class_path``'s constructor; ``None`` when unknown or when it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(_import(class_path)).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind != p.VAR_POSITIONAL]


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LIGHTNING_DISTILL_DEBUG", "").lower() not in (
        "",
        "0",
        "false",
    )


def _user_error(error: BaseException) -> BaseException | None:
    """The innermost error of ``error``'s chain that our code raised for the user to read (a ValueError,
    TypeError, FileNotFoundError, KeyError or RuntimeError raised in this package whose message names an
    argument in backticks, or a CheckpointError), else ``None``."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for err in reversed(chain):
        if isinstance(err, CheckpointError):
            return err
        if not isinstance(err, (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError)):
            continue
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        ours = tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
        if ours and "`" in _message(err):
            return err
    return None


def _message(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _report_error(error: BaseException) -> None:
    """Print an error of ours: its message, the config key it names and a one-line hint; no traceback."""
    message = _message(error)
    sys.stderr.write(f"error: {message}\n")
    keys = re.findall(r"`((?:model|data|trainer)\.[\w.\[\]]+)`", message)
    if keys:
        sys.stderr.write(f"  config key: {keys[-1]}\n")
        hint = f"change it in the config file or on the command line (`--{keys[-1]}=...`)"
    elif isinstance(error, CheckpointError):
        hint = "check `--ckpt_path`"
    else:
        hint = "check the config (`--print_config` shows every value)"
    sys.stderr.write(f"  hint: {hint}; rerun with `--debug` for the traceback.\n")


# ------------------------------------------------------------------ export
def export_student(ckpt_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the student of a recipe checkpoint alone into folder ``out``, in the format its users expect.

    * a diffusers model: ``lightning_distill.diffusion.export.save_student`` (``unet/``, the few-step
      ``scheduler/`` and ``distillation.json``) when the recipe has a noise schedule and student
      timesteps, else ``save_pretrained``;
    * a transformers model: ``save_pretrained``;
    * anything else: ``model.safetensors`` (``model.pt`` without safetensors) and ``student.json``
      with the class and its build config; :func:`~lightning_distill.utils.checkpoints.load_exported_student`
      loads it back.

    Only the student is built when its recorded config rebuilds it (teachers are not); otherwise the
    whole recipe is loaded with :meth:`DistillationModule.load_from_checkpoint`.

    Raises:
        CheckpointError: an unreadable checkpoint, or one that records no build config.
    """
    checkpoint = read_checkpoint(ckpt_path)
    meta = checkpoint.get(CKPT_KEY) or {}
    config = meta.get("model_config")
    if not config or not (config.get("init_args") or {}).get("student"):
        raise CheckpointError(
            f"Checkpoint {str(ckpt_path)!r} does not record how its student was built (it was not written by "
            "`lightning-distill fit`). Load the recipe with `Recipe.load_from_checkpoint(path, student=..., "
            "teacher=...)` and save `module.student` with `lightning_distill.utils.checkpoints.save_student_files`."
        )
    build = architecture_config(config["init_args"]["student"], meta.get("student_class"))
    state = {k[len("student.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("student.")}
    student, module = None, None
    if not is_from(
        meta.get("student_class", ""), "diffusers"
    ):  # a diffusers export needs the recipe's schedule
        try:
            student = build_from_config(build)
            student.load_state_dict(state, strict=True)
        except (CheckpointError, RuntimeError):
            student = None  # the recipe reshapes its student: build the whole recipe
    if student is None:
        module = DistillationModule.load_from_checkpoint(ckpt_path)
        student = module.student
        build = build if student is not None and class_path_of(student) == meta.get("student_class") else None
    student.eval()
    out = Path(out)
    if is_from(student, "diffusers"):
        timesteps = next(
            (getattr(module, a) for a in ("denoising_timesteps", "generator_timesteps", "student_timesteps")
             if getattr(module, a, None) is not None), None,
        )  # fmt: skip
        if getattr(module, "schedule", None) is not None and timesteps is not None:
            from lightning_distill.diffusion.export import save_student

            prediction_type = getattr(module, "student_prediction_type", None)
            return save_student(out, student, module.schedule, timesteps, prediction_type=prediction_type)
    if is_from(student, "diffusers") or is_from(student, "transformers"):
        student.save_pretrained(out)
        return out
    return save_student_files(
        student,
        out,
        build,
        recipe=meta.get("recipe"),
        checkpoint=str(ckpt_path),
        global_step=checkpoint.get("global_step"),
    )


def _export_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning-distill export", description="Write the student of a recipe checkpoint alone."
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lightning-distill fit`")
    parser.add_argument("--out", required=True, help="the output folder (created)")
    args = parser.parse_args(argv)
    out = export_student(args.ckpt_path, args.out)
    print(f"Student of {args.ckpt_path} written to {out}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-distill``.

    From the command line (``argv`` None) an error our code raises for the user is printed without
    its traceback (unless ``--debug`` or ``LIGHTNING_DISTILL_DEBUG=1``) and exits with code 1; called
    with ``argv`` from Python, errors propagate as exceptions. A run stopped by SIGTERM exits with 143.
    """
    command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] == "list":
        _print_recipes()
        return
    try:
        if argv and argv[0] == "export":
            _export_command(argv[1:])
            return
        try:
            argv = _expand_recipe_flag(argv)
        except (KeyError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err.args[0]}") from None
        DistillCLI(args=argv, debug=debug)
    except SIGTERMException as stop:
        path = getattr(stop, "checkpoint_path", None)
        requeued = getattr(stop, "requeued", False)
        where = f"; resumable checkpoint: {path} (resume with `--ckpt_path {path}`)" if path else ""
        sys.stderr.write(f"Stopped by SIGTERM{where}.\n")
        raise SystemExit(0 if requeued else _SIGTERM_EXIT) from None
    except Exception as err:
        user_error = None if debug or not command_line else _user_error(err)
        if user_error is None:
            raise
        _report_error(user_error)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
