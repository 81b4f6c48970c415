"""3D-detection losses: CenterPoint's heatmap focal loss and box regression, PointDistiller's
re-weighted local-structure loss.

* :func:`heatmap_focal_loss`: the penalty-reduced pixel-wise focal loss of CenterNet (Zhou et al.,
  arXiv 1904.07850) that CenterPoint (Yin et al., arXiv 2006.11275) uses on its BEV class heatmaps.
* :func:`box_regression_l1`: CenterPoint's L1 loss on the box code at ground-truth centres, each
  code entry weighted (``code_weights``), averaged over the objects.
* :func:`local_structure_loss`: PointDistiller's (Zhang et al., arXiv 2205.11098) loss between the
  teacher's and the student's local graph features, re-weighted per graph:
  ``2 · mean_{n,c,k}(w_n (G_t - G_s)²)``.

Pure functions of tensors; computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.utils.checks import (
    Reduction,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)

__all__ = ["box_regression_l1", "heatmap_focal_loss", "local_structure_loss", "saliency_weights"]


def heatmap_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = 1e-4,
) -> Tensor:
    r"""CenterNet's penalty-reduced focal loss on a heatmap of logits, as CenterPoint trains its BEV head.

    With ``p = clamp(sigmoid(logits), eps, 1 - eps)`` and Gaussian targets ``y`` (exactly 1 at
    object centres):

    .. math::
        L = -\frac{1}{\max(1, N_{pos})} \sum \begin{cases}
            (1 - p)^{\alpha} \log p & y = 1 \\
            (1 - y)^{\beta} p^{\alpha} \log(1 - p) & \text{otherwise}
        \end{cases}

    Args:
        logits: ``(B, K, H, W)`` class logits (any shape works, the target's).
        target: same shape, values in ``[0, 1]``; 1 marks a centre.
        alpha: focusing exponent (2 in CenterNet / CenterPoint).
        beta: penalty reduction near centres (4).
        eps: probability clamp (1e-4, as CenterPoint's ``_sigmoid``).

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes differ, or the target leaves ``[0, 1]``.

    Example:
        >>> target = torch.zeros(1, 1, 3, 3); target[0, 0, 1, 1] = 1.0
        >>> round(float(heatmap_focal_loss(torch.full((1, 1, 3, 3), -4.0), target)), 3)
        3.875
    """
    check_tensor("logits", logits)
    check_tensor("target", target)
    check_same_shape("logits", logits, "target", target)
    if target.numel() and (float(target.min()) < 0 or float(target.max()) > 1):
        raise ValueError(
            f"`target` must hold heatmap values in [0, 1], got [{float(target.min())}, {float(target.max())}]."
        )
    p = torch.sigmoid(logits.float()).clamp(eps, 1 - eps)
    target = target.float()
    pos = target.eq(1).float()
    pos_term = torch.log(p) * (1 - p).pow(alpha) * pos
    neg_term = torch.log(1 - p) * p.pow(alpha) * (1 - target).pow(beta) * (1 - pos)
    return -(pos_term.sum() + neg_term.sum()) / pos.sum().clamp(min=1.0)


def box_regression_l1(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    code_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    r"""CenterPoint's box-code L1 loss at object centres.

    .. math::
        L = \frac{1}{\max(1, \sum m)} \sum_{b, j} m_{bj} \sum_c w_c \, |\hat r_{bjc} - r_{bjc}|

    Args:
        pred: ``(B, M, C)`` box codes read from the regression maps at the target centres.
        target: ``(B, M, C)`` encoded boxes (offset, z, log size, sin/cos yaw: ``C = 8``).
        mask: ``(B, M)`` 1 for real objects, 0 for padding.
        code_weights: ``C`` weights per code entry (CenterPoint: all 1.0); ``None`` for ones.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes differ, ``mask`` is not ``(B, M)`` or ``code_weights`` has the wrong length.

    Example:
        >>> pred, target = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
        >>> float(box_regression_l1(pred, target, torch.tensor([[1.0, 0.0]])))
        3.0
    """
    check_tensor("pred", pred, exact_ndim=3)
    check_tensor("target", target, exact_ndim=3)
    check_same_shape("pred", pred, "target", target)
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"`mask` must be (B, M) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}.")
    weights = (
        torch.ones(pred.shape[-1])
        if code_weights is None
        else torch.as_tensor(code_weights, dtype=torch.float32)
    )
    if weights.shape != (pred.shape[-1],):
        raise ValueError(f"`code_weights` must have {pred.shape[-1]} entries, got {tuple(weights.shape)}.")
    m = mask.float()
    err = (pred.float() - target.float()).abs() * weights.to(pred.device)
    return (err.sum(-1) * m).sum() / m.sum().clamp(min=1.0)


def local_structure_loss(
    teacher_graph: Tensor,
    student_graph: Tensor,
    weights: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""PointDistiller's re-weighted local-structure loss between graph features.

    .. math::
        L = 2 \cdot \frac{1}{N C K} \sum_{n, c, k} w_n \, (G^t_{nck} - G^s_{nck})^2

    where ``G`` are the adapted kNN-graph features of the ``N`` sampled voxels (``C`` channels,
    ``K`` neighbours) and ``w = N · softmax(saliency / τ)`` (the factor 2 and the mean follow the
    official code). The teacher graph is not detached here: in PointDistiller the teacher's graph
    goes through a *trainable* adapter, so gradients reach that adapter (never the teacher's
    features, which the caller computes without gradient).

    Args:
        teacher_graph: ``(N, C, K)`` (any shape ``(N, ...)``).
        student_graph: same shape.
        weights: ``(N,)`` per-graph weights, or ``None`` for ones.
        reduction: ``"mean"`` (the loss above), ``"sum"`` (``2 Σ``) or ``"none"`` (``(N,)`` per graph,
            ``2 w_n mean_{c,k}``).

    Raises:
        ValueError: shapes differ, ``weights`` is not ``(N,)``, or an unknown ``reduction``.

    Example:
        >>> t, s = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)
        >>> float(local_structure_loss(t, s, torch.tensor([1.5, 0.5])))
        2.0
    """
    check_tensor("teacher_graph", teacher_graph)
    check_tensor("student_graph", student_graph)
    check_same_shape("teacher_graph", teacher_graph, "student_graph", student_graph)
    check_reduction(reduction)
    n = teacher_graph.shape[0]
    per = F.mse_loss(student_graph.float(), teacher_graph.float(), reduction="none").reshape(n, -1)
    if weights is not None:
        if weights.shape != (n,):
            raise ValueError(f"`weights` must be (N,) = ({n},), got {tuple(weights.shape)}.")
        per = per * weights.float().unsqueeze(1)
    if reduction == "mean":
        return 2.0 * per.mean()
    if reduction == "sum":
        return 2.0 * per.sum()
    return 2.0 * per.mean(dim=1)


def saliency_weights(saliency: Tensor, *, temperature: float = 0.01) -> Tensor:
    """PointDistiller's re-weighting ``w = N · softmax(saliency / τ)`` over the ``N`` sampled voxels.

    Args:
        saliency: ``(N,)`` points per voxel (or any saliency score).
        temperature: ``τ`` (0.01 in the paper and the official code).

    Returns:
        ``(N,)`` float32 weights summing to ``N``.

    Example:
        >>> saliency_weights(torch.tensor([3.0, 3.0])).tolist()
        [1.0, 1.0]
    """
    check_tensor("saliency", saliency.float(), exact_ndim=1)
    check_positive("temperature", temperature)
    return torch.softmax(saliency.float() / temperature, dim=0) * saliency.shape[0]
