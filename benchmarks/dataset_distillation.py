"""Toy-scale benchmark of dataset distillation: DataDAM against the coreset and real-data baselines.

Distils scikit-learn digits (8x8, 10 classes, about 125 training images per class) into 1 and 10
images per class with the ``datadam`` recipe (``recipes/datadam/config.yaml`` through
:class:`lightning_distill.cli.DistillCLI`, with only the seed, the images per class, the attention
exponent and the number of iterations changed), then judges every set the same way: evaluation
by retraining (:func:`lightning_distill.dataset_distillation.evaluate_synthetic`): a fresh ConvNet-3 is trained
on the set alone and tested on the real test split, one model per seed. The baselines:

* random real: ``ipc`` random training images per class (a different draw per seed);
* herding: the herding coreset on the embeddings of a ConvNet trained on all training images;
* random real + the same soft labels: the random real images with that ConvNet's logits as
  targets (KL at ``T``), the baseline any soft-label method must beat;
* full data: every training image (the upper reference).

Each DataDAM set is read back from the artifact the recipe saved (``SyntheticSet.load``), so the
table also exercises save -> load -> evaluate.

Usage (from the repository root)::

    python benchmarks/dataset_distillation.py --threads 1      # seeds 0 1 2, IPC 1 and 10
    python benchmarks/dataset_distillation.py --quick          # smoke run: 1 seed, tiny budgets

Writes ``benchmarks/results/datadam.md`` and replaces the table between ``<!-- results:start -->``
and ``<!-- results:end -->`` in ``recipes/datadam/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import cpu_model, mean_std  # noqa: E402

from lightning_distill.data import DigitsDataModule  # noqa: E402
from lightning_distill.dataset_distillation import (  # noqa: E402
    ConvNet,
    SyntheticSet,
    classification_accuracy,
    evaluate_synthetic,
    full_training_set,
    herding_subset,
    random_real_subset,
    teacher_soft_labels,
)
from lightning_distill.models import trained_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "datadam" / "config.yaml"


@dataclass
class Row:
    name: str
    ipc: int | str
    how: str
    acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # distillation wall time, where there is one
    cpu_seconds: list[float] = field(default_factory=list)  # distillation CPU time of this process
    pixel_std: list[float] = field(default_factory=list)  # spread of the set's pixel values


@dataclass
class Settings:
    seeds: list[int]
    ipcs: list[int]
    steps: int
    eval_epochs: int
    full_epochs: int
    teacher_epochs: int
    temperature: float
    variants: list[tuple[float, float, int | None]]  # (power, image lr, only at this ipc or None)


def eval_settings(config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The retraining settings of the config's EvalSpec (the same for every row)."""
    spec = config["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]
    args = spec["architecture"]["init_args"]
    return {
        "model_fn": lambda: ConvNet(**args),
        "epochs": epochs,
        "lr": spec.get("lr", 0.01),
        "augment": spec.get("augment"),
        "batch_size": spec.get("batch_size", 256),
    }


def distill(
    config: dict[str, Any], seed: int, ipc: int, power: float, lr: float, steps: int, workdir: Path
) -> tuple[SyntheticSet, float, float]:
    """Run the datadam recipe from its config; the saved set (read back), wall and CPU seconds of the fit."""
    steps_per_epoch = config["data"]["init_args"]["steps_per_epoch"]
    epochs = max(1, steps // steps_per_epoch)
    artifact = workdir / f"datadam_ipc{ipc}_p{power:g}_seed{seed}.pt"
    cli = recipe_cli(
        config,
        seed,
        [
            "--test_after_fit=false",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.max_steps={steps}",
            f"--model.init_args.synthetic.init_args.ipc={ipc}",
            f"--model.init_args.synthetic.init_args.seed={seed}",
            f"--model.init_args.power={power}",
            f"--model.init_args.optimizer.init_args.lr={lr}",
            f"--model.init_args.save_path={artifact}",
        ],
        workdir=workdir,
    )
    seconds, cpu_seconds = timed_fit(cli)
    return SyntheticSet.load(artifact), seconds, cpu_seconds


def run(settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    config = yaml.safe_load(CONFIG.read_text())
    dm = DigitsDataModule()
    dm.setup("fit")
    common = eval_settings(config, settings.eval_epochs)
    arch = config["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]["architecture"]["init_args"]
    # The trained ConvNet that herding embeds with and that gives the soft labels.
    start = time.perf_counter()
    teacher = trained_classifier(
        ConvNet(**arch), data=DigitsDataModule(), epochs=settings.teacher_epochs, seed=0
    )
    info: dict[str, Any] = {
        "teacher_acc": classification_accuracy(teacher, dm.test_dataloader()),
        "teacher_seconds": time.perf_counter() - start,
        "test_images": len(dm.test_dataloader().dataset),
        "train_images": int(full_training_set(dm)[0].shape[0]),
        "config": config,
    }
    rows: list[Row] = []
    load_start = os.getloadavg()[0]
    for ipc in settings.ipcs:
        random_row = Row("random real", ipc, "`random_real_subset(dm, ipc, seed)`, a new draw per seed")
        herding_row = Row(
            "herding (trained ConvNet embeddings)", ipc, "`herding_subset(dm, ipc, teacher.embed)`"
        )
        soft_row = Row(
            f"random real + teacher soft labels (KL, T={settings.temperature:g})",
            ipc,
            "the random real images, `soft_labels=teacher_soft_labels(teacher, images)`",
        )
        dam_rows = {
            (p, lr): Row(
                f"DataDAM, p = {p:g}, image lr {lr:g}"
                + (" (paper)" if (p, lr) == (4, 1) else " (official code)" if (p, lr) == (1, 1) else ""),
                ipc,
                f"`datadam` config, `ipc: {ipc}`, `power: {p:g}`, optimizer lr {lr:g}, {settings.steps} iterations",
            )
            for p, lr, only in settings.variants
            if only is None or only == ipc
        }
        herd_x, herd_y = herding_subset(dm, ipc, teacher.embed)
        for seed in settings.seeds:
            x, y = random_real_subset(dm, ipc, seed=seed)
            random_row.acc += evaluate_synthetic(x, y, dm, seeds=(seed,), **common).accuracies
            random_row.pixel_std.append(float(x.std()))
            soft_row.pixel_std.append(float(x.std()))
            herding_row.pixel_std.append(float(herd_x.std()))
            soft = teacher_soft_labels(teacher, x)
            soft_row.acc += evaluate_synthetic(
                x, y, dm, seeds=(seed,), soft_labels=soft, temperature=settings.temperature, **common
            ).accuracies
            herding_row.acc += evaluate_synthetic(herd_x, herd_y, dm, seeds=(seed,), **common).accuracies
            for (power, lr), row in dam_rows.items():
                with tempfile.TemporaryDirectory() as tmp:
                    synthetic, seconds, cpu_seconds = distill(
                        config, seed, ipc, power, lr, settings.steps, Path(tmp)
                    )
                row.seconds.append(seconds)
                row.cpu_seconds.append(cpu_seconds)
                row.pixel_std.append(float(synthetic.images.std()))
                row.acc += synthetic.evaluate(dm, seeds=(seed,), epochs=settings.eval_epochs).accuracies
            done = ", ".join(
                f"{r.name} {100 * r.acc[-1]:.1f}"
                for r in [random_row, herding_row, soft_row, *dam_rows.values()]
            )
            print(f"[IPC {ipc}, seed {seed}] {done}", flush=True)
        rows += [random_row, herding_row, soft_row, *dam_rows.values()]
    full_x, full_y = full_training_set(dm)
    full_row = Row("full training set", "all", f"every training image, {settings.full_epochs} epochs")
    full_row.pixel_std = [float(full_x.std())]
    full_common = {**common, "epochs": settings.full_epochs}
    for seed in settings.seeds:
        full_row.acc += evaluate_synthetic(full_x, full_y, dm, seeds=(seed,), **full_common).accuracies
    rows.append(full_row)
    info["load"] = (load_start, os.getloadavg()[0])
    return rows, info


# --------------------------------------------------------------------------- report
def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return mean_std(values, scale=scale, digits=digits)


def _seconds(row: Row) -> str:
    if not row.seconds:
        return "-"
    return f"{statistics.fmean(row.seconds):.0f} / {statistics.fmean(row.cpu_seconds):.0f}"


def render(rows: list[Row], info: dict[str, Any], settings: Settings, command: str, seconds: float) -> str:
    spec = info["config"]["model"]["init_args"]["synthetic"]["init_args"]["eval_spec"]
    arch = spec["architecture"]["init_args"]
    net = info["config"]["model"]["init_args"]["network"]
    per_class = info["config"]["data"]["init_args"]["per_class"]
    n_test = info["test_images"]
    lines = [
        f"<!-- generated by benchmarks/dataset_distillation.py on {datetime.date.today().isoformat()}; "
        "do not edit by hand: rerun the command -->",
        f"Command: `{command}` (from the repository root; wall time {seconds / 60:.1f} min).",
        "",
        f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs), torch threads: {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}. "
        f"Load average (1 min) at start / end: {info['load'][0]:.1f} / {info['load'][1]:.1f} on "
        f"{os.cpu_count()} CPUs: wall times stretch when other jobs share the machine, CPU times much less.",
        "",
        f"Data: scikit-learn digits at 8x8, {info['train_images']} training images, test split of {n_test} "
        f"(one image is {100 / n_test:.2f} points). Seeds {', '.join(map(str, settings.seeds))}; accuracy is "
        "mean ± sample std over seeds, one retrained model per seed (the seed also draws the random real "
        "subset and, for DataDAM, the distillation run).",
        "",
        f"Evaluation by retraining, the same for every row: ConvNet-{arch.get('depth', 3)} (width "
        f"{arch.get('width', 128)}, instance norm) trained from scratch for {settings.eval_epochs} epochs "
        f"(full data: {settings.full_epochs}), SGD lr {spec.get('lr', 0.01)}, momentum 0.9, weight decay 5e-4, "
        f"batch {spec.get('batch_size', 256)}, lr / 10 at half time, DSA `{spec.get('augment')}` on every batch; "
        'tested on the real test split. The official scripts train 1000-1800 epochs. "pixel std": the '
        "standard deviation of the set's pixel values (the data are normalised to mean 0, std 1 over the "
        "training images), to show when distilled images leave the data range.",
        "",
        f"DataDAM: random ConvNet-{net.get('depth', 3)} (width {net.get('width', 128)}, instance norm) per "
        f"iteration, {per_class} real images per class, SGD lr 1 momentum 0.5 on the images, initialised from "
        f"real images, {settings.steps} iterations (the official code runs 20000). Teacher (herding "
        f"embeddings, soft labels): the evaluation ConvNet trained on all training images for "
        f"{settings.teacher_epochs} epochs (`trained_classifier`), test accuracy {100 * info['teacher_acc']:.2f}%.",
        "",
        "| set | images / class | how | test acc % | per seed | distillation s (wall / CPU) | pixel std |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        per_seed = " / ".join(f"{100 * a:.1f}" for a in r.acc)
        lines.append(
            f"| {r.name} | {r.ipc} | {r.how} | {_mean_std(r.acc, 100)} | {per_seed} | "
            f"{_seconds(r)} | {_mean_std(r.pixel_std, 1.0, 2)} |"
        )
    by_key = {(r.name, r.ipc): r for r in rows}
    lines += ["", "Paired by seed (test-accuracy points, mean ± std; seeds better / tied / worse):", ""]
    for ipc in settings.ipcs:
        for r in rows:
            if r.ipc != ipc or not r.name.startswith("DataDAM"):
                continue
            for base in (
                "random real",
                f"random real + teacher soft labels (KL, T={settings.temperature:g})",
            ):
                b = by_key[(base, ipc)]
                diffs = [100 * (u - v) for u, v in zip(r.acc, b.acc)]
                spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
                better, worse = sum(d > 1e-6 for d in diffs), sum(d < -1e-6 for d in diffs)
                lines.append(
                    f"- IPC {ipc}: *{r.name}* minus *{base}*: {statistics.fmean(diffs):+.2f}{spread} "
                    f"({better} / {len(diffs) - better - worse} / {worse})"
                )
    return "\n".join(lines) + "\n"


def _variant(text: str, parser_error: Any) -> tuple[float, float, int | None]:
    try:
        body, _, only = text.partition("@")
        power, lr = body.split(":")
        return float(power), float(lr), int(only) if only else None
    except ValueError:
        parser_error(f"--variants entries look like 4:1 or 4:0.1@1 (POWER:IMAGE_LR[@IPC]), got {text!r}")
        raise


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, tiny budgets")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--steps", type=int, default=200, help="DataDAM iterations per run (default 200)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["4:1", "1:1", "4:0.1@1"],
        help="DataDAM runs as POWER:IMAGE_LR[@IPC] (default: paper 4:1, official code 1:1, and 4:0.1 at IPC 1)",
    )
    parser.add_argument("--eval-epochs", type=int, default=300, help="retraining epochs (default 300)")
    parser.add_argument(
        "--full-epochs", type=int, default=100, help="retraining epochs on the full set (default 100)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=1.0, help="soft-label temperature (default 1)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    settings = Settings(
        seeds=args.seeds[:1] if args.quick else args.seeds,
        ipcs=args.ipcs,
        steps=10 if args.quick else args.steps,
        eval_epochs=5 if args.quick else args.eval_epochs,
        full_epochs=2 if args.quick else args.full_epochs,
        teacher_epochs=2 if args.quick else args.teacher_epochs,
        temperature=args.temperature,
        variants=[_variant(v, parser_error=lambda m: sys.exit(f"error: {m}")) for v in args.variants],
    )
    out_dir = results_dir(args)
    command = args.command
    start = time.perf_counter()
    rows, info = run(settings)
    table = render(rows, info, settings, command, time.perf_counter() - start)
    (out_dir / "datadam.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "datadam" / "README.md", table)


if __name__ == "__main__":
    main()
