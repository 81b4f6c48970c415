"""Mirage recipe: the steps on a hand example, errors, the artifact, and the CLI under fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from lightning_distill.cli import main as cli_main
from lightning_distill.data.graphs import load_mutag, prepare_mutag
from lightning_distill.graphs import GraphClassifier, GraphSet
from lightning_distill.recipes.mirage import Mirage, tree_set_graph

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "mirage" / "config.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def mutag_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MUTAG copied from the grakel wheel into a temporary folder (offline)."""
    return str(prepare_mutag(tmp_path_factory.mktemp("tu")))


def undirected(edges):
    return torch.tensor(edges + [(v, u) for u, v in edges], dtype=torch.long).t()


def toy_graphs():
    # Class 0: paths A-B-A; class 1: triangles of B, plus one path so that the classes share a tree.
    path = dict(x=torch.eye(2)[[0, 1, 0]], edge_index=undirected([(0, 1), (1, 2)]))
    tri = dict(x=torch.eye(2)[[1, 1, 1]], edge_index=undirected([(0, 1), (1, 2), (2, 0)]))
    return (
        [Data(**path, y=torch.tensor([0]))] * 3
        + [Data(**tri, y=torch.tensor([1]))] * 2
        + [Data(**path, y=torch.tensor([1]))]
    )


def recipe(**kwargs):
    kwargs.setdefault("edge_labels", False)
    return Mirage(GraphClassifier(2, 2, conv="gin", hidden=8, num_layers=1), depth=1, **kwargs)


def test_mirage_on_a_hand_example():
    graphs = toy_graphs()
    m = recipe(min_support=0.6)
    index = m.computation_trees(graphs)
    # depth-1 trees: A(B) in paths, B(A,A) in paths, B(B,B) in triangles
    assert sorted(index.labels) == ["0(1)", "1(0,0)", "1(1,1)"]
    patterns = m.mine(index, [int(g.y) for g in graphs])
    ids = {label: k for k, label in enumerate(index.labels)}
    path_set = frozenset({ids["0(1)"], ids["1(0,0)"]})
    assert {p.items: p.count for p in patterns[0]} == {
        frozenset({ids["0(1)"]}): 3,
        frozenset({ids["1(0,0)"]}): 3,
        path_set: 3,
    }
    assert {p.items: p.count for p in patterns[1]} == {frozenset({ids["1(1,1)"]}): 2}  # 2 of 3 >= 0.6
    graph_set = m.distill(graphs)
    assert len(graph_set) == 4 and graph_set.labels.tolist() == [0, 0, 0, 1]
    assert graph_set.weights == [3.0, 3.0, 3.0, 2.0]
    union = graph_set.graphs[2]  # the two path trees: A(B) with 2 nodes and B(A,A) with 3
    assert union.num_nodes == 5 and union.root_mask.sum() == 2
    assert union.edge_index[1].tolist() == [0, 2, 2]  # child -> root in each tree


@pytest.mark.filterwarnings("ignore:Classes")
def test_class_specific_drops_tree_sets_frequent_in_both_classes():
    graphs = toy_graphs()
    shared = recipe(min_support=0.3, class_specific=False).distill(graphs)
    specific = recipe(min_support=0.3, class_specific=True).distill(graphs)
    assert len(specific) < len(shared)
    assert specific.labels.tolist() == [1]  # only the triangle tree is specific; every path set is shared


def test_tree_set_graph_keeps_every_tree():
    a = Data(x=torch.ones(2, 1), edge_index=torch.tensor([[1], [0]]), root_mask=torch.tensor([True, False]))
    graph = tree_set_graph([a, a], 1)
    assert graph.edge_index.tolist() == [[1, 3], [0, 2]] and graph.root_mask.tolist() == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="empty"):
        tree_set_graph([], 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 0}, "depth"),
        ({"min_support": 0.0}, "min_support"),
        ({"min_support": [0.5, 1.5]}, "min_support"),
        ({"max_pattern_size": 0}, "max_pattern_size"),
        ({"eval_steps": 0}, "eval_steps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mirage(GraphClassifier(2, 2, num_layers=1), **{"depth": 1, **kwargs})


def test_no_frequent_tree_set_and_wrong_support_count_raise():
    graphs = toy_graphs()
    with pytest.raises(ValueError, match="min_support"):
        recipe(min_support=[0.5, 0.5, 0.5]).distill(graphs)
    with pytest.raises(ValueError, match="empty"):
        recipe().distill([])


def test_mutag_set_reloads_and_trains_to_the_same_accuracy(tmp_path, mutag_root):
    from lightning_distill.graphs import graph_accuracy, train_graph_classifier

    dataset = load_mutag(mutag_root)
    graphs = [dataset[i] for i in range(60)]
    m = Mirage(GraphClassifier(7, 2, conv="gin", hidden=8, num_layers=2), depth=2, min_support=0.5)
    graph_set = m.distill(graphs)
    roots = [int(g.root_mask.sum()) for g in graph_set.graphs]
    assert roots == [len(trees) for trees, _ in graph_set.metadata["tree_sets"]]  # one root per mined tree
    loaded = GraphSet.load(graph_set.save(tmp_path / "mirage_set.pt"))
    test = [dataset[i] for i in range(60, 100)]
    accs = [
        graph_accuracy(train_graph_classifier(s.graphs, m.student, steps=5, seed=0), test)
        for s in (graph_set, loaded)
    ]
    assert accs[0] == accs[1]


def test_fast_dev_run_through_the_cli(tmp_path, mutag_root, capsys):
    args = [
        "--config",
        str(CONFIG),
        f"--data.init_args.root={mutag_root}",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
    ]
    cli_main(["fit", *args, "--trainer.fast_dev_run=true"])
    cli_main(["test", *args, "--trainer.logger=false"])
    assert "test/syn_acc" in capsys.readouterr().out
