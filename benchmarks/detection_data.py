"""Speed of the 3D detection toolkit: labelled scene generation, rotated IoU / NMS, and the AP metric.

Three measurements, each over ``--seeds`` (scene seeds; mean ± std over seeds):

* **Scene generation with boxes**: ms per frame of
  :class:`~lightning_distill.detection.scenes.DetectionSceneGenerator` (labelled cars, pedestrians,
  cyclists; boxes, tracks, occlusion, difficulty, 2D boxes) against the plain
  :class:`~lightning_distill.lidar.scene.StreetSceneGenerator` with the same sensors (the baseline:
  what labelling costs), at the toy settings of ``DetectionSceneDataModule`` and at a KITTI-like
  64-beam scale, single frames and 5-frame sequences.
* **Points per object against distance**: visible LiDAR points per box by class and distance range
  (far objects must be sparse, as in real scans).
* **Box geometry and AP**: rotated BEV IoU of 500 x 500 boxes, greedy rotated NMS of 500 boxes, and
  :class:`~lightning_distill.detection.metrics.DetectionAP` ``update`` + ``compute`` per frame on
  frames of ``--frames`` generated scenes with noisy copies of their boxes as predictions.

Usage (from the repository root)::

    python benchmarks/detection_data.py --threads 1      # seeds 0 1 2, about 2 CPU-minutes
    python benchmarks/detection_data.py --quick          # 1 seed, fewer frames

Writes ``benchmarks/results/detection_data.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``lightning_distill/detection/README.md``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_parser, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

from lightning_distill.detection import (  # noqa: E402
    CLASSES,
    DetectionAP,
    DetectionSceneGenerator,
    bev_iou,
    nms_bev,
)
from lightning_distill.lidar.scene import StreetSceneGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "lightning_distill" / "detection" / "README.md"
# name: sensor settings (the toy ones are DetectionSceneDataModule's defaults)
SCALES = {
    "toy (32 x 512 rays, 1 camera 48 x 96)": {"beams": 32, "azimuth_steps": 512, "image_size": (48, 96)},
    "KITTI-like (64 x 2048 rays, 1 camera 96 x 320)": {
        "beams": 64,
        "azimuth_steps": 2048,
        "elevation_deg": (-24.9, 2.0),
        "max_range": 70.0,
        "image_size": (96, 320),
    },
}
RANGES = ((0.0, 20.0), (20.0, 40.0), (40.0, float("inf")))


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 scenes per timing, 8 AP frames")
    parser.add_argument("--scenes", type=int, default=4, help="scenes per seed and timing (default 4)")
    parser.add_argument("--frames", type=int, default=32, help="frames scored by the AP timing (default 32)")
    return parser


def _ms_per_frame(generator, seeds: list[int], num_frames: int) -> tuple[float, list]:
    start = time.process_time()
    frames = [f for s in seeds for f in generator.generate(seed=s, num_frames=num_frames)]
    return 1000 * (time.process_time() - start) / len(frames), frames


def generation(args) -> tuple[str, list]:
    rows, all_frames = [], []
    StreetSceneGenerator(beams=4, azimuth_steps=16, image_size=(4, 4)).generate(seed=0)  # import open3d first
    for name, sensors in SCALES.items():
        for num_frames in (1, 5):
            plain, labelled, points, boxes = [], [], [], []
            for seed in args.seeds:
                scene_seeds = [1000 * seed + i for i in range(args.scenes)]
                ms, _ = _ms_per_frame(StreetSceneGenerator(**sensors), scene_seeds, num_frames)
                plain.append(ms)
                ms, frames = _ms_per_frame(DetectionSceneGenerator(**sensors), scene_seeds, num_frames)
                labelled.append(ms)
                points.append(sum(len(f.points) for f in frames) / len(frames))
                boxes.append(sum(len(f.boxes) for f in frames) / len(frames))
                if num_frames == 1:
                    all_frames.append((name, frames))
            rows.append(
                [
                    name,
                    num_frames,
                    mean_std(plain, digits=0),
                    mean_std(labelled, digits=0),
                    mean_std([b / a for a, b in zip(plain, labelled)]),
                    mean_std(points, digits=0),
                    mean_std(boxes, digits=1),
                ]
            )
    headers = [
        "sensors",
        "frames / scene",
        "plain CPU ms / frame",
        "labelled CPU ms / frame",
        "ratio",
        "points",
        "boxes",
    ]
    return markdown_table(headers, rows, align="lrrrrrr"), all_frames


def sparsity(all_frames) -> str:
    rows = []
    for name, _ in SCALES.items():
        frames = [f for n, fs in all_frames if n == name for f in fs]
        for c, cls in enumerate(CLASSES):
            cells = []
            for lo, hi in RANGES:
                counts = []
                for f in frames:
                    d = f.boxes[:, :2].norm(dim=1)
                    keep = (f.box_labels == c) & (d >= lo) & (d < hi)
                    counts += f.num_points_in_box[keep].tolist()
                cells.append(f"{sum(counts) / len(counts):.0f} (n={len(counts)})" if counts else "-")
            rows.append([name.split(" (")[0], cls, *cells])
    return markdown_table(["sensors", "class", "0-20 m", "20-40 m", "40+ m"], rows, align="llrrr")


def _noisy_predictions(frame, g: torch.Generator) -> dict[str, torch.Tensor]:
    boxes = frame.boxes.repeat(2, 1)  # every object twice (a duplicate), plus noise
    boxes[:, :2] += 0.3 * torch.randn(len(boxes), 2, generator=g)
    boxes[:, 6] += 0.1 * torch.randn(len(boxes), generator=g)
    scores = torch.rand(len(boxes), generator=g)
    return {"boxes": boxes, "scores": scores, "labels": frame.box_labels.repeat(2)}


def geometry_and_ap(args) -> str:
    rows = {
        "BEV IoU 500 x 500, boxes spread over 80 m (ms)": [],
        "BEV IoU 500 x 500, boxes within 4 m, all pairs overlap-tested (ms)": [],
        "NMS of 500 boxes spread over 80 m (ms)": [],
        "DetectionAP update + compute (ms / frame)": [],
    }
    generator = DetectionSceneGenerator(**SCALES[next(iter(SCALES))])
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        boxes = torch.cat(
            [
                torch.rand(500, 2, generator=g) * 80 - 40,
                torch.zeros(500, 1),
                torch.rand(500, 3, generator=g) * 3 + 0.5,
                torch.rand(500, 1, generator=g) * 6.28 - 3.14,
            ],
            1,
        )
        keys = list(rows)
        dense = boxes.clone()
        dense[:, :2] /= 20
        scores = torch.rand(500, generator=g)
        for key, call, inputs in (
            (keys[0], bev_iou, (boxes, boxes)),
            (keys[1], bev_iou, (dense, dense)),
            (keys[2], nms_bev, (boxes, scores, 0.1)),
        ):
            start = time.process_time()
            call(*inputs)
            rows[key].append(1000 * (time.process_time() - start))
        frames = [generator.generate(seed=10_000 * seed + i)[0] for i in range(args.frames)]
        preds = [_noisy_predictions(f, g) for f in frames]
        targets = [{"boxes": f.boxes, "labels": f.box_labels, "difficulty": f.difficulty} for f in frames]
        metric = DetectionAP()
        start = time.process_time()
        metric.update(preds, targets)
        out = metric.compute()
        rows[keys[3]].append(1000 * (time.process_time() - start) / len(frames))
        assert 0.0 < float(out["ap_dist/mean"]) <= 1.0
    table = [[k, mean_std(v, digits=1)] for k, v in rows.items()]
    return markdown_table(["operation", "CPU time"], table, align="lr")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    if args.quick:
        args.seeds, args.scenes, args.frames = args.seeds[:1], 2, 8
    wall_start = time.perf_counter()
    generation_table, all_frames = generation(args)
    sparsity_table = sparsity(all_frames)
    geometry_table = geometry_and_ap(args)
    wall = time.perf_counter() - wall_start
    text = "\n\n".join(
        [
            generated_header("benchmarks/detection_data.py", args.command, wall),
            machine_line() + " Times are CPU time of the process (`time.process_time`: the machine is "
            "shared, so wall time would measure the neighbours); open3d's ray casting may use both cores.",
            f"**Scene generation** ({args.scenes} scenes per seed, seeds {args.seeds}; mean ± std over seeds). "
            "*plain*: the LiDAR toolkit's street (unlabelled car boxes); *labelled*: the detection scenes "
            "(cars, pedestrians, cyclists; boxes, tracks, occlusion from one extra ray cast per object, "
            "difficulty, 2D boxes). The LiDAR and camera ray casts dominate both.",
            generation_table,
            "**Visible LiDAR points per object** (mean over the single-frame scenes above; n = boxes).",
            sparsity_table,
            f"**Box geometry and AP** (random boxes; AP over {args.frames} toy frames with two noisy "
            "predictions per object).",
            geometry_table,
        ]
    )
    (results_dir(args) / "detection_data.md").write_text("# 3D detection toolkit: speed\n\n" + text + "\n")
    update_readme(args, README, text)
    print(text)


if __name__ == "__main__":
    main()
