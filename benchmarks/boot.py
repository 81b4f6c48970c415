"""BOOT on the exact-score bench, data-free: the one-step generator against the guided teacher at 1/4/50 steps.

Every student is ``recipes/boot/config.yaml`` (a class-conditional ring of 8 Gaussians, one class per
mode, Stable Diffusion's schedule, the analytic teacher guided at w = 3.5, a random MLP generator,
bootstrapping on a 50-step grid plus the boundary term; the datamodule serves class labels only)
built through :class:`lightning_distill.cli.DistillCLI` with only the seed changed; validation is off
during the fits. No data sample is drawn for training; data are drawn only to score.

Scoring (``n`` samples per seed): seed ``s`` draws the class labels and then the noise from
``Generator().manual_seed(s)``; the reference is a class-conditional data sample with the same
labels from seed ``s + 10000``. Columns: SWD and RBF-MMD² against that data, mode coverage, "on
class", SWD to the teacher's guided 50-step DDIM samples (other noise; its own row is the noise
floor), network evaluations per sample and sampling CPU time.

Usage (from the repository root)::

    python benchmarks/boot.py            # seeds 0 1 2
    python benchmarks/boot.py --quick    # smoke run: 1 seed, 200 iterations, no README update

Writes ``benchmarks/results/boot.md`` and the generated block of ``recipes/boot/README.md``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _guided_bench import (  # noqa: E402,F401
    METRICS,
    N_SAMPLES,
    Row,
    Sampler,
    data_sampler,
    labels_for,
    score,
    teacher_sampler,
)
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "boot" / "config.yaml"


def student_sampler(model: Any) -> Sampler:
    def draw(n: int, gen: torch.Generator):
        labels = labels_for(model, n, gen)
        return model.sample(n, gen, labels), labels

    return draw


def train(config: dict, seed: int, iterations: int | None) -> tuple[Any, float]:
    config = copy.deepcopy(config)
    config["trainer"]["callbacks"] = []
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    if iterations is not None:
        extra.append(f"--trainer.max_steps={iterations}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), seconds


def render(rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, iterations: int) -> str:
    lines = [
        generated_header("benchmarks/boot.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} samples per seed. Bench: `ring` "
        "(8 modes, radius 4, std 0.25), one class per mode, labels uniform; Stable Diffusion's schedule; guidance "
        f"w = 3.5 (CFG scale 4.5) for teacher and student. Students: {iterations} iterations (batch 256 of class "
        "labels, no data) of `recipes/boot/config.yaml`, one step `g(ε, 0, c)`. SWD / MMD² against class-conditional "
        "data with the same labels; coverage: share of the 8 modes reached; on class: share of samples on a mode of "
        "their own class; SWD to teacher-50: distance to the guided teacher's 50-step DDIM samples (other noise; "
        "the teacher-50 row is this column's noise floor). NFE counts CFG as 2; sampling time is process CPU time.",
        "",
        "| sampler | training data | NFE | SWD | MMD² | coverage | on class | SWD to teacher-50 | sampling ms | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        data = "none (labels only)" if r.name.startswith("BOOT") else "-"
        lines.append(
            f"| {r.name} | {data} | {r.nfe} | {mean_std(m['swd'], digits=3)} | {mean_std(m['mmd'], digits=2, fmt='e')} | "
            f"{mean_std(m['mode_coverage'])} | {mean_std(m['on_class'])} | {mean_std(m['swd_teacher50'], digits=3)} | "
            f"{mean_std(r.sample_ms, digits=1)} | {mean_std(r.train_s, digits=0)} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, 200 iterations")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    iterations = 200 if args.quick else config["trainer"]["max_steps"]
    total = time.perf_counter()
    floor = Row("data vs data (floor)", 0)
    teachers = {k: Row(f"teacher, guided DDIM {k} step{'s' if k > 1 else ''}", 2 * k) for k in (1, 4, 50)}
    student = Row("BOOT (config), 1 step", 1)
    for seed in seeds:
        model, seconds = train(config, seed, iterations if args.quick else None)
        student.add(score(student_sampler(model), model, N_SAMPLES, seed))
        student.sample_ms.append(cpu_ms(student_sampler(model), N_SAMPLES))
        student.train_s.append(seconds)
        print(
            f"seed {seed} | BOOT: SWD {student.metrics['swd'][-1]:.3f}, on class {student.metrics['on_class'][-1]:.2f}",
            flush=True,
        )
        floor.add(score(data_sampler(model), model, N_SAMPLES, seed))
        for k, row in teachers.items():
            row.add(score(teacher_sampler(model, k), model, N_SAMPLES, seed))
            row.sample_ms.append(cpu_ms(teacher_sampler(model, k), N_SAMPLES))
    rows = [floor, *teachers.values(), student]
    table = render(rows, seeds, N_SAMPLES, args.command, time.perf_counter() - total, iterations)
    (results_dir(args) / "boot.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "boot" / "README.md", table)


def cpu_ms(draw: Sampler, n: int, repeats: int = 3) -> float:
    """Median process-CPU milliseconds of one ``draw(n, generator)`` (the machine is shared; wall-clock is not)."""
    times = []
    for k in range(repeats):
        start = time.process_time()
        with torch.no_grad():
            draw(n, torch.Generator().manual_seed(k))
        times.append(1000 * (time.process_time() - start))
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main()
