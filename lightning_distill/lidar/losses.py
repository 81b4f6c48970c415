"""Contrastive image-to-LiDAR losses (pure functions, no Lightning).

* :func:`info_nce`: InfoNCE between paired rows, the other rows of the batch as negatives
  (SLidR's ``NCELoss``: ``CE(k q^T / tau, arange)``, points as queries over image keys).
* :func:`superpixel_info_nce`: SLidR's superpixel-driven loss: point features averaged over the
  paired points of each superpixel, pixel features averaged over all pixels of it, InfoNCE over the
  superpixels of the batch that hold at least one point.

Example:
    >>> import torch
    >>> k = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    >>> bool(info_nce(k, k, temperature=0.07) < info_nce(k, k.roll(1, 0), temperature=0.07))
    True
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.lidar.geometry import region_pool

__all__ = ["info_nce", "superpixel_info_nce", "superpixel_pool", "superpixel_regions"]


def info_nce(
    queries: Tensor,
    keys: Tensor,
    *,
    temperature: float = 0.07,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """InfoNCE: ``-log softmax_j(<q_i, k_j> / tau)[i]`` with row ``i`` of ``keys`` the positive of query ``i``.

    Args:
        queries: ``(M, D)`` (SLidR: 3D features).
        keys: ``(M, D)`` (SLidR: 2D features), row-aligned with ``queries``.
        temperature: ``tau`` > 0 (SLidR: 0.07).
        reduction: ``"mean"`` over the ``M`` queries, ``"sum"`` or ``"none"`` (shape ``(M,)``).

    Returns:
        The loss, computed in float32.

    Raises:
        ValueError: shapes differ or are not 2-D, fewer than one row, or ``temperature <= 0``.
    """
    if queries.ndim != 2 or queries.shape != keys.shape:
        raise ValueError(
            f"`queries` and `keys` must both be (M, D), got {tuple(queries.shape)} and {tuple(keys.shape)}."
        )
    if queries.shape[0] < 1:
        raise ValueError("`queries` is empty: InfoNCE needs at least one pair.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    logits = queries.float() @ keys.float().T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def superpixel_regions(superpixels: Tensor) -> tuple[Tensor, int]:
    """Batch-unique region ids: image ``i``'s superpixel ``s`` becomes ``i * S + s``.

    Args:
        superpixels: ``(I, H, W)`` int64 ids per image, each in ``[0, S)``.

    Returns:
        ``(I, H, W)`` region ids and the number of regions ``I * S``.
    """
    per_image = int(superpixels.max()) + 1
    offsets = torch.arange(superpixels.shape[0], device=superpixels.device) * per_image
    return superpixels + offsets[:, None, None], superpixels.shape[0] * per_image


def superpixel_pool(
    point_features: Tensor,
    pixel_features: Tensor,
    superpixels: Tensor,
    pair_point: Tensor,
    pair_image: Tensor,
    pair_v: Tensor,
    pair_u: Tensor,
) -> tuple[Tensor, Tensor]:
    """Superpixel-pooled 3D and 2D features of the superpixels that hold at least one paired point.

    ``f_s = mean_{p in s} F3D(p)`` over the points paired with pixels of superpixel ``s``,
    ``g_s = mean_{pixel in s} G2D(pixel)`` over every pixel of ``s`` (SLidR's
    ``loss_superpixels_average``).

    Args:
        point_features: ``(N, D)`` per-point 3D features.
        pixel_features: ``(I, D, H, W)`` per-pixel 2D features of the ``I`` images.
        superpixels: ``(I, H, W)`` int64 superpixel ids per image.
        pair_point: ``(P,)`` index of the paired point.
        pair_image: ``(P,)`` image of the pair, in ``[0, I)``.
        pair_v: ``(P,)`` pixel row.
        pair_u: ``(P,)`` pixel column.

    Returns:
        ``f`` and ``g``, both ``(S, D)``, row-aligned by superpixel.

    Raises:
        ValueError: mismatched shapes or no pair at all.
    """
    if pixel_features.ndim != 4 or superpixels.shape != (pixel_features.shape[0], *pixel_features.shape[2:]):
        raise ValueError(
            f"`pixel_features` must be (I, D, H, W) and `superpixels` (I, H, W), got "
            f"{tuple(pixel_features.shape)} and {tuple(superpixels.shape)}."
        )
    if point_features.ndim != 2 or point_features.shape[1] != pixel_features.shape[1]:
        raise ValueError(
            f"`point_features` must be (N, {pixel_features.shape[1]}), got {tuple(point_features.shape)}."
        )
    if len(pair_point) == 0:
        raise ValueError("No point projects into any image: check the calibration or `min_depth`.")
    regions, num_regions = superpixel_regions(superpixels)
    pair_region = regions[pair_image, pair_v, pair_u]
    f = region_pool(point_features[pair_point], pair_region, num_regions)
    dim = pixel_features.shape[1]
    g = region_pool(pixel_features.permute(0, 2, 3, 1).reshape(-1, dim), regions.flatten(), num_regions)
    with_points = torch.bincount(pair_region, minlength=num_regions) > 0
    return f[with_points], g[with_points]


def superpixel_info_nce(
    point_features: Tensor,
    pixel_features: Tensor,
    superpixels: Tensor,
    pair_point: Tensor,
    pair_image: Tensor,
    pair_v: Tensor,
    pair_u: Tensor,
    *,
    temperature: float = 0.07,
) -> Tensor:
    """SLidR's superpixel-driven InfoNCE (paper eq. 2-3): :func:`info_nce` over :func:`superpixel_pool`.

    Negatives are every other superpixel of the batch that holds a point. Arguments as in
    :func:`superpixel_pool`; ``temperature`` as in :func:`info_nce` (SLidR: 0.07).

    Raises:
        ValueError: mismatched shapes or no pair at all.
    """
    f, g = superpixel_pool(
        point_features, pixel_features, superpixels, pair_point, pair_image, pair_v, pair_u
    )
    return info_nce(f, g, temperature=temperature)
