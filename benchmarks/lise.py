"""Toy-scale benchmark of LiSe: do image boxes and self-paced rounds improve pseudo-labels without 3D labels?

Every run is ``recipes/lise/config.yaml`` built through :class:`lightning_distill.cli.DistillCLI` with only
the seed, the data size and the round length changed. The pseudo-boxes of the training frames are scored
against their ground truth (never used for training) with the toolkit's
:class:`~lightning_distill.detection.metrics.DetectionAP` (BEV AP at the loose thresholds: car 0.5,
pedestrian / cyclist 0.25; per distance range) at each stage of the pipeline:

* clustering only: LiDAR boxes from ground removal + DBSCAN + box fitting (MODEST's seed labels);
* + image boxes: the 2D detector's boxes lifted with the LiDAR points in their frustum, kept beyond 10 m
  (LiSe's seed labels, what round 0 trains on);
* round r: the labels the student of round r - 1 gives, after adaptive sampling;
* final model: the detections of the aggregated model (weak-model aggregation of every round) and, as
  the ablation, of the last round's student alone.

The last two rows are also scored on held-out test scenes (detector AP). The 2D detector (trained on
first use on other scenes, from their 2D boxes) is shared by all seeds.

Usage (from the repository root)::

    nice -n 5 python benchmarks/lise.py --threads 1      # seeds 0 1 2
    python benchmarks/lise.py --quick                    # smoke run: 1 seed, short rounds, small data

Writes ``benchmarks/results/lise.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/lise/README.md``; ``--quick`` writes to ``benchmarks/results/quick/``
and leaves the README alone.
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
FOLDER = ROOT / "recipes" / "lise"
CONFIG, README = FOLDER / "config.yaml", FOLDER / "README.md"
SCOPES = ("0-20m", "20-40m", "40+m")


def label_ap(labels: dict, frames: list[dict]) -> dict[str, float]:
    """DetectionAP of per-frame pseudo-boxes (``{(scene, frame): {"boxes", "labels", "scores"}}``) vs ground truth."""
    metric = DetectionAP()
    for f in frames:
        got = labels[(int(f["scene"]), int(f["frame"]))]
        metric.update(
            [{"boxes": got["boxes"], "labels": got["labels"], "scores": got["scores"]}],
            [{"boxes": f["boxes"], "labels": f["labels"], "difficulty": f["difficulty"]}],
        )
    out = {k: float(v) for k, v in metric.compute().items() if torch.as_tensor(v).numel() == 1}
    out["boxes_per_frame"] = sum(len(v["boxes"]) for v in labels.values()) / max(1, len(labels))
    return out


def run_flags(args: argparse.Namespace, rounds: int, epochs: int) -> list[str]:
    extra = []
    for prefix in ("--data.init_args", "--model.init_args.teacher.init_args.data.init_args"):
        extra += [f"{prefix}.num_scenes={args.scenes}", f"{prefix}.val_scenes=1", f"{prefix}.test_scenes={args.test_scenes}",
                  f"{prefix}.batch_size={args.batch_size}"]  # fmt: skip
    teacher = "--model.init_args.teacher.init_args"
    extra += [
        f"{teacher}.held_out_scenes={args.teacher_scenes}", f"{teacher}.epochs={args.teacher_epochs}",
        f"--model.init_args.rounds={rounds}",
        f"--model.init_args.epochs_per_round={args.epochs_per_round}", f"--trainer.max_epochs={epochs}",
        f"--trainer.check_val_every_n_epoch={epochs}", "--trainer.callbacks=[]",
    ]  # fmt: skip
    return extra


def run(seed: int, args: argparse.Namespace) -> dict:
    epochs = (args.rounds + 1) * args.epochs_per_round
    cli = recipe_cli([CONFIG], seed, run_flags(args, args.rounds, epochs))
    model, dm = cli.model, cli.datamodule
    dm.setup("fit")
    frames = dm.frames("train")
    stages: dict[str, dict[str, float]] = {}
    model.use_images = False
    stages["clustering only"] = label_ap(model.seed_labels(frames), frames)
    model.use_images = True
    real_relabel = model.relabel

    def recording_relabel(m, fr, power):  # score every round's labels as the recipe makes them
        labels = real_relabel(m, fr, power)
        name = f"round {len(stages)} labels (sampling power {power:.2f})"
        if not any(len(v["boxes"]) for v in labels.values()):  # the recipe keeps the previous labels then
            name, labels_used = name + ", nothing above threshold: previous kept", model.labels
        else:
            labels_used = labels
        stages[name] = label_ap(labels_used, frames)
        return labels

    model.relabel = recording_relabel
    fit_s, _ = timed_fit(cli)
    stages = {"clustering only": stages.pop("clustering only"), "+ image boxes (seed labels)": None, **stages}
    stages["+ image boxes (seed labels)"] = label_ap(model.seed_labels(frames), frames)
    final = {}
    for name, net in (("aggregated", model.final_model()), ("last student", model.student)):
        detections = {}
        net.eval()
        with torch.no_grad():
            for f in frames:
                n = len(f["points"])
                det = net.detect(net(f["points"], torch.zeros(n, dtype=torch.long), 1), nms=model._nms())[0]
                detections[(int(f["scene"]), int(f["frame"]))] = det
        dm.setup("test")
        final[name] = {
            "train": label_ap(detections, frames),
            "test": detection_ap(net, dm.test_dataloader(), DetectionAP()),
        }
    print(f"  seed {seed}: " + ", ".join(f"{k} {v['ap_bev_loose/mean']:.3f}" for k, v in stages.items())
          + f"; final test {final['aggregated']['test']['ap_bev_loose/mean']:.3f} (fit {fit_s:.0f} s)", flush=True)  # fmt: skip
    return {"stages": stages, "final": final, "fit_s": fit_s, "steps": cli.trainer.global_step}


def diagnose(args: argparse.Namespace) -> str:
    """Two references at one seed: seed labels with the generator's own 2D boxes (a perfect 2D detector), and the
    same detector and steps trained on the ground-truth boxes (what this budget allows any labels to teach)."""
    rows = []
    cli = recipe_cli([CONFIG], 0, run_flags(args, rounds=0, epochs=(args.rounds + 1) * args.epochs_per_round))
    model, dm = cli.model, cli.datamodule
    dm.setup("fit")
    frames = dm.frames("train")
    rows.append(
        ("+ image boxes, trained 2D detector (seed labels)", label_ap(model.seed_labels(frames), frames))
    )
    oracle = {}
    for f in frames:
        cams = range(f["K"].shape[0])
        dets = [{"boxes_2d": f["boxes_2d"][f["visible_2d"][:, c], c], "labels": f["labels"][f["visible_2d"][:, c]],
                 "scores": torch.ones(int(f["visible_2d"][:, c].sum()))} for c in cams]  # fmt: skip
        oracle[(int(f["scene"]), int(f["frame"]))] = model.pseudo_labeler(
            f["points"], dets, f["K"], f["T_cam_from_lidar"], tuple(f["images"].shape[-2:])
        )
    rows.append(("+ image boxes, the generator's 2D boxes (perfect 2D detector)", label_ap(oracle, frames)))
    start = model.on_fit_start

    def ground_truth_labels() -> None:  # the reference only: LiSe never reads these
        start()
        for f in frames:
            model.labels[(int(f["scene"]), int(f["frame"]))] = {"boxes": f["boxes"], "labels": f["labels"]}

    model.on_fit_start = ground_truth_labels
    timed_fit(cli)
    model.aggregate_round(frames)  # BatchNorm statistics refreshed as at a round end
    detections = {}
    with torch.no_grad():
        for f in frames:
            n = len(f["points"])
            detections[(int(f["scene"]), int(f["frame"]))] = model.student.detect(
                model.student(f["points"], torch.zeros(n, dtype=torch.long), 1), nms=model._nms()
            )[0]
    steps = cli.trainer.global_step
    rows.append(
        (
            f"detector trained {steps} steps on ground-truth boxes: its detections",
            label_ap(detections, frames),
        )
    )
    dm.setup("test")
    rows.append(
        ("the same, on the test scenes", detection_ap(model.student, dm.test_dataloader(), DetectionAP()))
    )
    headers = [
        "reference (seed 0)",
        "BEV AP mean",
        *[f"BEV AP {c}" for c in CLASSES],
        *[f"BEV AP {s}" for s in SCOPES],
    ]
    return markdown_table(headers, [[name, *cells([ap])[:7]] for name, ap in rows], align="l" + "r" * 7)


def cells(aps: list[dict[str, float]]) -> list[str]:
    keys = [
        "ap_bev_loose/mean",
        *[f"ap_bev_loose/{c}" for c in CLASSES],
        *[f"ap_bev_loose/mean/{s}" for s in SCOPES],
    ]
    out = [mean_std([a.get(k, float("nan")) for a in aps], 100, 1) for k in keys]
    return (
        out + [mean_std([a["boxes_per_frame"] for a in aps], digits=1)]
        if "boxes_per_frame" in aps[0]
        else out
    )


def report(runs: dict, seeds: list[int], command: str, wall: float, quick: bool, args) -> str:
    first = runs[seeds[0]]
    lines = [
        generated_header("benchmarks/lise.py", command, wall), "", machine_line(), "",
        f"Seeds {', '.join(map(str, seeds))} (`seed_everything`: detector initialisation and data order; the scenes "
        f"and the 2D detector are the same for every seed). {args.scenes} training scenes (16-beam LiDAR, 4 cameras "
        f"64 x 128), {args.test_scenes} test scenes; {args.rounds + 1} rounds (seed round + {args.rounds}) of "
        f"{args.epochs_per_round} epochs, batch {args.batch_size} ({first['steps']} steps in all); 2D detector trained on "
        f"{args.teacher_scenes} held-out scenes for {args.teacher_epochs} epochs. AP in % (R40, BEV "
        "IoU car 0.5, pedestrian / cyclist 0.25), mean ± sample std over seeds. No 3D box is used for training; the "
        "ground truth only scores the pseudo-labels.",
        "",
        "**Pseudo-labels of the training frames** (what the detector trains on at each stage):",
        "",
    ]  # fmt: skip
    headers = [
        "stage",
        "BEV AP mean",
        *[f"BEV AP {c}" for c in CLASSES],
        *[f"BEV AP {s}" for s in SCOPES],
        "boxes / frame",
    ]
    rows = [[name, *cells([runs[s]["stages"][name] for s in seeds])] for name in first["stages"]]
    for name in ("aggregated", "last student"):
        rows.append(
            [f"final model's detections ({name})", *cells([runs[s]["final"][name]["train"] for s in seeds])]
        )
    lines += [markdown_table(headers, rows, align="l" + "r" * (len(headers) - 1)), ""]
    lines += ["**Detector on held-out test scenes**:", ""]
    rows = [
        [name, *cells([runs[s]["final"][name]["test"] for s in seeds])]
        for name in ("aggregated", "last student")
    ]
    lines += [markdown_table(headers[:-1], rows, align="l" + "r" * (len(headers) - 2)), ""]
    key = "ap_bev_loose/mean"
    pairs = (
        ("+ image boxes (seed labels)", "clustering only", lambda r, n: r["stages"][n][key]),
        ("aggregated", "last student", lambda r, n: r["final"][n]["test"][key]),
    )
    lines += ["Paired by seed (points; seeds better / worse):", ""]
    for a, b, get in pairs:
        xs, ys = [100 * get(runs[s], a) for s in seeds], [100 * get(runs[s], b) for s in seeds]
        better = sum(x > y for x, y in zip(xs, ys))
        lines.append(f"- *{a}* minus *{b}*: {paired(xs, ys, digits=1)} ({better} / {len(seeds) - better})")
    far = "ap_bev_loose/mean/20-40m"
    xs = [100 * runs[s]["stages"]["+ image boxes (seed labels)"][far] for s in seeds]
    ys = [100 * runs[s]["stages"]["clustering only"][far] for s in seeds]
    lines.append(f"- 20-40 m, *+ image boxes* minus *clustering only*: {paired(xs, ys, digits=1)}")
    lines.append("")
    lines.append(f"Fit time per seed: {mean_std([runs[s]['fit_s'] for s in seeds], digits=0)} s wall.")
    if quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(
        __file__, __doc__, quick="1 seed, 2 rounds of 2 epochs, 4 training scenes, 2 test scenes"
    )
    parser.add_argument("--scenes", type=int, default=16, help="training scenes")
    parser.add_argument("--test-scenes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="self-training rounds after the seed round")
    parser.add_argument("--epochs-per-round", type=int, default=20)
    parser.add_argument(
        "--teacher-scenes", type=int, default=48, help="held-out scenes the 2D detector trains on"
    )
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="only the references (perfect 2D boxes; ground-truth training)",
    )
    parser.add_argument("--name", default="lise", help="results file benchmarks/results/<name>.md (lise*)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    if args.quick:
        args.seeds, args.rounds, args.epochs_per_round = args.seeds[:1], 1, 2
        args.scenes, args.test_scenes, args.batch_size = 4, 2, 2
        args.teacher_scenes, args.teacher_epochs = 4, 2
    start = time.perf_counter()
    if args.diagnose:
        table = diagnose(args)
        text = generated_header("benchmarks/lise.py", args.command, time.perf_counter() - start)
        text = f"{text}\n\n{machine_line()}\n\n{table}\n"
        (results_dir(args) / f"{args.name}.md").write_text("# LiSe benchmark: references\n\n" + text)
        print(text)
        return
    runs = {seed: run(seed, args) for seed in args.seeds}
    text = report(runs, args.seeds, args.command, time.perf_counter() - start, args.quick, args)
    (results_dir(args) / f"{args.name}.md").write_text("# LiSe benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
