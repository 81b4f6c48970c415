"""MCM on moving-glyph videos: 1/2/4-step students against the teacher at 1/4/50 steps, with and without the image-set appearance term.

Every student is ``recipes/mcm/config.yaml`` (8-frame 16x16 moving-glyph videos conditioned on class and
direction; a tiny diffusers UNet3DConditionModel teacher trained by denoising on first use; the student
starts as the teacher) built through :class:`lightning_distill.cli.DistillCLI` with only the seed, the
iteration count and the teacher's training length changed, validation off. Two students per seed:
MCM (the config: discriminator against striped glyph stills + R1, mixed start p = 0.5) and the same
without the appearance term (no discriminator, no mixed start: plain video LCM with the spatial head).

Scoring (``n`` test-split conditions per seed; seed ``s`` draws the noise from ``Generator().manual_seed(s)``):

* frame FCD: Fréchet distance of digits-classifier features between generated frames and the test
  videos' frames (not FID); the data row compares training videos with the test videos (the floor);
* motion error: mean distance (pixels / frame) between the centre-of-mass displacement of each video
  and the motion its direction asks for (:func:`~lightning_distill.video.metrics.motion_error`);
* temporal consistency: mean cosine similarity of consecutive frames' classifier features;
* appearance: FCD and ink-histogram L1 distance of generated frames to the striped still-image set
  (lower = closer to the image set's appearance);
* sampling ms: median wall-clock of drawing 16 videos (3 calls); NFE: network evaluations per video
  (the teacher's guidance doubles its batch, counted as 1).

Usage (from the repository root)::

    python benchmarks/mcm.py            # seeds 0 1 2
    python benchmarks/mcm.py --quick    # 1 seed, short teacher and students, no README update

Writes ``benchmarks/results/mcm.md`` and the generated block of ``recipes/mcm/README.md``.
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

from lightning_distill.data.video import MovingGlyphsDataModule  # noqa: E402
from lightning_distill.models.digits import digits_classifier  # noqa: E402
from lightning_distill.video.metrics import video_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "mcm" / "config.yaml"
TIME_N = 16
KEYS = ("frame_fcd", "motion_error", "temporal_consistency", "appearance_fcd", "appearance_hist")
Draw = Callable[[int, torch.Generator, torch.Tensor], torch.Tensor]


def train(
    config: dict, seed: int, iterations: int, teacher_steps: int, appearance: bool
) -> tuple[Any, float]:
    config = copy.deepcopy(config)
    init = config["model"]["init_args"]
    init["teacher"]["init_args"]["steps"] = teacher_steps
    if not appearance:
        init["adversarial"], init["pred_x0_probability"] = False, 0.0
    config["trainer"]["callbacks"] = []
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"]
    extra.append(f"--trainer.max_steps={iterations}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), seconds


def student(model: Any, steps: int) -> Draw:
    return lambda n, gen, labels: model.sample(n, gen, labels, steps=steps)


def teacher(model: Any, steps: int) -> Draw:
    return lambda n, gen, labels: model.teacher_samples(model.initial_noise(n, gen), labels, steps=steps)


class Row:
    def __init__(self, name: str, nfe: int) -> None:
        self.name, self.nfe = name, nfe
        self.metrics: dict[str, list[float]] = {k: [] for k in KEYS}
        self.sample_ms: list[float] = []

    def add(self, metrics: dict[str, float]) -> None:
        for key in KEYS:
            self.metrics[key].append(metrics[key])


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
        generated_header("benchmarks/mcm.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} videos (8 frames, 16x16) per seed. "
        f"Teacher: the config's tiny UNet3DConditionModel trained {teacher_steps} denoising steps on first use, "
        "guided DDIM at w = 2. Students: "
        f"{iterations} iterations (batch 8) of `recipes/mcm/config.yaml`, one network per seed and variant, sampled with "
        "LCM's multi-step consistency sampler at w = 2. Frame FCD: to the test videos' frames; appearance FCD / hist: to "
        "the striped still-image set (lower = the image set's look); motion error in pixels per frame.",
        "",
        "| sampler | NFE | frame FCD | motion error | temporal consistency | appearance FCD | appearance hist | sampling ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.metrics
        ms = mean_std(r.sample_ms, digits=0) if r.sample_ms else "-"
        lines.append(
            f"| {r.name} | {r.nfe} | {mean_std(m['frame_fcd'], digits=2)} | {mean_std(m['motion_error'], digits=3)} | "
            f"{mean_std(m['temporal_consistency'], digits=3)} | {mean_std(m['appearance_fcd'], digits=2)} | "
            f"{mean_std(m['appearance_hist'], digits=3)} | {ms} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 60 teacher steps, 20 iterations, 32 videos")
    parser.add_argument(
        "--videos", type=int, default=64, help="videos scored per sampler and seed (default 64)"
    )
    parser.add_argument("--iterations", type=int, default=60, help="student iterations (default 60)")
    parser.add_argument(
        "--teacher-steps", type=int, default=400, help="teacher denoising steps (default 400)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    data_args = dict(config["data"]["init_args"])
    iterations = 20 if args.quick else args.iterations
    teacher_steps = 60 if args.quick else args.teacher_steps
    n = 32 if args.quick else args.videos
    dm = MovingGlyphsDataModule(**{**data_args, "num_test": max(n, data_args.get("num_test", 0))})
    test, train_split = dm.make("test"), dm.make("train")
    labels, real = test.labels[:n], test.videos[:n]
    stills = dm.image_set(n)
    classifier = digits_classifier(size=dm.size)
    kwargs = {"stills": stills, "speed": dm.speed, "glyph_size": dm.glyph_size}

    def score(draw: Draw, seed: int) -> dict[str, float]:
        with torch.no_grad():
            fake = draw(n, torch.Generator().manual_seed(seed), labels)
        return video_metrics(real, fake, labels, classifier, **kwargs)

    def timing(draw: Draw) -> float:
        return sampling_ms(lambda k, g: draw(k, g, labels[:k]), TIME_N, 3)

    total = time.perf_counter()
    floor = Row("data: training videos vs test videos (floor)", 0)
    teachers = {k: Row(f"teacher, DDIM {k} steps", k) for k in (50, 4, 1)}
    variants = [("MCM (config)", True), ("without appearance term (video LCM)", False)]
    students = {
        (name, k): Row(f"{name}, {k} step{'s' if k > 1 else ''}", k)
        for name, _ in variants
        for k in (1, 2, 4)
    }
    floor_metrics = video_metrics(train_split.videos[:n], real, labels, classifier, **kwargs)
    for seed in seeds:
        floor.add(floor_metrics)
        for name, appearance in variants:
            model, seconds = train(config, seed, iterations, teacher_steps, appearance)
            print(f"seed {seed} | {name}: trained in {seconds:.0f} s", flush=True)
            for k in (1, 2, 4):
                row = students[name, k]
                row.add(score(student(model, k), seed))
                row.sample_ms.append(timing(student(model, k)))
                print(
                    f"seed {seed} | {row.name}: { ({key: v[-1] for key, v in row.metrics.items()}) }",
                    flush=True,
                )
        for k, row in teachers.items():
            row.add(score(teacher(model, k), seed))
            row.sample_ms.append(timing(teacher(model, k)))
            print(
                f"seed {seed} | {row.name}: { ({key: v[-1] for key, v in row.metrics.items()}) }", flush=True
            )
    rows = [floor, *teachers.values(), *students.values()]
    table = render(rows, seeds, n, args.command, time.perf_counter() - total, iterations, teacher_steps)
    (results_dir(args) / "mcm.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "mcm" / "README.md", table)


if __name__ == "__main__":
    main()
