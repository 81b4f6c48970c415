"""Toy-scale benchmark of SLidR: does image-to-LiDAR distillation give a better 3D backbone?

Every pretraining run is ``recipes/slidr/config.yaml`` built through
:class:`lightning_distill.cli.DistillCLI`, with only the seed (and, for the control, one key)
changed. Each 3D backbone is then frozen and linearly probed for per-point semantic segmentation
(:func:`lightning_distill.lidar.evaluate.linear_probe`) on the labels of ``--probe-scenes``
training scenes, and scored on the test scenes (mIoU and per-class IoU). Rows:

* random initialisation (the same UNet, untrained);
* SLidR (superpixel InfoNCE, the config);
* SLidR with shuffled point-pixel pairs (the control: no information about the scene reaches the
  3D network, so it must fall back to about random initialisation; it catches calibration bugs);
* SLidR point level (PPKT-style InfoNCE over point-pixel pairs);
* full supervision: the same UNet and linear head trained end to end with cross-entropy on every
  training scene's labels, same epochs and AdamW learning rate without the cosine schedule (an upper
  reference), probed the same way.

Speed: training-step time of the sparse UNet (forward, backward, AdamW) per 10k points, and the
throughput of the scene generator with and without SLIC superpixels.

Usage (from the repository root)::

    python benchmarks/slidr.py --threads 1        # seeds 0 1 2
    python benchmarks/slidr.py --quick            # smoke run: 1 seed, 1 epoch, small data

Writes ``benchmarks/results/slidr.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/slidr/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning  # noqa: E402
import torch  # noqa: E402
from _harness import bench_parser, logged, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import mean_std  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_distill.lidar import CLASS_NAMES, StreetSceneGenerator, collate, finetune, linear_probe  # noqa: E402
from lightning_distill.lidar.networks import SparseUNet, sparse_point_features  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "slidr" / "config.yaml"
README = ROOT / "recipes" / "slidr" / "README.md"
ROWS = {
    "random": ("random initialisation", "no training"),
    "slidr": ("SLidR, superpixel InfoNCE (config)", "none"),
    "shuffled": ("SLidR, shuffled point-pixel pairs (control)", "`shuffle_pairs: true`"),
    "point": ("point-level InfoNCE (PPKT-style)", "`level: point`"),
    "supervised": (
        "full supervision (labels of every training scene)",
        "CE on labels; same UNet, epochs and AdamW lr, no schedule",
    ),
}


def build(seed: int, extra: list[str]) -> Any:
    return recipe_cli(CONFIG, seed, extra)


def run_seed(seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    cli = build(seed, extra)
    dm = cli.datamodule
    dm.setup("fit")
    model = cli.model
    voxel, feats = model.voxel_size, model.input_features
    probe_train = DataLoader(dm.scenes("train")[: args.probe_scenes], batch_size=4, collate_fn=collate)
    test = dm.test_dataloader()

    def probe(backbone):
        return linear_probe(
            backbone,
            probe_train,
            test,
            num_classes=len(CLASS_NAMES),
            voxel_size=voxel,
            input_features=feats,
            seed=seed,
        )

    t0 = time.perf_counter()
    out["random"] = {"result": probe(model.student), "train_s": 0.0}
    print(
        f"  seed {seed} random: mIoU {out['random']['result'].miou:.3f} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    for key, flags in (
        ("slidr", []),
        ("shuffled", ["--model.init_args.shuffle_pairs=true"]),
        ("point", ["--model.init_args.level=point"]),
    ):
        cli = build(seed, extra + flags)
        train_s, _ = timed_fit(cli)
        out[key] = {
            "result": probe(cli.model.student),
            "train_s": train_s,
            "loss": logged(cli, "train/infonce"),
        }
        print(f"  seed {seed} {key}: mIoU {out[key]['result'].miou:.3f} (fit {train_s:.0f} s)", flush=True)
    # full supervision: the config's student, fresh from the same seed, trained on labels
    cli = build(seed, extra)
    lr = cli.config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    t0 = time.perf_counter()
    _, supervised = finetune(
        cli.model.student,
        dm.train_dataloader(),
        test,
        num_classes=len(CLASS_NAMES),
        voxel_size=voxel,
        input_features=feats,
        labelled_fraction=1.0,
        epochs=cli.trainer.max_epochs,
        lr=lr,
        seed=seed,
    )
    train_s = time.perf_counter() - t0
    out["supervised"] = {"result": probe(supervised["backbone"]), "train_s": train_s}
    print(
        f"  seed {seed} supervised: mIoU {out['supervised']['result'].miou:.3f} (fit {train_s:.0f} s)",
        flush=True,
    )
    return out


def step_time(widths: tuple[int, ...], points: torch.Tensor, voxel_size: float, repeats: int) -> float:
    """Seconds per training step (forward, backward, AdamW) of a sparse UNet on ``points``."""
    torch.manual_seed(0)
    net = SparseUNet(1, widths)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss = sparse_point_features(net, points, voxel_size=voxel_size).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step builds spconv's kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(dm, voxel_size: float, repeats: int) -> list[str]:
    batch = collate(dm.scenes("train")[:4])
    points = batch["points"]
    lines = [
        f"Sparse UNet training step (forward + backward + AdamW, median of {repeats}) on a batch of 4 scans, "
        f"{len(points)} points, voxel {voxel_size} m:",
        "",
        "| UNet widths | params | s / step | ms per 10k points |",
        "|---|---:|---:|---:|",
    ]
    for widths in ((8, 16, 32, 64), (16, 32, 64, 128)):
        seconds = step_time(widths, points, voxel_size, repeats)
        params = sum(p.numel() for p in SparseUNet(1, widths).parameters())
        lines.append(
            f"| {list(widths)} | {params} | {seconds:.3f} | {1e4 * 1e3 * seconds / len(points):.0f} |"
        )
    gen: StreetSceneGenerator = dm.generator
    n = 2 * repeats
    t0 = time.perf_counter()
    for s in range(n):
        gen.generate(10_000 + s)
    raw = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(n):
        dm.make_sample(20_000 + s, s)
    full = n / (time.perf_counter() - t0)
    h, w = dm.image_size
    lines += [
        "",
        f"Scene generation ({gen.beams} beams x {gen.azimuth_steps} azimuth steps, {gen.num_cameras} cameras of "
        f"{h}x{w}, {n} scenes): {raw:.1f} scenes/s ray casting only, {full:.1f} scenes/s with SLIC superpixels.",
    ]
    return lines


def fmt(values: list[float], scale: float = 100.0) -> str:
    return mean_std(values, scale=scale, digits=1)


def report(
    runs: dict[int, dict], seeds: list[int], speed_lines: list[str], argv: str, wall: float, quick: bool
) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        f"<!-- generated by benchmarks/slidr.py on {today}; do not edit by hand: rerun the command -->",
        f"Command: `{argv}` (from the repository root; wall time {wall / 60:.1f} min).",
        "",
        f"Machine: {platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs), torch threads: "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}, lightning "
        f"{lightning.__version__}.",
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: initialisation, data order, pair sampling; the scenes "
        "are the same for every seed). Linear probe: frozen backbone, standardised per-point features, linear "
        f"classifier on the labels of {ARGS.probe_scenes} training scenes, scored on the test scenes. IoU in %, "
        "mean ± sample std over seeds.",
        "",
        "| backbone | what differs from config.yaml | mIoU | " + " | ".join(CLASS_NAMES) + " | pretrain s |",
        "|---|---|---:|" + "---:|" * len(CLASS_NAMES) + "---:|",
    ]
    for key, (name, change) in ROWS.items():
        results = [runs[s][key]["result"] for s in seeds]
        cells = [fmt([r.miou for r in results])]
        cells += [fmt([float(r.iou[k]) for r in results]) for k in range(len(CLASS_NAMES))]
        train = statistics.mean(runs[s][key]["train_s"] for s in seeds)
        lines.append(f"| {name} | {change} | " + " | ".join(cells) + f" | {train:.0f} |")
    lines += ["", "Paired by seed (mIoU points, mean ± std; seeds better / worse):", ""]
    for a, b in (
        ("slidr", "random"),
        ("shuffled", "random"),
        ("slidr", "shuffled"),
        ("point", "random"),
        ("slidr", "point"),
    ):
        diffs = [100 * (runs[s][a]["result"].miou - runs[s][b]["result"].miou) for s in seeds]
        better = sum(d > 0 for d in diffs)
        spread = f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
        lines.append(
            f"- *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {statistics.mean(diffs):+.1f}{spread} ({better} / {len(diffs) - better})"
        )
    for name, cls in (("road", 0), ("sidewalk", 1)):
        diffs = [
            100 * float(runs[s]["slidr"]["result"].iou[cls] - runs[s]["random"]["result"].iou[cls])
            for s in seeds
        ]
        lines.append(f"- {name} IoU, SLidR minus random init: {statistics.mean(diffs):+.1f}")
    lines += ["", *speed_lines]
    if quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch, 16 training scenes")
    parser.add_argument("--probe-scenes", type=int, default=24)
    parser.add_argument("--test-scenes", type=int, default=24)
    return parser


def main(argv: list[str] | None = None) -> None:
    global ARGS
    ARGS = args = build_parser().start(argv, all_warnings=True)
    extra = [f"--data.init_args.test_scenes={args.test_scenes}"]
    if args.quick:
        args.seeds = args.seeds[:1]
        args.probe_scenes = min(args.probe_scenes, 8)
        extra = ["--data.init_args.num_scenes=16", "--data.init_args.test_scenes=4", "--trainer.max_epochs=1"]
    start = time.perf_counter()
    runs = {}
    for seed in args.seeds:
        runs[seed] = run_seed(seed, args, extra)
    cli = build(args.seeds[0], extra)
    cli.datamodule.setup("fit")
    speed_lines = speed(cli.datamodule, cli.model.voxel_size, repeats=3 if args.quick else 5)
    text = report(runs, args.seeds, speed_lines, args.command, time.perf_counter() - start, args.quick)
    (results_dir(args) / "slidr.md").write_text("# SLidR benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
