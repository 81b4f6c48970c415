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
    python benchmarks/calico.py --diagnose         # PRC teacher vs random teacher (see below)

``--diagnose`` asks whether the stage-1 teacher carries more class information than a random
teacher of the same architecture (its own initialisation), which RAD needs if distilling it is to
beat distilling the random one: a per-point linear probe of the frozen UNet (the protocol above),
a per-cell probe of its features mean-pooled into the BEV cells (exactly what RAD distils), and
how alike the teacher's cells are (mean cosine of cell pairs inside one region and across regions:
near-duplicate cells inside a region are near-duplicate negatives for RAD's cell-level InfoNCE).
It writes ``benchmarks/results/calico_diagnosis.md`` and leaves the README alone.

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
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired, write_block  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_distill.lidar import CLASS_NAMES, collate, linear_probe  # noqa: E402
from lightning_distill.lidar.bev import (  # noqa: E402
    BEVBackbone,
    bev_cells,
    bev_linear_probe,
    gather_from_bev,
    scatter_to_bev,
)
from lightning_distill.lidar.networks import (
    PointHead,  # noqa: E402
    sparse_point_features,  # noqa: E402
)
from lightning_distill.lidar.region_contrast import cell_regions  # noqa: E402
from lightning_distill.recipes.calico import CALICORAD  # noqa: E402

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


DIAG_ROWS = {
    "random_teacher": "random teacher (initialisation of the seed)",
    "prc_teacher": "PRC-trained teacher",
}


def cell_similarity(net, loader, grid, partition, voxel, feats) -> tuple[float, float]:
    """Mean cosine of the teacher's centred BEV cell features: pairs in one region, pairs of different regions."""
    same, other = [], []
    for batch in loader:
        points = batch["points"]
        with torch.no_grad():
            features = sparse_point_features(net, points, voxel_size=voxel, input_features=feats)
        where, inside = bev_cells(points, grid)
        bev = scatter_to_bev(features[inside], where[inside], int(points[:, 0].max()) + 1, grid)
        cells, region = cell_regions(points, partition(points), grid)
        rich = region >= 0
        f = gather_from_bev(bev, cells[rich])
        f = torch.nn.functional.normalize(f - f.mean(0), dim=1)  # centred: a shared offset is no information
        cos, r = f @ f.T, region[rich]
        pair_same = (r[:, None] == r[None, :]) & ~torch.eye(len(r), dtype=torch.bool)
        same.append(cos[pair_same].mean())
        other.append(cos[r[:, None] != r[None, :]].mean())
    return float(torch.stack(same).mean()), float(torch.stack(other).mean())


class _LabelTeacherRAD(CALICORAD):
    """RAD whose teacher BEV map is the one-hot class of the points mean-pooled per cell: an oracle teacher.

    The sanity case of the transfer: a teacher whose features *are* the classes must hand class
    information to the BEV student if RAD transfers what the teacher knows.
    """

    def training_step(self, batch, batch_idx):
        self._labels = batch["labels"]
        return super().training_step(batch, batch_idx)

    def _evaluation_step(self, batch, stage):
        self._labels = batch["labels"]
        return super()._evaluation_step(batch, stage)

    def teacher_bev(self, points, batch_size):
        if len(self._labels) != len(points):
            raise ValueError("the labels do not match the points")
        onehot = torch.nn.functional.one_hot(self._labels, len(CLASS_NAMES)).to(points.dtype)
        cells, inside = bev_cells(points, self.grid)
        return scatter_to_bev(onehot[inside], cells[inside], batch_size, self.grid)


RAD_ROWS = {
    "rad_random": "RAD from the random teacher",
    "rad_prc": "RAD from the PRC-trained teacher",
    "rad_label": "RAD from a label teacher (one-hot classes per cell; oracle)",
}


def rad_student_probe(teacher, key, seed, data, epochs, probe_train, test, tmp) -> tuple[float, object]:
    """Fit RAD (rad.yaml) from ``teacher``'s weights; the BEV probe of the student."""
    path = Path(tmp) / f"{key}.pt"
    torch.save(teacher.state_dict(), path)
    rad = recipe_cli(RAD, seed, data + epochs + [f"--model.init_args.teacher.init_args.checkpoint={path}"])
    if key == "rad_label":
        rad.model.__class__ = _LabelTeacherRAD
        rad.model.teacher_head = PointHead(len(CLASS_NAMES), rad.model.hparams.feature_dim)
    student, grid = rad.model.student, rad.model.grid
    seconds = timed_fit(rad)[0]

    def bev_of(points):
        student.eval()
        with torch.no_grad():
            return student(points, int(points[:, 0].max()) + 1)

    return seconds, bev_linear_probe(
        bev_of, probe_train, test, grid=grid, num_classes=len(CLASS_NAMES), seed=seed
    )


def diagnose_seed(seed: int, args: argparse.Namespace, data: list[str], epochs: list[str]) -> dict[str, dict]:
    """Probes and cell similarities of the random and the PRC-trained teacher of one seed."""
    prc = recipe_cli(PRC, seed, data + epochs)
    random_teacher = recipe_cli(PRC, seed, data).model.student  # the same initialisation, never trained
    dm = prc.datamodule
    dm.setup("fit")
    probe_train = DataLoader(dm.scenes("train")[: args.probe_scenes], batch_size=4, collate_fn=collate)
    test = dm.test_dataloader()
    voxel, feats, partition = prc.model.voxel_size, prc.model.input_features, prc.model.partition
    grid = BEVBackbone(**yaml.safe_load(RAD.read_text())["model"]["init_args"]["student"]["init_args"]).grid
    train_s = timed_fit(prc)[0]
    out = {}
    for key, net in (("random_teacher", random_teacher), ("prc_teacher", prc.model.student)):
        net.eval()

        def teacher_of(points, net=net):
            with torch.no_grad():
                features = sparse_point_features(net, points, voxel_size=voxel, input_features=feats)
            cells, inside = bev_cells(points, grid)
            return scatter_to_bev(features[inside], cells[inside], int(points[:, 0].max()) + 1, grid)

        point = linear_probe(
            net,
            probe_train,
            test,
            num_classes=len(CLASS_NAMES),
            voxel_size=voxel,
            input_features=feats,
            seed=seed,
        )
        cell = bev_linear_probe(
            teacher_of, probe_train, test, grid=grid, num_classes=len(CLASS_NAMES), seed=seed
        )
        same, other = cell_similarity(net, test, grid, partition, voxel, feats)
        out[key] = {"point": point, "cell": cell, "same": same, "other": other, "train_s": train_s}
        print(
            f"  seed {seed} {key}: point mIoU {point.miou:.3f}, cell mIoU {cell.miou:.3f}, "
            f"cos same {same:.3f} other {other:.3f}",
            flush=True,
        )
    if args.rad_check:
        teachers = {"rad_random": random_teacher, "rad_prc": prc.model.student, "rad_label": random_teacher}
        with tempfile.TemporaryDirectory() as tmp:
            for key, teacher in teachers.items():
                seconds, result = rad_student_probe(teacher, key, seed, data, epochs, probe_train, test, tmp)
                out[key] = {"cell": result, "train_s": seconds}
                print(
                    f"  seed {seed} {key}: BEV student cell mIoU {result.miou:.3f} ({seconds:.0f} s)",
                    flush=True,
                )
    return out


def diagnosis_report(runs: dict[int, dict], args: argparse.Namespace, command: str, wall: float) -> str:
    seeds = args.seeds
    body = []
    for key, name in DIAG_ROWS.items():
        r = [runs[s][key] for s in seeds]
        body.append(
            [
                name,
                mean_std([x["point"].miou for x in r], scale=100, digits=1),
                mean_std([x["cell"].miou for x in r], scale=100, digits=1),
                *[
                    mean_std([float(x["cell"].iou[k]) for x in r], scale=100, digits=1)
                    for k in range(len(CLASS_NAMES))
                ],
                mean_std([x["same"] for x in r], digits=3),
                mean_std([x["other"] for x in r], digits=3),
            ]
        )
    headers = [
        "teacher",
        "point mIoU",
        "cell mIoU",
        *[f"cell {c}" for c in CLASS_NAMES],
        "cos in region",
        "cos across regions",
    ]

    def diff(measure: str) -> str:
        a = [runs[s]["prc_teacher"][measure].miou for s in seeds]
        b = [runs[s]["random_teacher"][measure].miou for s in seeds]
        better = sum(x > y for x, y in zip(a, b))
        return f"{paired(a, b, scale=100, digits=1)} ({better} / {len(seeds) - better} seeds better / worse)"

    lines = [
        generated_header("benchmarks/calico.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}. Does the stage-1 (PRC) teacher carry more class information than a "
        f"random teacher of the same architecture (the same seed's initialisation)? Data of `config.yaml`, "
        f"{args.epochs} epoch(s) of PRC. Linear probes on the labels of {args.probe_scenes} training scenes, "
        "scored on the test scenes, IoU in %: *point* is the per-point probe of the frozen UNet "
        "(`benchmarks/slidr.py`'s protocol), *cell* the per-cell probe of its features mean-pooled into the "
        "RAD student's BEV cells (what RAD distils). *cos* is the mean cosine similarity of the teacher's "
        "cell features (centred per batch) over pairs of semantic-rich test cells in one region / in different regions.",
        "",
        markdown_table(headers, body, align="l" + "r" * (len(headers) - 1)),
        "",
        "Paired by seed, PRC teacher minus random teacher (mIoU points):",
        "",
        f"- per-point probe: {diff('point')}",
        f"- per-cell probe: {diff('cell')}",
    ]
    if args.rad_check:
        body = []
        for key, name in RAD_ROWS.items():
            r = [runs[s][key]["cell"] for s in seeds]
            body.append(
                [
                    name,
                    mean_std([x.miou for x in r], scale=100, digits=1),
                    *[
                        mean_std([float(x.iou[k]) for x in r], scale=100, digits=1)
                        for k in range(len(CLASS_NAMES))
                    ],
                ]
            )

        def rad_diff(a: str, b: str) -> str:
            x = [runs[s][a]["cell"].miou for s in seeds]
            y = [runs[s][b]["cell"].miou for s in seeds]
            better = sum(u > v for u, v in zip(x, y))
            return (
                f"{paired(x, y, scale=100, digits=1)} ({better} / {len(seeds) - better} seeds better / worse)"
            )

        lines += [
            "",
            f"**Does RAD transfer what the teacher knows?** BEV student of `rad.yaml` ({args.epochs} epoch(s)) "
            "distilled from each teacher, per-cell linear probe (IoU in %). The label teacher's BEV map is the "
            "one-hot class of the points mean-pooled per cell (a trainable linear head on top, as for the others).",
            "",
            markdown_table(["teacher of RAD", "student cell mIoU", *CLASS_NAMES], body, align="l" + "r" * 7),
            "",
            f"- label teacher minus random teacher: {rad_diff('rad_label', 'rad_random')}",
            f"- PRC teacher minus random teacher: {rad_diff('rad_prc', 'rad_random')}",
        ]
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


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
    parser.add_argument(
        "--rad-check",
        action="store_true",
        help="with --diagnose: also distil RAD from the random, the PRC and a label (oracle) teacher",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="probe the PRC teacher against a random teacher; writes results/calico_diagnosis.md only",
    )
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
    if args.diagnose:
        runs = {seed: diagnose_seed(seed, args, data, epochs) for seed in args.seeds}
        text = diagnosis_report(runs, args, args.command, time.perf_counter() - start)
        write_block(
            results_dir(args) / "calico_diagnosis.md",
            text,
            create="# CALICO diagnosis: PRC teacher vs random teacher",
        )
        print(text)
        return
    runs = {seed: run_seed(seed, args, data, epochs) for seed in args.seeds}
    text = report(runs, args, args.command, time.perf_counter() - start)
    write_block(results_dir(args) / "calico.md", text, create="# CALICO benchmark")
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
