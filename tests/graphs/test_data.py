"""MUTAG offline, stratified folds, the classifiers, training on graph lists, graph sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from lightning_distill.data.graphs import GraphCVDataModule, load_mutag, stratified_folds
from lightning_distill.graphs import (
    GraphClassifier,
    GraphSet,
    graph_accuracy,
    random_graph_subset,
    train_graph_classifier,
)


def test_mutag_loads_offline_with_188_graphs(mutag_root):
    dataset = load_mutag(mutag_root)
    assert len(dataset) == 188
    assert dataset.num_features == 7 and dataset.num_classes == 2
    assert dataset.y.bincount().tolist() == [63, 125]
    assert dataset[0].edge_attr.shape[1] == 4


def test_folds_are_stratified_and_partition_the_data():
    labels = np.array([0] * 30 + [1] * 60)
    folds = stratified_folds(labels, 10, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(90))
    assert all(np.bincount(labels[f]).tolist() == [3, 6] for f in folds)


def test_datamodule_splits_do_not_overlap(mutag_root):
    data = GraphCVDataModule(root=mutag_root, fold=3, val_fraction=0.1)
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 188
    assert len(data.test_set) in (18, 19)
    train, val, test = (set(data.indices[k]) for k in ("train", "val", "test"))
    assert not (train & test) and not (val & test) and not (train & val)
    assert set(stratified_folds(load_mutag(mutag_root).y.numpy(), 10, 0)[3].tolist()) == test
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, Batch) and batch.num_graphs == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "PROTEINS"}, "name"),
        ({"fold": 10}, "fold"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_datamodule_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphCVDataModule(**kwargs)


def test_classifier_bad_arguments():
    with pytest.raises(ValueError, match="conv"):
        GraphClassifier(7, 2, conv="sage")
    with pytest.raises(ValueError, match="readout"):
        GraphClassifier(7, 2, readout="max")
    with pytest.raises(ValueError, match="hidden"):
        GraphClassifier(7, 2, hidden=0)


def test_root_mask_pools_only_the_roots():
    model = GraphClassifier(3, 2, conv="gin", hidden=4, num_layers=1)
    x, edge_index = torch.eye(3), torch.tensor([[1, 2], [0, 0]])
    h = model.node_embeddings(x, edge_index)
    pooled = model.pool(h, root_mask=torch.tensor([True, False, True]))
    torch.testing.assert_close(pooled, (h[0] + h[2]).unsqueeze(0))


def test_training_on_a_graph_list_learns_a_separable_task():
    # Class = whether the graph is a triangle (3 edges) or a path (2 edges), same node features.
    tri = Data(
        x=torch.ones(3, 1),
        edge_index=torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]]),
        y=torch.tensor([1]),
    )
    path = Data(
        x=torch.ones(3, 1), edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), y=torch.tensor([0])
    )
    graphs = [tri, path] * 4
    model = GraphClassifier(1, 2, conv="gin", hidden=8, num_layers=1)
    trained = train_graph_classifier(graphs, model, steps=60, lr=0.05, seed=0)
    assert graph_accuracy(trained, graphs) == 1.0
    assert all(not torch.equal(a, b) for a, b in zip(trained.parameters(), model.parameters()))  # a copy
    again = train_graph_classifier(graphs, model, steps=60, lr=0.05, seed=0)
    for a, b in zip(trained.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)  # same seed, same model
    with pytest.raises(ValueError, match="empty"):
        train_graph_classifier([], model, steps=1)
    with pytest.raises(ValueError, match="weights"):
        train_graph_classifier(graphs, model, steps=1, weights=[1.0])


def test_graph_set_saves_and_loads(tmp_path, mutag_root):
    dataset = load_mutag(mutag_root)
    graphs = [dataset[i] for i in range(10)]
    subset = random_graph_subset(graphs, 4, seed=1)
    assert len(subset) == 4 and set(subset.labels.tolist()) == {0, 1}
    by_nodes = random_graph_subset(graphs, num_nodes=50, seed=1)
    assert by_nodes.storage()["nodes"] >= 50
    assert by_nodes.storage()["nodes"] - max(g.num_nodes for g in by_nodes.graphs) < 50
    path = subset.save(tmp_path / "set.pt")
    loaded = GraphSet.load(path)
    assert loaded.storage() == subset.storage() and loaded.metadata == subset.metadata
    for a, b in zip(loaded.graphs, subset.graphs):
        torch.testing.assert_close(a.x, b.x)
        torch.testing.assert_close(a.edge_index, b.edge_index)
    with pytest.raises(ValueError, match="exactly one"):
        random_graph_subset(graphs, 4, num_nodes=10)
    with pytest.raises(ValueError, match="weights"):
        GraphSet(graphs, weights=[1.0])
    with pytest.raises(FileNotFoundError):
        GraphSet.load(tmp_path / "missing.pt")
