"""Computation trees of message-passing GNNs and their canonical labels.

An ``L``-layer message-passing GNN computes the embedding of node ``v`` from its ``L``-hop
*computation tree*: ``v`` at the root, every neighbour of ``v`` as a child, every neighbour of each
child (the parent included: the walk may go back) as a grandchild, down to depth ``L``. Two nodes
with isomorphic trees (same node labels, same edge labels, same shape up to child order) get the
same embedding from any such GNN, so a graph is, for the GNN, a multiset of trees.

* :func:`computation_tree` builds the tree of one node as a torch_geometric ``Data`` whose edges
  point from child to parent (``edge_index[0]`` = child, ``edge_index[1]`` = parent), so messages
  flow towards the root, as in the original graph; node 0 is the root (``root_mask``).
* :func:`canonical_labels` gives every node of a graph the canonical string of its tree, computed
  bottom-up without building the trees: ``c_0(v) = n_v`` and
  ``c_d(v) = n_v(sorted{e_uv:c_{d-1}(u) : u -> v})``; sorting the children's strings makes the
  label independent of child order, and the bracketed encoding makes different trees differ.
* :func:`tree_canonical_label` computes the same string from a built tree.
* :class:`TreeIndex` interns the strings of a list of graphs to integer ids, keeps one example
  ``(graph, node)`` per id to rebuild its tree, and gives each graph's set of tree ids (its
  *transaction* for frequent-pattern mining).

Node (edge) labels are the ids of the distinct rows of ``x`` (``edge_attr``) in a
:class:`LabelVocabulary` shared by all graphs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch_geometric.data import Data

__all__ = [
    "LabelVocabulary",
    "TreeIndex",
    "build_tree_index",
    "canonical_labels",
    "computation_tree",
    "tree_canonical_label",
]


class LabelVocabulary:
    """Ids of distinct feature rows, assigned in order of first appearance.

    Example:
        >>> import torch
        >>> vocab = LabelVocabulary()
        >>> vocab.ids(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
        [0, 1, 0]
    """

    def __init__(self) -> None:
        self.table: dict[tuple[float, ...], int] = {}

    def ids(self, rows: Tensor) -> list[int]:
        """One id per row of ``rows`` ``(N, D)`` (or per entry of ``(N,)``).

        Raises:
            ValueError: ``rows`` has more than two dimensions.
        """
        if rows.ndim > 2:
            raise ValueError(f"`rows` must be (N,) or (N, D), got shape {tuple(rows.shape)}.")
        values = rows.detach().cpu().reshape(rows.shape[0], -1).tolist()
        return [self.table.setdefault(tuple(row), len(self.table)) for row in values]

    def __len__(self) -> int:
        return len(self.table)


def _check_graph(graph: Data, depth: int) -> None:
    if not isinstance(graph, Data):
        raise TypeError(f"`graph` must be a torch_geometric Data, got {type(graph).__name__}.")
    if graph.x is None or graph.edge_index is None:
        raise ValueError("`graph` needs node features `x` and `edge_index`.")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"`depth` must be an int >= 0, got {depth!r}.")


def _in_edges(graph: Data) -> list[list[int]]:
    """For every node, the ids of the edges that point to it (``u -> v``), in edge order."""
    incoming: list[list[int]] = [[] for _ in range(graph.num_nodes)]
    for k, target in enumerate(graph.edge_index[1].tolist()):
        incoming[target].append(k)
    return incoming


def _child_string(edge_label: int | None, child: str) -> str:
    return child if edge_label is None else f"{edge_label}:{child}"


def _node_string(node_label: int, children: list[str]) -> str:
    return f"{node_label}({','.join(sorted(children))})" if children else str(node_label)


def canonical_labels(
    graph: Data, depth: int, node_vocab: LabelVocabulary, edge_vocab: LabelVocabulary | None = None
) -> list[str]:
    """The canonical string of every node's depth-``depth`` computation tree.

    Args:
        graph: ``x`` ``(N, F)``, ``edge_index`` ``(2, E)`` (both directions for undirected graphs)
            and, if ``edge_vocab`` is given, ``edge_attr`` ``(E, D)``.
        depth: ``L``, the number of message-passing layers.
        node_vocab: ids of node feature rows (extended with unseen rows).
        edge_vocab: ids of edge feature rows; ``None`` leaves edge labels out.

    Returns:
        ``N`` strings; equal strings mean isomorphic trees.

    Raises:
        TypeError, ValueError: not a graph, a negative ``depth``, or ``edge_vocab`` without ``edge_attr``.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> path = Data(x=torch.tensor([[0.0], [1.0], [0.0]]), edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]))
        >>> canonical_labels(path, 1, LabelVocabulary())
        ['0(1)', '1(0,0)', '0(1)']
    """
    _check_graph(graph, depth)
    if edge_vocab is not None and graph.edge_attr is None:
        raise ValueError("`edge_vocab` is given but the graph has no `edge_attr`; pass `edge_vocab=None`.")
    nodes = node_vocab.ids(graph.x)
    edges = edge_vocab.ids(graph.edge_attr) if edge_vocab is not None else [None] * graph.edge_index.shape[1]
    sources = graph.edge_index[0].tolist()
    incoming = _in_edges(graph)
    labels = [str(n) for n in nodes]
    for _ in range(depth):
        labels = [
            _node_string(nodes[v], [_child_string(edges[k], labels[sources[k]]) for k in incoming[v]])
            for v in range(graph.num_nodes)
        ]
    return labels


def computation_tree(graph: Data, root: int, depth: int) -> Data:
    """The depth-``depth`` computation tree of node ``root`` as a graph with edges child -> parent.

    Nodes are numbered breadth-first with the root at 0; each tree node copies the features of the
    graph node it stands for, each tree edge the features of the graph edge it copies.

    Returns:
        ``Data`` with ``x`` ``(T, F)``, ``edge_index`` ``(2, T - 1)`` (row 0 the child, row 1 the
        parent), ``edge_attr`` (if the graph has it), ``root_mask`` ``(T,)`` (True at 0 only) and
        ``source_node`` ``(T,)`` (the graph node behind each tree node).

    Raises:
        TypeError, ValueError: not a graph, a negative ``depth`` or ``root`` out of range.
    """
    _check_graph(graph, depth)
    if not 0 <= root < graph.num_nodes:
        raise ValueError(f"`root` must be a node of the graph, in [0, {graph.num_nodes}), got {root}.")
    sources = graph.edge_index[0].tolist()
    incoming = _in_edges(graph)
    origin, children, parents, edge_ids = [root], [], [], []
    queue = deque([(0, root, 0)])  # (tree node, graph node, its depth)
    while queue:
        tree_node, graph_node, level = queue.popleft()
        if level == depth:
            continue
        for k in incoming[graph_node]:
            child = len(origin)
            origin.append(sources[k])
            children.append(child)
            parents.append(tree_node)
            edge_ids.append(k)
            queue.append((child, sources[k], level + 1))
    origin_t = torch.tensor(origin, dtype=torch.long)
    tree = Data(
        x=graph.x[origin_t].clone(),
        edge_index=torch.tensor([children, parents], dtype=torch.long).reshape(2, -1),
        root_mask=torch.arange(len(origin)) == 0,
        source_node=origin_t,
    )
    if graph.edge_attr is not None:
        tree.edge_attr = graph.edge_attr[torch.tensor(edge_ids, dtype=torch.long)].clone()
    return tree


def tree_canonical_label(
    tree: Data, node_vocab: LabelVocabulary, edge_vocab: LabelVocabulary | None = None
) -> str:
    """The canonical string of a tree whose edges point from child to parent.

    The root is the one node without an outgoing edge. Child order (edge order, node numbering)
    does not change the result.

    Raises:
        ValueError: ``tree`` is not a tree directed towards a single root.
    """
    _check_graph(tree, 0)
    n = tree.num_nodes
    child_rows, parent_rows = tree.edge_index.tolist()
    out_degree = [0] * n
    for c in child_rows:
        out_degree[c] += 1
    roots = [v for v in range(n) if out_degree[v] == 0]
    if len(roots) != 1 or max(out_degree, default=0) > 1 or len(child_rows) != n - 1:
        raise ValueError(
            f"`tree` must be a tree with edges child -> parent and one root; got {n} nodes, "
            f"{len(child_rows)} edges and {len(roots)} node(s) without a parent."
        )
    nodes = node_vocab.ids(tree.x)
    edges = edge_vocab.ids(tree.edge_attr) if edge_vocab is not None else [None] * len(child_rows)
    kids: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for k, (c, p) in enumerate(zip(child_rows, parent_rows)):
        kids[p].append((k, c))

    def label(v: int) -> str:
        return _node_string(nodes[v], [_child_string(edges[k], label(c)) for k, c in kids[v]])

    return label(roots[0])


@dataclass
class TreeIndex:
    """Computation trees of a list of graphs, interned to integer ids.

    Attributes:
        depth: ``L``.
        labels: canonical string of each tree id.
        examples: one ``(graph index, node)`` per tree id, to rebuild its tree.
        node_trees: per graph, the tree id of every node (a multiset).
        node_vocab, edge_vocab: the label vocabularies (``edge_vocab`` None without edge labels).
    """

    depth: int
    labels: list[str] = field(default_factory=list)
    examples: list[tuple[int, int]] = field(default_factory=list)
    node_trees: list[list[int]] = field(default_factory=list)
    node_vocab: LabelVocabulary = field(default_factory=LabelVocabulary)
    edge_vocab: LabelVocabulary | None = None

    @property
    def transactions(self) -> list[set[int]]:
        """Per graph, the set of its tree ids (the input of frequent tree-set mining)."""
        return [set(ids) for ids in self.node_trees]

    def tree_counts(self) -> list[int]:
        """How many nodes of all graphs have each tree (the tree-frequency histogram)."""
        counts = [0] * len(self.labels)
        for ids in self.node_trees:
            for i in ids:
                counts[i] += 1
        return counts


def build_tree_index(graphs: Sequence[Data], depth: int, edge_labels: bool = True) -> TreeIndex:
    """Canonical labels of every node of every graph, interned to ids (see :class:`TreeIndex`).

    Args:
        graphs: the graphs (a training split).
        depth: ``L``.
        edge_labels: include edge labels in the trees (needs ``edge_attr`` on every graph).

    Raises:
        ValueError: no graphs, or ``edge_labels`` with a graph that has no ``edge_attr``.
    """
    if len(graphs) == 0:
        raise ValueError("`graphs` is empty; the tree index needs at least one graph.")
    if edge_labels and any(g.edge_attr is None for g in graphs):
        raise ValueError("`edge_labels=True` needs `edge_attr` on every graph; pass `edge_labels=False`.")
    index = TreeIndex(depth=depth, edge_vocab=LabelVocabulary() if edge_labels else None)
    ids: dict[str, int] = {}
    for g, graph in enumerate(graphs):
        row = []
        for node, label in enumerate(canonical_labels(graph, depth, index.node_vocab, index.edge_vocab)):
            if label not in ids:
                ids[label] = len(index.labels)
                index.labels.append(label)
                index.examples.append((g, node))
            row.append(ids[label])
        index.node_trees.append(row)
    return index
