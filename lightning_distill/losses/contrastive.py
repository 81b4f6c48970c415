"""Contrastive losses (pure functions, no Lightning): InfoNCE and its region-level variants.

Image-to-LiDAR distillation (SLidR, LiMA):

* :func:`info_nce`: InfoNCE between paired rows, the other rows of the batch as negatives
  (SLidR's ``NCELoss``: ``CE(k q^T / tau, arange)``, points as queries over image keys).
* :func:`superpixel_info_nce`: SLidR's superpixel-driven loss: point features averaged over the
  paired points of each superpixel, pixel features averaged over all pixels of it, InfoNCE over the
  superpixels of the batch that hold at least one point.

Region-level contrast of CALICO (Sun et al., ICLR 2024, arXiv 2306.00349). Every loss compares
``P`` row-aligned anchors ``a`` and keys ``k`` (L2-normalised features of the same sampled points in
two views, or of a student and a teacher), with a region id ``r_i`` per point (``-1``:
semantic-less, see :mod:`lightning_distill.lidar.regions`). With ``s_ij = a_i . k_j / tau`` and
``log p_ij = s_ij - logsumexp_k s_ik``:

* :func:`point_region_contrast` (PLRC, CALICO eq. 1): for each semantic-rich anchor the positives
  are all keys of its region, ``l_i = -mean_{j: r_j = r_i} log p_ij``; semantic-less points are
  only negatives. Averaged over semantic-rich anchors.
* :func:`region_aware_point_contrast` (RAPC): scene-level point contrast (PointContrast), the key of
  the same point is the positive, and keys of *other points of the same region* are left out of
  the denominator (they are not negatives).
* :func:`region_aware_distillation` (RAD, CALICO eq. 3): InfoNCE from student anchors to teacher
  keys, each anchor weighted ``1 / (G n_g)`` so that each of the ``G`` groups (regions, and the
  semantic-less points of each scan as one group) weighs the same whatever its size.

Softmaxes run in float32. Example:

    >>> import torch
    >>> k = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    >>> bool(info_nce(k, k, temperature=0.07) < info_nce(k, k.roll(1, 0), temperature=0.07))
    True
    >>> feats = torch.nn.functional.normalize(torch.eye(4)[:, :3] + 0.1, dim=1)
    >>> regions = torch.tensor([0, 0, 1, -1])
    >>> loss = point_region_contrast(feats, feats, regions, temperature=0.1)
    >>> bool(loss > 0), point_region_contrast(feats, feats, regions, reduction="none").shape
    (True, torch.Size([3]))
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "info_nce",
    "point_region_contrast",
    "region_aware_distillation",
    "region_aware_point_contrast",
    "superpixel_info_nce",
]


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


def _segment_mean(features: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Mean of the rows of ``features`` ``(N, D)`` per segment id ``(N,)``; empty segments give zeros."""
    sums = features.new_zeros(num_segments, features.shape[1]).index_add_(0, segments, features)
    counts = torch.bincount(segments, minlength=num_segments).to(features.dtype)
    return sums / counts.clamp_min(1.0).unsqueeze(1)


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
    """SLidR's superpixel-driven InfoNCE (paper eq. 2-3): :func:`info_nce` over superpixel-pooled features.

    ``f_s = mean_{p in s} F3D(p)`` over the points paired with pixels of superpixel ``s``,
    ``g_s = mean_{pixel in s} G2D(pixel)`` over every pixel of ``s`` (SLidR's
    ``loss_superpixels_average``); negatives are every other superpixel of the batch that holds a
    point. The pooling alone is :func:`lightning_distill.lidar.image_to_lidar.superpixel_pool`.

    Args:
        point_features: ``(N, D)`` per-point 3D features.
        pixel_features: ``(I, D, H, W)`` per-pixel 2D features of the ``I`` images.
        superpixels: ``(I, H, W)`` int64 superpixel ids per image.
        pair_point: ``(P,)`` index of the paired point.
        pair_image: ``(P,)`` image of the pair, in ``[0, I)``.
        pair_v: ``(P,)`` pixel row.
        pair_u: ``(P,)`` pixel column.
        temperature: ``tau`` > 0 (SLidR: 0.07).

    Returns:
        The loss, computed in float32.

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
    per_image = int(superpixels.max()) + 1
    offsets = torch.arange(superpixels.shape[0], device=superpixels.device) * per_image
    regions, num_regions = superpixels + offsets[:, None, None], superpixels.shape[0] * per_image
    pair_region = regions[pair_image, pair_v, pair_u]
    f = _segment_mean(point_features[pair_point], pair_region, num_regions)
    dim = pixel_features.shape[1]
    g = _segment_mean(pixel_features.permute(0, 2, 3, 1).reshape(-1, dim), regions.flatten(), num_regions)
    with_points = torch.bincount(pair_region, minlength=num_regions) > 0
    return info_nce(f[with_points], g[with_points], temperature=temperature)


Reduction = Literal["mean", "sum", "none"]


def _check(anchors: Tensor, keys: Tensor, regions: Tensor, temperature: float, reduction: str) -> None:
    if anchors.ndim != 2 or anchors.shape != keys.shape:
        raise ValueError(
            f"`anchors` and `keys` must both be (P, D), got {tuple(anchors.shape)} and {tuple(keys.shape)}."
        )
    if regions.shape != anchors.shape[:1]:
        raise ValueError(f"`regions` must be ({len(anchors)},), got {tuple(regions.shape)}.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.mean() if len(losses) else losses.sum()


def _log_probs(anchors: Tensor, keys: Tensor, temperature: float, exclude: Tensor | None = None) -> Tensor:
    logits = anchors.float() @ keys.float().T / temperature  # (P, P)
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


def point_region_contrast(
    anchors: Tensor,
    keys: Tensor,
    regions: Tensor,
    *,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
) -> Tensor:
    """PLRC: every key of an anchor's region is a positive; semantic-less points are only negatives.

    ``l_i = -(1 / |R(i)|) sum_{j in R(i)} log softmax_j(a_i . k / tau)`` for anchors with
    ``r_i >= 0``, ``R(i) = {j : r_j = r_i}`` (``i`` included); the softmax runs over all ``P`` keys.

    Args:
        anchors: ``(P, D)`` L2-normalised features of the sampled points in view 1.
        keys: ``(P, D)`` features of the same points in view 2 (row-aligned).
        regions: ``(P,)`` region ids, ``-1`` for semantic-less points.
        temperature: ``tau``.
        reduction: over the semantic-rich anchors; ``"none"`` gives ``(P_rich,)``.

    Returns:
        The loss (0 when no anchor is semantic-rich, with ``"mean"``).

    Raises:
        ValueError: mismatched shapes, ``temperature <= 0`` or an unknown ``reduction``.
    """
    _check(anchors, keys, regions, temperature, reduction)
    log_p = _log_probs(anchors, keys, temperature)
    rich = regions >= 0
    positive = (regions[:, None] == regions[None, :]) & rich[:, None]
    per_anchor = -(log_p * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1)
    return _reduce(per_anchor[rich], reduction)


def region_aware_point_contrast(
    anchors: Tensor,
    keys: Tensor,
    regions: Tensor,
    *,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
) -> Tensor:
    """RAPC: point-level InfoNCE whose negatives leave out the other points of the anchor's region.

    ``l_i = -log( exp(a_i . k_i / tau) / sum_{j : j = i or not (r_j = r_i >= 0)} exp(a_i . k_j / tau) )``.

    Args:
        anchors: ``(P, D)`` L2-normalised features in view 1.
        keys: ``(P, D)`` features of the same points in view 2.
        regions: ``(P,)`` region ids, ``-1`` for semantic-less points.
        temperature: ``tau``.
        reduction: over all ``P`` anchors.

    Returns:
        The loss.

    Raises:
        ValueError: mismatched shapes, ``temperature <= 0`` or an unknown ``reduction``.
    """
    _check(anchors, keys, regions, temperature, reduction)
    same = (regions[:, None] == regions[None, :]) & (regions >= 0)[:, None]
    same.fill_diagonal_(False)
    log_p = _log_probs(anchors, keys, temperature, exclude=same)
    return _reduce(-log_p.diagonal(), reduction)


def region_aware_distillation(
    student: Tensor,
    teacher: Tensor,
    groups: Tensor,
    *,
    temperature: float = 0.1,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """RAD: InfoNCE from student to teacher features, normalised so every region weighs the same.

    ``L = sum_i w_i * -log softmax_i(s_i . t / tau)`` with ``w_i = 1 / (G n_{g(i)})``: ``G`` groups
    present, ``n_g`` anchors in group ``g``. The teacher side should come from a frozen network.

    Args:
        student: ``(P, D)`` L2-normalised student features.
        teacher: ``(P, D)`` teacher features of the same points or cells (row-aligned).
        groups: ``(P,)`` group ids >= 0 (regions; the caller gives semantic-less points a group per scan).
        temperature: ``tau``.
        reduction: ``"mean"`` (the weighted sum above) or ``"none"`` (the unweighted ``(P,)`` terms).

    Returns:
        The loss.

    Raises:
        ValueError: mismatched shapes, a negative group id, ``temperature <= 0`` or another ``reduction``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}.")
    _check(student, teacher, groups, temperature, "mean")
    if len(groups) and int(groups.min()) < 0:
        raise ValueError("`groups` must be >= 0: give semantic-less points a group of their own per scan.")
    terms = -_log_probs(student, teacher, temperature).diagonal()
    if reduction == "none":
        return terms
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / (len(counts) * counts[inverse].float())
    return (weights * terms).sum()
