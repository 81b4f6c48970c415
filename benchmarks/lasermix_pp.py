"""Toy-scale benchmark of LaserMix++: do unlabelled scans help when only a few scans are labelled?

Every run is ``recipes/lasermix_pp/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed and the keys named in the table changed; every run takes the same number of
optimizer steps on the same labelled scenes (``labelled_fraction`` of the training scenes, the
split fixed by ``split_seed``). Rows:

* supervised only: the labelled scans alone (``recipes/lasermix_pp/supervised.yaml``);
* LaserMix++ (the config): mean teacher, LaserMix of labelled and unlabelled scans, consistency and
  camera-to-LiDAR feature distillation;
* with ``--ablate``: LaserMix without the camera (distillation weight 0);
* full supervision: every training scene labelled, otherwise as the supervised-only row (the ceiling).

Each trained network segments the test scenes; the table gives the mIoU and per-class IoU
(:func:`lightning_distill.lidar.evaluate.segmentation_metrics`, the function the SLidR benchmark
uses) of the mean teacher (LaserMix predicts with it) and of the student. As in the SLidR benchmark,
the student's backbone is also linearly probed (frozen features, linear classifier on the labels of
``--probe-scenes`` training scenes, scored on the test scenes).

Usage (from the repository root)::

    nice -n 5 python benchmarks/lasermix_pp.py --threads 1        # seeds 0 1 2
    python benchmarks/lasermix_pp.py --quick                      # smoke run: 1 seed, 10 steps, small data

Writes ``benchmarks/results/lasermix_pp.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/lasermix_pp/README.md``; ``--quick`` writes to
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
from torch.utils.data import DataLoader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_parser, logged, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.lidar import CLASS_NAMES, collate, linear_probe, segmentation_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "lasermix_pp" / "config.yaml"
SUPERVISED = ROOT / "recipes" / "lasermix_pp" / "supervised.yaml"
README = ROOT / "recipes" / "lasermix_pp" / "README.md"
# key: (name, what differs from config.yaml, extra config files, extra flags)
ROWS = {
    "supervised": ("supervised only", "`supervised.yaml`: labelled scans only, CE", [SUPERVISED], []),
    "lasermix_pp": ("LaserMix++ (config)", "none", [], []),
    "lasermix": (
        "LaserMix, no camera",
        "`loss_weights.distill: 0`",
        [],
        ["--model.init_args.loss_weights.distill=0.0"],
    ),
    "full": (
        "full supervision (ceiling)",
        "`supervised.yaml`, `labelled_fraction: 1.0`",
        [SUPERVISED],
        ["--data.init_args.labelled_fraction=1.0"],
    ),
}


@torch.no_grad()
def test_predictions(module: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point classes and labels over a loader, module in eval mode."""
    module.eval()
    preds, labels = [], []
    for batch in loader:
        preds.append(module(batch["points"])[1].argmax(dim=1))
        labels.append(batch["labels"])
    return torch.cat(preds), torch.cat(labels)


def run(seed: int, key: str, args: argparse.Namespace, extra: list[str]) -> dict:
    _, _, configs, flags = ROWS[key]
    cli = recipe_cli([CONFIG, *configs], seed, extra + flags)
    fit_s, _ = timed_fit(cli)
    model, dm = cli.model, cli.datamodule
    test = dm.test_dataloader()
    classes = len(CLASS_NAMES)
    ema = segmentation_metrics(*test_predictions(model.ema_student, test), classes)
    student = segmentation_metrics(*test_predictions(model.student, test), classes)
    probe_train = DataLoader(dm.scenes("train")[: args.probe_scenes], batch_size=4, collate_fn=collate)
    probe = linear_probe(
        model.student.backbone,
        probe_train,
        test,
        num_classes=classes,
        voxel_size=model.student.voxel_size,
        input_features=model.student.input_features,
        seed=seed,
    )
    out = {
        "ema": ema,
        "student": student,
        "probe": probe,
        "fit_s": fit_s,
        "steps": cli.trainer.global_step,
        "labelled": len(dm.labelled_scenes),
        "confident": logged(cli, "diag/pseudo_confident"),
    }
    print(
        f"  seed {seed} {key}: EMA mIoU {ema.miou:.3f}, student {student.miou:.3f}, probe {probe.miou:.3f} "
        f"({out['steps']} steps, fit {fit_s:.0f} s)",
        flush=True,
    )
    return out


def report(runs: dict, seeds: list[int], keys: list[str], command: str, wall: float, quick: bool) -> str:
    first = runs[seeds[0]]
    scenes = first[keys[0]]
    lines = [
        generated_header("benchmarks/lasermix_pp.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: initialisation, data order, augmentation, band "
        f"draws; the scenes and the labelled split are the same for every seed). {first['supervised']['labelled']} "
        f"labelled training scenes ({ARGS.fraction_text}), {first['full']['labelled']} for full supervision; "
        f"{scenes['steps']} optimizer steps per run. IoU in % on the test scenes, mean ± sample std over seeds.",
        "",
    ]
    rows = []
    for key in keys:
        name, change = ROWS[key][0], ROWS[key][1]
        r = [runs[s][key] for s in seeds]
        rows.append(
            [
                name,
                change,
                mean_std([x["ema"].miou for x in r], 100, 1),
                mean_std([x["student"].miou for x in r], 100, 1),
                mean_std([x["probe"].miou for x in r], 100, 1),
                *[mean_std([float(x["ema"].iou[k]) for x in r], 100, 1) for k in range(len(CLASS_NAMES))],
                f"{sum(x['fit_s'] for x in r) / len(r):.0f}",
            ]
        )
    headers = ["run", "what differs", "mIoU (EMA)", "mIoU (student)", "linear probe"]
    headers += [f"{c} (EMA)" for c in CLASS_NAMES] + ["fit s"]
    lines += [markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2)), ""]
    lines += ["Paired by seed (mIoU points, mean ± std over seeds; seeds better / worse):", ""]
    pairs = [("lasermix_pp", "supervised"), ("full", "lasermix_pp")]
    if "lasermix" in keys:
        pairs.insert(1, ("lasermix_pp", "lasermix"))
        pairs.insert(2, ("lasermix", "supervised"))
    for a, b in pairs:
        for model in ("ema", "student"):
            xs = [100 * runs[s][a][model].miou for s in seeds]
            ys = [100 * runs[s][b][model].miou for s in seeds]
            better = sum(x > y for x, y in zip(xs, ys))
            lines.append(
                f"- {model}: *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(xs, ys, digits=1)} "
                f"({better} / {len(seeds) - better})"
            )
    confident = [runs[s]["lasermix_pp"]["confident"] for s in seeds]
    lines += [
        "",
        f"Share of unlabelled points with a confident pseudo-label (teacher probability >= 0.9) at the last "
        f"step of LaserMix++: {mean_std(confident, 100, 1)} %.",
    ]
    if quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 10 steps, 24 training scenes")
    parser.add_argument("--probe-scenes", type=int, default=24)
    parser.add_argument(
        "--ablate", action="store_true", help="add the LaserMix row without camera distillation"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    global ARGS
    ARGS = args = build_parser().start(argv, all_warnings=True)
    extra: list[str] = []
    if args.quick:
        args.seeds = args.seeds[:1]
        args.probe_scenes = min(args.probe_scenes, 4)
        extra = [
            "--data.init_args.num_scenes=24",
            "--data.init_args.test_scenes=4",
            "--data.init_args.labelled_fraction=0.1",
            "--trainer.max_steps=10",
        ]
    probe = recipe_cli(CONFIG, args.seeds[0], extra)
    ARGS.fraction_text = f"`labelled_fraction: {probe.datamodule.labelled_fraction}`"
    keys = ["supervised", "lasermix_pp", *(["lasermix"] if args.ablate else []), "full"]
    start = time.perf_counter()
    runs = {seed: {key: run(seed, key, args, extra) for key in keys} for seed in args.seeds}
    text = report(runs, args.seeds, keys, args.command, time.perf_counter() - start, args.quick)
    (results_dir(args) / "lasermix_pp.md").write_text("# LaserMix++ benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
