"""DMAE vs MAE at toy scale: linear-probe and k-NN accuracy at equal pretraining budget and at a fraction of it.

The paper's claim (arXiv 2208.12256): distilling a larger MAE teacher's intermediate features into
an MAE student, on the same visible patches, gives a better backbone than MAE alone at the same
budget, and matches MAE with a fraction of the budget. Here on MNIST-5k at 16x16 (4 px patches,
16 tokens), a 3-block 48-wide student and a 6-block 96-wide teacher MAE-pretrained on first use.
Every row runs the recipe's own ``recipes/dmae/config.yaml`` through the CLI with the data, the
teacher and the epochs changed; "MAE" is the same recipe with ``loss_weights.distill = 0``. The
backbones are scored with :func:`lightning_distill.representation.probe_accuracy` (logistic
regression and k-NN on mean-pooled final tokens, test split), the part the recipe logs from.

Usage (from the repository root)::

    python benchmarks/dmae.py              # seeds 0 1 2 (~4 CPU-min at one thread)
    python benchmarks/dmae.py --quick      # smoke run: 1 seed, 2 and 1 epochs, small teacher budget
    # on a busy machine, one process per seed, then the table from their saved results:
    python benchmarks/dmae.py --seeds 0 --no-readme & python benchmarks/dmae.py --seeds 1 --no-readme & ...
    python benchmarks/dmae.py --collect
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

from lightning_distill.representation import probe_accuracy  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "dmae" / "config.yaml"
README = ROOT / "recipes" / "dmae" / "README.md"

DATA = {
    "class_path": "lightning_distill.data.MNIST5kDataModule",
    "init_args": {"size": 16, "batch_size": 128, "shift": 1},
}
TEACHER_VIT = {
    "image_size": 16,
    "patch_size": 4,
    "hidden_size": 96,
    "num_layers": 6,
    "num_heads": 4,
    "decoder_hidden_size": 32,
    "decoder_layers": 1,
    "decoder_heads": 4,
}


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 and 1 epochs, a 3-epoch teacher")
    parser.add_argument("--epochs", type=int, default=8, help="full pretraining budget in epochs (default 8)")
    parser.add_argument(
        "--fraction", type=float, default=1 / 4, help="the reduced budget as a fraction (default 1/4)"
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=15, help="MAE epochs of the teacher (default 15)"
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: build the table from the per-seed results of earlier runs (one process per seed)",
    )
    return parser


def run_config(distill: bool, epochs: int, teacher_epochs: int) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["data"] = copy.deepcopy(DATA)
    model = config["model"]["init_args"]
    model["teacher"]["init_args"]["data"] = copy.deepcopy(DATA)
    model["teacher"]["init_args"]["model"]["init_args"] = dict(TEACHER_VIT)
    model["teacher"]["init_args"]["epochs"] = teacher_epochs
    model["teacher_layer"] = 5
    model["loss_weights"] = {"pixel": 1.0, "distill": 1.0 if distill else 0.0}
    config["trainer"]["max_epochs"] = epochs
    config["trainer"].pop("check_val_every_n_epoch", None)
    config["test_after_fit"] = False
    return config


def main(argv=None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    full = 2 if args.quick else args.epochs
    short = max(1, round(full * args.fraction))
    teacher_epochs = 3 if args.quick else args.teacher_epochs
    start = time.perf_counter()
    rows_spec = [("MAE", False, full), ("DMAE", True, full), ("MAE", False, short), ("DMAE", True, short)]
    store = results_dir(args) / "dmae_runs"
    store.mkdir(exist_ok=True)
    tag = f"e{full}-f{short}-t{teacher_epochs}"
    for seed in [] if args.collect else seeds:
        runs = {}
        for name, distill, epochs in rows_spec:
            with tempfile.TemporaryDirectory() as work:
                cli = recipe_cli(run_config(distill, epochs, teacher_epochs), seed, workdir=work)
                if "teacher" not in runs:
                    runs["teacher"] = probe_accuracy(cli.model.teacher, cli.datamodule, split="test")
                    runs["random"] = probe_accuracy(cli.model.student, cli.datamodule, split="test")
                wall, cpu = timed_fit(cli)
                scores = probe_accuracy(cli.model.student, cli.datamodule, split="test")
            runs[f"{name}@{epochs}"] = {**scores, "cpu": cpu}
            print(
                f"seed {seed} {name}@{epochs}: probe {scores['acc']:.4f} knn {scores['knn_acc']:.4f} cpu {cpu:.0f}s",
                flush=True,
            )
        (store / f"{tag}-seed{seed}.json").write_text(json.dumps(runs, indent=1))
    per_seed = [json.loads((store / f"{tag}-seed{seed}.json").read_text()) for seed in seeds]
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    for runs in per_seed:
        for name, _, epochs in rows_spec:
            cell = results.setdefault((name, epochs), {"acc": [], "knn": [], "cpu": []})
            cell["acc"].append(runs[f"{name}@{epochs}"]["acc"])
            cell["knn"].append(runs[f"{name}@{epochs}"]["knn_acc"])
            cell["cpu"].append(runs[f"{name}@{epochs}"]["cpu"])
    random_scores = {k: [r["random"][k] for r in per_seed] for k in ("acc", "knn_acc")}
    teacher_scores = per_seed[0]["teacher"]
    rows = [
        [
            f"{name}",
            f"{epochs}",
            mean_std(c["acc"], 100, 1),
            mean_std(c["knn"], 100, 1),
            mean_std(c["cpu"], 1, 0),
        ]
        for (name, epochs), c in results.items()
    ]
    rows.append(
        [
            "student, random init",
            "0",
            mean_std(random_scores["acc"], 100, 1),
            mean_std(random_scores["knn_acc"], 100, 1),
            "-",
        ]
    )
    rows.append(
        [
            f"teacher (6x96, MAE {teacher_epochs} ep)",
            f"{teacher_epochs}",
            f"{100 * teacher_scores['acc']:.1f}",
            f"{100 * teacher_scores['knn_acc']:.1f}",
            "-",
        ]
    )
    table = markdown_table(
        ["pretraining", "epochs", "linear probe %", "k-NN %", "student CPU s"], rows, "llrrr"
    )
    body = "\n\n".join(
        [
            generated_header(build_parser().script, args.command, time.perf_counter() - start),
            f"MNIST-5k 16x16 (3500 train / 750 test), mean ± std over seeds {seeds}; {machine_line()}.",
            table,
        ]
    )
    out = results_dir(args) / "dmae.md"
    out.write_text(body + "\n")
    print(body)
    update_readme(args, README, body)


if __name__ == "__main__":
    main()
