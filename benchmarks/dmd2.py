"""DMD2 on the exact-score bench: the one-/four-step student against the perfect teacher's sampler, and ablations.

Every DMD2 row is ``recipes/dmd2/config.yaml`` (an 8-mode ring, the analytic teacher, a random MLP
generator and fake score) built through :class:`lightning_distill.cli.DistillCLI` with only the
seed and the keys named in the row changed; validation is off during the fits. Students and the
teacher are scored by :func:`gmm_bench_floor.evaluate_sampler` (``n`` samples from seeded noise
against an independent data sample of the same size: SWD, MMD², mode coverage, mode-weight TV),
next to the data-vs-data floor and the analytic teacher sampled with DDIM in 1, 4 and 50 steps on
the same schedule (:func:`gmm_bench_floor.teacher_baseline`).

Rows (the paper's claims at toy scale): the one-step student (config); the four-step student with
backward simulation; and the ablations the paper argues for: update ratio 1 instead of 5 (the
two time-scale rule), no normaliser in the DM gradient, no GAN term.

Usage (from the repository root)::

    python benchmarks/dmd2.py                 # seeds 0 1 2, every row
    python benchmarks/dmd2.py --quick         # smoke run: 1 seed, 2 epochs, no README update

Writes ``benchmarks/results/dmd2.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` of ``recipes/dmd2/README.md`` (``--quick`` writes under
``benchmarks/results/quick/`` and leaves the README alone).
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import cpu_model, mean_std  # noqa: E402
from gmm_bench_floor import data_floor, evaluate_sampler, teacher_baseline  # noqa: E402

from lightning_distill.cli import DistillCLI  # noqa: E402
from lightning_distill.diffusion import sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "dmd2" / "config.yaml"
METRICS = ("swd", "mmd", "mode_coverage", "mode_tv")
Config = dict[str, Any]


@dataclass
class Row:
    """One table row: a name, how it differs from the config, and its metrics per seed."""

    name: str
    change: str
    init_args: dict[str, Any] | None = None  # None: not a DMD2 run (floor, teacher)
    metrics: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    steps: int = 1
    train_s: list[float] = field(default_factory=list)
    iterations: int | None = None
    sample_ms: float | None = None
    epochs_factor: int = 1  # the config's max_epochs times this (a longer budget, nothing else changed)


def _adamw(lr: float) -> dict[str, Any]:
    return {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": lr, "betas": [0.9, 0.999], "weight_decay": 0.01},
    }


def dmd2_rows() -> list[Row]:
    four = [999, 749, 499, 249]
    return [
        Row("DMD2, 1 step (config)", "none", {}),
        Row(
            "DMD2, 4 steps, backward simulation",
            f"`denoising_timesteps: {four}`",
            {"denoising_timesteps": four},
            steps=4,
        ),
        Row(
            "DMD2, 4 steps, slower generator",
            f"`denoising_timesteps: {four}`, generator lr 3e-4 (fake score keeps 1e-3)",
            {"denoising_timesteps": four, "optimizer": _adamw(3e-4), "fake_score_optimizer": _adamw(1e-3)},
            steps=4,
        ),
        Row("ablation: update ratio 1", "`generator_update_every: 1`", {"generator_update_every": 1}),
        Row("ablation: no normaliser", "`normalise_dmd_gradient: false`", {"normalise_dmd_gradient": False}),
        Row("ablation: no GAN", "`gan: false`", {"gan": False}),
        # Issue 13: is the gap to the 50-step teacher a budget limit? The same config, only longer.
        Row("DMD2, 1 step, 5x iterations", "`max_epochs` x 5", {}, epochs_factor=5),
        Row("DMD2, 1 step, 10x iterations", "`max_epochs` x 10", {}, epochs_factor=10),
    ]


def build(config: Config, seed: int, max_epochs: int | None, workdir: Path) -> DistillCLI:
    """Instantiate trainer, model and data from ``config`` as ``lightning-distill fit`` would (no validation)."""
    extra = ["--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0"]
    if max_epochs is not None:
        extra.append(f"--trainer.max_epochs={max_epochs}")
    return recipe_cli(config, seed, extra, workdir=workdir)


def run_one(row: Row, config: Config, seed: int, max_epochs: int | None, n: int) -> Any:
    """Fit one row's run for one seed and score its ``sample`` path; returns the trained module."""
    config = copy.deepcopy(config)
    config["model"]["init_args"].update(copy.deepcopy(row.init_args))
    if max_epochs is None and row.epochs_factor != 1:
        max_epochs = config["trainer"]["max_epochs"] * row.epochs_factor
    with tempfile.TemporaryDirectory() as tmp:
        cli = build(config, seed, max_epochs, Path(tmp))
        model = cli.model
        row.train_s.append(timed_fit(cli)[0])
    row.iterations = model.iteration
    scores = evaluate_sampler(model.sample, model.reference_mixture, n, [seed])
    for name in METRICS:
        row.metrics[name].append(float(scores[name][0]))
    return model


# --------------------------------------------------------------------------- report
def _mean_std(values: list[float], digits: int = 3, fmt: str = "f") -> str:
    return mean_std(values, digits=digits, fmt=fmt)


def render(rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, config: Config) -> str:
    by_name = {r.name: r for r in rows}
    teacher50, student = by_name["teacher, DDIM, 50 steps"], by_name["DMD2, 1 step (config)"]
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    lines = [
        f"<!-- generated by benchmarks/dmd2.py on {datetime.date.today().isoformat()}; do not edit by hand -->",
        f"Command: `{command}` (from the repository root; wall time {seconds / 60:.1f} min).",
        "",
        f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs, shared with other jobs), torch threads: "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}.",
        "",
        f"Data: `ring` (8 modes, radius 4, std 0.25); schedule: DDPM scaled-linear betas, ε (SD's). Every DMD2 row "
        f"is `recipes/dmd2/config.yaml` ({student.iterations} iterations = `max_epochs` x {data['num_train']} // "
        f"{data['batch_size']} batches; update ratio {model['generator_update_every']}) "
        "with only the key in the second column changed. Seeds "
        f"{', '.join(map(str, seeds))} (`seed_everything`: initialisation, data order, training noise); each model "
        f"draws n = {n} samples from noise seeded with the seed, compared with a data sample of seed + 10000. "
        "Mean ± sample std over seeds. SWD: sliced 2-Wasserstein (256 projections); MMD²: unbiased RBF "
        "(median bandwidth); coverage: share of the 8 modes reached; TV: mode-weight total variation with an "
        "off-mode bin. Lower is better except coverage. Sampling: median wall-clock of one call drawing "
        f"n = {n} samples (1 thread).",
        "",
        "| samples | what differs from config.yaml | steps | SWD | MMD² | coverage | TV | sampling ms | train s |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        cells = [
            _mean_std(r.metrics["swd"]),
            _mean_std(r.metrics["mmd"], 2, "e"),
            _mean_std(r.metrics["mode_coverage"], 2),
            _mean_std(r.metrics["mode_tv"]),
            "-" if r.sample_ms is None else f"{r.sample_ms:.1f}",
            _mean_std(r.train_s, 0) if r.train_s else "-",
        ]
        lines.append(f"| {r.name} | {r.change} | {r.steps} | " + " | ".join(cells) + " |")
    ratios = [s / t for s, t in zip(student.metrics["swd"], teacher50.metrics["swd"])]
    floor = by_name["data vs data (floor)"].metrics["swd"]
    teacher1 = by_name["teacher, DDIM, 1 step"].metrics["swd"]
    lines += [
        "",
        "Measured factors (SWD, paired by seed, mean ± std):",
        "",
        f"- one-step student / teacher with 50 DDIM steps: **{_mean_std(ratios, 2)}**",
        f"- one-step student / data-vs-data floor: {_mean_std([s / f for s, f in zip(student.metrics['swd'], floor)], 2)}",
        f"- one-step student / teacher with 1 DDIM step: "
        f"{_mean_std([s / t for s, t in zip(student.metrics['swd'], teacher1)], 3)}",
    ]
    for r in rows:
        if r.epochs_factor > 1 and r.metrics["swd"]:
            longer = [s / t for s, t in zip(r.metrics["swd"], teacher50.metrics["swd"])]
            lines.append(
                f"- one-step student after {r.iterations} iterations ({r.epochs_factor}x) / teacher with 50 DDIM "
                f"steps: {_mean_std(longer, 2)}"
            )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, 2 epochs", samples=2000)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    max_epochs = 2 if args.quick else None
    command = args.command
    config = yaml.safe_load(CONFIG.read_text())
    total = time.perf_counter()

    dmd2 = dmd2_rows()
    models: dict[str, Any] = {}
    for seed in seeds:
        for row in dmd2:
            start = time.perf_counter()
            models[row.name] = run_one(row, config, seed, max_epochs, args.n)
            print(
                f"seed {seed} | {row.name}: SWD {row.metrics['swd'][-1]:.3f}, coverage "
                f"{row.metrics['mode_coverage'][-1]:.2f} | {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    any_model = next(iter(models.values()))
    gmm, schedule, teacher = any_model.reference_mixture, any_model.schedule, any_model.teacher

    floor = Row("data vs data (floor)", "-", steps=0)
    floor.metrics = {k: v.tolist() for k, v in data_floor(gmm, args.n, seeds).items()}
    baselines = []
    for k, scores in teacher_baseline(gmm, (1, 4, 50), seeds, args.n, schedule).items():
        row = Row(f"teacher, DDIM, {k} step{'s' if k > 1 else ''}", "analytic teacher, no training", steps=k)
        row.metrics = {name: v.tolist() for name, v in scores.items()}
        row.sample_ms = sampling_ms(
            lambda count, gen, k=k: sample(teacher, schedule, torch.randn(count, gmm.dim, generator=gen), k),
            args.n,
        )
        baselines.append(row)
    for row in dmd2:
        row.sample_ms = sampling_ms(models[row.name].sample, args.n)
    rows = [floor, *baselines, *dmd2]

    table = render(rows, seeds, args.n, command, time.perf_counter() - total, config)
    (results_dir(args) / "dmd2.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "dmd2" / "README.md", table)


if __name__ == "__main__":
    main()
