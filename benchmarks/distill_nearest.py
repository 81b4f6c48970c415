"""Toy-scale benchmark of DistillNearest / DistillWeighted: does the task-similarity score find the sources that transfer?

Every run is ``recipes/distill_nearest/config.yaml`` built through the CLI with only the seed and
the keys in the table changed: target task = the ten digits of the rotated-MNIST domain with 5% of
the training labels (the rest unlabelled), the same zoo of seven source models (trained on first
use, cached), target model, optimizer and epochs. The run's seed sets the initialisation, the data
order, the train/val/test split and the labelled subset; the sources are trained on the same split
seed so that none of them has seen a target test image.

Measured per seed:

* the GBC score of every source on the labelled target images, and the test accuracy of the target
  model distilled from that source alone (``sources: [k]``): their Spearman rank correlation
  (scipy) is the paper's premise that the score predicts transfer;
* DistillNearest (the best-scoring source), DistillWeighted (the three best, softmax of the scores),
  distillation from the generic source (five pooled domains, all digits: the ImageNet-like source of
  the zoo), no distillation (cross-entropy on the labelled images only) and, for reference, the best
  single source in hindsight.

Usage (from the repository root)::

    python benchmarks/distill_nearest.py --threads 1     # seeds 0 1 2
    python benchmarks/distill_nearest.py --quick         # smoke run: 1 seed, 5 epochs

Writes ``benchmarks/results/distill_nearest.md`` and the block between ``<!-- results:start -->``
and ``<!-- results:end -->`` in ``recipes/distill_nearest/README.md``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "distill_nearest" / "config.yaml"
README = ROOT / "recipes" / "distill_nearest" / "README.md"
GENERIC = 0  # index of the generic (pooled-domain) source in config.yaml's zoo
NO_DISTILL = {"features": 0.0, "pseudo_labels": 0.0}


def config_for(seed: int, epochs: int | None) -> dict:
    """config.yaml with the data split seed = ``seed`` for the target data and every source."""
    config = yaml.safe_load(CONFIG.read_text())
    config["data"]["init_args"]["seed"] = seed
    for teacher in config["model"]["init_args"]["teachers"]:
        teacher["init_args"]["split_seed"] = seed
    if epochs is not None:
        config["trainer"]["max_epochs"] = epochs
    return config


def fit(config: dict, seed: int, **init_args) -> dict:
    config = copy.deepcopy(config)
    config["model"]["init_args"].update(init_args)
    with tempfile.TemporaryDirectory() as work:
        cli = recipe_cli(config, seed, workdir=work)
        t0 = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        seconds = time.perf_counter() - t0
    model = cli.model.eval()
    x, y, _ = cli.datamodule.split("test")
    with torch.no_grad():
        acc = float(
            torch.cat([model(x[i : i + 512]).argmax(-1) for i in range(0, len(x), 512)]).eq(y).float().mean()
        )
    names = [getattr(t, "name", str(k)) for k, t in enumerate(model.teachers)]
    return {"acc": acc, "scores": model.scores.tolist(), "weights": model.weights.tolist(), "names": names,
            "labelled": int((cli.datamodule.split("train")[1] >= 0).sum()), "fit_s": seconds}  # fmt: skip


def run(seed: int, epochs: int | None) -> dict:
    config = config_for(seed, epochs)
    count = len(config["model"]["init_args"]["teachers"])
    out: dict = {"per_source": []}
    for k in range(count):
        out["per_source"].append(fit(config, seed, sources=[k]))
        print(f"  seed {seed} source {k} ({out['per_source'][k]['names'][k]}): score "
              f"{out['per_source'][k]['scores'][k]:.3f}, acc {out['per_source'][k]['acc']:.3f}", flush=True)  # fmt: skip
    scores = out["per_source"][0]["scores"]
    accs = [r["acc"] for r in out["per_source"]]
    nearest = max(range(count), key=lambda k: (scores[k], -k))
    out["scores"], out["accs"], out["names"] = scores, accs, out["per_source"][0]["names"]
    out["spearman"] = float(spearmanr(scores, accs).statistic)
    out["nearest"] = {"acc": accs[nearest], "source": nearest}
    out["generic"] = {"acc": accs[GENERIC]}
    out["oracle"] = {"acc": max(accs), "source": max(range(count), key=lambda k: accs[k])}
    out["weighted"] = fit(config, seed, num_sources=3)
    out["none"] = fit(config, seed, loss_weights=NO_DISTILL)
    print(f"  seed {seed}: spearman {out['spearman']:.2f}, nearest {out['nearest']['acc']:.3f}, weighted "
          f"{out['weighted']['acc']:.3f}, generic {out['generic']['acc']:.3f}, none {out['none']['acc']:.3f}", flush=True)  # fmt: skip
    return out


ROWS = (
    (
        "none",
        "No distillation (CE on the labelled images)",
        "`loss_weights: {features: 0, pseudo_labels: 0}`",
    ),
    ("generic", "Distil the generic source (5 pooled domains, all digits)", "`sources: [0]`"),
    ("nearest", "DistillNearest (best GBC score; config)", "none"),
    ("weighted", "DistillWeighted (3 best, softmax of GBC)", "`num_sources: 3` (weighted.yaml)"),
    ("oracle", "Best single source in hindsight (reference)", "`sources: [k]`, best test acc"),
)


def report(runs: dict, seeds: list[int], command: str, wall: float, quick: bool) -> str:
    first = runs[seeds[0]]
    rows = [
        [name, change, mean_std([runs[s][key]["acc"] for s in seeds], 100, 1)] for key, name, change in ROWS
    ]
    source_rows = []
    for k, name in enumerate(first["names"]):
        source_rows.append([
            f"{k}: `{name}`",
            mean_std([runs[s]["scores"][k] for s in seeds], 1, 2),
            mean_std([runs[s]["accs"][k] for s in seeds], 100, 1),
            sum(runs[s]["nearest"]["source"] == k for s in seeds),
            mean_std([runs[s]["weighted"]["weights"][k] for s in seeds], 1, 2),
        ])  # fmt: skip
    rho = [runs[s]["spearman"] for s in seeds]
    lines = [
        generated_header("benchmarks/distill_nearest.py", command, wall),
        "",
        machine_line(),
        "",
        f"Target: the ten digits of rotated MNIST, {first['none']['labelled']} labelled training images (5%, 4 per "
        "class) and the rest of the domain's training split unlabelled; test: the domain's test split. Seeds "
        f"{', '.join(map(str, seeds))} (initialisation, data order, split and labelled subset; the sources are "
        "trained on the same split). Accuracy in %, mean ± sample std over seeds.",
        "",
        f"**Spearman rank correlation between the GBC score and the accuracy each source gives when distilled "
        f"alone: {mean_std(rho, 1, 2)}** (per seed: {', '.join(f'{r:.2f}' for r in rho)}; 7 sources).",
        "",
        markdown_table(["target model", "what differs from config.yaml", "test acc"], rows, align="llr"),
        "",
        markdown_table(
            [
                "source (task@domains)",
                "GBC score",
                "test acc distilled alone",
                "picked by Nearest (seeds)",
                "DistillWeighted weight",
            ],
            source_rows,
            align="lrrrr",
        ),  # fmt: skip
        "",
        "Paired by seed (accuracy points, mean ± std; seeds better / worse):",
        "",
    ]
    for a, b in (("nearest", "generic"), ("weighted", "generic"), ("nearest", "none"), ("weighted", "none"),
                 ("weighted", "nearest")):  # fmt: skip
        x = [runs[s][a]["acc"] for s in seeds]
        z = [runs[s][b]["acc"] for s in seeds]
        better = sum(u > v for u, v in zip(x, z))
        name_a = next(r[1] for r in ROWS if r[0] == a)
        name_b = next(r[1] for r in ROWS if r[0] == b)
        lines.append(
            f"- *{name_a}* minus *{name_b}*: {paired(x, z, scale=100, digits=1)} ({better} / {len(x) - better})"
        )
    if quick:
        lines.insert(1, "**Quick smoke run (`--quick`): not a result.**")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 5 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    epochs = args.epochs
    if args.quick:
        args.seeds, epochs = args.seeds[:1], 5
    start = time.perf_counter()
    runs = {seed: run(seed, epochs) for seed in args.seeds}
    text = report(runs, args.seeds, args.command, time.perf_counter() - start, args.quick)
    (results_dir(args) / "distill_nearest.md").write_text("# DistillNearest benchmark\n\n" + text)
    print(text)
    update_readme(args, README, text)


if __name__ == "__main__":
    main()
