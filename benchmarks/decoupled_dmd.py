"""Decoupled DMD on the conditional exact-score bench: CA vs DM, shared vs decoupled tau, guidance scale.

Every student row is ``recipes/decoupled_dmd/config.yaml`` (8-mode ring, one class per mode,
analytic teacher with exact CFG) built through :class:`lightning_distill.cli.DistillCLI`, with only
the keys in its "change" column and the seed changed. Baselines: the analytic teacher sampled
with DDIM in 1, 4 and 50 steps, without CFG and with the config's CFG, and the noise floors.

The student of a CFG-distilled recipe is meant to reproduce the *guided* teacher, so each row is
scored against two references with the same labels: a data sample ("SWD → data") and a 50-step
CFG sample of the analytic teacher at the row's guidance scale ("SWD → guided"). Also reported:
``on-class`` (share of samples whose nearest mode is their label's), ``|x − μ_c|`` (mean
distance to the label's mode centre: spread and drift) and mode coverage. Student metrics are
also taken during training (the time-course tables) to show drift and collapse.

Usage (from the repository root)::

    python benchmarks/decoupled_dmd.py --threads 1     # seeds 0 1 2 (about 10 min on idle cores)
    python benchmarks/decoupled_dmd.py --quick         # smoke run: 1 seed, a few iterations

Writes ``benchmarks/results/decoupled_dmd.md`` and the block between the results markers of
``recipes/decoupled_dmd/README.md`` (``--quick`` writes ``benchmarks/results/quick/`` only).
The fits of one seed share their initial weights: the first fit runs ``student_init: regress``
(:func:`~lightning_distill.recipes.decoupled_dmd.fit_to_teacher`), later fits of that seed load
the weights it produced instead of recomputing the same regression.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning  # noqa: E402
import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import cpu_model, mean_std  # noqa: E402

from lightning_distill.cli import DistillCLI  # noqa: E402
from lightning_distill.diffusion import sample  # noqa: E402
from lightning_distill.recipes.decoupled_dmd import DecoupledDMD, sample_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "decoupled_dmd" / "config.yaml"
README = ROOT / "recipes" / "decoupled_dmd" / "README.md"
COLUMNS = ("swd_data", "swd_guided", "mmd_guided", "on_class", "own_mode", "mode_coverage", "ms")


@dataclass
class Row:
    name: str
    change: dict[str, Any]
    steps: int
    values: dict[str, list[float]] = field(default_factory=dict)
    course: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], into: dict[str, list[float]] | None = None) -> None:
        target = self.values if into is None else into
        for key, value in metrics.items():
            target.setdefault(key, []).append(value)


def student_rows(guidance: float, sweep: list[float]) -> list[Row]:
    one, four = {"num_generator_steps": 1}, {"num_generator_steps": 4}
    rows = [
        Row("CA + DM (d-DMD)", one, 1),
        Row("CA only", {**one, "loss_weights": {"dm": 0.0}}, 1),
        Row("DM only", {**one, "loss_weights": {"ca": 0.0}}, 1),
        Row(
            "(1) coupled: shared tau, full range", {**four, "shared_timestep": True, "ca_schedule": "full"}, 4
        ),
        Row("(2) decoupled, both full", {**four, "ca_schedule": "full"}, 4),
        Row("(3) decoupled, both constrained", {**four, "dm_schedule": "constrained"}, 4),
        Row("(4) decoupled hybrid (paper; config)", dict(four), 4),
        Row("(4) without the normaliser", {**four, "normalise": False}, 4),
        Row("(4) generator update every iteration", {**four, "generator_update_every": 1}, 4),
        Row("(4) generator update every 20th", {**four, "generator_update_every": 20}, 4),
    ]
    rows += [
        Row(f"(4) with guidance {a:g}", {**four, "guidance_scale": a}, 4) for a in sweep if a != guidance
    ]
    return rows


# --------------------------------------------------------------------------- evaluation
class Bench:
    """Labels, references and metrics of one seed."""

    def __init__(self, teacher: torch.nn.Module, schedule: Any, n: int, seed: int, num_classes: int) -> None:
        self.teacher, self.schedule, self.n, self.seed = teacher, schedule, n, seed
        self.gmm = teacher.gmm
        self.labels = torch.arange(n) % num_classes
        self.null = torch.full((n,), num_classes)
        self.data = self.gmm.sample(n, torch.Generator().manual_seed(seed + 10_000), self.labels)
        self._guided: dict[float, torch.Tensor] = {}

    def teacher_samples(self, steps: int, guidance: float, offset: int = 0) -> torch.Tensor:
        noise = torch.randn(self.n, self.gmm.dim, generator=torch.Generator().manual_seed(self.seed + offset))
        return sample(self.teacher, self.schedule, noise, steps, self.labels, self.null, guidance)

    def guided(self, guidance: float) -> torch.Tensor:
        if guidance not in self._guided:
            self._guided[guidance] = self.teacher_samples(50, guidance, offset=20_000)
        return self._guided[guidance]

    def metrics(self, x: torch.Tensor, guidance: float) -> dict[str, float]:
        on_data = sample_metrics(x, self.data, self.labels, self.gmm)
        on_guided = sample_metrics(x, self.guided(guidance), self.labels, self.gmm)
        own = (x.double() - self.gmm.means[self.labels]).norm(dim=1).mean()
        return {
            "swd_data": float(on_data["swd"]),
            "swd_guided": float(on_guided["swd"]),
            "mmd_guided": float(on_guided["mmd"]),
            "on_class": 100 * float(on_data["on_class"]),
            "own_mode": float(own),
            "mode_coverage": float(on_data["mode_coverage"]),
        }


def timed(fn: Callable[[], torch.Tensor], repeats: int = 3) -> tuple[torch.Tensor, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, 1000 * best


def student_samples(model: DecoupledDMD, bench: Bench) -> torch.Tensor:
    was_training = model.training
    model.eval()
    x = model.generate(model.student, bench.labels, bench.n, torch.Generator().manual_seed(bench.seed + 100))
    model.train(was_training)
    return x


class Course(L.Callback):
    """Student metrics at the given iterations of the fit."""

    def __init__(self, row: Row, bench: Bench, at: list[int], guidance: float) -> None:
        self.row, self.bench, self.at, self.guidance = row, bench, set(at), guidance

    def on_train_start(self, trainer: L.Trainer, module: DecoupledDMD) -> None:
        self.on_train_batch_end(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: DecoupledDMD, *args: Any) -> None:
        if module.iteration in self.at:
            metrics = self.bench.metrics(student_samples(module, self.bench), self.guidance)
            self.row.add(metrics, self.row.course.setdefault(module.iteration, {}))


class Capture(L.Callback):
    """The student's and fake score's weights when training starts (after ``student_init: regress``)."""

    state: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, module: DecoupledDMD) -> None:
        self.state = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("teachers.")}


# --------------------------------------------------------------------------- runs
def build(change: dict[str, Any], seed: int, iterations: int, init_steps: int, workdir: Path) -> DistillCLI:
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"].pop("callbacks", None)  # no pictures in the benchmark
    config["model"]["init_args"].update(change, init_steps=init_steps, noise_seed=seed)
    every = config["model"]["init_args"].get("generator_update_every", 5)
    max_steps = iterations + -(-iterations // every)  # both optimizers' steps count
    extra = [
        f"--data.init_args.seed={seed}",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.max_steps={max_steps}",
    ]
    return recipe_cli(config, seed, extra, workdir=workdir)


def run_seed(
    rows: list[Row], seed: int, args: argparse.Namespace, guidance: float, initial: dict[int, Any]
) -> Bench:
    bench = None
    for row in rows:
        with tempfile.TemporaryDirectory() as tmp:
            change = dict(row.change)
            if seed in initial:
                change["student_init"] = "random"
            cli = build(change, seed, args.iterations, args.init_steps, Path(tmp))
            model, trainer = cli.model, cli.trainer
            if seed in initial:
                missing, unexpected = model.load_state_dict(initial[seed], strict=False)
                if unexpected or any(not k.startswith("teachers.") for k in missing):
                    raise RuntimeError(
                        f"Initial weights do not fit: missing {missing}, unexpected {unexpected}."
                    )
            bench = bench or Bench(model.teacher, model.schedule, args.n, seed, model.num_classes)
            capture = Capture()
            trainer.callbacks += [capture, Course(row, bench, args.course, model.guidance_scale)]
            start = time.perf_counter()
            trainer.fit(model, datamodule=cli.datamodule)
            initial.setdefault(seed, capture.state)
            x, ms = timed(lambda m=model, b=bench: student_samples(m, b))
            row.add({**bench.metrics(x, model.guidance_scale), "ms": ms})
            print(
                f"seed {seed} | {row.name}: {time.perf_counter() - start:.0f} s, "
                f"{ {k: round(v[-1], 3) for k, v in row.values.items()} }",
                flush=True,
            )
    return bench


def baseline_rows(benches: list[Bench], guidance: float) -> list[Row]:
    rows = [
        Row("data vs data (floor)", {}, 0),
        Row(f"guided teacher vs guided teacher (floor, CFG {guidance:g})", {}, 50),
    ]
    for bench in benches:
        rows[0].add(
            {
                **bench.metrics(
                    bench.gmm.sample(
                        bench.n, torch.Generator().manual_seed(bench.seed + 30_000), bench.labels
                    ),
                    guidance,
                ),
                "ms": float("nan"),
            }
        )
        rows[1].add(
            {
                **bench.metrics(bench.teacher_samples(50, guidance, offset=40_000), guidance),
                "ms": float("nan"),
            }
        )
    for scale in (1.0, guidance):
        for steps in (1, 4, 50):
            row = Row(f"teacher, DDIM, {'no CFG' if scale == 1 else f'CFG {scale:g}'}", {}, steps)
            for bench in benches:
                x, ms = timed(lambda b=bench, k=steps, a=scale: b.teacher_samples(k, a, offset=50_000))
                row.add({**bench.metrics(x, guidance), "ms": ms})
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def fmt(values: list[float], digits: int = 3) -> str:
    return mean_std(values, digits=digits)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| samples | change from config.yaml | steps | SWD → data | SWD → guided | MMD² → guided | on-class % "
        "| \\|x − μ_c\\| | coverage | ms / sample set |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r.values
        change = ", ".join(f"`{k}: {val}`" for k, val in r.change.items()) or "-"
        lines.append(
            f"| {r.name} | {change} | {r.steps or '-'} | {fmt(v['swd_data'])} | {fmt(v['swd_guided'])} | "
            f"{fmt(v['mmd_guided'], 4)} | {fmt(v['on_class'], 1)} | {fmt(v['own_mode'])} | "
            f"{fmt(v['mode_coverage'], 2)} | {fmt(v['ms'], 1)} |"
        )
    return lines


def course_table(rows: list[Row], key: str, digits: int = 3) -> list[str]:
    at = sorted({i for r in rows for i in r.course})
    lines = ["| student | " + " | ".join(f"it {i}" for i in at) + " |", "|---|" + "---:|" * len(at)]
    for r in rows:
        lines.append(
            f"| {r.name} | " + " | ".join(fmt(r.course.get(i, {}).get(key, []), digits) for i in at) + " |"
        )
    return lines


def render(
    baselines: list[Row], students: list[Row], args: argparse.Namespace, guidance: float, seconds: float
) -> str:
    by = {r.name: r for r in [*baselines, *students]}
    teacher50 = baselines[-1]  # the guided teacher, 50 steps
    floor = baselines[1]
    command = args.command
    lines = [
        f"<!-- generated by benchmarks/decoupled_dmd.py on {datetime.date.today().isoformat()}; do not edit by "
        "hand: rerun the command -->",
        f"Command: `{command}` (from the repository root; wall time {seconds / 60:.1f} min).",
        "",
        f"Machine: {cpu_model()} ({os.cpu_count()} logical CPUs, shared with other jobs), torch threads: "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}.",
        "",
        f"Seeds {', '.join(map(str, args.seeds))} (`seed_everything`, `noise_seed`, data seed); mean ± sample std "
        f"over seeds. {args.n} samples per evaluation, labels balanced over the 8 classes; every student trains "
        f"{args.iterations} iterations (a generator update every 5th) after {args.init_steps} regression steps "
        "onto the teacher. References with the same labels: a data sample (SWD → data) and a 50-step CFG sample "
        "of the analytic teacher at the row's guidance scale (SWD → guided). ms: wall time to draw the sample set.",
        "",
        *table([*baselines, *students]),
        "",
        "SWD → guided during training (iterations after the regression start):",
        "",
        *course_table(students, "swd_guided"),
        "",
        "Mean distance to the label's mode centre |x − μ_c| during training (data ≈ "
        f"{fmt(baselines[0].values['own_mode'])}, guided teacher ≈ {fmt(teacher50.values['own_mode'])}):",
        "",
        *course_table(students, "own_mode"),
        "",
    ]
    lines += ["Best point of each student's course (lowest mean SWD → guided; picked with hindsight):", ""]
    for r in students:
        c = r.course[best_point(r)]
        lines.append(
            f"- *{r.name}*: iteration {best_point(r)}, SWD → guided {fmt(c['swd_guided'])} "
            f"({fmt([a / b for a, b in zip(c['swd_guided'], floor.values['swd_guided'])], 1)} × the floor), "
            f"on-class {fmt(c['on_class'], 1)} %, |x − μ_c| {fmt(c['own_mode'])}."
        )
    lines += [
        "",
        "Factors of the config's student (4-step, decoupled hybrid) and of the one-step student:",
        "",
    ]
    for name in ("(4) decoupled hybrid (paper; config)", "CA + DM (d-DMD)"):
        r = by[name]
        for label, values in (("at the end", r.values), ("at its best point", r.course[best_point(r)])):
            ratio = [a / b for a, b in zip(values["swd_data"], teacher50.values["swd_data"])]
            vs_floor = [a / b for a, b in zip(values["swd_guided"], floor.values["swd_guided"])]
            vs_teacher = [a / b for a, b in zip(values["swd_guided"], teacher50.values["swd_guided"])]
            lines.append(
                f"- *{name}*, {label}: SWD → data {fmt(ratio, 2)} × the guided 50-step teacher's; "
                f"SWD → guided {fmt(vs_floor, 1)} × the guided-vs-guided floor "
                f"({fmt(vs_teacher, 1)} × the 50-step teacher's own SWD → guided)."
            )
    return "\n".join(lines) + "\n"


def best_point(row: Row) -> int:
    """The course iteration with the lowest mean SWD → guided."""
    return min(row.course, key=lambda i: statistics.fmean(row.course[i]["swd_guided"]))


def build_parser():
    parser = bench_parser(
        __file__, __doc__, quick="1 seed, 60 iterations, 100 regression steps", samples=2000
    )
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--init-steps", type=int, default=1500)
    parser.add_argument("--course", type=int, nargs="+", default=[0, 100, 250, 500, 1000, 2000])
    parser.add_argument("--guidance-sweep", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.quick:
        args.seeds, args.iterations, args.init_steps, args.course, args.n = [0], 60, 100, [0, 20, 60], 500
    guidance = float(yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["guidance_scale"])
    start = time.perf_counter()
    students = student_rows(guidance, args.guidance_sweep)
    initial: dict[int, Any] = {}
    benches = [run_seed(students, seed, args, guidance, initial) for seed in args.seeds]
    baselines = baseline_rows(benches, guidance)
    text = render(baselines, students, args, guidance, time.perf_counter() - start)
    out = results_dir(args) / "decoupled_dmd.md"
    out.write_text("# Decoupled DMD on the conditional exact-score bench\n\n" + text)
    raw = {
        r.name: {"change": r.change, "steps": r.steps, "final": r.values, "course": r.course}
        for r in [*baselines, *students]
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    update_readme(args, README, text)
    print(text)


if __name__ == "__main__":
    main()
