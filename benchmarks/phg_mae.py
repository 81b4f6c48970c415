"""Toy-scale benchmark of PHG-MAE: does distilling the multi-modal mask ensemble into an RGB-only
student beat the same student trained on RGB and the labels alone?

Every student fit is ``recipes/phg_mae/config.yaml`` built through
:class:`lightning_distill.cli.DistillCLI`, with the seed and the keys named in each row changed.
The data: multi-modal street views (RGB, depth, noisy normals from an "expert", semantic labels),
160 training views of which a quarter (``labelled_fraction: 0.25``) carry semantic and depth labels,
40 test views. Rows, the same 8-wide RGB-only ``SmallSegNet`` (< 1M parameters), optimizer and
epochs:

* RGB alone: ``loss_weights: {kd: 0, depth_kd: 0}`` (CE + depth L1 on the labelled views only);
* PHG-MAE distilled: the config (soft CE + depth L1 to the ensemble on every view, plus the labels);
* the teacher's ensemble itself (mean over the hyperedges {rgb}, {normals}, {rgb, normals}; it
  reads the normals too), and two single hyperedges of the same teacher as diagnostics:
  {rgb, normals} (no ensemble) and {rgb} (the teacher on RGB only).

The teacher (16 wide) is trained per seed (teacher seed = run seed, on first use, cached) for
``--teacher-epochs``. Metrics on the 40 test views: mIoU over the six classes (sky ignored) and the
mean absolute depth error in metres over non-sky pixels; mean ± std over the seeds.

Usage (from the repository root)::

    python benchmarks/phg_mae.py --threads 1     # seeds 0 1 2
    python benchmarks/phg_mae.py --quick         # smoke run: 1 seed, 2 epochs

Writes ``benchmarks/results/phg_mae.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/phg_mae/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
from _harness import bench_parser, logged, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "phg_mae" / "config.yaml"
README = ROOT / "recipes" / "phg_mae" / "README.md"
TEACHER = "--model.init_args.teacher.init_args"
ROWS = {
    "rgb_alone": (
        "RGB-only student, labels alone (CE + depth L1)",
        ["--model.init_args.loss_weights={kd: 0.0, depth_kd: 0.0}"],
    ),
    "phg_mae": ("RGB-only student distilled from the PHG-MAE ensemble (config)", []),
}
EDGES = {"single_full": [["rgb", "normals"]], "single_rgb": [["rgb"]]}


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 student and 2 teacher epochs")
    parser.add_argument("--epochs", type=int, default=30, help="student epochs (default 30)")
    parser.add_argument("--teacher-epochs", type=int, default=60, help="teacher epochs (default 60)")
    parser.add_argument(
        "--labelled-fraction", type=float, default=0.25, help="labelled share of training views"
    )
    return parser


@torch.no_grad()
def teacher_scores(cli, edges: list[list[str]]) -> tuple[float, float]:
    """Test mIoU and depth error (m) of the recipe's teacher over other hyperedges."""
    from lightning_distill.losses.multimodal import masked_l1
    from lightning_distill.segmentation.hypergraph import encode_modalities
    from lightning_distill.segmentation.metrics import IoUTracker

    module = cli.model
    teacher, tracker, errors = module.teacher, IoUTracker(), []
    mask = torch.stack([torch.tensor([n in e for n in teacher.names]) for e in edges])
    for batch in cli.datamodule.test_dataloader():
        probs, depth = teacher.ensemble(encode_modalities(batch, teacher.num_classes, module.max_depth), mask)
        tracker.update("t", probs, batch["semantic"])
        errors.append(float(masked_l1(depth * module.max_depth, batch["depth"], batch["semantic"] >= 0)))
    return float(tracker.compute("t")["miou"]), sum(errors) / len(errors)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs, teacher_epochs = (2, 2) if args.quick else (args.epochs, args.teacher_epochs)
    start = time.perf_counter()
    keys = [*ROWS, "ensemble", *EDGES]
    miou: dict[str, list[float]] = {k: [] for k in keys}
    depth: dict[str, list[float]] = {k: [] for k in keys}
    data = "--data.init_args"
    for seed in seeds:
        for key, (_, flags) in ROWS.items():
            extra = [
                f"--trainer.max_epochs={epochs}", "--trainer.check_val_every_n_epoch=1000", "--trainer.callbacks=[]",
                f"{TEACHER}.epochs={teacher_epochs}", f"{TEACHER}.seed={seed}",
                f"{TEACHER}.data.init_args.num_train_scenes=40", f"{TEACHER}.data.init_args.num_eval_scenes=10",
                f"{TEACHER}.data.init_args.labelled_fraction={args.labelled_fraction}",
                f"{data}.num_train_scenes=40", f"{data}.num_eval_scenes=10",
                f"{data}.labelled_fraction={args.labelled_fraction}", *flags,
            ]  # fmt: skip
            cli = recipe_cli(CONFIG, seed, extra)
            fit_s, _ = timed_fit(cli)
            cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            miou[key].append(logged(cli, "test/miou"))
            depth[key].append(logged(cli, "test/depth_mae"))
            if key == "phg_mae":
                miou["ensemble"].append(logged(cli, "test/teacher_miou"))
                depth["ensemble"].append(logged(cli, "test/teacher_depth_mae"))
                for edge_key, edges in EDGES.items():
                    m, d = teacher_scores(cli, edges)
                    miou[edge_key].append(m)
                    depth[edge_key].append(d)
            print(
                f"seed {seed} {key}: mIoU {miou[key][-1]:.3f} depth {depth[key][-1]:.2f} m (fit {fit_s:.0f} s)",
                flush=True,
            )
    labels = {
        **{k: v[0] for k, v in ROWS.items()},
        "ensemble": "PHG-MAE teacher: ensemble over {rgb}, {normals}, {rgb, normals} (reads normals)",
        "single_full": "PHG-MAE teacher: one hyperedge {rgb, normals} (no ensemble)",
        "single_rgb": "PHG-MAE teacher: one hyperedge {rgb}",
    }
    rows = [[labels[k], mean_std(miou[k], digits=3), mean_std(depth[k], digits=2)] for k in keys]
    seconds = time.perf_counter() - start
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, seconds),
            f"Students: 8-wide RGB-only `SmallSegNet`, {epochs} epochs; teacher: 16-wide `MultiModalMAE`, "
            f"{teacher_epochs} epochs, teacher seed = seed; seeds {' '.join(map(str, seeds))}. 160 training views, "
            f"labelled fraction {args.labelled_fraction}; 40 test views; mIoU over 6 classes (sky ignored), "
            "depth: mean absolute error in metres over non-sky pixels.",
            markdown_table(["model", "test mIoU", "depth MAE (m)"], rows, align="lrr"),
            machine_line(),
        ]
    )
    out = results_dir(args) / "phg_mae.md"
    out.write_text(body + "\n")
    update_readme(args, README, body)
    print(body)


if __name__ == "__main__":
    main()
