"""Segmentation losses (pure functions, no Lightning): LaserMix / LaserMix++, Label-Assisted
Distillation and DistillFSS.

* :func:`ignore_index_cross_entropy`: per-point cross-entropy over the points whose label is not
  ignored, and an exact (differentiable) zero when every label is ignored, so a batch of
  unconfident pseudo-labels neither crashes nor produces ``nan``.
* :func:`probability_mse`: the mean-teacher consistency, the mean squared difference of the class
  probabilities of a student and a (detached) teacher (LaserMix's ``loss_mse``).
* :func:`paired_cosine_distance`: ``mean 1 - cos(student_i, target_i)`` over row-aligned pairs
  (LaserMix++'s camera-to-LiDAR feature distillation), 0 when there is no pair.
* :func:`focal_loss`: per-pixel focal loss (DistillFSS's logit term, ``gamma = 2``).
* :func:`mutual_cwd_loss`: channel-wise distillation both ways between two outputs, each side
  detached as the target of the other (Label-Assisted Distillation's teacher consistency).
* :func:`coarse_map_mse`: mean squared error between coarse maps, averaged over levels (DistillFSS).

Every loss computes in float32. Example:

    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> float(ignore_index_cross_entropy(logits, torch.tensor([-1, -1])))
    0.0
    >>> float(probability_mse(logits, logits))
    0.0
    >>> float(paired_cosine_distance(torch.eye(2), torch.eye(2)))
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import reduce
from lightning_distill.losses.feature import cwd_loss
from lightning_distill.utils.checks import Reduction, check_non_negative, check_reduction, check_tensor

__all__ = [
    "coarse_map_mse",
    "focal_loss",
    "ignore_index_cross_entropy",
    "mutual_cwd_loss",
    "paired_cosine_distance",
    "probability_mse",
]


def ignore_index_cross_entropy(logits: Tensor, labels: Tensor, *, ignore_index: int = -1) -> Tensor:
    """Cross-entropy averaged over the points whose label is not ``ignore_index`` (0 if there is none).

    Args:
        logits: ``(N, K)`` class logits.
        labels: ``(N,)`` int64 labels, ``ignore_index`` for unlabelled or unconfident points.
        ignore_index: the label that is skipped (:data:`lightning_distill.lidar.scene.IGNORE_INDEX`).

    Returns:
        A float32 scalar; ``logits.sum() * 0`` when every label is ignored (keeps the graph).

    Raises:
        ValueError: ``logits`` not ``(N, K)`` or ``labels`` not ``(N,)``.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"`logits` must be (N, K) and `labels` (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def probability_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean-teacher consistency: ``mean (softmax(s) - softmax(t))^2`` over points and classes.

    Args:
        student_logits: ``(N, K)``.
        teacher_logits: ``(N, K)``; detached here (the teacher never receives a gradient).

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes that differ or are not ``(N, K)``.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"`student_logits` and `teacher_logits` must both be (N, K), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}."
        )
    return F.mse_loss(
        F.softmax(student_logits.float(), dim=1), F.softmax(teacher_logits.detach().float(), dim=1)
    )


def paired_cosine_distance(student: Tensor, target: Tensor) -> Tensor:
    """``mean_i 1 - cos(student_i, target_i)`` over row-aligned pairs (0 when there is no row).

    Args:
        student: ``(P, D)`` projected student features (a point head's output).
        target: ``(P, D)`` frozen target features (the pixel each point projects to).

    Returns:
        A float32 scalar; ``student.sum() * 0`` when ``P = 0`` (keeps the graph).

    Raises:
        ValueError: shapes that differ or are not ``(P, D)``.
    """
    if student.ndim != 2 or student.shape != target.shape:
        raise ValueError(
            f"`student` and `target` must both be (P, D), got {tuple(student.shape)} and {tuple(target.shape)}."
        )
    if len(student) == 0:
        return student.sum() * 0.0
    return (1.0 - F.cosine_similarity(student.float(), target.float(), dim=1)).mean()


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Focal loss over pixels: :math:`(1 - p_t)^\gamma \cdot \mathrm{CE}` with :math:`p_t = e^{-\mathrm{CE}}`.

    "Focal Loss for Dense Object Detection" (Lin et al.; arXiv 1708.02002), as DistillFSS's
    ``FocalLoss`` (``distillfss/models/loss.py``) applies it to segmentation logits against the
    teacher's argmax. Per sample the mean runs over the pixels whose target is not ``ignore_index``.

    Args:
        logits: ``(B, K, *S)``, e.g. ``(B, K, H, W)``.
        target: ``(B, *S)`` int64 classes.
        gamma: focusing exponent ``>= 0`` (0 gives the cross-entropy).
        ignore_index: target value left out.
        reduction: ``"none"`` per sample ``(B,)``, ``"mean"``/``"sum"`` over the batch.

    Returns:
        Float32 loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: ``logits`` not floating point.
        ValueError: ``target`` not ``(B, *S)`` for ``logits (B, K, *S)``, ``gamma < 0`` or an unknown ``reduction``.

    Example:
        >>> logits = torch.tensor([[[0.0], [0.0]]])  # (1, 2, 1): p_t = 0.5
        >>> round(float(focal_loss(logits, torch.tensor([[1]]), gamma=2.0)), 4)  # 0.25 * ln 2
        0.1733
    """
    check_tensor("logits", logits, min_ndim=2)
    if target.shape != (logits.shape[0], *logits.shape[2:]) or target.is_floating_point():
        raise ValueError(
            f"`target` must be integer classes of shape {(logits.shape[0], *logits.shape[2:])} for logits "
            f"{tuple(logits.shape)}, got {target.dtype} {tuple(target.shape)}."
        )
    gamma = check_non_negative("gamma", gamma)
    check_reduction(reduction)
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    weight = (1.0 - torch.exp(-ce)).pow(gamma) if gamma else torch.ones_like(ce)
    keep = (target != ignore_index).float().flatten(1)
    per_sample = (weight * ce).flatten(1).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
    return reduce(per_sample, reduction)


def mutual_cwd_loss(first: Tensor, second: Tensor, *, temperature: float = 4.0) -> Tensor:
    r"""Channel-wise distillation both ways: :math:`\mathrm{CWD}(a, \mathrm{sg}(b)) + \mathrm{CWD}(b, \mathrm{sg}(a))`.

    Label-Assisted Distillation trains its teacher on two independently coded copies of the label
    channel and ties the two outputs together with this term (weight 5 in the official code,
    ``train_baseline.py``; each direction detaches its target, so each output is pulled towards
    the other). :func:`~lightning_distill.losses.feature.cwd_loss` is one direction.

    Args:
        first: ``(B, C, *S)`` logits or features of the first pass.
        second: the second pass, same shape.
        temperature: CWD's spatial-softmax temperature (4 in the paper).

    Returns:
        The float32 scalar sum of the two directions.

    Raises:
        TypeError, ValueError: as :func:`~lightning_distill.losses.feature.cwd_loss`.

    Example:
        >>> a = torch.randn(2, 3, 4, 4)
        >>> float(mutual_cwd_loss(a, a.clone())) < 1e-6
        True
    """
    return cwd_loss(first, second.detach(), temperature=temperature) + cwd_loss(
        second, first.detach(), temperature=temperature
    )


def coarse_map_mse(
    student_maps: list[Tensor] | tuple[Tensor, ...], teacher_maps: list[Tensor] | tuple[Tensor, ...]
) -> Tensor:
    """Mean over levels of ``mean((student - teacher)^2)`` between coarse maps (teacher detached).

    DistillFSS's feature term (``DistillationLoss``): the student's support-free coarse maps regress
    the teacher's support-conditioned ones, level by level.

    Args:
        student_maps: per level ``(B, N, h_l, w_l)``.
        teacher_maps: the teacher's maps, the same shapes.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: different numbers of levels, no level, or shapes that differ.

    Example:
        >>> s = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
        >>> float(coarse_map_mse(s, [torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 3.0)]))  # (1 + 9) / 2
        5.0
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(
            f"`student_maps` and `teacher_maps` must hold the same number (>= 1) of levels, got {len(student_maps)} "
            f"and {len(teacher_maps)}."
        )
    for level, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        if s.shape != t.shape:
            raise ValueError(
                f"Coarse maps of level {level} differ in shape: student {tuple(s.shape)}, teacher {tuple(t.shape)}."
            )
    errors = [F.mse_loss(s.float(), t.detach().float()) for s, t in zip(student_maps, teacher_maps)]
    return torch.stack(errors).mean()
