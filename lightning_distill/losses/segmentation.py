"""Semi-supervised segmentation losses (pure functions, no Lightning): LaserMix / LaserMix++.

* :func:`ignore_index_cross_entropy`: per-point cross-entropy over the points whose label is not
  ignored, and an exact (differentiable) zero when every label is ignored, so a batch of
  unconfident pseudo-labels neither crashes nor produces ``nan``.
* :func:`probability_mse`: the mean-teacher consistency, the mean squared difference of the class
  probabilities of a student and a (detached) teacher (LaserMix's ``loss_mse``).
* :func:`paired_cosine_distance`: ``mean 1 - cos(student_i, target_i)`` over row-aligned pairs
  (LaserMix++'s camera-to-LiDAR feature distillation), 0 when there is no pair.

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

import torch.nn.functional as F
from torch import Tensor

__all__ = ["ignore_index_cross_entropy", "paired_cosine_distance", "probability_mse"]


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
