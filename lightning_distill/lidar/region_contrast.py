"""Region-level contrastive losses of CALICO (Sun et al., ICLR 2024, arXiv 2306.00349) and their sampling.

Every loss compares ``P`` row-aligned anchors ``a`` and keys ``k`` (L2-normalised features of the
same sampled points in two views, or of a student and a teacher), with a region id ``r_i`` per
point (``-1``: semantic-less, see :mod:`lightning_distill.lidar.regions`). With
``s_ij = a_i . k_j / tau`` and ``log p_ij = s_ij - logsumexp_k s_ik``:

* :func:`point_region_contrast` (PLRC, CALICO eq. 1): for each semantic-rich anchor the positives
  are all keys of its region, ``l_i = -mean_{j: r_j = r_i} log p_ij``; semantic-less points are
  only negatives. Averaged over semantic-rich anchors.
* :func:`region_aware_point_contrast` (RAPC): scene-level point contrast (PointContrast), the key of
  the same point is the positive, and keys of *other points of the same region* are left out of
  the denominator (they are not negatives).
* :func:`region_aware_distillation` (RAD, CALICO eq. 3): InfoNCE from student anchors to teacher
  keys, each anchor weighted ``1 / (G n_g)`` so that each of the ``G`` groups (regions, and the
  semantic-less points of each scan as one group) weighs the same whatever its size.

:func:`sample_region_points` draws up to ``N`` semantic-rich and ``M`` semantic-less points per
scan (CALICO: ``N = M = 1024``).

Softmaxes run in float32. Example:

    >>> import torch
    >>> feats = torch.nn.functional.normalize(torch.eye(4)[:, :3] + 0.1, dim=1)
    >>> regions = torch.tensor([0, 0, 1, -1])
    >>> loss = point_region_contrast(feats, feats, regions, temperature=0.1)
    >>> bool(loss > 0), point_region_contrast(feats, feats, regions, reduction="none").shape
    (True, torch.Size([3]))
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "point_region_contrast",
    "region_aware_distillation",
    "region_aware_point_contrast",
    "sample_region_points",
]

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


def sample_region_points(
    regions: Tensor,
    batch: Tensor,
    *,
    num_rich: int = 1024,
    num_less: int = 1024,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of up to ``num_rich`` semantic-rich and ``num_less`` semantic-less points of every scan.

    Drawn without replacement; a scan with fewer points of a kind gives all of them.

    Args:
        regions: ``(N,)`` region ids, ``-1`` for semantic-less.
        batch: ``(N,)`` scan of every point.
        num_rich: semantic-rich points per scan.
        num_less: semantic-less points per scan.
        generator: CPU generator of the draws.

    Returns:
        ``(P,)`` int64 indices, scan after scan, rich before less within a scan.

    Raises:
        ValueError: mismatched shapes or a negative count.
    """
    if regions.shape != batch.shape or regions.ndim != 1:
        raise ValueError(
            f"`regions` and `batch` must be (N,), got {tuple(regions.shape)} and {tuple(batch.shape)}."
        )
    if num_rich < 0 or num_less < 0:
        raise ValueError(f"`num_rich` and `num_less` must be >= 0, got {num_rich} and {num_less}.")
    picks = []
    for b in torch.unique(batch).tolist():
        in_scan = batch == b
        for mask, count in ((in_scan & (regions >= 0), num_rich), (in_scan & (regions < 0), num_less)):
            rows = torch.nonzero(mask).squeeze(1)
            order = torch.randperm(len(rows), generator=generator).to(rows.device)
            picks.append(rows[order[:count]])
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long, device=regions.device)
