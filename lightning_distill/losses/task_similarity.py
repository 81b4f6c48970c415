"""Task similarity from a few labelled target examples, source weights, and DistillNearest's feature loss.

Used by ``recipes/distill_nearest.py`` (Borup, Phoo & Hariharan, "Distilling from Similar Tasks
for Transfer Learning on a Budget", arXiv 2304.12314). Pure functions of tensors.

* :func:`gbc_score`: the Gaussian Bhattacharyya Coefficient (Pándy et al., CVPR 2022) of a source
  model's features of the labelled target examples. Each class ``c`` gets a Gaussian with mean
  ``μ_c`` and diagonal variance ``σ²_c``; every ordered pair of classes ``(i, j)`` its
  Bhattacharyya distance

      D_B(i, j) = ⅛ Σ_d (μ_i − μ_j)²_d / σ²_d + ½ Σ_d ln( σ²_d / √(σ²_i,d σ²_j,d) ),  σ² = (σ²_i + σ²_j) / 2,

  and ``GBC = −Σ_{i≠j} exp(−D_B(i, j))``: 0 when the classes are perfectly separated in the
  source's feature space, more negative the more they overlap. Higher = more similar task.
* :func:`source_weights`: DistillWeighted's weights, a softmax of the scores over the
  ``num_sources`` best sources (zero for the rest); ``num_sources=1`` is DistillNearest.
* :func:`normalised_feature_mse`: ``‖ŝ − t̂‖²`` of L2-normalised features (``2 − 2 cos``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gbc_score", "normalised_feature_mse", "source_weights"]


def _check_features(features: Tensor, labels: Tensor) -> None:
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise ValueError(
            f"`features` must be a (N, D) tensor, got {getattr(features, 'shape', type(features).__name__)}."
        )
    if not isinstance(labels, Tensor) or labels.shape != features.shape[:1]:
        raise ValueError(
            f"`labels` must be a (N,) tensor matching `features` {tuple(features.shape)}, got "
            f"{getattr(labels, 'shape', type(labels).__name__)}."
        )
    if labels.dtype.is_floating_point or bool((labels < 0).any()):
        raise ValueError("`labels` must be non-negative integer class indices (labelled examples only).")
    if labels.unique().numel() < 2:
        raise ValueError("`labels` must hold at least two classes to measure how well they separate.")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("`features` holds NaN or inf values.")


def gbc_score(
    features: Tensor, labels: Tensor, *, num_components: int | None = 64, eps: float = 1e-6
) -> Tensor:
    """Gaussian Bhattacharyya Coefficient of labelled features (higher = classes better separated).

    Args:
        features: ``(N, D)`` a source model's features of the labelled target examples.
        labels: ``(N,)`` their target classes.
        num_components: project the centred features on their first ``num_components`` principal
            directions first (GBC's PCA step; 64 in Pándy et al.); ``None`` keeps every dimension.
            Capped at ``min(N, D)``.
        eps: added to every per-class variance (a class with one example has variance 0).

    Returns:
        A scalar in ``[−C(C−1), 0]`` for ``C`` classes.

    Raises:
        ValueError: shapes that do not match, negative or float labels, fewer than two classes,
            non-finite features, ``num_components`` < 1 or ``eps`` <= 0.
    """
    _check_features(features, labels)
    if num_components is not None and num_components < 1:
        raise ValueError(f"`num_components` must be >= 1 or None, got {num_components}.")
    if eps <= 0:
        raise ValueError(f"`eps` must be > 0, got {eps}.")
    x = features.double()
    if num_components is not None and num_components < min(x.shape):
        x = x - x.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        x = x @ v[:num_components].T
    classes = labels.unique()
    mu = torch.stack([x[labels == c].mean(0) for c in classes])  # (C, D)
    var = torch.stack([x[labels == c].var(0, unbiased=False) for c in classes]) + eps  # (C, D)
    pooled = 0.5 * (var[:, None] + var[None])  # (C, C, D)
    diff = mu[:, None] - mu[None]
    distance = 0.125 * (diff.square() / pooled).sum(-1) + 0.5 * (
        pooled.log() - 0.5 * (var.log()[:, None] + var.log()[None])
    ).sum(-1)
    off_diagonal = ~torch.eye(len(classes), dtype=torch.bool, device=x.device)
    return (-torch.exp(-distance)[off_diagonal].sum()).to(features.dtype)


def source_weights(scores: Tensor, num_sources: int = 1, temperature: float = 1.0) -> Tensor:
    """DistillWeighted's source weights: ``softmax(score / temperature)`` over the ``num_sources`` best.

    Args:
        scores: ``(S,)`` task-similarity scores, higher = more similar.
        num_sources: how many of the best-scoring sources get a weight (1: DistillNearest, a one-hot).
        temperature: softmax temperature over the kept scores.

    Returns:
        ``(S,)`` non-negative weights summing to 1; zero outside the ``num_sources`` best (ties go to
        the lower index).

    Raises:
        ValueError: ``scores`` not 1-D, non-finite, ``num_sources`` outside ``1..S``, ``temperature`` <= 0.
    """
    if not isinstance(scores, Tensor) or scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"`scores` must be a non-empty (S,) tensor, got {getattr(scores, 'shape', scores)}.")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"`scores` must be finite, got {scores.tolist()}.")
    if not 1 <= num_sources <= scores.numel():
        raise ValueError(f"`num_sources` must be in 1..{scores.numel()}, got {num_sources}.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    # A stable sort on the negated scores: equal scores keep index order.
    order = torch.sort(-scores.double(), stable=True).indices[:num_sources]
    weights = torch.zeros_like(scores, dtype=torch.float64)
    weights[order] = torch.softmax(scores.double()[order] / temperature, dim=0)
    return weights.to(scores.dtype if scores.dtype.is_floating_point else torch.float32)


def normalised_feature_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over rows of ``‖s/‖s‖ − t/‖t‖‖²`` (``2 − 2 cos(s, t)``); gradients reach ``student`` only.

    Raises:
        ValueError: shapes differ or are not ``(B, D)``.
    """
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"`student` and `teacher` features must both be (B, D) and equal, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}."
        )
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    return (s - t).square().sum(-1).mean()
