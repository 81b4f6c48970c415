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
    python benchmarks/lima.py --diagnose         # does cross-view aggregation pair the right pixels?

``--diagnose`` trains nothing. On the config's test windows it measures, for the (point, pixel)
pairs the recipe builds (``LiMA.current_pairs``), how often the pixel's ground-truth class is the
point's, and for the points seen by two cameras how often the two pixels show the same class,
each against pairs drawn at random; then, for the config's frozen image teacher (one
initialisation per seed), the cosine similarity (features centred over the batch) of the two
views of a point against a pixel three columns away in the same view, random pixels of the same
class and random pixels. It writes ``benchmarks/results/lima_diagnosis.md``.

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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_distill.lidar import CLASS_NAMES, collate, linear_probe  # noqa: E402
from lightning_distill.lidar.sequence import gather_pixel_features  # noqa: E402

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


def diagnose_seed(seed: int, extra: list[str]) -> dict[str, float]:
    """Label agreement of the recipe's pairs and teacher-feature agreement of a point's two views."""
    cli = build(seed, extra)
    dm, model = cli.datamodule, cli.model
    dm.setup("test")
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, list[float]] = {}

    def add(key: str, value: Tensor) -> None:
        sums.setdefault(key, []).append(float(value))

    for batch in dm.test_dataloader():
        pairs = model.current_pairs(batch)
        pixel = batch["pixel_labels"].flatten(0, 1)[pairs.image, pairs.v, pairs.u]
        point = batch["labels"][pairs.point]
        shuffled = torch.randperm(len(pixel), generator=generator)
        order = torch.argsort(pairs.point, stable=True)
        same_point = pairs.point[order][:-1] == pairs.point[order][1:]
        first, second = order[:-1][same_point], order[1:][same_point]
        other = second[torch.randperm(len(second), generator=generator)]
        views = torch.bincount(pairs.point)
        add("point_pixel", (pixel == point).float().mean())
        add("point_pixel_random", (pixel[shuffled] == point).float().mean())
        add("multi_view", (views > 1).sum() / (views > 0).sum())
        add("view_view", (pixel[first] == pixel[second]).float().mean())
        add("view_view_random", (pixel[first] == pixel[other]).float().mean())
        add("other_camera", (pairs.image[first] != pairs.image[second]).float().mean())
        with torch.no_grad():
            maps = model.teacher(batch["images"].flatten(0, 1))
            maps = F.interpolate(
                maps, size=tuple(batch["images"].shape[-2:]), mode="bilinear", align_corners=False
            )
        maps = maps - maps.mean(dim=(0, 2, 3), keepdim=True)
        f = F.normalize(gather_pixel_features(maps, pairs), dim=1)
        width = maps.shape[-1]
        inward = torch.where(pairs.u[first] < width // 2, pairs.u[first] + 3, pairs.u[first] - 3)
        near = F.normalize(maps[pairs.image[first], :, pairs.v[first], inward], dim=1)
        same_class = pixel[first] == pixel[other]
        add("cos_two_views", (f[first] * f[second]).sum(1).mean())
        add("cos_near_same_view", (f[first] * near).sum(1).mean())
        add("cos_random_same_class", (f[first] * f[other]).sum(1)[same_class].mean())
        add("cos_random", (f[first] * f[other]).sum(1).mean())
    out = {k: sum(v) / len(v) for k, v in sums.items()}
    print(f"  seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)
    return out


DIAG_ROWS = {
    "point_pixel": ("point label = its pixel's label (all pairs)", "point_pixel_random"),
    "view_view": ("two views of a point show the same class", "view_view_random"),
}
COS_ROWS = {
    "cos_two_views": "the two views of one point (different cameras)",
    "cos_near_same_view": "one view and the pixel 3 columns inward in the same image",
    "cos_random_same_class": "random pixel pairs of the same class",
    "cos_random": "random pixel pairs",
}


def diagnosis_report(runs: dict[int, dict], seeds: list[int], command: str, wall: float) -> str:
    def ms(key: str, scale: float = 100, digits: int = 1) -> str:
        return mean_std([runs[s][key] for s in seeds], scale=scale, digits=digits)

    rows = [[name, ms(key), ms(rand)] for key, (name, rand) in DIAG_ROWS.items()]
    cos = [[name, ms(key, scale=1, digits=3)] for key, name in COS_ROWS.items()]
    lines = [
        generated_header("benchmarks/lima.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (the frozen image teacher's initialisation and the random pairs; the "
        "pairs themselves are geometry, the same for every seed). The test windows of `recipes/lima/config.yaml`; "
        f"{ms('multi_view')} % of the paired points are seen by two cameras "
        f"({ms('other_camera')} % of those two views are in different cameras). Agreement in %, mean ± std over seeds.",
        "",
        markdown_table(
            ["pairs built by `LiMA.current_pairs`", "agreement", "random pairs"], rows, align="lrr"
        ),
        "",
        "Cosine similarity of the frozen image teacher's features (centred over each batch), a measure of "
        "how consistent the two views the aggregation averages are:",
        "",
        markdown_table(["pixel pair", "cosine"], cos, align="lr"),
    ]
    return "\n".join(lines) + "\n"


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
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="check the cross-view pairing against ground-truth labels; writes results/lima_diagnosis.md only",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    extra: list[str] = []
    if args.quick:
        args.seeds = args.seeds[:1]
        args.probe_scenes = min(args.probe_scenes, 8)
        extra = ["--data.init_args.num_scenes=8", "--data.init_args.test_scenes=2", "--trainer.max_epochs=1"]
    start = time.perf_counter()
    if args.diagnose:
        diag = {seed: diagnose_seed(seed, extra) for seed in args.seeds}
        text = diagnosis_report(diag, args.seeds, args.command, time.perf_counter() - start)
        (results_dir(args) / "lima_diagnosis.md").write_text(
            "# LiMA diagnosis: cross-view pairing\n\n" + text
        )
        print(text)
        return
    runs = {seed: run_seed(seed, args, extra) for seed in args.seeds}
    text = report(runs, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / "lima.md").write_text("# LiMA benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
