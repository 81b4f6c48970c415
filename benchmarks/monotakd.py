"""Toy-scale benchmark of MonoTAKD: does a camera teaching assistant carry LiDAR knowledge into a monocular detector?

Every run is ``recipes/monotakd/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI`
with only the seed, the data size and the number of steps changed (the same for every row); the LiDAR
teacher and the camera teaching assistant (trained on first use with seed 0) are shared by all rows and
seeds. Rows:

* LiDAR teacher: the voxel detector, fed the points inside the front camera's image;
* teaching assistant: the full-width camera detector that also sees the projected LiDAR depth;
* student alone (``student_alone.yaml``): the half-width monocular detector, CenterPoint's loss only;
* + direct LiDAR imitation (``direct.yaml``): MSE between the student's and the LiDAR teacher's
  normalised BEV maps, the cross-modal baseline the paper argues against;
* + MonoTAKD (the config): imitation of the assistant's BEV + 0.2 x the residual spatial cues.

Only objects the front camera sees count (the generator's ``visible_2d``). Each detector is scored on
the test scenes with the toolkit's :class:`~lightning_distill.detection.metrics.DetectionAP`: BEV AP at
the loose thresholds (car 0.5, pedestrian / cyclist 0.25), per class and by distance range, and
nuScenes-style centre-distance AP.

Usage (from the repository root)::

    nice -n 5 python benchmarks/monotakd.py --threads 1      # seeds 0 1 2
    python benchmarks/monotakd.py --quick                    # smoke run: 1 seed, 4 steps, small data

Writes ``benchmarks/results/monotakd.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/monotakd/README.md``; ``--quick`` writes to
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
from lightning_distill.recipes.monotakd import camera_view_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "recipes" / "monotakd"
CONFIG, README = FOLDER / "config.yaml", FOLDER / "README.md"
# key: (name, what differs from config.yaml, extra config files)
ROWS = {
    "alone": ("student alone", "`student_alone.yaml`", [FOLDER / "student_alone.yaml"]),
    "direct": ("+ direct LiDAR imitation", "`direct.yaml`", [FOLDER / "direct.yaml"]),
    "takd": ("+ MonoTAKD (config)", "none", []),
}
SCOPES = ("0-20m", "20-40m", "40+m")
FROZEN = ("teacher", "assistant")


def data_flags(args: argparse.Namespace) -> list[str]:
    """The same data for the students, the teacher and the assistant (so their cache keys are shared)."""
    flags = []
    prefixes = ["--data.init_args"] + [f"--model.init_args.{m}.init_args.data.init_args" for m in FROZEN]
    for prefix in prefixes:
        flags += [
            f"{prefix}.num_scenes={args.scenes}",
            f"{prefix}.val_scenes=1",
            f"{prefix}.test_scenes={args.test_scenes}",
            f"{prefix}.batch_size={args.batch_size}",
        ]
    return flags + [f"--model.init_args.{m}.init_args.epochs={args.frozen_epochs}" for m in FROZEN]


@torch.no_grad()
def score(recipe, loader, model: str) -> dict[str, float]:
    """DetectionAP of the recipe's ``model`` on the objects the student's camera sees."""
    metric = DetectionAP()
    recipe.eval()
    for batch in loader:
        view = camera_view_batch(batch, recipe.camera)
        targets = [{"boxes": b, "labels": lb, "difficulty": d} for b, lb, d in zip(view["boxes"], view["labels"], view["difficulty"])]  # fmt: skip
        metric.update(recipe.detect(batch, model), targets)
    return {k: float(v) for k, v in metric.compute().items() if torch.as_tensor(v).numel() == 1}


def run(seed: int, key: str, args: argparse.Namespace) -> dict:
    extra = [*data_flags(args), f"--trainer.max_steps={args.steps}", "--trainer.max_epochs=-1"]
    extra.append("--trainer.limit_val_batches=0")
    cli = recipe_cli([CONFIG, *ROWS[key][2]], seed, extra)
    fit_s, _ = timed_fit(cli)
    dm = cli.datamodule
    dm.setup("test")
    out = {
        "ap": score(cli.model, dm.test_dataloader(), "student"),
        "fit_s": fit_s,
        "steps": cli.trainer.global_step,
        "step_s": fit_s / max(1, cli.trainer.global_step),
        "params": sum(p.numel() for n, p in cli.model.named_parameters() if not n.startswith("teachers.")),
        "frozen_params": [sum(p.numel() for p in t.parameters()) for t in cli.model.teachers],
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
    keys += [f"ap_dist/mean/{s}" for s in SCOPES]
    return [mean_std([a.get(k, float("nan")) for a in aps], 100, 1) for k in keys]


def report(runs: dict, frozen: dict, seeds: list[int], command: str, wall: float, args) -> str:
    first = runs[seeds[0]][args.rows[0]]
    lines = [
        generated_header("benchmarks/monotakd.py", command, wall),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: student initialisation and data order; the scenes, "
        f"the LiDAR teacher and the teaching assistant are the same for every seed). {args.scenes} training scenes, "
        f"{args.test_scenes} test scenes (16-beam synthetic LiDAR, one front camera 48 x 96, 90° field of view), "
        f"batch {args.batch_size}, {first['steps']} student steps per run; teacher and assistant trained "
        f"{args.frozen_epochs} epochs. Only objects the front camera sees count. AP in % (R40, BEV IoU car 0.5, "
        "pedestrian / cyclist 0.25; distance AP: nuScenes centre-distance thresholds), mean ± sample std over "
        "seeds.",
        "",
    ]
    headers = ["run", "what differs", "BEV AP mean", *[f"BEV AP {c}" for c in CLASSES]]
    headers += [f"BEV AP {s}" for s in SCOPES] + ["dist AP"] + [f"dist AP {s}" for s in SCOPES]
    headers += ["params", "s / step"]
    rows = [
        [
            "LiDAR teacher (camera-view points)",
            "—",
            *ap_cells([frozen["teacher"]]),
            f"{first['frozen_params'][0] / 1e3:.0f}k",
            "—",
        ],  # fmt: skip
        [
            "teaching assistant (camera + LiDAR depth)",
            "—",
            *ap_cells([frozen["assistant"]]),
            f"{first['frozen_params'][1] / 1e3:.0f}k",
            "—",
        ],  # fmt: skip
    ]
    for key in args.rows:
        name, change, _ = ROWS[key]
        r = [runs[s][key] for s in seeds]
        step = mean_std([x["step_s"] for x in r], digits=2)
        rows.append([name, change, *ap_cells([x["ap"] for x in r]), f"{r[0]['params'] / 1e3:.0f}k", step])
    lines += [markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2)), ""]
    lines += ["Paired by seed (points; seeds better / worse):", ""]
    pairs = (("takd", "alone"), ("direct", "alone"), ("takd", "direct"))
    for metric, label in (("ap_bev_loose/mean", "BEV AP mean"), ("ap_dist/mean", "dist AP")):
        for a, b in [(a, b) for a, b in pairs if a in args.rows and b in args.rows]:
            xs = [100 * runs[s][a]["ap"][metric] for s in seeds]
            ys = [100 * runs[s][b]["ap"][metric] for s in seeds]
            better = sum(x > y for x, y in zip(xs, ys))
            lines.append(
                f"- {label}, *{ROWS[a][0]}* minus *{ROWS[b][0]}*: {paired(xs, ys, digits=1)} "
                f"({better} / {len(seeds) - better})"
            )
    lines += [
        "",
        "The student's parameters include its residual branch (MonoTAKD row only); `s / step` is the wall time of "
        "a training step including the frozen models' forward passes.",
    ]
    if args.quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 4 steps, 4 training scenes, 2 test scenes")
    parser.add_argument("--steps", type=int, default=480, help="student optimizer steps per run")
    parser.add_argument(
        "--frozen-epochs", type=int, default=30, help="epochs of the teacher and the assistant"
    )
    parser.add_argument("--scenes", type=int, default=32, help="training scenes")
    parser.add_argument("--test-scenes", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run")
    parser.add_argument(
        "--name", default="monotakd", help="results file benchmarks/results/<name>.md (monotakd*)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.quick:
        args.seeds, args.steps, args.frozen_epochs = args.seeds[:1], 4, 1
        args.scenes, args.test_scenes, args.batch_size = 4, 2, 2
    start = time.perf_counter()
    runs = {seed: {key: run(seed, key, args) for key in args.rows} for seed in args.seeds}
    last = runs[args.seeds[0]][args.rows[-1]]
    frozen = {m: score(last["model"], last["loader"], m) for m in FROZEN}
    text = report(runs, frozen, args.seeds, args.command, time.perf_counter() - start, args)
    (results_dir(args) / f"{args.name}.md").write_text("# MonoTAKD benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
