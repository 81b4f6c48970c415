"""A set of training graphs as an artifact, its storage size, and random-subset baselines.

:class:`GraphSet` holds the graphs a GNN trains on (a distilled set, or a subset of real graphs),
an optional sampling weight per graph (Mirage: the support of each tree set) and metadata (how it
was made, the number of layers it was made for). It saves to and loads from one ``torch.save``
file whose tensors load with ``weights_only=True``.

Storage is counted as Mirage counts it: nodes x node-feature size + edges x edge-feature size
(plus, for a tree set, one root flag per node), in numbers stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

__all__ = ["GraphSet", "random_graph_subset"]


class GraphSet:
    """Graphs with labels, optional sampling weights and metadata.

    Args:
        graphs: each with ``x`` ``(N, F)``, ``edge_index`` ``(2, E)``, ``y`` ``(1,)`` and optionally
            ``edge_attr`` ``(E, D)`` and ``root_mask`` ``(N,)`` (the nodes the readout pools).
        weights: one sampling weight per graph (``None``: uniform).
        metadata: anything JSON-like (method, depth, supports, timings).

    Raises:
        ValueError: a graph without ``x``/``edge_index``/``y``, or weights of the wrong length or sign.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> g = Data(x=torch.ones(3, 2), edge_index=torch.tensor([[1, 2], [0, 0]]), y=torch.tensor([1]))
        >>> GraphSet([g, g]).storage()
        {'graphs': 2, 'nodes': 6, 'edges': 4, 'numbers': 20}
    """

    def __init__(
        self,
        graphs: Sequence[Data],
        weights: Sequence[float] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        for k, g in enumerate(graphs):
            if not isinstance(g, Data) or g.x is None or g.edge_index is None or g.y is None:
                raise ValueError(
                    f"`graphs[{k}]` must be a torch_geometric Data with `x`, `edge_index` and `y`."
                )
        if weights is not None:
            if len(weights) != len(graphs):
                raise ValueError(f"`weights` needs one value per graph ({len(graphs)}), got {len(weights)}.")
            if any(w < 0 for w in weights) or (len(weights) and sum(weights) <= 0):
                raise ValueError("`weights` must be >= 0 with a positive sum.")
        self.graphs = list(graphs)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def labels(self) -> torch.Tensor:
        """Graph labels ``(G,)``."""
        return (
            torch.cat([g.y.reshape(-1)[:1] for g in self.graphs])
            if self.graphs
            else torch.empty(0, dtype=torch.long)
        )

    def storage(self) -> dict[str, int]:
        """Graphs, nodes, edges and numbers stored (node and edge features, root flags)."""
        nodes = sum(g.num_nodes for g in self.graphs)
        edges = sum(g.edge_index.shape[1] for g in self.graphs)
        numbers = 0
        for g in self.graphs:
            numbers += g.x.numel() + g.edge_index.numel()
            numbers += g.edge_attr.numel() if g.edge_attr is not None else 0
            numbers += g.root_mask.numel() if "root_mask" in g else 0
        return {"graphs": len(self.graphs), "nodes": nodes, "edges": edges, "numbers": numbers}

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (parents created); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "graphs": [{k: v for k, v in g.to_dict().items() if torch.is_tensor(v)} for g in self.graphs],
            "weights": self.weights,
            "metadata": self.metadata,
        }
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GraphSet:
        """Read a set written by :meth:`save`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No graph set at `path`={str(path)!r}.")
        state = torch.load(path, weights_only=True)
        return cls([Data(**g) for g in state["graphs"]], state["weights"], state["metadata"])


def random_graph_subset(
    graphs: Sequence[Data],
    num_graphs: int | None = None,
    *,
    num_nodes: int | None = None,
    seed: int = 0,
) -> GraphSet:
    """A class-stratified random subset of real graphs, by graph count or by node budget.

    Classes keep their shares of ``graphs`` (rounded, at least one graph each). With ``num_nodes``
    graphs are added in a random class-stratified order until the subset holds at least that many
    nodes (a subset that stores as many nodes as a distilled set).

    Args:
        graphs: the real training graphs.
        num_graphs: how many graphs to draw.
        num_nodes: the node budget (instead of ``num_graphs``).
        seed: seed of the draw.

    Raises:
        ValueError: both or neither of ``num_graphs``/``num_nodes``, or a count out of range.
    """
    if (num_graphs is None) == (num_nodes is None):
        raise ValueError("Give exactly one of `num_graphs` and `num_nodes`.")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([int(g.y.reshape(-1)[0]) for g in graphs])
    classes = labels.unique().tolist()
    pools = {c: torch.nonzero(labels == c).flatten() for c in classes}
    pools = {c: pool[torch.randperm(pool.numel(), generator=generator)].tolist() for c, pool in pools.items()}
    if num_graphs is not None:
        if not len(classes) <= num_graphs <= len(graphs):
            raise ValueError(f"`num_graphs` must be in [{len(classes)}, {len(graphs)}], got {num_graphs}.")
        shares = {c: max(1, round(num_graphs * len(pools[c]) / len(graphs))) for c in classes}
        while sum(shares.values()) > num_graphs:  # rounding up overshot: trim the largest class
            shares[max(shares, key=shares.get)] -= 1
        while sum(shares.values()) < num_graphs:
            shares[max(classes, key=lambda c: len(pools[c]) - shares[c])] += 1
        chosen = [i for c in classes for i in pools[c][: shares[c]]]
    else:
        if num_nodes < 1:
            raise ValueError(f"`num_nodes` must be >= 1, got {num_nodes}.")
        # Interleave the classes in proportion to their sizes: position j/len(pool) for each member.
        order = sorted(((j + 0.5) / len(pools[c]), c, i) for c in classes for j, i in enumerate(pools[c]))
        chosen, total = [], 0
        for _, _, i in order:
            if total >= num_nodes:
                break
            chosen.append(i)
            total += graphs[i].num_nodes
    subset = [graphs[i] for i in sorted(chosen)]
    return GraphSet(subset, metadata={"method": "random", "seed": seed, "indices": sorted(chosen)})
