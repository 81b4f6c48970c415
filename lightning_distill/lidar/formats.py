"""Adapters between our batch layout and the OpenPCDet and Pointcept batch dicts.

Our batched points are ``(N, 5)`` ``[batch, x, y, z, intensity]`` (x forward, y left, z up) with
``labels (N,)`` (see :mod:`lightning_distill.lidar.batches`). The two code bases most users train
3D models with lay out the same information differently:

==============  ===========================================  ==========================================
library         points                                       batch membership
==============  ===========================================  ==========================================
OpenPCDet       ``points (N, 1 + C)``, batch index first     the first column; ``batch_size`` key
Pointcept       ``coord (N, 3)``, ``feat (N, C)``            ``offset (B,)``: cumulative point counts
==============  ===========================================  ==========================================

OpenPCDet's layout is ours with other key names; Pointcept's needs the points sorted by batch
(ours always are) and the per-cloud counts. Both directions are exact, so a backbone written for
either library can be pretrained by a recipe here and its weights loaded back there.

>>> points = torch.tensor([[0, 1.0, 2, 3, 0.5], [0, 4, 5, 6, 0.1], [1, 7, 8, 9, 0.9]])
>>> data = to_pointcept({"points": points, "labels": torch.tensor([0, 1, 2])})
>>> data["offset"].tolist(), data["segment"].tolist()
([2, 3], [0, 1, 2])
>>> torch.equal(from_pointcept(data)["points"], points)
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["from_openpcdet", "from_pointcept", "to_openpcdet", "to_pointcept"]


def _check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[1] < 4:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"`points` must be (N, >=4) [batch, x, y, z, ...], got {shape}.")
    if points.shape[0] > 1 and bool((points[1:, 0] < points[:-1, 0]).any()):
        raise ValueError(
            "`points` must be sorted by their batch index (column 0), as `collate` returns them."
        )


def _counts(batch_index: Tensor, batch_size: int | None) -> Tensor:
    index = batch_index.long()
    size = int(index.max()) + 1 if batch_size is None and index.numel() else int(batch_size or 0)
    return torch.bincount(index, minlength=size)


def to_pointcept(
    batch: dict[str, Any], grid_size: float | None = None, batch_size: int | None = None
) -> dict[str, Tensor]:
    """Our batch → Pointcept's ``coord``, ``feat``, ``offset`` (and ``segment``, ``grid_coord``).

    Args:
        batch: a dict with ``points (N, 1 + 3 + C)`` sorted by batch index and optional ``labels (N,)``.
        grid_size: if given, ``grid_coord (N, 3)`` = ``floor((coord - min of its cloud) / grid_size)``,
            what Pointcept's ``GridSample`` transform produces for sparse backbones.
        batch_size: the number of clouds, when trailing clouds may be empty.

    Returns:
        ``coord (N, 3)``, ``feat (N, 3 + C)`` (coordinates then the extra channels, Pointcept's
        usual ``coord + strength``), ``offset (B,)`` int64 cumulative counts, ``segment (N,)``
        when labels are given (-1 stays the ignore label, Pointcept's default too), ``grid_coord``.

    Raises:
        ValueError: bad shapes, unsorted points, or ``grid_size <= 0``.
    """
    points = batch["points"]
    _check_points(points)
    coord = points[:, 1:4]
    out = {
        "coord": coord,
        "feat": torch.cat([coord, points[:, 4:]], dim=1),
        "offset": torch.cumsum(_counts(points[:, 0], batch_size), 0),
    }
    if batch.get("labels") is not None:
        out["segment"] = batch["labels"].long()
    if grid_size is not None:
        if grid_size <= 0:
            raise ValueError(f"`grid_size` must be > 0, got {grid_size}.")
        index = points[:, 0].long()
        size = int(index.max()) + 1 if index.numel() else 0
        low = torch.full((size, 3), float("inf"), dtype=coord.dtype, device=coord.device)
        low = low.scatter_reduce(0, index[:, None].expand(-1, 3), coord, reduce="amin")
        out["grid_coord"] = torch.floor((coord - low[index]) / grid_size).long()
    return out


def from_pointcept(data: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pointcept's ``coord``, ``feat``, ``offset`` (``segment``) → our ``points`` (and ``labels``).

    The extra channels are ``feat``'s columns after the first three when ``feat`` starts with the
    coordinates (our :func:`to_pointcept` output), otherwise all of ``feat``.

    Raises:
        ValueError: ``offset`` does not end at the number of points, or decreases.
    """
    coord, offset = data["coord"], data["offset"].long()
    if offset.numel() == 0 or int(offset[-1]) != coord.shape[0] or bool((torch.diff(offset) < 0).any()):
        raise ValueError(
            f"`offset` must be non-decreasing cumulative counts ending at {coord.shape[0]} points, "
            f"got {offset.tolist()[:8]}."
        )
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    index = torch.repeat_interleave(torch.arange(len(counts), device=coord.device), counts)
    feat = data.get("feat")
    extra = coord.new_zeros(coord.shape[0], 0)
    if feat is not None:
        extra = feat[:, 3:] if feat.shape[1] >= 3 and torch.equal(feat[:, :3], coord) else feat
    out = {"points": torch.cat([index[:, None].to(coord.dtype), coord, extra.to(coord.dtype)], dim=1)}
    if "segment" in data:
        out["labels"] = data["segment"].long()
    return out


def to_openpcdet(batch: dict[str, Any], batch_size: int | None = None) -> dict[str, Any]:
    """Our batch → OpenPCDet's ``batch_dict`` (``points`` with the batch index first, ``batch_size``).

    Per-point labels travel as ``point_labels``; images and calibration are left to the caller,
    since OpenPCDet's multi-modal detectors each name them differently.
    """
    points = batch["points"]
    _check_points(points)
    size = batch_size if batch_size is not None else (int(points[:, 0].max()) + 1 if points.numel() else 0)
    out: dict[str, Any] = {"points": points, "batch_size": size}
    if batch.get("labels") is not None:
        out["point_labels"] = batch["labels"]
    return out


def from_openpcdet(batch_dict: dict[str, Any]) -> dict[str, Tensor]:
    """OpenPCDet's ``batch_dict`` → our ``points`` (and ``labels`` from ``point_labels``)."""
    points = batch_dict["points"]
    _check_points(points)
    out = {"points": points}
    if batch_dict.get("point_labels") is not None:
        out["labels"] = batch_dict["point_labels"].long()
    return out
