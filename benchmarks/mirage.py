"""Mirage on MUTAG: GCN / GIN / GAT trained on the Mirage set vs random real subsets vs full data.

Protocol: stratified 10-fold cross-validation of MUTAG (188 graphs; folds fixed by seed 0). For
every fold, the recipe (:class:`lightning_distill.recipes.mirage.Mirage`, with the settings of
``recipes/mirage/config.yaml``) distils the nine training folds; then, for every seed and
architecture, a fresh GNN trains on

* the Mirage set (tree sets, only roots pooled),
* a random class-stratified subset of real graphs with as many graphs as the Mirage set,
* a random class-stratified subset of real graphs with at least as many nodes as the Mirage set,
* the full training folds,

each for the same number of full-batch Adam steps (the config's ``eval_steps``, ``eval_lr``), and
is tested on the held-out fold (accuracy at the last step: no model selection on test). A seed's
accuracy is the mean over the 10 folds; the table gives mean ± std over the seeds. Sizes are per
fold (mean), counted as nodes, edges and numbers stored (node + edge features, edge indices, root
flags).

Usage (from the repository root)::

    nice -n 5 python benchmarks/mirage.py --threads 1     # 3 seeds x 10 folds
    python benchmarks/mirage.py --quick                   # smoke run: 1 seed, 2 folds, few steps

Writes ``benchmarks/results/mirage.md`` and the block between ``<!-- results:start -->`` and
``<!-- results:end -->`` in ``recipes/mirage/README.md``; ``--quick`` writes to
``benchmarks/results/quick/`` and leaves the README alone.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_parser, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402

from lightning_distill.data.graphs import GraphCVDataModule  # noqa: E402
from lightning_distill.graphs import (  # noqa: E402
    GraphClassifier,
    GraphSet,
    graph_accuracy,
    random_graph_subset,
    train_graph_classifier,
)
from lightning_distill.recipes.mirage import Mirage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "mirage" / "config.yaml"
README = ROOT / "recipes" / "mirage" / "README.md"
ARCHS = ("gcn", "gin", "gat")
METHODS = ("mirage", "random_graphs", "random_nodes", "full")
NAMES = {
    "mirage": "Mirage set",
    "random_graphs": "random real, same #graphs",
    "random_nodes": "random real, same #nodes",
    "full": "full training folds",
}


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 2 of the 10 folds, 10 steps")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--root", default="data/tu", help="where MUTAG is copied from the grakel wheel")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv, all_warnings=True)
    config = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    student_args = config["student"]["init_args"]
    steps = 10 if args.quick else config["eval_steps"]
    seeds = args.seeds[:1] if args.quick else args.seeds
    folds = range(2 if args.quick else args.folds)
    start = time.perf_counter()

    acc = {(m, a, s): [] for m in METHODS for a in ARCHS for s in seeds}  # one value per fold
    sizes = {m: [] for m in METHODS}  # storage() per fold (random: per fold and seed)
    distill_seconds, train_seconds = [], {m: [] for m in METHODS}
    for fold in folds:
        data = GraphCVDataModule(root=args.root, fold=fold, num_folds=args.folds, val_fraction=0.0)
        data.setup("fit")
        train, test = data.train_set, data.test_set
        recipe = Mirage(
            GraphClassifier(**student_args),
            depth=config["depth"],
            min_support=config["min_support"],
            class_specific=config["class_specific"],
            edge_labels=config["edge_labels"],
        )
        tic = time.perf_counter()
        mirage = recipe.distill(train)
        distill_seconds.append(time.perf_counter() - tic)
        sizes["mirage"].append(mirage.storage())
        sizes["full"].append(GraphSet(train).storage())
        for seed in seeds:
            sets = {
                "mirage": mirage,
                "random_graphs": random_graph_subset(train, len(mirage), seed=seed),
                "random_nodes": random_graph_subset(train, num_nodes=mirage.storage()["nodes"], seed=seed),
                "full": GraphSet(train),
            }
            sizes["random_graphs"].append(sets["random_graphs"].storage())
            sizes["random_nodes"].append(sets["random_nodes"].storage())
            for method, graph_set in sets.items():
                weights = graph_set.weights if method == "mirage" and config["sample_by_frequency"] else None
                for arch in ARCHS:
                    model = GraphClassifier(**{**student_args, "conv": arch})
                    tic = time.perf_counter()
                    trained = train_graph_classifier(
                        graph_set.graphs,
                        model,
                        steps=steps,
                        lr=config["eval_lr"],
                        seed=seed,
                        weights=weights,
                        batch_size=config["eval_batch_size"],
                    )
                    train_seconds[method].append(time.perf_counter() - tic)
                    acc[(method, arch, seed)].append(graph_accuracy(trained, test))
            print(
                f"fold {fold} seed {seed}: "
                + ", ".join(f"{m}/{a} {acc[(m, a, seed)][-1]:.2f}" for m in METHODS for a in ARCHS),
                flush=True,
            )

    wall = time.perf_counter() - start
    text = report(args, acc, sizes, distill_seconds, train_seconds, seeds, list(folds), steps, config, wall)
    (results_dir(args) / "mirage.md").write_text("# Mirage benchmark (MUTAG, 10-fold CV)\n\n" + text + "\n")
    print(text)
    update_readme(args, README, text)


def report(args, acc, sizes, distill_seconds, train_seconds, seeds, folds, steps, config, wall) -> str:
    def mean_size(method: str, key: str) -> float:
        return statistics.fmean(s[key] for s in sizes[method])

    rows = []
    for method in METHODS:
        cells = [NAMES[method]]
        cells += [f"{mean_size(method, k):.0f}" for k in ("graphs", "nodes", "edges", "numbers")]
        for arch in ARCHS:
            per_seed = [statistics.fmean(acc[(method, arch, s)]) for s in seeds]
            cells.append(mean_std(per_seed, scale=100, digits=1))
        cells.append(f"{statistics.fmean(train_seconds[method]):.2f}")
        rows.append(cells)
    table = markdown_table(
        [
            "training set",
            "graphs",
            "nodes",
            "edges",
            "numbers stored",
            "GCN acc %",
            "GIN acc %",
            "GAT acc %",
            "s / GNN",
        ],
        rows,
        align="lrrrrrrrr",
    )
    full, mir = mean_size("full", "numbers"), mean_size("mirage", "numbers")
    student = config["student"]["init_args"]
    lines = [
        generated_header("benchmarks/mirage.py", args.command, wall),
        machine_line(),
        "",
        ("**Quick smoke run: not a result.** " if args.quick else "")
        + f"MUTAG, stratified {args.folds}-fold CV ({len(folds)} folds run), seeds {seeds}; accuracy on the "
        f"held-out fold after {steps} full-batch Adam steps (lr {config['eval_lr']}), no model selection; "
        f"mean ± std over seeds of the {len(folds)}-fold mean. GNNs: {student['num_layers']} layers, width "
        f"{student['hidden']}, {student['readout']} readout (Mirage sets: roots only). Mirage: depth "
        f"{config['depth']}, min_support {config['min_support']}, class_specific {config['class_specific']}, "
        f"edge_labels {config['edge_labels']}. Sizes are means per fold.",
        "",
        table,
        "",
        f"Distillation time per fold: {mean_std(distill_seconds, digits=2)} s (CPU, no GPU, no training). "
        f"Mirage stores {full / mir:.1f}x fewer numbers than the full training folds "
        f"({mean_size('mirage', 'graphs'):.0f} vs {mean_size('full', 'graphs'):.0f} graphs, "
        f"{mean_size('mirage', 'nodes'):.0f} vs {mean_size('full', 'nodes'):.0f} nodes).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
