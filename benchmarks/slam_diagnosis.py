"""Why SLAM trails plain LCM at 1-2 steps on the mixture bench: is γ = 1 under-trained, or is it budget?

SLAM samples with its γ slot at 1 (the plain consistency function), but ``γ ~ U(0, 1)`` during
training, so the network at the slot value it is sampled with gets a vanishing share of the updates,
while LCM trains only that. Two experiments on ``recipes/slam/config.yaml`` (the same bench, scoring
and seeds as ``benchmarks/slam.py``):

* **γ atom at 1**: a diagnostic subclass that sets γ = 1 for half of each batch (and draws
  ``U(0, 1)`` for the rest), at the config's budget. Not the paper: if the 1-step gap closes, the gap
  comes from how rarely the sampled slot is trained.
* **a slower γ embedding**: ``gamma_slot_scale`` 0.1 instead of 10 (the slot's sinusoidal features of
  ``1000 · scale · (1 − γ)`` then vary 100 times more slowly in γ, so the trained γ near 1 generalise to
  the sampled γ = 1). A config knob of the recipe, at the config's budget.
* **budget**: SLAM and LCM at ``--budget`` times the config's iterations. If SLAM's gap to LCM shrinks
  with budget, the toy budget is at fault rather than the method's implementation.

The config-budget SLAM and LCM rows are in ``benchmarks/results/slam.md`` (same seeds).

Usage (from the repository root)::

    python benchmarks/slam_diagnosis.py                 # seeds 0 1 2, budget x2
    python benchmarks/slam_diagnosis.py --quick         # smoke run: 1 seed, 200 iterations

Writes ``benchmarks/results/slam_diagnosis.md`` and the diagnosis block of ``recipes/slam/README.md``.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _guided_bench import N_SAMPLES, Row, score  # noqa: E402
from _harness import bench_parser, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, mean_std  # noqa: E402
from slam import CONFIG, student_sampler, train  # noqa: E402

from lightning_distill.recipes.slam import SLAM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class SLAMGammaAtom(SLAM):
    """SLAM whose γ is exactly 1 (the sampled slot) for a share ``gamma_one_probability`` of each batch."""

    def __init__(self, *args, gamma_one_probability: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gamma_one_probability = float(gamma_one_probability)

    def draw_gamma(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        gamma = super().draw_gamma(batch, generator)
        one = torch.rand(batch, generator=generator, device=generator.device) < self.gamma_one_probability
        return torch.where(one, torch.ones_like(gamma), gamma)


def render(
    rows: list[Row], seeds: list[int], command: str, seconds: float, iterations: int, budget: int
) -> str:
    lines = [
        generated_header("benchmarks/slam_diagnosis.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {N_SAMPLES} samples per seed; the "
        f"bench and scoring of `benchmarks/slam.py`. Config budget: {iterations} iterations (batch 256); "
        f"budget ×{budget}: {iterations * budget}. The config-budget SLAM and LCM rows are in "
        "`benchmarks/results/slam.md`.",
        "",
        "| variant | steps | SWD | on class | SWD to teacher-50 | train s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        lines.append(
            f"| {r.name} | {r.nfe} | {mean_std(m['swd'], digits=3)} | {mean_std(m['on_class'])} | "
            f"{mean_std(m['swd_teacher50'], digits=3)} | {mean_std(r.train_s, digits=0)} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 200 iterations")
    parser.add_argument(
        "--budget", type=int, default=2, help="iteration multiple of the budget rows (default 2)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    iterations = 200 if args.quick else int(config["trainer"]["max_steps"])
    atom = copy.deepcopy(config)
    atom["model"]["class_path"] = f"{__name__ if __name__ != '__main__' else 'slam_diagnosis'}.SLAMGammaAtom"
    atom["model"]["init_args"]["gamma_one_probability"] = 0.5
    slow = copy.deepcopy(config)
    slow["model"]["init_args"]["gamma_slot_scale"] = 0.1
    variants = (
        ("SLAM, γ = 1 for half the batch", atom, iterations, True),
        ("SLAM, `gamma_slot_scale: 0.1`", slow, iterations, True),
        (f"SLAM (config), budget ×{args.budget}", config, iterations * args.budget, True),
        (f"LCM (`sub_path: false`), budget ×{args.budget}", config, iterations * args.budget, False),
    )
    rows = {(name, k): Row(name, k) for name, *_ in variants for k in (1, 2, 4)}
    total = time.perf_counter()
    for seed in seeds:
        for name, cfg, steps, sub_path in variants:
            model, seconds = train(cfg, seed, steps, sub_path)
            for k in (1, 2, 4):
                row = rows[name, k]
                row.add(score(student_sampler(model, k), model, N_SAMPLES, seed))
                row.train_s.append(seconds)
                print(
                    f"seed {seed} | {name}, {k} steps: SWD {row.metrics['swd'][-1]:.3f}, "
                    f"on class {row.metrics['on_class'][-1]:.2f}",
                    flush=True,
                )
    table = render(
        list(rows.values()), seeds, args.command, time.perf_counter() - total, iterations, args.budget
    )
    (results_dir(args) / "slam_diagnosis.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "slam" / "README.md", table, key="diagnosis")


if __name__ == "__main__":
    main()
