"""SwiftBrush on the exact-score bench: the one-step student against the perfect teacher's CFG sampler, and ablations.

Every SwiftBrush row is ``recipes/swiftbrush/config.yaml`` (a conditional ring of 8 Gaussians, one
class per mode, Stable Diffusion's noise schedule, the analytic teacher, a random MLP student, the
"residual" fake score, CFG 4.5 on both scores, an EMA of the student) built through
:class:`lightning_distill.cli.DistillCLI` with only the seed and the keys named in the row changed;
validation and the sample pictures are off during the fits, the EMA weights are scored.

Scoring (``n`` samples per seed): seed ``s`` draws the class labels and then the noise from
``Generator().manual_seed(s)``, the same for every row; the reference is a class-conditional data
sample with the same labels from seed ``s + 10000``. Columns: SWD and RBF-MMD² against that data,
mode coverage, "on class" (share of samples within the mode threshold of a mode of their own
class), SWD to the teacher's 50-step DDIM samples at the row's guidance scale (the sampler being
distilled; same labels, independent noise), network evaluations per sample and sampling wall-clock.

Rows: the data floor; the analytic teacher with DDIM in 1, 4 and 50 steps at guidance 1 and 4.5;
the one-step student (config); the ablations: guidance 1 and 2, no VSD weight (``w(t) = 1``), a
student predicting x₀ instead of ε (``student_prediction_type: sample``), and a
fake score trained from its own random initialisation (``fake_score_mode: separate``, with the
plain ε-MSE, since the α_t² weight would leave its noisy timesteps untrained).

Usage (from the repository root)::

    python benchmarks/swiftbrush.py            # seeds 0 1 2, every row
    python benchmarks/swiftbrush.py --quick    # smoke run: 1 seed, 100 iterations, no README update

Writes ``benchmarks/results/swiftbrush.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` of ``recipes/swiftbrush/README.md`` (``--quick`` writes under
``benchmarks/results/quick/`` and leaves the README alone).
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import cpu_model, mean_std  # noqa: E402

from lightning_distill.cli import DistillCLI  # noqa: E402
from lightning_distill.diffusion import sample  # noqa: E402
from lightning_distill.diffusion.metrics import (  # noqa: E402
    default_mode_threshold,
    mode_assignment,
    mode_coverage,
    rbf_mmd2,
    sliced_wasserstein,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "swiftbrush" / "config.yaml"
METRICS = ("swd", "mmd", "mode_coverage", "on_class", "swd_teacher50")
_REFERENCE_OFFSET, _TEACHER_OFFSET = 10_000, 20_000
Config = dict[str, Any]
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Row:
    """One table row: a name, how it differs from the config, its guidance scale and metrics per seed."""

    name: str
    change: str
    init_args: dict[str, Any] | None = None  # None: not a SwiftBrush run
    scale: float = 4.5
    steps: int = 1
    metrics: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    train_s: list[float] = field(default_factory=list)
    sample_ms: float | None = None


def swiftbrush_rows() -> list[Row]:
    separate = {"fake_score_mode": "separate", "fake_score_weighting": "none"}
    return [
        Row("SwiftBrush, 1 step (config)", "none", {}),
        Row("ablation: guidance 1", "`guidance_scale: 1`", {"guidance_scale": 1.0}, scale=1.0),
        Row("ablation: guidance 2", "`guidance_scale: 2`", {"guidance_scale": 2.0}, scale=2.0),
        Row("ablation: w(t) = 1", "`vsd_weighting: none`", {"vsd_weighting": "none"}),
        Row(
            "ablation: student predicts x0",
            "`student_prediction_type: sample`",
            {"student_prediction_type": "sample"},
        ),
        Row(
            "ablation: fake score from scratch",
            "`fake_score_mode: separate`, `fake_score_weighting: none`",
            separate,
        ),
    ]


# ------------------------------------------------------------------------------------------ scoring
def score(draw: Sampler, model: Any, scale: float, n: int, seed: int) -> dict[str, float]:
    """The bench metrics of ``draw(n, Generator(seed)) -> (samples, labels)``."""
    gmm = model.reference_mixture
    x, labels = draw(n, torch.Generator().manual_seed(seed))
    x, labels = x.detach().float().cpu(), labels.cpu()
    reference = gmm.sample(n, torch.Generator().manual_seed(seed + _REFERENCE_OFFSET), labels=labels)
    noise = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed + _TEACHER_OFFSET))
    teacher50 = sample(
        model.teacher, model.schedule, noise, 50, labels, torch.full((n,), gmm.num_classes), scale
    )
    modes = mode_assignment(x, gmm, default_mode_threshold(gmm.dim))
    on_mode = modes < gmm.num_modes
    own = torch.zeros_like(on_mode)
    own[on_mode] = gmm.class_of_mode[modes[on_mode]] == labels[on_mode]
    return {
        "swd": float(sliced_wasserstein(x, reference)),
        "mmd": float(rbf_mmd2(x, reference)),
        "mode_coverage": float(mode_coverage(x, gmm)),
        "on_class": float(own.float().mean()),
        "swd_teacher50": float(sliced_wasserstein(x, teacher50.float())),
    }


def data_sampler(model: Any) -> Sampler:
    gmm = model.reference_mixture

    def draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, gmm.num_classes, (n,), generator=gen)
        return gmm.sample(n, gen, labels=labels), labels

    return draw


def teacher_sampler(model: Any, steps: int, scale: float) -> Sampler:
    """The analytic teacher with DDIM in ``steps`` steps and CFG ``scale``, labels then noise from ``gen``."""
    gmm = model.reference_mixture

    def draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, gmm.num_classes, (n,), generator=gen)
        noise = torch.randn(n, gmm.dim, generator=gen)
        null = torch.full((n,), gmm.num_classes)
        return sample(model.teacher, model.schedule, noise, steps, labels, null, scale), labels

    return draw


def student_sampler(model: Any) -> Sampler:
    """The recipe's own ``sample`` path, with the labels it draws (labels first, then noise)."""

    def draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, model.reference_mixture.num_classes, (n,), generator=gen)
        return model.sample(n, gen, labels), labels

    return draw


# ------------------------------------------------------------------------------------------ training
def build(config: Config, seed: int, iterations: int | None, workdir: Path) -> DistillCLI:
    """Instantiate trainer, model and data from ``config`` as ``lightning-distill fit`` would (no validation)."""
    config = copy.deepcopy(config)
    config["trainer"]["callbacks"] = [
        c for c in config["trainer"]["callbacks"] if "EMATeacher" in c["class_path"]
    ]
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    if iterations is not None:
        extra.append(f"--trainer.max_steps={2 * iterations}")
    return recipe_cli(config, seed, extra, workdir=workdir)


def run_one(row: Row, config: Config, seed: int, iterations: int | None, n: int) -> Any:
    """Fit one row's run for one seed, put the EMA weights into the student and score it."""
    config = copy.deepcopy(config)
    config["model"]["init_args"].update(copy.deepcopy(row.init_args))
    with tempfile.TemporaryDirectory() as tmp:
        cli = build(config, seed, iterations, Path(tmp))
        model = cli.model
        row.train_s.append(timed_fit(cli)[0])
    model.student.load_state_dict(model.ema_student.state_dict())
    for name, value in score(student_sampler(model), model, row.scale, n, seed).items():
        row.metrics[name].append(value)
    return model


# ------------------------------------------------------------------------------------------ report
def _mean_std(values: list[float], digits: int = 3, fmt: str = "f") -> str:
    return mean_std(values, digits=digits, fmt=fmt)


def render(
    rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, iterations: int, batch: int
) -> str:
    by_name = {r.name: r for r in rows}
    lines = [
        f"<!-- generated by benchmarks/swiftbrush.py on {datetime.date.today()}; do not edit by hand: rerun the command -->",
        f"Command: `{command}` (from the repository root; wall time {seconds / 60:.1f} min).",
        "",
        f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs), torch threads: {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}.",
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} samples per seed. Bench: "
        "`ring` (8 modes, radius 4, std 0.25), one class per mode, labels uniform; Stable Diffusion's "
        f"schedule (ᾱ at t = 999 is 0.0047). Students: {iterations} iterations (batch {batch}) of "
        "`recipes/swiftbrush/config.yaml`, EMA weights. SWD / MMD² against class-conditional data with "
        "the same labels (lower is better); coverage: share of the 8 modes reached; on class: share of "
        "samples on a mode of their own class; SWD to teacher-50: distance to the teacher's 50-step DDIM "
        "samples at the row's guidance scale; NFE: network evaluations per sample (CFG counts 2).",
        "",
        "| samples | what differs from config.yaml | guidance | NFE | SWD | MMD² | coverage | on class "
        "| SWD to teacher-50 | sampling ms | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        sample_ms = f"{r.sample_ms:.1f}" if r.sample_ms is not None else "-"
        nfe = r.steps * (2 if r.scale != 1 and r.init_args is None else 1)  # a student is one evaluation
        lines.append(
            f"| {r.name} | {r.change} | {r.scale:g} | {nfe} | {_mean_std(m['swd'])} | "
            f"{_mean_std(m['mmd'], 2, 'e')} | {_mean_std(m['mode_coverage'], 2)} | {_mean_std(m['on_class'], 2)} | "
            f"{_mean_std(m['swd_teacher50'])} | {sample_ms} | {_mean_std(r.train_s, 0)} |"
        )

    def swd(name: str, metric: str = "swd") -> list[float]:
        return by_name[name].metrics[metric]

    def ratio(a: list[float], b: list[float]) -> str:
        return _mean_std([x / y for x, y in zip(a, b)], 2)

    student, student_1 = "SwiftBrush, 1 step (config)", "ablation: guidance 1"
    t = {
        (k, s): f"teacher, DDIM {k} step{'s' if k > 1 else ''}, CFG {s:g}"
        for k in (1, 4, 50)
        for s in (1.0, 4.5)
    }
    lines += [
        "",
        "Factors (paired by seed; SWD of the one-step student divided by that of the teacher's 50-step sampler):",
        "",
        f"- guidance 4.5 (config), against the data: **{ratio(swd(student), swd(t[50, 4.5]))}**. Guidance moves "
        "the teacher's own samples away from the data too, so also read the distance to what is distilled, "
        f"the teacher's guided 50-step samples: student {_mean_std(swd(student, 'swd_teacher50'))}, teacher in 4 "
        f"steps {_mean_std(swd(t[4, 4.5], 'swd_teacher50'))}, in 1 step {_mean_std(swd(t[1, 4.5], 'swd_teacher50'))}, "
        f"and the 50-step sampler itself with other noise {_mean_std(swd(t[50, 4.5], 'swd_teacher50'))}.",
        f"- guidance 1 (no CFG), against the data: **{ratio(swd(student_1), swd(t[50, 1.0]))}**; the teacher in 1 "
        f"step: {ratio(swd(t[1, 1.0]), swd(t[50, 1.0]))}, in 4 steps: {ratio(swd(t[4, 1.0]), swd(t[50, 1.0]))}.",
        "",
        f"Sampling times are for n = {n} points on one thread; the analytic teacher is a closed-form mixture "
        "score, far cheaper per evaluation than a network, so NFE is the fairer cost measure.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, 100 iterations", samples=2000)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    iterations = 100 if args.quick else config["trainer"]["max_steps"] // 2
    command = args.command
    total = time.perf_counter()

    students = swiftbrush_rows()
    models: dict[str, Any] = {}
    for seed in seeds:
        for row in students:
            start = time.perf_counter()
            models[row.name] = run_one(row, config, seed, iterations if args.quick else None, args.n)
            print(
                f"seed {seed} | {row.name}: SWD {row.metrics['swd'][-1]:.3f}, coverage "
                f"{row.metrics['mode_coverage'][-1]:.2f}, on class {row.metrics['on_class'][-1]:.2f} | "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    model = next(iter(models.values()))

    floor = Row("data vs data (floor)", "-", scale=1.0, steps=0)
    baselines = []
    for scale in (1.0, 4.5):
        for k in (1, 4, 50):
            name = f"teacher, DDIM {k} step{'s' if k > 1 else ''}, CFG {scale:g}"
            baselines.append(Row(name, "analytic teacher, no training", scale=scale, steps=k))
    for seed in seeds:
        for name, value in score(data_sampler(model), model, 1.0, args.n, seed).items():
            floor.metrics[name].append(value)
        for row in baselines:
            for name, value in score(
                teacher_sampler(model, row.steps, row.scale), model, row.scale, args.n, seed
            ).items():
                row.metrics[name].append(value)
    for row in baselines:
        row.sample_ms = sampling_ms(teacher_sampler(model, row.steps, row.scale), args.n)
    for row in students:
        row.sample_ms = sampling_ms(student_sampler(models[row.name]), args.n)
    rows = [floor, *baselines, *students]

    table = render(
        rows,
        seeds,
        args.n,
        command,
        time.perf_counter() - total,
        iterations,
        config["data"]["init_args"]["batch_size"],
    )
    (results_dir(args) / "swiftbrush.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "swiftbrush" / "README.md", table)


if __name__ == "__main__":
    main()
