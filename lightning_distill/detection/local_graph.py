"""PointDistiller's local-structure parts: salient voxels, kNN graphs in teacher feature space, graph adapters.

PointDistiller (Zhang et al., "PointDistiller: Structured Knowledge Distillation Towards Efficient and
Compact 3D Detection", arXiv 2205.11098; official code RunpeiDong/PointDistiller) distils the local
geometry of voxel features rather than the features one by one:

1. :func:`salient_voxels`: the ``N`` voxels holding the most points (saliency = point count).
2. :func:`knn_in_feature_space`: for each of them, its ``K`` nearest voxels by squared Euclidean
   distance between *teacher* features (the voxel itself is its own nearest neighbour). The same
   neighbour sets index the student's features, so both sides describe the same graph.
3. :func:`graph_features`: per edge ``[f_neighbour, f_centre]`` (the official ``fuse_mode='idendity'``:
   neighbour and centre concatenated), ``(N, 2C, K)``.
4. :class:`GraphAdapter`: the dynamic-graph-convolution adapter, a 1x1 convolution over the edges +
   BatchNorm + ReLU, ``(N, 2C, K) -> (N, C', K)``; the teacher and the student each get one (both
   trainable, as in the official code), mapping to the same ``C'`` (the official code: the student's
   width).

The loss between the two adapted graphs is
:func:`~lightning_distill.losses.detection.local_structure_loss` with the weights of
:func:`~lightning_distill.losses.detection.saliency_weights`.

Example:
    >>> feats = torch.tensor([[0.0], [1.0], [5.0], [5.5]])
    >>> knn_in_feature_space(feats, torch.tensor([0, 2]), k=2).sort(dim=1).values.tolist()
    [[0, 1], [2, 3]]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GraphAdapter", "graph_features", "knn_in_feature_space", "salient_voxels"]


def salient_voxels(num_points: Tensor, num_voxels: int) -> Tensor:
    """Indices ``(min(N, V),)`` of the ``num_voxels`` voxels with the most points (ties: any order).

    Raises:
        ValueError: ``num_points`` not ``(V,)`` or ``num_voxels`` < 1.
    """
    if num_points.ndim != 1:
        raise ValueError(f"`num_points` must be (V,), got {tuple(num_points.shape)}.")
    if num_voxels < 1:
        raise ValueError(f"`num_voxels` must be >= 1, got {num_voxels}.")
    return num_points.float().topk(min(num_voxels, len(num_points)), largest=True, sorted=True).indices


@torch.no_grad()
def knn_in_feature_space(features: Tensor, centres: Tensor, k: int, *, chunk: int = 2048) -> Tensor:
    """``(N, K)`` indices of the ``k`` voxels nearest to each centre, by squared distance of ``features``.

    Args:
        features: ``(V, C)`` features of every voxel (the teacher's).
        centres: ``(N,)`` indices of the query voxels.
        k: neighbours per centre (clamped to ``V``).
        chunk: centres per distance block (bounds memory at ``chunk x V``).

    Raises:
        ValueError: ``features`` not ``(V, C)`` or ``k`` < 1.
    """
    if features.ndim != 2:
        raise ValueError(f"`features` must be (V, C), got {tuple(features.shape)}.")
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}.")
    feats = features.float()
    k = min(k, len(feats))
    out = []
    for start in range(0, len(centres), chunk):
        query = feats[centres[start : start + chunk]]
        dist = torch.cdist(query, feats).pow(2)
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out) if out else centres.new_zeros(0, k)


def graph_features(features: Tensor, centres: Tensor, neighbours: Tensor) -> Tensor:
    """Edge features ``(N, 2C, K)``: ``[features[neighbours[n, k]], features[centres[n]]]`` on the channel axis.

    Raises:
        ValueError: ``neighbours`` is not ``(N, K)`` for ``N = len(centres)``.
    """
    if neighbours.ndim != 2 or len(neighbours) != len(centres):
        raise ValueError(
            f"`neighbours` must be (N, K) with N = len(centres) = {len(centres)}, got {tuple(neighbours.shape)}."
        )
    grouped = features[neighbours]  # (N, K, C)
    centre = features[centres].unsqueeze(1).expand_as(grouped)  # (N, K, C)
    return torch.cat([grouped, centre], dim=2).transpose(1, 2)


class GraphAdapter(nn.Module):
    """PointDistiller's graph adapter: ``(N, 2C, K) -> (N, C', K)`` by a 1x1 convolution over the edges,
    BatchNorm and ReLU (one per side; the official ``ConvModule`` with ``BN2d`` and ``ReLU``).

    Args:
        in_channels: ``C``, the voxel feature width (the edge features have ``2C``).
        out_channels: ``C'``.

    Raises:
        ValueError: non-positive sizes.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got in={in_channels}, out={out_channels}.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
        )

    def forward(self, edges: Tensor) -> Tensor:
        """``(N, 2C, K)`` edge features -> ``(N, C', K)``."""
        if edges.ndim != 3 or edges.shape[1] != 2 * self.in_channels:
            raise ValueError(
                f"GraphAdapter expects edges (N, {2 * self.in_channels}, K), got {tuple(edges.shape)}; "
                "build it with `in_channels` = the voxel feature width."
            )
        # (N, 2C, K) -> (1, 2C, N, K): one 2D map, as the official code runs its ConvModule
        return self.net(edges.transpose(0, 1).unsqueeze(0)).squeeze(0).transpose(0, 1)
