"""Toy-scale benchmark of PointDistiller: does the teacher's local voxel structure help a half-width detector?

Every run is ``recipes/pointdistiller/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed, the data size and the number of steps changed (the same for every row); the
teacher (full width, trained on first use with seed 0) is shared by all rows and seeds. Rows:

* teacher: the full-width detector the students distil from;
* student alone (``student_alone.yaml``): CenterPoint's loss only;
* + feature imitation (``imitation.yaml``): MSE between a linear projection of the student's voxel
  features and the teacher's, on the same salient voxels;
* + PointDistiller (the config): kNN graphs in teacher feature space, graph adapters, τ-re-weighting.

Each detector is scored on the test scenes with the toolkit's
:class:`~lightning_distill.detection.metrics.DetectionAP`: BEV AP at the loose thresholds (car 0.5,
pedestrian / cyclist 0.25), per class and by distance range, and nuScenes-style centre-distance AP.
Also: parameters, the fit's seconds per step and the detector training step per 10k points.

Usage (from the repository root)::

    nice -n 5 python benchmarks/pointdistiller.py --threads 1      # seeds 0 1 2
    python benchmarks/pointdistiller.py --quick                    # smoke run: 1 seed, 6 steps, small data

Writes ``benchmarks/results/pointdistiller.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/pointdistiller/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.detection.metrics import DetectionAP  # noqa: E402
from lightning_distill.detection.scenes import CLASSES  # noqa: E402
from lightning_distill.models.detection import detection_ap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "recipes" / "pointdistiller"
CONFIG, README = FOLDER / "config.yaml", FOLDER / "README.md"
# key: (name, what differs from config.yaml, extra config files)
ROWS = {
    "alone": ("student alone", "`student_alone.yaml`", [FOLDER / "student_alone.yaml"]),
    "imitation": ("+ feature imitation", "`imitation.yaml`", [FOLDER / "imitation.yaml"]),
    "pointdistiller": ("+ PointDistiller (config)", "none", []),
}
SCOPES = ("0-20m", "20-40m", "40+m")


def data_flags(args: argparse.Namespace) -> list[str]:
    """The same data for the students and the teacher (so the teacher's cache key is shared)."""
    flags = []
    for prefix in ("--data.init_args", "--model.init_args.teacher.init_args.data.init_args"):
        flags += [
            f"{prefix}.num_scenes={args.scenes}",
            f"{prefix}.val_scenes=1",
            f"{prefix}.test_scenes={args.test_scenes}",
            f"{prefix}.batch_size={args.batch_size}",
        ]
    return flags + [f"--model.init_args.teacher.init_args.epochs={args.teacher_epochs}"]


def score(model: torch.nn.Module, loader) -> dict[str, float]:
    return detection_ap(model, loader, DetectionAP())


def run(seed: int, key: str, args: argparse.Namespace) -> dict:
    extra = [*data_flags(args), f"--trainer.max_steps={args.steps}", "--trainer.max_epochs=-1"]
    if args.max_points is not None:
        extra.append(f"--model.init_args.max_points_per_voxel={args.max_points}")
    cli = recipe_cli([CONFIG, *ROWS[key][2]], seed, extra)
    fit_s, _ = timed_fit(cli)
    dm = cli.datamodule
    dm.setup("test")
    points = sum(len(f["points"]) for f in dm.frames("train")) / len(dm.frames("train")) * args.batch_size
    out = {
        "ap": score(cli.model.student, dm.test_dataloader()),
        "fit_s": fit_s,
        "steps": cli.trainer.global_step,
        "step_s": fit_s / max(1, cli.trainer.global_step),
        "points_per_step": points,
        "params": sum(p.numel() for p in cli.model.student.parameters()),
        "teacher_params": sum(p.numel() for p in cli.model.teacher.parameters()),
        "model": cli.model,
        "loader": dm.test_dataloader(),
    }
    print(
        f"  seed {seed} {key}: BEV AP (loose) {out['ap']['ap_bev_loose/mean']:.3f} "
        f"({out['steps']} steps, fit {fit_s:.0f} s)",
        flush=True,
    )
    return out


def ap_cells(aps: list[dict[str, float]]) -> list[str]:
    keys = ["ap_bev_loose/mean", *[f"ap_bev_loose/{c}" for c in CLASSES]]
    keys += [f"ap_bev_loose/mean/{s}" for s in SCOPES] + ["ap_dist/mean"]
    return [mean_std([a.get(k, float("nan")) for a in aps], 100, 1) for k in keys]


def report(runs: dict, teacher: dict, seeds: list[int], command: str, wall: float, quick: bool, args) -> str:
    first = runs[seeds[0]][args.rows[0]]
    lines = [
        generated_header("benchmarks/pointdistiller.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: student initialisation and data order; the scenes "
        f"and the teacher are the same for every seed). {args.scenes} training scenes, {args.test_scenes} test "
        f"scenes (16-beam synthetic LiDAR, ~{first['points_per_step'] / args.batch_size / 1000:.0f}k points per "
        f"frame), batch {args.batch_size}, {first['steps']} student steps per run; teacher trained "
        f"{args.teacher_epochs} epochs. AP in % (R40, BEV IoU car 0.5, pedestrian / cyclist 0.25; distance AP: "
        "nuScenes centre-distance thresholds), mean ± sample std over seeds.",
        "",
    ]
    headers = ["run", "what differs", "BEV AP mean", *[f"BEV AP {c}" for c in CLASSES]]
    headers += [f"BEV AP {s}" for s in SCOPES] + ["dist AP", "params", "s / step"]
    rows = [
        [
            "teacher (full width)",
            "—",
            *ap_cells([teacher["ap"]]),
            f"{first['teacher_params'] / 1e3:.0f}k",
            "—",
        ]
    ]
    for key in args.rows:
        name, change, _ = ROWS[key]
        if args.max_points is not None:
            change = f"{change}; `max_points_per_voxel: {args.max_points}`"
        r = [runs[s][key] for s in seeds]
        step = mean_std([x["step_s"] for x in r], digits=2)
        rows.append([name, change, *ap_cells([x["ap"] for x in r]), f"{r[0]['params'] / 1e3:.0f}k", step])
    lines += [markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2)), ""]
    lines += ["Paired by seed (BEV AP mean, points; seeds better / worse):", ""]
    pairs = (("pointdistiller", "alone"), ("imitation", "alone"), ("pointdistiller", "imitation"))
    for a, b in [(a, b) for a, b in pairs if a in args.rows and b in args.rows]:
        xs = [100 * runs[s][a]["ap"]["ap_bev_loose/mean"] for s in seeds]
        ys = [100 * runs[s][b]["ap"]["ap_bev_loose/mean"] for s in seeds]
        better = sum(x > y for x, y in zip(xs, ys))
        lines.append(
            f"- *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(xs, ys, digits=1)} ({better} / {len(seeds) - better})"
        )
    speed = teacher["speed"]
    lines += [
        "",
        "Speed (one training step of the detector alone, forward + loss + backward, median of 5, same batch): "
        + ", ".join(f"{name} {ms:.0f} ms per 10k points" for name, ms in speed.items())
        + ".",
    ]
    if quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def step_ms_per_10k(model: torch.nn.Module, batch: dict, repeats: int = 5) -> float:
    """Median milliseconds of one training step (forward, CenterPoint loss, backward) per 10k points."""
    model.train()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model(batch["points"], batch["batch_index"], len(batch["boxes"]))
        terms = model.loss(out, batch["boxes"], batch["labels"])
        (terms["heatmap"] + 0.25 * terms["box"]).backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    model.eval()
    return 1000 * sorted(times)[len(times) // 2] / (len(batch["points"]) / 1e4)


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 6 steps, 4 training scenes, 2 test scenes")
    parser.add_argument("--steps", type=int, default=200, help="student optimizer steps per run")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--scenes", type=int, default=24, help="training scenes")
    parser.add_argument("--test-scenes", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run")
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="override `max_points_per_voxel` (the saliency cap) in every row",
    )
    parser.add_argument(
        "--name", default="pointdistiller", help="results file benchmarks/results/<name>.md (pointdistiller*)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.quick:
        args.seeds, args.steps, args.teacher_epochs = args.seeds[:1], 6, 2
        args.scenes, args.test_scenes, args.batch_size = 4, 2, 2
    start = time.perf_counter()
    runs = {seed: {key: run(seed, key, args) for key in args.rows} for seed in args.seeds}
    last = runs[args.seeds[0]][args.rows[-1]]
    teacher = {"ap": score(last["model"].teacher, last["loader"])}
    batch = next(iter(last["loader"]))
    teacher["speed"] = {
        "teacher": step_ms_per_10k(last["model"].teacher.requires_grad_(True), batch),
        "student": step_ms_per_10k(last["model"].student, batch),
    }
    last["model"].teacher.requires_grad_(False)
    text = report(runs, teacher, args.seeds, args.command, time.perf_counter() - start, args.quick, args)
    (results_dir(args) / f"{args.name}.md").write_text("# PointDistiller benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
