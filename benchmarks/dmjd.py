"""DMJD vs single-mask MAE with HOG targets: probe accuracy against pretraining time.

The paper's claim (arXiv 2301.00230): two masked views per image with disjoint visible patches,
plus the visible-token distillation term, reach a given accuracy with about 3.7x less pretraining
time than one mask per image. Here on MNIST-5k at 16x16 (4 px patches, 16 tokens; block masks of
2x2 patches, mask ratio 0.6), a 3-block 48-wide ViT-MAE. Both rows run ``recipes/dmjd/config.yaml``
through the CLI with the data and epochs changed; the baseline sets ``num_views: 1`` and
``loss_weights.vis: 0`` (MaskFeat-style MAE with HOG targets). Every ``--every`` epochs the
linear-probe accuracy on the validation split is measured with
:func:`lightning_distill.representation.probe_accuracy` and stamped with the process CPU time
spent training so far (probe time excluded; HOG targets, computed on the CPU, included).
"Time to target" is the training CPU time at the first checkpoint where a run reaches the
baseline's final accuracy (same seed); the ratio is baseline / DMJD.

Usage (from the repository root)::

    python benchmarks/dmjd.py              # seeds 0 1 2 (~3 CPU-min at one thread)
    python benchmarks/dmjd.py --quick      # smoke run: 1 seed, 2 epochs
    # on a busy machine, one process per seed, then the tables from their saved results:
    python benchmarks/dmjd.py --seeds 0 --no-readme & python benchmarks/dmjd.py --seeds 1 --no-readme & ...
    python benchmarks/dmjd.py --collect
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning.pytorch as L  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

from lightning_distill.representation import probe_accuracy  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "dmjd" / "config.yaml"
README = ROOT / "recipes" / "dmjd" / "README.md"
DATA = {
    "class_path": "lightning_distill.data.MNIST5kDataModule",
    "init_args": {"size": 16, "batch_size": 128, "shift": 1},
}


class ProbeCurve(L.Callback):
    """Every ``every`` epochs: validation linear-probe accuracy and the training CPU seconds so far."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.points: list[tuple[int, float, float]] = []  # (epoch, cpu seconds, probe accuracy)
        self._start = 0.0
        self._probe_cpu = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        before = time.process_time()
        train_cpu = before - self._start - self._probe_cpu
        acc = probe_accuracy(pl_module.student, trainer.datamodule, split="val", max_train_images=2000)["acc"]
        self._probe_cpu += time.process_time() - before
        self.points.append((epoch, train_cpu, acc))


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 epochs")
    parser.add_argument("--epochs", type=int, default=6, help="pretraining epochs of each run (default 6)")
    parser.add_argument("--every", type=int, default=2, help="probe every this many epochs (default 2)")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: build the tables from the per-seed results of earlier runs (one process per seed)",
    )
    return parser


def run_config(dmjd: bool, epochs: int) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["data"] = dict(DATA)
    model = config["model"]["init_args"]
    model["num_views"] = 2 if dmjd else 1
    model["loss_weights"] = {"mim": 1.0, "vis": 1.0 if dmjd else 0.0}
    config["trainer"]["max_epochs"] = epochs
    config["trainer"].pop("check_val_every_n_epoch", None)
    config["test_after_fit"] = False
    return config


def first_reaching(points: list[tuple[int, float, float]], target: float) -> tuple[int, float] | None:
    for epoch, cpu, acc in points:
        if acc >= target - 1e-9:
            return epoch, cpu
    return None


def main(argv=None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    every = 1 if args.quick else args.every
    start = time.perf_counter()
    store = results_dir(args) / "dmjd_runs"
    store.mkdir(exist_ok=True)
    tag = f"e{epochs}-every{every}"
    for seed in [] if args.collect else seeds:
        runs = {}
        for name in ("baseline", "dmjd"):
            with tempfile.TemporaryDirectory() as work:
                cli = recipe_cli(run_config(name == "dmjd", epochs), seed, workdir=work)
                curve = ProbeCurve(every)
                cli.trainer.callbacks.append(curve)
                timed_fit(cli)
            runs[name] = curve.points
            print(
                f"seed {seed} {name}: {[(e, round(c), round(a, 4)) for e, c, a in curve.points]}", flush=True
            )
        (store / f"{tag}-seed{seed}.json").write_text(json.dumps(runs))
    per_seed = [json.loads((store / f"{tag}-seed{seed}.json").read_text()) for seed in seeds]
    curves = {name: [[tuple(p) for p in runs[name]] for runs in per_seed] for name in ("baseline", "dmjd")}
    # accuracy against CPU time, per checkpoint
    rows = []
    for name, label in (
        ("baseline", "one mask, HOG (MaskFeat-style)"),
        ("dmjd", "DMJD: 2 disjoint views + vis. term"),
    ):
        for k, (epoch, _, _) in enumerate(curves[name][0]):
            rows.append(
                [
                    label,
                    str(epoch),
                    mean_std([c[k][1] for c in curves[name]], 1, 0),
                    mean_std([c[k][2] for c in curves[name]], 100, 1),
                ]
            )
    curve_table = markdown_table(
        ["pretraining", "epoch", "training CPU s", "val linear probe %"], rows, "lrrr"
    )
    ratio_rows, ratios_cpu, ratios_epochs = [], [], []
    for seed, base, dmjd in zip(seeds, curves["baseline"], curves["dmjd"]):
        target = base[-1][2]
        b, d = first_reaching(base, target), first_reaching(dmjd, target)
        if d is None:
            ratio_rows.append(
                [str(seed), f"{100 * target:.1f}", f"{b[1]:.0f} s (ep {b[0]})", "not reached", "-", "-"]
            )
            continue
        ratios_cpu.append(b[1] / d[1])
        ratios_epochs.append(b[0] / d[0])
        ratio_rows.append(
            [
                str(seed),
                f"{100 * target:.1f}",
                f"{b[1]:.0f} s (ep {b[0]})",
                f"{d[1]:.0f} s (ep {d[0]})",
                f"{b[1] / d[1]:.2f}",
                f"{b[0] / d[0]:.2f}",
            ]
        )
    ratio_table = markdown_table(
        [
            "seed",
            "target % (baseline final)",
            "baseline reaches it",
            "DMJD reaches it",
            "CPU-time ratio",
            "epoch ratio",
        ],
        ratio_rows,
        "lrrrrr",
    )
    summary = (
        f"Time-to-target ratio (baseline / DMJD), over the seeds where DMJD reached the target: CPU time "
        f"{mean_std(ratios_cpu)}, epochs {mean_std(ratios_epochs)} ({len(ratios_cpu)} of {len(seeds)} seeds)."
    )
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, time.perf_counter() - start),
            f"MNIST-5k 16x16 (3500 train / 750 val), mean ± std over seeds {seeds}; {machine_line()}.",
            curve_table,
            ratio_table,
            summary,
        ]
    )
    out = results_dir(args) / "dmjd.md"
    out.write_text(body + "\n")
    print(body)
    update_readme(args, README, body)


if __name__ == "__main__":
    main()
