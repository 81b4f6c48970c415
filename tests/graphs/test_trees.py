"""Computation trees: GNN root embeddings equal node embeddings; canonical labels are canonical."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from lightning_distill.data.graphs import load_mutag
from lightning_distill.graphs import (
    GraphClassifier,
    LabelVocabulary,
    build_tree_index,
    canonical_labels,
    computation_tree,
    tree_canonical_label,
)


def undirected(edges: list[tuple[int, int]]) -> torch.Tensor:
    pairs = edges + [(v, u) for u, v in edges]
    return torch.tensor(pairs, dtype=torch.long).t()


def random_graph(n: int, p: float, features: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    edges = [(u, v) for u in range(n) for v in range(u + 1, n) if torch.rand((), generator=g) < p]
    labels = torch.randint(0, features, (n,), generator=g)
    return Data(x=torch.eye(features)[labels], edge_index=undirected(edges or [(0, 1)]))


@pytest.mark.parametrize("conv", ["gin", "gat"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_sum_gin_root_embedding_equals_the_node_embedding_in_the_graph(conv, depth, seed):
    # GIN (sum aggregation) and GAT (attention over the in-neighbours) see exactly the computation tree.
    graph = random_graph(9, 0.35, 4, seed)
    torch.manual_seed(seed)
    gin = GraphClassifier(4, 2, conv=conv, hidden=16, num_layers=depth).double().eval()
    full = gin.node_embeddings(graph.x.double(), graph.edge_index)
    for node in range(graph.num_nodes):
        tree = computation_tree(graph, node, depth)
        root = gin.node_embeddings(tree.x.double(), tree.edge_index)[tree.root_mask]
        torch.testing.assert_close(root, full[node : node + 1])
        # and the pooled logits of the tree (root only) equal those of a one-node readout of the graph
        mask = torch.zeros(graph.num_nodes, dtype=torch.bool)
        mask[node] = True
        torch.testing.assert_close(
            gin(tree.x.double(), tree.edge_index, root_mask=tree.root_mask),
            gin(graph.x.double(), graph.edge_index, root_mask=mask),
        )


def test_gcn_root_embedding_differs_because_of_degree_normalisation():
    # GCN scales a message by the sender's degree, and a leaf of the tree has lost its other edges.
    graph = random_graph(9, 0.4, 4, 0)
    torch.manual_seed(0)
    gcn = GraphClassifier(4, 2, conv="gcn", hidden=16, num_layers=2).double().eval()
    full = gcn.node_embeddings(graph.x.double(), graph.edge_index)
    gaps = []
    for node in range(graph.num_nodes):
        tree = computation_tree(graph, node, 2)
        gaps.append((gcn.node_embeddings(tree.x.double(), tree.edge_index)[0] - full[node]).abs().max())
    assert max(gaps) > 1e-3


def test_reversed_tree_edges_break_the_equivalence():
    # Edges parent -> child (the wrong direction) send messages away from the root.
    graph = random_graph(7, 0.5, 3, 3)
    torch.manual_seed(0)
    gin = GraphClassifier(3, 2, conv="gin", hidden=8, num_layers=2).double().eval()
    full = gin.node_embeddings(graph.x.double(), graph.edge_index)
    tree = computation_tree(graph, 0, 2)
    wrong = gin.node_embeddings(tree.x.double(), tree.edge_index.flip(0))[0]
    assert (wrong - full[0]).abs().max() > 1e-6


def test_tree_shape_counts_every_walk():
    # Path 0-1-2: the depth-2 tree of node 1 has 2 children, and each child has node 1 as its child.
    graph = Data(x=torch.eye(3), edge_index=undirected([(0, 1), (1, 2)]))
    tree = computation_tree(graph, 1, 2)
    assert tree.num_nodes == 5 and tree.edge_index.shape == (2, 4)
    assert tree.source_node.tolist() == [1, 0, 2, 1, 1]
    assert tree.edge_index[1].tolist() == [0, 0, 1, 2]  # parents: root, root, then each child
    assert tree.root_mask.tolist() == [True, False, False, False, False]


def permute_tree(tree: Data, perm: torch.Tensor) -> Data:
    """Renumber nodes (``new = perm[old]``) and shuffle the edge order."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    order = torch.randperm(tree.edge_index.shape[1], generator=torch.Generator().manual_seed(1))
    return Data(
        x=tree.x[inverse], edge_index=perm[tree.edge_index][:, order], edge_attr=tree.edge_attr[order]
    )


def test_canonical_label_ignores_child_order_and_numbering():
    graph = random_graph(8, 0.4, 3, 5)
    graph.edge_attr = torch.eye(2)[torch.arange(graph.edge_index.shape[1]) % 2]
    nodes, edges = LabelVocabulary(), LabelVocabulary()
    tree = computation_tree(graph, 2, 2)
    label = tree_canonical_label(tree, nodes, edges)
    for seed in range(3):
        perm = torch.randperm(tree.num_nodes, generator=torch.Generator().manual_seed(seed))
        assert tree_canonical_label(permute_tree(tree, perm), nodes, edges) == label
    # the bottom-up labels of the graph agree with the labels of the built trees
    assert canonical_labels(graph, 2, nodes, edges)[2] == label


def test_canonical_labels_differ_for_different_trees():
    nodes = LabelVocabulary()
    # star with centre label 0 vs path with the same node labels: same multiset of labels, other trees
    star = Data(x=torch.eye(2)[[0, 1, 1, 1]], edge_index=undirected([(0, 1), (0, 2), (0, 3)]))
    path = Data(x=torch.eye(2)[[0, 1, 1, 1]], edge_index=undirected([(0, 1), (1, 2), (2, 3)]))
    assert tree_canonical_label(computation_tree(star, 0, 2), nodes) != tree_canonical_label(
        computation_tree(path, 0, 2), nodes
    )
    # same shape, one leaf label changed
    other = Data(x=torch.eye(2)[[0, 1, 1, 0]], edge_index=star.edge_index)
    assert tree_canonical_label(computation_tree(star, 0, 1), nodes) != tree_canonical_label(
        computation_tree(other, 0, 1), nodes
    )
    # same nodes, one edge label changed
    bonds = torch.zeros(6, 2)
    bonds[:, 0] = 1
    changed = bonds.clone()
    changed[[0, 3]] = torch.tensor([0.0, 1.0])  # edge 0-1 in both directions
    edges = LabelVocabulary()
    a = Data(x=star.x, edge_index=star.edge_index, edge_attr=bonds)
    b = Data(x=star.x, edge_index=star.edge_index, edge_attr=changed)
    assert tree_canonical_label(computation_tree(a, 0, 1), nodes, edges) != tree_canonical_label(
        computation_tree(b, 0, 1), nodes, edges
    )


def test_hand_labels_of_a_path():
    graph = Data(x=torch.eye(2)[[0, 1, 0]], edge_index=undirected([(0, 1), (1, 2)]))
    assert canonical_labels(graph, 2, LabelVocabulary()) == ["0(1(0,0))", "1(0(1),0(1))", "0(1(0,0))"]


def test_tree_index_on_mutag_matches_the_built_trees(mutag_root):
    dataset = load_mutag(mutag_root)
    graphs = [dataset[i] for i in range(6)]
    index = build_tree_index(graphs, 2, edge_labels=True)
    assert len(index.node_trees) == 6 and [len(t) for t in index.node_trees] == [g.num_nodes for g in graphs]
    for tree_id, (g, node) in enumerate(index.examples):
        tree = computation_tree(graphs[g], node, 2)
        assert tree_canonical_label(tree, index.node_vocab, index.edge_vocab) == index.labels[tree_id]
    assert sum(index.tree_counts()) == sum(g.num_nodes for g in graphs)


def test_bad_inputs_raise():
    graph = Data(x=torch.eye(3), edge_index=undirected([(0, 1), (1, 2)]))
    with pytest.raises(ValueError, match="`root`"):
        computation_tree(graph, 3, 1)
    with pytest.raises(ValueError, match="`depth`"):
        computation_tree(graph, 0, -1)
    with pytest.raises(TypeError, match="`graph`"):
        canonical_labels("not a graph", 1, LabelVocabulary())
    with pytest.raises(ValueError, match="edge_attr"):
        canonical_labels(graph, 1, LabelVocabulary(), LabelVocabulary())
    with pytest.raises(ValueError, match="tree"):
        tree_canonical_label(graph, LabelVocabulary())  # undirected path: not a tree towards a root
    with pytest.raises(ValueError, match="empty"):
        build_tree_index([], 2)
