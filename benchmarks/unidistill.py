"""Toy-scale benchmark of UniDistill: does a LiDAR teacher's BEV help a camera detector (and the reverse)?

Every run is ``recipes/unidistill/config.yaml`` (LiDAR -> camera) or ``camera_to_lidar.yaml`` built through
:class:`lightning_distill.cli.DistillCLI` with only the seed, the data size and the number of steps changed
(the same for every row); the teacher of each direction (trained on first use with seed 0) is shared by its
rows and seeds. Rows per direction:

* teacher: the frozen detector of the other modality;
* student alone (``distillation: none``): its detection loss only (the camera student keeps its depth loss);
* + UniDistill (the config): feature (x100), relation (x40) and response (x10 + 10) distillation.

Each detector is scored on the test scenes with the toolkit's
:class:`~lightning_distill.detection.metrics.DetectionAP` counting only the objects the camera sees (the
others are ignored boxes): BEV AP at the loose thresholds (car 0.5, pedestrian / cyclist 0.25), per class and
by distance range, and nuScenes-style centre-distance AP.

Usage (from the repository root)::

    nice -n 5 python benchmarks/unidistill.py --threads 1            # seeds 0 1 2, both directions
    python benchmarks/unidistill.py --quick                          # smoke run: 1 seed, 6 steps, small data

Writes ``benchmarks/results/unidistill.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/unidistill/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    bench_parser,
    quiet,
    recipe_cli,
    results_dir,
    set_threads,
    timed_fit,
    update_readme,
)
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.detection.metrics import DetectionAP  # noqa: E402
from lightning_distill.detection.scenes import CLASSES  # noqa: E402
from lightning_distill.models.detection import camera_detection_ap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "recipes" / "unidistill"
README = FOLDER / "README.md"
# direction: (title, config, student kind, teacher kind)
DIRECTIONS = {
    "lidar_to_camera": ("LiDAR → camera", FOLDER / "config.yaml", "camera", "LiDAR"),
    "camera_to_lidar": ("camera → LiDAR", FOLDER / "camera_to_lidar.yaml", "LiDAR (half width)", "camera"),
}
ROWS = {"alone": "student alone", "unidistill": "+ UniDistill"}
SCOPES = ("0-20m", "20-40m", "40+m")


def data_flags(args: argparse.Namespace, direction: str) -> list[str]:
    """The students' data, the teacher's data (its own scenes, so its cache key does not follow the students')
    and the teacher's epochs."""
    flags = []
    for prefix, scenes in (
        ("--data.init_args", args.scenes),
        (
            "--model.init_args.teacher.init_args.data.init_args",
            args.teacher_scenes if direction == "lidar_to_camera" else args.camera_teacher_scenes,
        ),
    ):
        flags += [
            f"{prefix}.num_scenes={scenes}",
            f"{prefix}.val_scenes=1",
            f"{prefix}.test_scenes={args.test_scenes}",
            f"{prefix}.batch_size={args.batch_size}",
        ]
    epochs = args.teacher_epochs if direction == "lidar_to_camera" else args.camera_teacher_epochs
    return flags + [f"--model.init_args.teacher.init_args.epochs={epochs}"]


def run(seed: int, direction: str, key: str, args: argparse.Namespace, score_teacher: bool = False) -> dict:
    """One student fit; its test AP (and, with ``score_teacher``, the teacher's), as plain numbers."""
    extra = [*data_flags(args, direction), f"--trainer.max_steps={args.steps}", "--trainer.max_epochs=-1"]
    extra += ["--trainer.callbacks=[]"]
    if key == "alone":
        extra.append("--model.init_args.distillation=none")
    cli = recipe_cli([DIRECTIONS[direction][1]], seed, extra)
    fit_s, cpu_s = timed_fit(cli)
    dm = cli.datamodule
    dm.setup("test")
    out = {
        "ap": camera_detection_ap(cli.model.student, dm.test_dataloader(), DetectionAP()),
        "steps": cli.trainer.global_step,
        "step_s": cpu_s / max(1, cli.trainer.global_step),
        "params": sum(p.numel() for p in cli.model.student.parameters()),
        "teacher_params": sum(p.numel() for p in cli.model.teacher.parameters()),
    }
    if score_teacher:
        out["teacher_ap"] = camera_detection_ap(cli.model.teacher, dm.test_dataloader(), DetectionAP())
    print(
        f"  {direction} seed {seed} {key}: BEV AP (loose) {out['ap']['ap_bev_loose/mean']:.3f} "
        f"({out['steps']} steps, fit {fit_s:.0f} s wall, {cpu_s:.0f} s CPU)",
        flush=True,
    )
    return out


def _run_job(job: tuple) -> tuple:
    seed, direction, key, args, score_teacher = job
    set_threads(args.threads)
    quiet(all_warnings=True)
    return (seed, direction, key), run(seed, direction, key, args, score_teacher)


def run_all(args: argparse.Namespace) -> dict:
    """Every (direction, seed, row) fit, in ``args.workers`` processes (each on ``--threads`` threads)."""
    jobs = [
        (seed, direction, key, args, seed == args.seeds[0] and key == "unidistill")
        for direction in args.directions
        for seed in args.seeds
        for key in ROWS
    ]
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = dict(pool.map(_run_job, jobs))
    else:
        done = dict(_run_job(job) for job in jobs)
    results = {}
    for direction in args.directions:
        runs = {seed: {key: done[(seed, direction, key)] for key in ROWS} for seed in args.seeds}
        results[direction] = (runs, runs[args.seeds[0]]["unidistill"]["teacher_ap"])
    return results


def ap_cells(aps: list[dict[str, float]]) -> list[str]:
    keys = ["ap_bev_loose/mean", *[f"ap_bev_loose/{c}" for c in CLASSES]]
    keys += [f"ap_bev_loose/mean/{s}" for s in SCOPES] + ["ap_dist/mean"]
    return [mean_std([a.get(k, float("nan")) for a in aps], 100, 1) for k in keys]


def direction_table(direction: str, runs: dict, teacher_ap: dict, seeds: list[int]) -> list[str]:
    title, _, student_kind, teacher_kind = DIRECTIONS[direction]
    headers = ["run", "BEV AP mean", *[f"BEV AP {c}" for c in CLASSES]]
    headers += [f"BEV AP {s}" for s in SCOPES] + ["dist AP", "params", "CPU s / step"]
    first = runs[seeds[0]]["alone"]
    rows = [
        [f"teacher ({teacher_kind})", *ap_cells([teacher_ap]), f"{first['teacher_params'] / 1e3:.0f}k", "—"]
    ]
    for key, name in ROWS.items():
        r = [runs[s][key] for s in seeds]
        step = mean_std([x["step_s"] for x in r], digits=3)
        rows.append(
            [
                f"{name} ({student_kind})",
                *ap_cells([x["ap"] for x in r]),
                f"{r[0]['params'] / 1e3:.0f}k",
                step,
            ]
        )
    xs = [100 * runs[s]["unidistill"]["ap"]["ap_bev_loose/mean"] for s in seeds]
    ys = [100 * runs[s]["alone"]["ap"]["ap_bev_loose/mean"] for s in seeds]
    better = sum(x > y for x, y in zip(xs, ys))
    lines = [f"**{title}** ({first['steps']} student steps per run)", ""]
    lines += [markdown_table(headers, rows, align="l" + "r" * (len(headers) - 1)), ""]
    lines += [
        f"Paired by seed, *+ UniDistill* minus *student alone* (BEV AP mean, points): {paired(xs, ys, digits=1)} "
        f"({better} seeds better / {len(seeds) - better} not).",
        "",
    ]
    return lines


def report(results: dict, seeds: list[int], command: str, wall: float, args: argparse.Namespace) -> str:
    lines = [
        generated_header("benchmarks/unidistill.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: student initialisation and data order; the scenes "
        f"and the teachers are the same for every seed). {args.scenes} training scenes for the students, "
        f"{args.teacher_scenes} for the LiDAR teacher, {args.camera_teacher_scenes} for the camera teacher, {args.test_scenes} test "
        f"scenes (16-beam synthetic LiDAR, one front camera 48 x 96, 90° field of view), batch {args.batch_size}; "
        f"LiDAR teacher trained {args.teacher_epochs} epochs, camera teacher {args.camera_teacher_epochs} epochs "
        "(CenterPoint loss + 3 x BEVDepth depth loss). BEV grid 48 x 48 cells of 1 m in front of the car. Only "
        "objects the camera sees count (the others are ignored boxes). AP in % (R40, BEV IoU car 0.5, pedestrian "
        "/ cyclist 0.25; distance AP: nuScenes centre-distance thresholds), mean ± sample std over seeds.",
        "",
    ]
    for direction, (runs, teacher_ap) in results.items():
        lines += direction_table(direction, runs, teacher_ap, seeds)
    missing = [DIRECTIONS[d][0] for d in DIRECTIONS if d not in results]
    if missing:
        lines += [f"Not run here (`--directions`): {', '.join(missing)}.", ""]
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines).rstrip() + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 6 steps, 4 training scenes, 2 test scenes")
    parser.add_argument("--steps", type=int, default=600, help="student optimizer steps per run")
    parser.add_argument("--teacher-epochs", type=int, default=40, help="epochs of the LiDAR teacher")
    parser.add_argument("--camera-teacher-epochs", type=int, default=6, help="epochs of the camera teacher")
    parser.add_argument(
        "--camera-teacher-scenes", type=int, default=200, help="training scenes of the camera teacher"
    )
    parser.add_argument("--scenes", type=int, default=200, help="training scenes of the students")
    parser.add_argument("--teacher-scenes", type=int, default=32, help="training scenes of the teachers")
    parser.add_argument("--test-scenes", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--directions",
        nargs="+",
        choices=list(DIRECTIONS),
        default=list(DIRECTIONS),
        help="directions to run",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="fits run in this many processes at once (each on --threads)"
    )
    parser.add_argument("--name", default="unidistill", help="results file benchmarks/results/<name>.md")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.quick:
        args.seeds, args.steps, args.teacher_epochs, args.camera_teacher_epochs = args.seeds[:1], 6, 2, 2
        args.scenes, args.teacher_scenes, args.test_scenes, args.batch_size = 4, 4, 2, 2
        args.camera_teacher_scenes = 4
    start = time.perf_counter()
    results = run_all(args)
    text = report(results, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / f"{args.name}.md").write_text("# UniDistill benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
