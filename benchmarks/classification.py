"""Toy-scale quality benchmark of the classification recipes against the student trained alone.

Reproduces the claims of MEAL V2 (ensemble soft labels + discriminator beat the student trained
alone) and SSLD (label-free distillation on all images beats the student trained on the labelled
fraction) on scikit-learn digits, on a CPU, over several seeds. Every distillation row is built
from the recipe's own ``recipes/<slug>/config.yaml`` through :class:`lightning_distill.cli.DistillCLI`
with only the seed (and, for ablations, the one key named in the row) changed; the "student alone"
rows swap the model for :class:`~lightning_distill.recipes.supervised.Supervised` and keep the
config's student, data, optimizer, schedule and epochs.

Usage (from the repository root)::

    python benchmarks/classification.py --threads 1       # seeds 0 1 2, both recipes (~3 min)
    python benchmarks/classification.py --quick           # smoke run: 1 seed, 2 epochs
    python benchmarks/classification.py --recipes meal_v2 --seeds 0 1

On a CPU shared with other jobs use ``--threads 1``: with 2 threads on 2 busy cores, a training
step of these batch-norm CNNs was measured 40 times slower than with 1 thread (OpenMP threads
waiting on each other), while on idle cores the two settings took about the same time.

Writes ``benchmarks/results/<slug>.md`` and replaces the table between ``<!-- results:start -->``
and ``<!-- results:end -->`` in ``recipes/<slug>/README.md``. ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the READMEs alone. Validation is switched off during the
benchmark fits (it does not change training: no checkpointing or early stopping depends on it),
so the epoch time is the training loop alone, teacher forward passes included.
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported

import lightning  # noqa: E402
import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import cpu_model, mean_std  # noqa: E402

from lightning_distill.cli import DistillCLI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUPERVISED = "lightning_distill.recipes.supervised.Supervised"

Config = dict[str, Any]
STUDENT_MODE_NOTE = (
    "The student arrived at `fit` in eval mode (its batch-norm layers would use frozen running "
    "statistics); the benchmark put it in train mode before training."
)
WORKAROUNDS: set[str] = set()


# ----------------------------------------------------------------------------- runs
@dataclass
class Row:
    """One table row: how to build its run from the recipe config, and what to read off it."""

    name: str
    trained_on: str
    change: str  # how the run differs from config.yaml, in words
    transform: Callable[[Config], Config] | None = None  # None: a row read off another run
    source: str | None = None  # for read-off rows: the run and metric they come from
    acc: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    epochs: int | None = None
    params: int | None = None


def _model_args(config: Config) -> Config:
    return config["model"]["init_args"]


def _set(**init_args: Any) -> Callable[[Config], Config]:
    def transform(config: Config) -> Config:
        config = copy.deepcopy(config)
        _model_args(config).update(init_args)
        return config

    return transform


def _student_alone(epochs_factor: int = 1, **data_args: Any) -> Callable[[Config], Config]:
    """The recipe's student, optimizer and schedule under plain cross-entropy; data keys changed.

    ``epochs_factor`` multiplies ``trainer.max_epochs`` and a cosine schedule's ``T_max``.
    """

    def transform(config: Config) -> Config:
        config = copy.deepcopy(config)
        recipe = _model_args(config)
        init_args = {
            key: copy.deepcopy(recipe[key])
            for key in ("student", "optimizer", "lr_scheduler")
            if key in recipe
        }
        config["model"] = {"class_path": SUPERVISED, "init_args": init_args}
        config["data"]["init_args"].update(data_args)
        if epochs_factor != 1:
            config["trainer"]["max_epochs"] *= epochs_factor
            scheduler = init_args.get("lr_scheduler", {}).get("init_args", {})
            if "T_max" in scheduler:
                scheduler["T_max"] *= epochs_factor
        return config

    return transform


def _unchanged(config: Config) -> Config:
    return copy.deepcopy(config)


def meal_v2_rows() -> list[Row]:
    return [
        Row("teacher 0", "100% labels", "`teachers[0]` (trained once, cached)", source="official:teacher0"),
        Row("teacher 1", "100% labels", "`teachers[1]` (trained once, cached)", source="official:teacher1"),
        Row("teacher ensemble (mean softmax)", "-", "`MEALV2.ensemble_targets`", source="official:ensemble"),
        Row(
            "student: supervised starting checkpoint",
            "100% labels",
            "`student` before fit",
            source="official:start",
        ),
        Row(
            "student alone (CE, continues from the checkpoint)",
            "100% labels",
            "model -> `Supervised` (same student, optimizer, schedule, epochs)",
            transform=_student_alone(),
        ),
        Row("MEAL V2, official mode (config)", "100% images, no labels", "none", transform=_unchanged),
        Row(
            "MEAL V2, adversarial mode",
            "100% images, no labels",
            "`mode: adversarial`",
            transform=_set(mode="adversarial"),
        ),
        Row(
            "MEAL V2 without discriminator",
            "100% images, no labels",
            "`loss_weights: {disc: 0}`",
            transform=_set(loss_weights={"disc": 0.0}),
        ),
    ]


def beyond_ssl_rows() -> list[Row]:
    return [
        Row("teacher", "20% labels", "`teacher` (trained once, cached)", source="js:teacher"),
        Row(
            "student alone on the labelled 20% (CE)",
            "20% labels",
            "model -> `Supervised`, `train_split: labelled`",
            transform=_student_alone(train_split="labelled"),
        ),
        Row(
            "student alone on the labelled 20% (CE), as many images seen",
            "20% labels",
            "as above, and 5x `max_epochs` and `T_max` (100)",
            transform=_student_alone(epochs_factor=5, train_split="labelled"),
        ),
        Row("SSLD, JS divergence (config)", "100% images, no labels", "none", transform=_unchanged),
        Row(
            "SSLD, symmetric KL (PaddleClas loss)",
            "100% images, no labels",
            "`divergence: symmetric_kl`",
            transform=_set(divergence="symmetric_kl"),
        ),
        Row(
            "student alone on 100% labels (CE, upper reference)",
            "100% labels",
            "model -> `Supervised`, `labelled_fraction: 1.0`, `train_split: labelled`",
            transform=_student_alone(labelled_fraction=1.0, train_split="labelled"),
        ),
    ]


def _from_file(name: str) -> Callable[[Config], Config]:
    """Another config of the recipe (e.g. ``fitnets.yaml``) instead of ``config.yaml``."""

    def transform(config: Config) -> Config:
        return yaml.safe_load((ROOT / "recipes" / "kd" / name).read_text())

    return transform


# Hinton et al. (Section 6, "soft targets as regularizers") train on 3% of the data: hard targets
# overfit, soft targets generalise. The few-image rows keep 3% of the training images (about 4 per
# class) for the student, the teacher unchanged (trained on all of them), and 30x the epochs (the
# same number of optimizer steps as the full-data rows: one batch per epoch).
FEW_FRACTION, FEW_EPOCHS = 0.03, 30


def _few_images(transform: Callable[[Config], Config]) -> Callable[[Config], Config]:
    """``transform``, then the student's data cut to ``FEW_FRACTION`` and the epochs scaled."""

    def few(config: Config) -> Config:
        config = transform(config)
        config["data"]["init_args"]["labelled_fraction"] = FEW_FRACTION
        config["trainer"]["max_epochs"] *= FEW_EPOCHS
        scheduler = _model_args(config).get("lr_scheduler", {}).get("init_args", {})
        if "T_max" in scheduler:
            scheduler["T_max"] *= FEW_EPOCHS
        return config

    return few


def _feature_term(feature_loss: str, feat_weight: float) -> Callable[[Config], Config]:
    """``fitnets.yaml`` with another feature term on the same tapped layers (AT needs no adapter)."""

    def transform(config: Config) -> Config:
        config = _from_file("fitnets.yaml")(config)
        recipe = _model_args(config)
        recipe["feature_loss"] = feature_loss
        recipe["loss_weights"] = {"kd": 0.9, "ce": 0.1, "feat": feat_weight}
        if feature_loss == "at":
            recipe.pop("adapter")
        return config

    return transform


def kd_rows() -> list[Row]:
    few = f"{FEW_FRACTION:.0%} of the images"
    return [
        Row("teacher", "100% labels", "`teacher` (trained once, cached)", source="hinton:teacher"),
        Row(
            "student alone (CE)",
            "100% labels",
            "model -> `Supervised` (same student, optimizer, schedule, epochs)",
            transform=_student_alone(),
        ),
        Row("KD, T = 4 (config)", "100% labels", "none", transform=_unchanged),
        Row("KD, T = 1", "100% labels", "`temperature: 1.0`", transform=_set(temperature=1.0)),
        Row(
            "KD + FitNets hint (layer2)",
            "100% labels",
            "`fitnets.yaml`",
            transform=_from_file("fitnets.yaml"),
        ),
        Row(
            f"student alone (CE), {few}",
            few,
            f"model -> `Supervised`; `labelled_fraction: {FEW_FRACTION}`, {FEW_EPOCHS}x epochs",
            transform=_student_alone(FEW_EPOCHS, labelled_fraction=FEW_FRACTION),
        ),
        Row(
            f"KD, T = 4, {few}",
            few,
            f"`labelled_fraction: {FEW_FRACTION}`, {FEW_EPOCHS}x epochs",
            transform=_few_images(_unchanged),
        ),
        Row(
            f"KD, T = 1, {few}",
            few,
            f"`temperature: 1.0`; {FEW_FRACTION}, {FEW_EPOCHS}x epochs",
            transform=_few_images(_set(temperature=1.0)),
        ),
        Row(
            f"KD + FitNets hint, {few}",
            few,
            f"`fitnets.yaml`; {FEW_FRACTION}, {FEW_EPOCHS}x epochs",
            transform=_few_images(_from_file("fitnets.yaml")),
        ),
        Row(
            f"KD + AT (beta/2 = 500), {few}",
            few,
            f"`fitnets.yaml`, `feature_loss: at`, no adapter, `feat: 500`; {FEW_FRACTION}, {FEW_EPOCHS}x epochs",
            transform=_few_images(_feature_term("at", 500.0)),
        ),
        Row(
            f"KD + CWD (T = 4), {few}",
            few,
            f"`fitnets.yaml`, `feature_loss: cwd`, `feat: 1`; {FEW_FRACTION}, {FEW_EPOCHS}x epochs",
            transform=_few_images(_feature_term("cwd", 1.0)),
        ),
    ]


RECIPE_ROWS = {"meal_v2": meal_v2_rows, "beyond_ssl": beyond_ssl_rows, "kd": kd_rows}
# Which row's run provides the read-off rows, keyed by the prefix used in `Row.source`.
RUN_KEYS = {
    "meal_v2": {"official": "MEAL V2, official mode (config)"},
    "beyond_ssl": {"js": "SSLD, JS divergence (config)"},
    "kd": {"hinton": "KD, T = 4 (config)"},
}
# Paired comparisons printed under each table: (row, baseline row). The first is the paper's claim.
COMPARISONS = {
    "meal_v2": [
        ("MEAL V2, official mode (config)", "student alone (CE, continues from the checkpoint)"),
        ("MEAL V2, adversarial mode", "student alone (CE, continues from the checkpoint)"),
        ("MEAL V2, official mode (config)", "MEAL V2 without discriminator"),
    ],
    "beyond_ssl": [
        ("SSLD, JS divergence (config)", "student alone on the labelled 20% (CE)"),
        ("SSLD, JS divergence (config)", "student alone on the labelled 20% (CE), as many images seen"),
        ("SSLD, symmetric KL (PaddleClas loss)", "SSLD, JS divergence (config)"),
    ],
    "kd": [
        ("KD, T = 4 (config)", "student alone (CE)"),
        ("KD, T = 1", "student alone (CE)"),
        ("KD + FitNets hint (layer2)", "KD, T = 4 (config)"),
        ("KD, T = 4, 3% of the images", "student alone (CE), 3% of the images"),
        ("KD, T = 1, 3% of the images", "student alone (CE), 3% of the images"),
        ("KD + FitNets hint, 3% of the images", "KD, T = 4, 3% of the images"),
        ("KD + AT (beta/2 = 500), 3% of the images", "KD, T = 4, 3% of the images"),
        ("KD + CWD (T = 4), 3% of the images", "KD, T = 4, 3% of the images"),
    ],
}


# ------------------------------------------------------------------------ measuring
class EpochTimer(L.Callback):
    """Wall-clock seconds of each training epoch (data loading, teachers and optimizer included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


@torch.no_grad()
def accuracy(predict_probs: Callable[[torch.Tensor], torch.Tensor], loader: Any) -> float:
    """Top-1 accuracy of ``predict_probs: (B, C, H, W) -> (B, K)`` over a loader of ``(x, y)``."""
    correct = seen = 0
    for batch in loader:
        x, y = batch[0], batch[1]
        correct += int((predict_probs(x).argmax(dim=-1) == y).sum())
        seen += y.numel()
    return correct / seen


def build(config: Config, seed: int, max_epochs: int | None, workdir: Path) -> DistillCLI:
    """Instantiate trainer, model and data from ``config`` as ``lightning-distill fit`` would."""
    extra = [
        "--test_after_fit=false",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.num_sanity_val_steps=0",
    ]
    if max_epochs is not None:
        extra.append(f"--trainer.max_epochs={max_epochs}")
    return recipe_cli(config, seed, extra, workdir=workdir)


def run_one(row: Row, config: Config, seed: int, max_epochs: int | None, extras: dict[str, float]) -> None:
    """Fit and test one row's run for one seed; append its numbers (and read-off extras)."""
    with tempfile.TemporaryDirectory() as tmp:
        cli = build(row.transform(config), seed, max_epochs, Path(tmp))
        model, data, trainer = cli.model, cli.datamodule, cli.trainer
        data.setup("test")
        test_loader = data.test_dataloader()
        teachers = list(getattr(model, "teachers", []))
        # Before training: the student's starting point and the teacher ensemble.
        student_in_train_mode = all(m.training for m in model.student.modules())
        model.student.eval()
        extras["start"] = accuracy(model.student, test_loader)
        if len(teachers) > 1:
            extras["ensemble"] = accuracy(lambda x: model.ensemble_targets(x)[0], test_loader)
        for k, teacher in enumerate(teachers):
            name = f"teacher{k}" if len(teachers) > 1 else "teacher"
            extras[name] = accuracy(teacher, test_loader)
            extras[f"{name}_params"] = float(_n_params(teacher))
        extras["ensemble_params"] = float(sum(_n_params(t) for t in teachers))
        extras["start_params"] = float(_n_params(model.student))
        extras["test_images"] = float(len(test_loader.dataset))
        # The student must train in train mode (batch-norm statistics). Lightning >= 2.2 keeps the
        # modes submodules arrive with, and `trained_classifier` returns its module in eval mode; if
        # the library has not switched the student back, do it here and say so in the table.
        if not student_in_train_mode:
            WORKAROUNDS.add(STUDENT_MODE_NOTE)
        model.student.train()

        timer = EpochTimer()
        trainer.callbacks.append(timer)
        trainer.fit(model, datamodule=data)
        (metrics,) = trainer.test(model, datamodule=data, verbose=False)
        for k in range(len(teachers)):  # the base module's own teacher metric must agree
            name = f"teacher{k}" if len(teachers) > 1 else "teacher"
            logged = metrics.get(f"test/{name}_acc")
            if logged is not None and abs(logged - extras[name]) > 1e-6:
                raise RuntimeError(f"{name}: logged test acc {logged} != recomputed {extras[name]}")
    row.acc.append(float(metrics["test/acc"]))
    row.epoch_s.append(statistics.fmean(timer.seconds))
    row.epochs = len(timer.seconds)
    row.params = _n_params(model.student)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_recipe(slug: str, seeds: list[int], max_epochs: int | None) -> tuple[list[Row], dict[str, Any]]:
    config = yaml.safe_load((ROOT / "recipes" / slug / "config.yaml").read_text())
    rows = RECIPE_ROWS[slug]()
    by_name = {r.name: r for r in rows}
    extras_by_run: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        for row in rows:
            if row.transform is None:
                continue
            extras: dict[str, float] = {}
            start = time.perf_counter()
            run_one(row, config, seed, max_epochs, extras)
            extras_by_run.setdefault(row.name, []).append(extras)
            print(
                f"[{slug}] seed {seed} | {row.name}: test acc {100 * row.acc[-1]:.2f}% | "
                f"{row.epoch_s[-1]:.2f} s/epoch | {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    for row in rows:  # rows read off another run (teachers, ensemble, starting checkpoint)
        if row.source is None:
            continue
        key, metric = row.source.split(":")
        run = by_name[RUN_KEYS[slug][key]]
        row.acc = [e[metric] for e in extras_by_run[run.name]]
        row.params = int(extras_by_run[run.name][0][f"{metric}_params"])
    first = next(iter(extras_by_run.values()))[0]
    info = {"test_images": int(first["test_images"])}
    return rows, info


# --------------------------------------------------------------------------- report
def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return mean_std(values, scale=scale, digits=digits)


def render(
    slug: str, rows: list[Row], info: dict[str, Any], seeds: list[int], command: str, seconds: float
) -> str:
    n_test = info["test_images"]
    lines = [
        f"<!-- generated by benchmarks/classification.py on {datetime.date.today().isoformat()}; "
        "do not edit by hand: rerun the command -->",
        f"Command: `{command}` (from the repository root; wall time {seconds / 60:.1f} min for this recipe).",
        "",
        f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs), torch threads: {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}.",
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: data order, augmentation, initialisation). "
        f"Test split: {n_test} digits, so one image is {100 / n_test:.2f} points. Accuracy and seconds per "
        "training epoch are mean ± sample std over seeds. Teachers and the student's starting checkpoint "
        "are trained once with their own fixed seeds (`trained_classifier`), so their rows do not vary "
        "with the seed.",
        "",
        "| model | trained on | what differs from config.yaml | params | epochs | test acc % | per seed | s / epoch |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        per_seed = " / ".join(f"{100 * a:.1f}" for a in r.acc)
        lines.append(
            f"| {r.name} | {r.trained_on} | {r.change} | {r.params if r.params is not None else '-'} | "
            f"{r.epochs if r.epochs is not None else '-'} | {_mean_std(r.acc, 100)} | {per_seed} | "
            f"{_mean_std(r.epoch_s, 1.0, 3)} |"
        )
    lines += [f"\nNote: {note}" for note in sorted(WORKAROUNDS)]
    lines += ["", "Paired by seed (test-accuracy points, mean ± std; seeds better / tied / worse):", ""]
    by_name = {r.name: r for r in rows}
    for name, baseline_name in COMPARISONS[slug]:
        row, baseline = by_name[name], by_name[baseline_name]
        diffs = [100 * (a - b) for a, b in zip(row.acc, baseline.acc)]
        spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
        better = sum(d > 1e-6 for d in diffs)
        worse = sum(d < -1e-6 for d in diffs)
        lines.append(
            f"- *{name}* minus *{baseline_name}*: {statistics.fmean(diffs):+.2f}{spread} "
            f"({better} / {len(diffs) - better - worse} / {worse})"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def build_parser():
    parser = bench_parser(__file__, __doc__, threads=2, quick="first seed only, 2 epochs")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPE_ROWS), default=sorted(RECIPE_ROWS))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    max_epochs = 2 if args.quick else None
    out_dir = results_dir(args)
    command = args.command
    total = time.perf_counter()
    for slug in args.recipes:
        start = time.perf_counter()
        rows, info = run_recipe(slug, seeds, max_epochs)
        table = render(slug, rows, info, seeds, command, time.perf_counter() - start)
        (out_dir / f"{slug}.md").write_text(table)
        print(f"\n{table}", flush=True)
        update_readme(args, ROOT / "recipes" / slug / "README.md", table)
    print(f"total wall time: {(time.perf_counter() - total) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
