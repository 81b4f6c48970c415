"""GCN, GIN and GAT graph classifiers built from torch_geometric layers.

:class:`GraphClassifier` is ``num_layers`` message-passing layers (ReLU between them), a readout
that sums (or averages) node embeddings per graph, dropout and a linear head. The readout can be
restricted to a subset of nodes with ``root_mask``: a Mirage tree set is a disjoint union of
computation trees whose *roots* stand for nodes of a real graph, so only the roots are pooled.

Edges follow torch_geometric's convention: ``edge_index[0]`` is the source, ``edge_index[1]`` the
target, and messages flow from source to target.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, GINConv
from torch_geometric.utils import scatter

__all__ = ["GraphClassifier"]

_CONVS = ("gcn", "gin", "gat")


class GraphClassifier(nn.Module):
    """A message-passing graph classifier: GCN, GIN (sum aggregation) or GAT layers.

    Args:
        in_channels: node feature size ``F``.
        num_classes: ``K``.
        conv: ``"gcn"`` (``GCNConv``, symmetric normalisation with self-loops), ``"gin"``
            (``GINConv`` with a two-layer MLP, sum aggregation, ``eps`` = 0) or ``"gat"``
            (``GATConv``, ``heads`` heads averaged on the last layer, concatenated before).
        hidden: width of every layer.
        num_layers: message-passing layers ``L`` (a node sees its ``L``-hop computation tree).
        dropout: dropout before the head.
        readout: ``"sum"`` or ``"mean"`` of the (root) node embeddings of each graph.
        heads: attention heads of GAT.

    Raises:
        ValueError: an unknown ``conv`` or ``readout``, or non-positive sizes.

    Example:
        >>> import torch
        >>> model = GraphClassifier(7, 2, conv="gin", hidden=8, num_layers=2)
        >>> x, edge_index = torch.eye(7)[:3], torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> model(x, edge_index).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv: Literal["gcn", "gin", "gat"] = "gcn",
        hidden: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        readout: Literal["sum", "mean"] = "sum",
        heads: int = 2,
    ) -> None:
        super().__init__()
        if conv not in _CONVS:
            raise ValueError(f"`conv` must be one of {_CONVS}, got {conv!r}.")
        if readout not in ("sum", "mean"):
            raise ValueError(f"`readout` must be 'sum' or 'mean', got {readout!r}.")
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("hidden", hidden),
            ("num_layers", num_layers),
            ("heads", heads),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        self.conv, self.readout, self.dropout = conv, readout, dropout
        self.num_layers = num_layers
        self.convs = nn.ModuleList(
            self._layer(conv, in_channels if k == 0 else hidden, hidden, heads, last=k == num_layers - 1)
            for k in range(num_layers)
        )
        self.head = nn.Linear(hidden, num_classes)

    @staticmethod
    def _layer(conv: str, fan_in: int, width: int, heads: int, last: bool) -> nn.Module:
        if conv == "gcn":
            return GCNConv(fan_in, width)
        if conv == "gin":
            mlp = nn.Sequential(nn.Linear(fan_in, width), nn.ReLU(), nn.Linear(width, width))
            return GINConv(mlp, eps=0.0, train_eps=False)
        if last:
            return GATConv(fan_in, width, heads=heads, concat=False)
        if width % heads:
            raise ValueError(f"GAT needs `hidden` divisible by `heads`, got {width} and {heads}.")
        return GATConv(fan_in, width // heads, heads=heads, concat=True)

    def node_embeddings(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node embeddings after the ``L`` layers: ``(N, F)`` features, ``(2, E)`` edges -> ``(N, hidden)``."""
        h = x if x.is_floating_point() else x.float()
        for k, layer in enumerate(self.convs):
            h = layer(h, edge_index)
            if k < self.num_layers - 1:
                h = F.relu(h)
        return h

    def pool(self, h: Tensor, batch: Tensor | None = None, root_mask: Tensor | None = None) -> Tensor:
        """Per-graph readout of ``(N, hidden)`` embeddings -> ``(B, hidden)``; only ``root_mask`` nodes if given."""
        if batch is None:
            batch = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        size = int(batch.max()) + 1 if batch.numel() else 1
        if root_mask is not None:
            keep = root_mask.bool()
            h, batch = h[keep], batch[keep]
        return scatter(h, batch, dim=0, dim_size=size, reduce=self.readout)

    def forward(
        self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None, root_mask: Tensor | None = None
    ) -> Tensor:
        """Logits ``(B, K)`` of the graphs in a torch_geometric batch.

        Args:
            x: node features ``(N, F)``.
            edge_index: edges ``(2, E)``, source row first.
            batch: graph index of every node ``(N,)`` (``None``: a single graph).
            root_mask: ``(N,)`` booleans; only these nodes are pooled (``None``: every node).
        """
        h = self.pool(self.node_embeddings(x, edge_index), batch, root_mask)
        return self.head(F.dropout(h, self.dropout, training=self.training))

    def reset_parameters(self) -> None:
        """Re-initialise every layer (as at construction)."""
        for layer in self.convs:
            layer.reset_parameters()
        self.head.reset_parameters()
