"""StableMaterials on procedural material maps: the four-step student against the teacher at 50 and 4 steps.

Every student is ``recipes/stable_materials/config.yaml`` (8-channel 16x16 maps of 24 text-like
conditions, 18 annotated; a tiny class-conditional diffusers UNet2DModel teacher trained by
denoising on first use; the student starts as the teacher; LCM consistency distillation plus the
semi-supervised adversarial term on the albedo of the student's maps for the unannotated textures'
conditions) built through :class:`lightning_distill.cli.DistillCLI`, with only the seed and the
iteration count changed, validation off. ``--ablation`` adds the same student with the adversarial
weight 0 (plain LCM), the baseline of the semi-supervised term.

Scoring (``n`` samples per seed; seed ``s`` draws the labels and noise from ``Generator().manual_seed(s)``):

* SWD (seen): sliced Wasserstein distance (256 directions) between generated maps (all 8 channels,
  flattened) and held-out annotated maps with the same labels (seed ``s + 10000``); the "data vs
  data" row is another data sample (seed ``s + 20000``): the distance's noise floor.
* SWD albedo (novel): the 6 conditions without annotated maps; albedo of generated maps against
  textures of those conditions (what the semi-supervised term sees; floor: textures vs textures).
* seam: :func:`~lightning_distill.data.materials.seam_error` of the samples (0 for tileable maps).
* sampling ms: median wall-clock of drawing 64 maps (3 calls); NFE: network evaluations per map.

Usage (from the repository root)::

    python benchmarks/stable_materials.py            # seeds 0 1 2
    python benchmarks/stable_materials.py --quick    # 1 seed, 30 iterations, no README update

Writes ``benchmarks/results/stable_materials.md`` and the generated block of ``recipes/stable_materials/README.md``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, sampling_ms, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, mean_std  # noqa: E402

from lightning_distill.data.materials import NUM_CONDITIONS, is_novel, material_maps, seam_error  # noqa: E402
from lightning_distill.diffusion.distances import sliced_wasserstein  # noqa: E402
from lightning_distill.diffusion.sampling import sample as ddim_sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "stable_materials" / "config.yaml"
SEEN = [c for c in range(NUM_CONDITIONS) if not is_novel(c)]
NOVEL = [c for c in range(NUM_CONDITIONS) if is_novel(c)]
TIME_N = 64  # maps per timed sampling call
Draw = Callable[[int, torch.Generator, torch.Tensor], torch.Tensor]


def train(config: dict, seed: int, iterations: int, adversarial: bool) -> tuple[Any, float]:
    config = copy.deepcopy(config)
    if not adversarial:
        config["model"]["init_args"]["loss_weights"] = {"adversarial": 0.0}
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"]
    extra.append(f"--trainer.max_steps={iterations}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), seconds


def student(model: Any, rolling: bool) -> Draw:
    def draw(n: int, gen: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
        model.tile_rolling = rolling
        return model.sample(n, gen, labels)

    return draw


def teacher(model: Any, steps: int) -> Draw:
    def draw(n: int, gen: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
        return ddim_sample(model.teacher, model.schedule, model.initial_noise(n, gen), steps, labels)

    return draw


def labels_from(pool: list[int], n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.as_tensor(pool)[torch.randint(0, len(pool), (n,), generator=gen)]


def score(draw: Draw, n: int, seed: int, size: int) -> dict[str, float]:
    """SWD (seen), SWD albedo (novel) and seam error of one sampler for one seed."""
    gen = torch.Generator().manual_seed(seed)
    seen_labels, novel_labels = labels_from(SEEN, n, gen), labels_from(NOVEL, n, gen)
    with torch.no_grad():
        seen, novel = draw(n, gen, seen_labels).float(), draw(n, gen, novel_labels).float()
    ref_seen = _reference(seen_labels, seed + 10000, size)
    ref_novel = _reference(novel_labels, seed + 10000, size)[:, :3]
    return {
        "swd": float(sliced_wasserstein(seen.flatten(1), ref_seen.flatten(1))),
        "swd_novel": float(sliced_wasserstein(novel[:, :3].flatten(1), ref_novel.flatten(1))),
        "seam": float(seam_error(torch.cat([seen, novel]))),
    }


def _reference(labels: torch.Tensor, seed: int, size: int) -> torch.Tensor:
    """Data maps with exactly ``labels`` (one map per label, per-condition seeds)."""
    out = torch.empty(len(labels), 8, size, size)
    for c in labels.unique().tolist():
        where = (labels == c).nonzero().flatten()
        out[where] = material_maps(len(where), seed=seed * 100 + c, size=size, conditions=[c])[0]
    return out


def data(size: int, seed_offset: int) -> Draw:
    def draw(n: int, gen: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
        return _reference(labels, int(torch.randint(0, 2**31, (1,), generator=gen)) + seed_offset, size)

    return draw


class Row:
    def __init__(self, name: str, nfe: int) -> None:
        self.name, self.nfe = name, nfe
        self.metrics: dict[str, list[float]] = {"swd": [], "swd_novel": [], "seam": []}
        self.sample_ms: list[float] = []
        self.train_s: list[float] = []

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.metrics[key].append(value)


def render(rows: list[Row], seeds: list[int], n: int, command: str, seconds: float, iterations: int) -> str:
    lines = [
        generated_header("benchmarks/stable_materials.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} maps per seed and set. Teacher: "
        "the config's first-use teacher (tiny class-conditional x0-prediction UNet2DModel, 400 denoising steps on the annotated "
        f"maps), sampled with deterministic DDIM. Students: {iterations} iterations (batch 64) of "
        "`recipes/stable_materials/config.yaml`, one trained network per seed. SWD (seen): 8-channel maps of the "
        "18 annotated conditions against held-out maps with the same labels; SWD albedo (novel): albedo of maps "
        "for the 6 conditions no annotated map has, against textures of those conditions; seam: seam error of a "
        "2 x 2 tiling (0 = tileable); the data row is each distance's noise floor.",
        "",
        "| sampler | NFE | SWD (seen) | SWD albedo (novel) | seam | sampling ms | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        train = mean_std(r.train_s, digits=0) if r.train_s else "-"
        ms = mean_std(r.sample_ms, digits=1) if r.sample_ms else "-"
        lines.append(
            f"| {r.name} | {r.nfe} | {mean_std(m['swd'], digits=3)} | {mean_std(m['swd_novel'], digits=3)} | "
            f"{mean_std(m['seam'], digits=3)} | {ms} | {train} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 30 iterations")
    parser.add_argument("--maps", type=int, default=256, help="maps per sampler, seed and set (default 256)")
    parser.add_argument("--iterations", type=int, default=480, help="student iterations (default 480)")
    parser.add_argument(
        "--ablation", action="store_true", help="also train students without the adversarial term"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    size = config["data"]["init_args"]["size"]
    iterations = 30 if args.quick else args.iterations
    n = args.maps
    total = time.perf_counter()
    floor = Row("data vs data (floor)", 0)
    teachers = {k: Row(f"teacher, DDIM {k} steps", k) for k in (50, 4)}
    variants = [("StableMaterials (config)", True)] + (
        [("LCM only (adversarial weight 0)", False)] if args.ablation else []
    )
    students = {
        (name, roll): Row(f"{name}, 4 steps{'' if roll else ', no rolling'}", 4)
        for name, _ in variants
        for roll in (True, False)
    }
    for seed in seeds:
        for name, adversarial in variants:
            model, seconds = train(config, seed, iterations, adversarial)
            for roll in (True, False):
                row = students[name, roll]
                row.add(score(student(model, roll), n, seed, size))
                draw = student(model, roll)
                row.sample_ms.append(
                    sampling_ms(lambda k, g, d=draw: d(k, g, labels_from(SEEN, k, g)), TIME_N, 3)
                )
                row.train_s.append(seconds)
                print(
                    f"seed {seed} | {row.name}: { ({k: v[-1] for k, v in row.metrics.items()}) }", flush=True
                )
        floor.add(score(data(size, 20000), n, seed, size))
        for k, row in teachers.items():
            row.add(score(teacher(model, k), n, seed, size))
            draw = teacher(model, k)
            row.sample_ms.append(
                sampling_ms(lambda m, g, d=draw: d(m, g, labels_from(SEEN, m, g)), TIME_N, 3)
            )
            print(
                f"seed {seed} | {row.name}: { ({key: v[-1] for key, v in row.metrics.items()}) }", flush=True
            )
    rows = [floor, *teachers.values(), *students.values()]
    table = render(rows, seeds, n, args.command, time.perf_counter() - total, iterations)
    (results_dir(args) / "stable_materials.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "stable_materials" / "README.md", table)


if __name__ == "__main__":
    main()
