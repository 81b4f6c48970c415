"""Toy-scale benchmark of CALICO: does point-region contrast give a better 3D backbone, and does
region-aware distillation give a better BEV backbone?

Every run is built from ``recipes/calico/config.yaml``, ``recipes/calico/rad.yaml`` or
``recipes/slidr/config.yaml`` through :class:`lightning_distill.cli.DistillCLI`, with the seed and the
same data settings (those of ``config.yaml``) for all three, so PRC and SLidR get the same scenes, epochs,
UNet, voxel size and optimizer.

3D rows (linear probe of the frozen sparse UNet's per-point features on the labels of
``--probe-scenes`` training scenes, mIoU on the test scenes; the protocol of ``benchmarks/slidr.py``):
random initialisation, CALICO stage 1 (PRC), SLidR (image-to-LiDAR superpixel InfoNCE).

BEV rows (linear probe of per-cell features, label of a cell = majority label of its points, mIoU
over the occupied test cells): random BEV backbone, BEV backbone distilled by RAD from the PRC
teacher of the same seed, the same from a random-init teacher (control: what RAD gives without
stage 1), and the PRC teacher's own point features mean-pooled into the cells (reference).

Usage (from the repository root)::

    python benchmarks/calico.py --threads 1        # seeds 0 1 2
    python benchmarks/calico.py --quick            # smoke run: 1 seed, 1 epoch, small data

Writes ``benchmarks/results/calico.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/calico/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired, write_block  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_distill.lidar import CLASS_NAMES, collate, linear_probe  # noqa: E402
from lightning_distill.lidar.bev import bev_cells, bev_linear_probe, scatter_to_bev  # noqa: E402
from lightning_distill.lidar.networks import sparse_point_features  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRC, RAD = ROOT / "recipes" / "calico" / "config.yaml", ROOT / "recipes" / "calico" / "rad.yaml"
SLIDR = ROOT / "recipes" / "slidr" / "config.yaml"
README = ROOT / "recipes" / "calico" / "README.md"
ROWS_3D = {
    "random": ("random initialisation", "no training"),
    "prc": ("CALICO stage 1, PRC (config.yaml)", "LiDAR only, no labels"),
    "slidr": ("SLidR (slidr config)", "camera -> LiDAR, same data/epochs/UNet"),
}
ROWS_BEV = {
    "bev_random": ("random BEV backbone", "no training"),
    "bev_rad": ("CALICO stage 2, RAD from the PRC teacher (rad.yaml)", "BEV student"),
    "bev_rad_random_teacher": ("RAD from a random-init teacher (control)", "BEV student"),
    "bev_teacher": ("PRC teacher, point features mean-pooled per cell (reference)", "3D UNet"),
}


def run_seed(seed: int, args: argparse.Namespace, data: list[str], epochs: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    prc = recipe_cli(PRC, seed, data + epochs)
    dm = prc.datamodule
    dm.setup("fit")
    probe_train = DataLoader(dm.scenes("train")[: args.probe_scenes], batch_size=4, collate_fn=collate)
    test = dm.test_dataloader()
    voxel, feats = prc.model.voxel_size, prc.model.input_features

    def probe_3d(backbone):
        return linear_probe(
            backbone,
            probe_train,
            test,
            num_classes=len(CLASS_NAMES),
            voxel_size=voxel,
            input_features=feats,
            seed=seed,
        )

    def probe_bev(features_of, grid):
        return bev_linear_probe(
            features_of, probe_train, test, grid=grid, num_classes=len(CLASS_NAMES), seed=seed
        )

    out["random"] = {"result": probe_3d(prc.model.student), "train_s": 0.0}
    out["prc"] = {"train_s": timed_fit(prc)[0]}
    out["prc"]["result"] = probe_3d(prc.model.student)
    slidr = recipe_cli(SLIDR, seed, data + epochs)
    out["slidr"] = {"train_s": timed_fit(slidr)[0]}
    out["slidr"]["result"] = probe_3d(slidr.model.student)
    for key in ROWS_3D:
        print(
            f"  seed {seed} {key}: mIoU {out[key]['result'].miou:.3f} ({out[key]['train_s']:.0f} s)",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        teachers = {
            "bev_rad": prc.model.student,
            "bev_rad_random_teacher": recipe_cli(PRC, seed, data).model.student,
        }
        for key, teacher in teachers.items():
            path = Path(tmp) / f"{key}.pt"
            torch.save(teacher.state_dict(), path)
            rad = recipe_cli(
                RAD, seed, data + epochs + [f"--model.init_args.teacher.init_args.checkpoint={path}"]
            )
            student, grid = rad.model.student, rad.model.grid

            def bev_of(points, net=student):
                net.eval()
                with torch.no_grad():
                    return net(points, int(points[:, 0].max()) + 1)

            if key == "bev_rad":
                out["bev_random"] = {"result": probe_bev(bev_of, grid), "train_s": 0.0}

                def teacher_of(points, net=rad.model.teacher, grid=grid):
                    with torch.no_grad():
                        features = sparse_point_features(net, points, voxel_size=voxel, input_features=feats)
                    cells, inside = bev_cells(points, grid)
                    return scatter_to_bev(features[inside], cells[inside], int(points[:, 0].max()) + 1, grid)

                out["bev_teacher"] = {"result": probe_bev(teacher_of, grid), "train_s": out["prc"]["train_s"]}
            out[key] = {"train_s": timed_fit(rad)[0]}
            out[key]["result"] = probe_bev(bev_of, grid)
    for key in ROWS_BEV:
        print(
            f"  seed {seed} {key}: mIoU {out[key]['result'].miou:.3f} ({out[key]['train_s']:.0f} s)",
            flush=True,
        )
    return out


def table(runs: dict[int, dict], seeds: list[int], rows: dict[str, tuple[str, str]]) -> str:
    body = []
    for key, (name, what) in rows.items():
        results = [runs[s][key]["result"] for s in seeds]
        cells = [mean_std([r.miou for r in results], scale=100, digits=1)]
        cells += [
            mean_std([float(r.iou[k]) for r in results], scale=100, digits=1) for k in range(len(CLASS_NAMES))
        ]
        seconds = sum(runs[s][key]["train_s"] for s in seeds) / len(seeds)
        body.append([name, what, *cells, f"{seconds:.0f}"])
    headers = ["backbone", "kind", "mIoU", *CLASS_NAMES, "train s"]
    return markdown_table(headers, body, align="ll" + "r" * (len(CLASS_NAMES) + 2))


def report(runs: dict[int, dict], args: argparse.Namespace, command: str, wall: float) -> str:
    seeds = args.seeds

    def diff(a: str, b: str) -> str:
        a_vals = [runs[s][a]["result"].miou for s in seeds]
        b_vals = [runs[s][b]["result"].miou for s in seeds]
        better = sum(x > y for x, y in zip(a_vals, b_vals))
        return f"{paired(a_vals, b_vals, scale=100, digits=1)} ({better} / {len(seeds) - better} seeds better / worse)"

    lines = [
        generated_header("benchmarks/calico.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: initialisation, data order, views and samples; the "
        f"scenes are the same for every seed). Data of `config.yaml` for every run, {args.epochs} epoch(s) of training. Linear probes "
        f"on the labels of {args.probe_scenes} training scenes, scored on the test scenes; IoU in %, mean ± sample "
        "std over seeds.",
        "",
        "**3D backbone** (per-point linear probe, the protocol of `benchmarks/slidr.py`):",
        "",
        table(runs, seeds, ROWS_3D),
        "",
        "**BEV backbone** (per-cell linear probe; a cell's label is the majority label of its points):",
        "",
        table(runs, seeds, ROWS_BEV),
        "",
        "Paired by seed (mIoU points):",
        "",
        f"- PRC minus random init: {diff('prc', 'random')}",
        f"- PRC minus SLidR: {diff('prc', 'slidr')}",
        f"- RAD BEV minus random BEV: {diff('bev_rad', 'bev_random')}",
        f"- RAD from the PRC teacher minus RAD from a random teacher: {diff('bev_rad', 'bev_rad_random_teacher')}",
    ]
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 1 epoch, 12 training scenes")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--probe-scenes", type=int, default=16)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    # the data of config.yaml, for SLidR too (whose config has more scenes)
    data = [
        "--data.init_args.num_scenes=48",
        "--data.init_args.val_scenes=8",
        "--data.init_args.test_scenes=12",
    ]
    if args.quick:
        args.seeds, args.epochs, args.probe_scenes = args.seeds[:1], 1, 6
        data = [
            "--data.init_args.num_scenes=12",
            "--data.init_args.val_scenes=2",
            "--data.init_args.test_scenes=4",
        ]
    epochs = [
        f"--trainer.max_epochs={args.epochs}",
        f"--model.init_args.lr_scheduler.init_args.T_max={args.epochs}",
    ]
    start = time.perf_counter()
    runs = {seed: run_seed(seed, args, data, epochs) for seed in args.seeds}
    text = report(runs, args, args.command, time.perf_counter() - start)
    write_block(results_dir(args) / "calico.md", text, create="# CALICO benchmark")
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
