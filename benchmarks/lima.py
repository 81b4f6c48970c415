"""Toy-scale benchmark of LiMA: do cross-view aggregation and a memory of past frames give a better 3D backbone than SLidR?

Every pretraining run is ``recipes/lima/config.yaml`` built through
:class:`lightning_distill.cli.DistillCLI` with only the seed and the keys in the table changed, so
all rows see the same sequences (4 cameras with overlapping 110-degree fields of view, windows of
the current frame and two past frames) and the same budget (epochs, steps, batch size, optimizer,
schedule, networks). SLidR is the same config with ``model.class_path`` switched to
:class:`~lightning_distill.recipes.slidr.SLidR` (it reads only the current frame). Each 3D
backbone is frozen and linearly probed on the labels of ``--probe-scenes`` training windows
(:func:`lightning_distill.lidar.evaluate.linear_probe`, as in ``benchmarks/slidr.py``) and
scored on the test windows. Rows: random initialisation, SLidR, LiMA, LiMA without cross-view
aggregation, LiMA without the memory.

Usage (from the repository root)::

    python benchmarks/lima.py --threads 1        # seeds 0 1 2
    python benchmarks/lima.py --quick            # smoke run: 1 seed, 1 epoch, small data

Writes ``benchmarks/results/lima.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/lima/README.md``; ``--quick`` writes to
``benchmarks/results/quick/lima.md`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_distill.lidar import CLASS_NAMES, collate, linear_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "lima" / "config.yaml"
README = ROOT / "recipes" / "lima" / "README.md"
#: key -> (row name, what differs from config.yaml, extra CLI flags); None = no training
ROWS: dict[str, tuple[str, str, list[str] | None]] = {
    "random": ("random initialisation", "no training", None),
    "slidr": ("SLidR (same data and budget)", "`model.class_path: ...slidr.SLidR`", [
        "--model.class_path=lightning_distill.recipes.slidr.SLidR"
    ]),
    "lima": ("LiMA (config)", "none", []),
    "no_cross_view": ("LiMA without cross-view aggregation", "`cross_view: false`", [
        "--model.init_args.cross_view=false"
    ]),
    "no_memory": ("LiMA without the memory", "`memory_frames: 0`", ["--model.init_args.memory_frames=0"]),
}  # fmt: skip
PAIRS = (
    ("lima", "slidr"),
    ("lima", "random"),
    ("slidr", "random"),
    ("lima", "no_cross_view"),
    ("lima", "no_memory"),
)


def build(seed: int, extra: list[str]) -> Any:
    return recipe_cli(CONFIG, seed, extra)


def run_seed(seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, (_, _, flags) in ROWS.items():
        cli = build(seed, extra + (flags or []))
        dm = cli.datamodule
        dm.setup("fit")
        t0 = time.perf_counter()
        if flags is not None:
            cli.trainer.fit(cli.model, datamodule=dm)
        train_s = time.perf_counter() - t0 if flags is not None else 0.0
        probe_train = DataLoader(dm.scenes("train")[: args.probe_scenes], batch_size=4, collate_fn=collate)
        result = linear_probe(
            cli.model.student,
            probe_train,
            dm.test_dataloader(),
            num_classes=len(CLASS_NAMES),
            voxel_size=cli.model.voxel_size,
            input_features=cli.model.input_features,
            seed=seed,
        )
        out[key] = {"result": result, "train_s": train_s, "steps": cli.trainer.global_step}
        print(
            f"  seed {seed} {key}: mIoU {result.miou:.3f} (fit {train_s:.0f} s, {cli.trainer.global_step} steps)",
            flush=True,
        )
    return out


def report(
    runs: dict[int, dict], seeds: list[int], command: str, wall: float, args: argparse.Namespace
) -> str:
    headers = ["backbone", "what differs from config.yaml", "mIoU", *CLASS_NAMES, "steps", "pretrain s"]
    rows = []
    for key, (name, change, _) in ROWS.items():
        results = [runs[s][key]["result"] for s in seeds]
        cells = [mean_std([r.miou for r in results], scale=100, digits=1)]
        cells += [
            mean_std([float(r.iou[k]) for r in results], scale=100, digits=1) for k in range(len(CLASS_NAMES))
        ]
        steps = runs[seeds[0]][key]["steps"]
        train = sum(runs[s][key]["train_s"] for s in seeds) / len(seeds)
        rows.append([name, change, *cells, steps, f"{train:.0f}"])
    lines = [
        generated_header("benchmarks/lima.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: initialisation, data order; the scenes are the same "
        "for every seed). Linear probe: frozen backbone, standardised per-point features, linear classifier on "
        f"the labels of {args.probe_scenes} training windows, scored on the test windows. IoU in %, mean ± sample "
        "std over seeds. Every trained row has the same epochs, steps, batch size and optimizer.",
        "",
        markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2)),
        "",
        "Paired by seed (mIoU points, mean ± std; seeds better / worse):",
        "",
    ]
    for a, b in PAIRS:
        x = [runs[s][a]["result"].miou for s in seeds]
        y = [runs[s][b]["result"].miou for s in seeds]
        better = sum(u > v for u, v in zip(x, y))
        lines.append(
            f"- *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(x, y, scale=100, digits=1)} ({better} / {len(x) - better})"
        )
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch, 8 training scenes")
    parser.add_argument("--probe-scenes", type=int, default=24)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    extra: list[str] = []
    if args.quick:
        args.seeds = args.seeds[:1]
        args.probe_scenes = min(args.probe_scenes, 8)
        extra = ["--data.init_args.num_scenes=8", "--data.init_args.test_scenes=2", "--trainer.max_epochs=1"]
    start = time.perf_counter()
    runs = {seed: run_seed(seed, args, extra) for seed in args.seeds}
    text = report(runs, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / "lima.md").write_text("# LiMA benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
