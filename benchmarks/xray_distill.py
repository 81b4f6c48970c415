"""Toy-scale benchmark of X-Ray distillation: does a teacher trained on object-complete frames help a raw-frame student?

Every run is ``recipes/xray_distill/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed, the data size and the number of epochs changed (the same for every row); the
X-Ray teacher (trained on first use on object-complete frames, seed 0) is shared by all rows and seeds.
Rows:

* X-Ray teacher on object-complete test frames (what it was trained for; not available online);
* X-Ray teacher on the raw test frames;
* student alone (``student_alone.yaml``): CenterPoint's loss on the raw frames;
* + X-Ray distillation (the config): the same student, plus KD on heads, BEV features and detections
  from the teacher run on the object-complete version of each training frame.

Each detector is scored on the test scenes with the toolkit's
:class:`~lightning_distill.detection.metrics.DetectionAP`: BEV AP at the loose thresholds (car 0.5,
pedestrian / cyclist 0.25), per class and by distance range (the paper's claim is about sparse, far
and occluded objects), and nuScenes-style centre-distance AP.

Usage (from the repository root)::

    nice -n 5 python benchmarks/xray_distill.py --threads 1      # seeds 0 1 2
    python benchmarks/xray_distill.py --teacher-signal           # where the teacher's KD signal falls, by range
    python benchmarks/xray_distill.py --quick                    # smoke run: 1 seed, 2 epochs, small data

``--teacher-signal`` trains nothing but the (cached) teacher: per distance range, the teacher's peak
heatmap score at the ground-truth centres on object-complete test frames (the weight of those cells
in the heatmap KD) and the share of ground-truth boxes that its detections above
``label_score_threshold`` cover (KD on detections); it writes ``benchmarks/results/xray_distill_signal.md``.

Writes ``benchmarks/results/xray_distill.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/xray_distill/README.md``; ``--quick`` writes to
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
FOLDER = ROOT / "recipes" / "xray_distill"
CONFIG, README = FOLDER / "config.yaml", FOLDER / "README.md"
# key: (name, what differs from config.yaml, extra config files)
ROWS = {
    "alone": ("student alone", "`student_alone.yaml`", [FOLDER / "student_alone.yaml"]),
    "xray": ("+ X-Ray distillation (config)", "none", []),
}
SCOPES = ("0-20m", "20-40m", "40+m")


def data_flags(args: argparse.Namespace) -> list[str]:
    """The same scenes for the students and the teacher (so the teacher's cache key is shared)."""
    flags = []
    for prefix in ("--data.init_args", "--model.init_args.teacher.init_args.data.init_args"):
        flags += [
            f"{prefix}.num_scenes={args.scenes}",
            f"{prefix}.val_scenes=1",
            f"{prefix}.test_scenes={args.test_scenes}",
            f"{prefix}.num_frames={args.frames}",
            f"{prefix}.batch_size={args.batch_size}",
        ]
    return flags + [f"--model.init_args.teacher.init_args.epochs={args.teacher_epochs}"]


def complete_view(loader):
    """The loader's batches with the object-complete points in place of the raw ones."""
    for batch in loader:
        yield {**batch, "points": batch["complete_points"], "batch_index": batch["complete_batch_index"]}


def run(seed: int, key: str, args: argparse.Namespace) -> dict:
    extra = [
        *data_flags(args),
        f"--trainer.max_epochs={args.epochs}",
        f"--model.init_args.lr_scheduler.init_args.T_max={args.epochs}",
    ]
    cli = recipe_cli([CONFIG, *ROWS[key][2]], seed, extra)
    fit_s, _ = timed_fit(cli)
    dm = cli.datamodule
    dm.setup("test")
    frames = dm.frames("train")
    out = {
        "ap": detection_ap(cli.model.student, dm.test_dataloader(), DetectionAP()),
        "fit_s": fit_s,
        "steps": cli.trainer.global_step,
        "step_s": fit_s / max(1, cli.trainer.global_step),
        "raw_points": sum(len(f["points"]) for f in frames) / len(frames),
        "complete_points": sum(len(f["complete_points"]) for f in frames) / len(frames),
        "params": sum(p.numel() for p in cli.model.student.parameters()),
        "model": cli.model,
        "loader": dm.test_dataloader(),
    }
    print(
        f"  seed {seed} {key}: BEV AP (loose) {out['ap']['ap_bev_loose/mean']:.3f}, 40+ m "
        f"{out['ap'].get('ap_bev_loose/mean/40+m', float('nan')):.3f} ({out['steps']} steps, fit {fit_s:.0f} s)",
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
        generated_header("benchmarks/xray_distill.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: student initialisation and data order; the scenes "
        f"and the teacher are the same for every seed). {args.scenes} training and {args.test_scenes} test sequences "
        f"of {args.frames} frames (16-beam synthetic LiDAR, ~{first['raw_points'] / 1000:.1f}k points per raw frame, "
        f"~{first['complete_points'] / 1000:.1f}k per object-complete frame), batch {args.batch_size}, "
        f"{first['steps']} student steps per run; X-Ray teacher (same detector) trained {args.teacher_epochs} epochs on "
        "object-complete frames. AP in % (R40, BEV IoU car 0.5, pedestrian / cyclist 0.25; distance AP: nuScenes "
        "centre-distance thresholds), mean ± sample std over seeds.",
        "",
    ]
    headers = ["run", "frames seen at test", "BEV AP mean", *[f"BEV AP {c}" for c in CLASSES]]
    headers += [f"BEV AP {s}" for s in SCOPES] + ["dist AP", "s / step"]
    rows = [
        ["X-Ray teacher", "object-complete", *ap_cells([teacher["complete"]]), "—"],
        ["X-Ray teacher", "raw", *ap_cells([teacher["raw"]]), "—"],
    ]
    for key in args.rows:
        name, change, _ = ROWS[key]
        r = [runs[s][key] for s in seeds]
        step = mean_std([x["step_s"] for x in r], digits=2)
        rows.append(
            [f"{name} ({change})" if change != "none" else name, "raw", *ap_cells([x["ap"] for x in r]), step]
        )
    lines += [markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2)), ""]
    if "xray" in args.rows and "alone" in args.rows:
        lines += [
            "Paired by seed (*+ X-Ray distillation* minus *student alone*, BEV AP points; seeds better / worse):",
            "",
        ]
        for label, k in [("mean", "ap_bev_loose/mean")] + [(s, f"ap_bev_loose/mean/{s}") for s in SCOPES]:
            xs = [100 * runs[s]["xray"]["ap"].get(k, float("nan")) for s in seeds]
            ys = [100 * runs[s]["alone"]["ap"].get(k, float("nan")) for s in seeds]
            better = sum(x > y for x, y in zip(xs, ys))
            lines.append(f"- {label}: {paired(xs, ys, digits=1)} ({better} / {len(seeds) - better})")
    if quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def teacher_signal(args: argparse.Namespace) -> str:
    """Per distance range: the teacher's heatmap peak at the ground-truth centres and its confident-box coverage."""
    from lightning_distill.detection.heads import build_targets

    cli = recipe_cli([CONFIG], args.seeds[0], data_flags(args))
    model, dm = cli.model, cli.datamodule
    dm.setup("test")
    teacher, threshold = model.teacher, model.label_score_threshold
    peaks, covered, ranges = [], [], []
    for batch in complete_view(dm.test_dataloader()):
        with torch.no_grad():
            out = teacher(batch["points"], batch["batch_index"], len(batch["boxes"]))
        prob = torch.sigmoid(out.heatmap)
        targets = build_targets(
            teacher.grid, batch["boxes"], batch["labels"], num_classes=teacher.num_classes
        )
        for b, (boxes, labels) in enumerate(zip(batch["boxes"], batch["labels"])):
            det = teacher.detect(out)[b]
            confident = det["boxes"][det["scores"] > threshold]
            for j in range(int(targets.mask[b].sum())):
                cell = int(targets.indices[b, j])
                peaks.append(float(prob[b, int(labels[j])].flatten()[cell]))
                near = (
                    (confident[:, :2] - boxes[j, :2]).norm(dim=1) < 1.0 if len(confident) else torch.zeros(1)
                )
                covered.append(float(bool(near.any())))
                ranges.append(float(boxes[j, :2].norm()))
    rows = []
    for name, (low, high) in zip(SCOPES, ((0, 20), (20, 40), (40, 1e9))):
        idx = [i for i, r in enumerate(ranges) if low <= r < high]
        rows.append([name, len(idx), mean_std([peaks[i] for i in idx], digits=2),
                     mean_std([covered[i] for i in idx], 100, 0)])  # fmt: skip
    return (
        "\n".join(
            [
                generated_header("benchmarks/xray_distill.py", args.command),
                "",
                f"The cached X-Ray teacher of the benchmark on the {args.test_scenes} object-complete test sequences "
                f"({args.frames} frames): per ground-truth box on the BEV grid, its heatmap probability at the box's centre "
                "cell for the box's class (the cell's weight in the heatmap KD, before the Gaussian) and whether a "
                f"teacher detection above `label_score_threshold` ({threshold}) lies within 1 m (KD on detections); mean "
                "± std over boxes.",
                "",
                markdown_table(
                    ["range", "boxes", "teacher peak at centre", "covered by a confident box (%)"],
                    rows,
                    align="lrrr",
                ),  # fmt: skip
            ]
        )
        + "\n"
    )


def build_parser():
    parser = bench_parser(
        __file__, __doc__, quick="1 seed, 2 epochs, 3 training sequences of 2 frames, 1 test sequence"
    )
    parser.add_argument(
        "--epochs", type=int, default=12, help="student epochs per run (cosine schedule over them)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=24)
    parser.add_argument("--scenes", type=int, default=10, help="training sequences")
    parser.add_argument("--test-scenes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=4, help="frames per sequence")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run")
    parser.add_argument(
        "--teacher-signal",
        action="store_true",
        help="only measure where the teacher's KD signal falls, by range",
    )
    parser.add_argument(
        "--name", default="xray_distill", help="results file benchmarks/results/<name>.md (xray_distill*)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.quick:
        args.seeds, args.epochs, args.teacher_epochs = args.seeds[:1], 2, 1
        args.scenes, args.test_scenes, args.frames = 3, 1, 2
    if args.teacher_signal:
        text = teacher_signal(args)
        (results_dir(args) / f"{args.name}_signal.md").write_text(
            "# X-Ray distillation: the teacher's signal\n\n" + text
        )
        print(text)
        return
    start = time.perf_counter()
    runs = {seed: {key: run(seed, key, args) for key in args.rows} for seed in args.seeds}
    last = runs[args.seeds[0]][args.rows[-1]]
    model, loader = last["model"], last["loader"]
    teacher = {
        "raw": detection_ap(model.teacher, loader, DetectionAP()),
        "complete": detection_ap(model.teacher, complete_view(loader), DetectionAP()),
    }
    text = report(runs, teacher, args.seeds, args.command, time.perf_counter() - start, args.quick, args)
    (results_dir(args) / f"{args.name}.md").write_text("# X-Ray distillation benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
