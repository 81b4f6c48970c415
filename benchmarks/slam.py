"""SLAM on the exact-score bench: 1/2/4-step consistency students against the guided teacher at 1/4/50 steps.

Every student is ``recipes/slam/config.yaml`` (a class-conditional ring of 8 Gaussians, one class per
mode, Stable Diffusion's schedule, the analytic teacher guided at w = 3.5, a random MLP student, EMA
target 0.95, pseudo-Huber c = 0.001) built through :class:`lightning_distill.cli.DistillCLI` with only
the seed changed; validation is off during the fits. One trained student per seed is sampled with
LCM's multi-step consistency sampler in 1, 2 and 4 steps. The baseline "LCM" is the same config with
``sub_path: false`` (γ = 1: plain latent consistency distillation with a fixed w), the method SLAM
claims to improve on.

Scoring (``n`` samples per seed): seed ``s`` draws the class labels and then the noise from
``Generator().manual_seed(s)``; the reference is a class-conditional data sample with the same
labels from seed ``s + 10000``. Columns: SWD and RBF-MMD² against that data, mode coverage, "on
class" (share of samples on a mode of their own class), SWD to the teacher's guided 50-step DDIM
samples (the sampler distilled; same labels, independent noise: its own row is that distance's noise
floor), network evaluations per sample and sampling wall-clock.

Usage (from the repository root)::

    python benchmarks/slam.py            # seeds 0 1 2
    python benchmarks/slam.py --quick    # smoke run: 1 seed, 200 iterations, no README update

Writes ``benchmarks/results/slam.md`` and the generated block of ``recipes/slam/README.md``.
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
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "slam" / "config.yaml"


def student_sampler(model: Any, steps: int) -> Sampler:
    def draw(n: int, gen: torch.Generator):
        labels = labels_for(model, n, gen)
        model.num_inference_steps = steps
        return model.sample(n, gen, labels), labels

    return draw


def train(config: dict, seed: int, iterations: int | None, sub_path: bool) -> tuple[Any, float]:
    config = copy.deepcopy(config)
    config["trainer"]["callbacks"] = []
    config["model"]["init_args"]["sub_path"] = sub_path
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    if iterations is not None:
        extra.append(f"--trainer.max_steps={iterations}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), seconds


def render(rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, iterations: int) -> str:
    lines = [
        generated_header("benchmarks/slam.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} samples per seed. Bench: `ring` "
        "(8 modes, radius 4, std 0.25), one class per mode, labels uniform; Stable Diffusion's schedule; guidance "
        f"w = 3.5 (CFG scale 4.5) for teacher and students. Students: {iterations} iterations (batch 256) of "
        "`recipes/slam/config.yaml`, one trained network per seed sampled in 1, 2 and 4 LCM steps. SWD / MMD² "
        "against class-conditional data with the same labels; coverage: share of the 8 modes reached; on class: "
        "share of samples on a mode of their own class; SWD to teacher-50: distance to the guided teacher's "
        "50-step DDIM samples (other noise; the teacher-50 row is this column's noise floor). NFE counts CFG as 2.",
        "",
        "| sampler | NFE | SWD | MMD² | coverage | on class | SWD to teacher-50 | sampling ms | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        lines.append(
            f"| {r.name} | {r.nfe} | {mean_std(m['swd'], digits=3)} | {mean_std(m['mmd'], digits=2, fmt='e')} | "
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
    students = {
        (method, k): Row(f"{method}, {k} step{'s' if k > 1 else ''}", k)
        for method in ("SLAM (config)", "LCM (`sub_path: false`)")
        for k in (1, 2, 4)
    }
    for seed in seeds:
        for method, sub_path in (("SLAM (config)", True), ("LCM (`sub_path: false`)", False)):
            model, seconds = train(config, seed, iterations if args.quick else None, sub_path)
            for k in (1, 2, 4):
                row = students[method, k]
                row.add(score(student_sampler(model, k), model, N_SAMPLES, seed))
                row.sample_ms.append(sampling_ms(student_sampler(model, k), N_SAMPLES))
                row.train_s.append(seconds)
                print(
                    f"seed {seed} | {row.name}: SWD {row.metrics['swd'][-1]:.3f}, to teacher "
                    f"{row.metrics['swd_teacher50'][-1]:.3f}, on class {row.metrics['on_class'][-1]:.2f}",
                    flush=True,
                )
        floor.add(score(data_sampler(model), model, N_SAMPLES, seed))
        for k, row in teachers.items():
            row.add(score(teacher_sampler(model, k), model, N_SAMPLES, seed))
            row.sample_ms.append(sampling_ms(teacher_sampler(model, k), N_SAMPLES))
    rows = [floor, *teachers.values(), *students.values()]
    table = render(rows, seeds, N_SAMPLES, args.command, time.perf_counter() - total, iterations)
    (results_dir(args) / "slam.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "slam" / "README.md", table)


if __name__ == "__main__":
    main()
