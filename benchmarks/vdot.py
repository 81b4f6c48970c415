"""VDOT on moving-glyph videos: OT + DMD vs DMD alone vs OT alone at the same budget; 1/2/4-step students vs the teacher.

Every student is ``recipes/vdot/config.yaml`` (8-frame 16x16 moving-glyph videos conditioned on class and
direction; the tiny diffusers UNet3DConditionModel teacher trained by denoising on first use; the student
starts as the teacher; fake score a copy of the teacher; 3D-conv critic; generator every 5th iteration,
alternating the distribution-matching step and the relativistic GAN step) built through
:class:`lightning_distill.cli.DistillCLI` with only the seed, the iteration count, the teacher's training
length and the ablation switch changed, validation off. Three students per seed, same iterations and batch:

* OT + DMD (the config, the paper): ``L_OT + λ L_DMD`` on even generator updates;
* DMD alone (``ot: false``): ``L_DMD`` (DMD2's normalised gradient) in its place;
* OT alone (``dmd: false``): ``L_OT`` alone.

Each 4-step student is sampled with 1, 2 and 4 of its steps (999; 999, 499; 999, 749, 499, 249).

Scoring (``n`` test-split conditions per seed; seed ``s`` draws the noise from ``Generator().manual_seed(s)``):

* frame FCD: Fréchet distance of digits-classifier features between generated frames and the test
  videos' frames (not FID); the data row compares training videos with the test videos (the floor);
* motion error: mean distance (pixels / frame) between each video's centre-of-mass displacement and the
  motion its direction asks for (:func:`~lightning_distill.video.metrics.motion_error`);
* temporal consistency: mean cosine similarity of consecutive frames' classifier features;
* sampling ms: wall-clock of drawing the ``n`` scored videos in one call (CPU, 1 thread), NFE per video
  (the teacher's guidance doubles its batch, counted as 1).

Usage (from the repository root)::

    python benchmarks/vdot.py            # seeds 0 1 2
    python benchmarks/vdot.py --quick    # 1 seed, 10 iterations, 8 videos, no README update

Writes ``benchmarks/results/vdot.md`` and the generated block of ``recipes/vdot/README.md``.
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
from _harness import bench_parser, quiet, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, mean_std  # noqa: E402

from lightning_distill.data.video import MovingGlyphsDataModule  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402
from lightning_distill.video.metrics import video_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "vdot" / "config.yaml"
KEYS = ("frame_fcd", "motion_error", "temporal_consistency")
VARIANTS = {"OT + DMD (config)": {}, "DMD alone": {"ot": False}, "OT alone": {"dmd": False}}
Draw = Callable[[int, torch.Generator, torch.Tensor], torch.Tensor]


def train(config: dict, seed: int, iterations: int, teacher_steps: int, switches: dict) -> tuple[Any, float]:
    config = copy.deepcopy(config)
    init = config["model"]["init_args"]
    init["teacher"]["init_args"]["steps"] = teacher_steps
    init.update(switches)
    config["trainer"]["callbacks"] = []
    # optimizer steps per iteration: fake score + critic, + the generator on every 5th
    every = int(init.get("generator_update_every", 5))
    max_steps = 2 * iterations + (iterations + every - 1) // every
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"]
    extra.append(f"--trainer.max_steps={max_steps}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    assert cli.model.iteration == iterations, (cli.model.iteration, iterations)
    return cli.model.eval(), seconds


class Row:
    def __init__(self, name: str, nfe: int) -> None:
        self.name, self.nfe = name, nfe
        self.metrics: dict[str, list[float]] = {k: [] for k in KEYS}
        self.sample_ms: list[float] = []

    def add(self, metrics: dict[str, float], ms: float | None = None) -> None:
        for key in KEYS:
            self.metrics[key].append(metrics[key])
        if ms is not None:
            self.sample_ms.append(ms)


def render(
    rows: list[Row],
    seeds: list[int],
    n: int,
    command: str,
    seconds: float,
    iterations: int,
    teacher_steps: int,
) -> str:
    lines = [
        generated_header("benchmarks/vdot.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} videos (8 frames, 16x16) per seed. "
        f"Teacher: the config's tiny UNet3DConditionModel trained {teacher_steps} denoising steps on first use, guided "
        f"DDIM at scale 3. Students: {iterations} iterations (batch 8; {(iterations + 4) // 5} generator updates, half "
        "of them GAN) of `recipes/vdot/config.yaml`, one network per seed and variant, sampled with DMD2's few-step "
        "sampler on 1, 2 or 4 of its timesteps. Frame FCD to the test videos' frames; motion error in pixels per frame; "
        "sampling ms: one call drawing the n videos.",
        "",
        "| sampler | NFE | frame FCD | motion error | temporal consistency | sampling ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        ms = mean_std(r.sample_ms, digits=0) if r.sample_ms else "-"
        lines.append(
            f"| {r.name} | {r.nfe} | {mean_std(m['frame_fcd'], digits=2)} | {mean_std(m['motion_error'], digits=3)} | "
            f"{mean_std(m['temporal_consistency'], digits=3)} | {ms} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 10 iterations, 8 videos")
    parser.add_argument(
        "--videos", type=int, default=16, help="videos scored per sampler and seed (default 16)"
    )
    parser.add_argument("--iterations", type=int, default=30, help="student iterations (default 30)")
    parser.add_argument("--teacher-steps", type=int, default=60, help="teacher denoising steps (default 60)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    quiet(all_warnings=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    data_args = dict(config["data"]["init_args"])
    iterations = 10 if args.quick else args.iterations
    n = 8 if args.quick else args.videos
    dm = MovingGlyphsDataModule(**{**data_args, "num_test": max(n, data_args.get("num_test", 0))})
    test, train_split = dm.make("test"), dm.make("train")
    labels, real = test.labels[:n], test.videos[:n]
    classifier = digits_classifier(size=dm.size)
    kwargs = {"speed": dm.speed, "glyph_size": dm.glyph_size}

    def score(draw: Draw, seed: int) -> tuple[dict[str, float], float]:
        start = time.perf_counter()
        with torch.no_grad():
            fake = draw(n, torch.Generator().manual_seed(seed), labels)
        ms = 1000 * (time.perf_counter() - start)
        return video_metrics(real, fake, labels, classifier, **kwargs), ms

    total = time.perf_counter()
    floor = Row("data: training videos vs test videos (floor)", 0)
    teachers = {k: Row(f"teacher, DDIM {k} step{'s' if k > 1 else ''}", k) for k in (50, 4, 1)}
    students = {
        (name, k): Row(f"{name}, {k} step{'s' if k > 1 else ''}", k) for name in VARIANTS for k in (1, 2, 4)
    }
    floor_metrics = video_metrics(train_split.videos[:n], real, labels, classifier, **kwargs)
    for seed in seeds:
        floor.add(floor_metrics)
        for name, switches in VARIANTS.items():
            model, seconds = train(config, seed, iterations, args.teacher_steps, switches)
            print(f"seed {seed} | {name}: trained in {seconds:.0f} s", flush=True)
            for k in (1, 2, 4):
                row = students[name, k]
                row.add(*score(lambda m, g, y, k=k, model=model: model.sample(m, g, y, steps=k), seed))
                print(
                    f"seed {seed} | {row.name}: { ({key: v[-1] for key, v in row.metrics.items()}) }",
                    flush=True,
                )
        for k, row in teachers.items():
            row.add(
                *score(
                    lambda m, g, y, k=k, model=model: model.teacher_samples(
                        model.initial_noise(m, g), y, steps=k
                    ),
                    seed,
                )
            )
            print(
                f"seed {seed} | {row.name}: { ({key: v[-1] for key, v in row.metrics.items()}) }", flush=True
            )
    rows = [floor, *teachers.values(), *students.values()]
    table = render(rows, seeds, n, args.command, time.perf_counter() - total, iterations, args.teacher_steps)
    (results_dir(args) / "vdot.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "vdot" / "README.md", table)


if __name__ == "__main__":
    main()
