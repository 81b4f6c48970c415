"""Losses of masked-image modelling and feature distillation for representations.

* :func:`normalized_patches` — MAE's per-patch normalised pixel target (``norm_pix_loss``).
* :func:`masked_patch_mse` — MSE averaged over the masked patches only (MAE, DMAE, DMJD).
* :func:`normalized_feature_l1` — DMAE's feature distillation: L1 between the L2-normalised
  teacher feature and the L2-normalised (projected) student feature.
* :func:`visible_smooth_l1` — DMJD's visible-token term: smooth L1 (``beta = 2``) between the
  visible tokens' predictions and their targets.

Pure functions of tensors (no Lightning); computed in float32; the target side detached.
"""

from __future__ import annotations

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

__all__ = ["masked_patch_mse", "normalized_feature_l1", "normalized_patches", "visible_smooth_l1"]


def normalized_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Each patch ``(..., P)`` minus its mean over ``P``, over ``sqrt(var + eps)`` (unbiased var, as MAE).

    Example:
        >>> import torch
        >>> normalized_patches(torch.tensor([[[1.0, 3.0]]])).round(decimals=3)
        tensor([[[-0.7070,  0.7070]]])
    """
    check_tensor("patches", patches)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_patch_mse(
    prediction: Tensor, target: Tensor, mask: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    """MAE's reconstruction loss: per-patch MSE averaged over the masked patches.

    ``L = sum_{b,l} m_{bl} * mean_p (pred_{blp} - target_{blp})^2 / sum_{b,l} m_{bl}``.

    Args:
        prediction: ``(B, L, P)`` predicted patch targets.
        target: ``(B, L, P)`` (detached here).
        mask: ``(B, L)``, ``1`` where the patch was masked (counted), ``0`` where visible.
        reduction: ``"mean"`` (over masked patches), ``"sum"`` (of masked per-patch losses), or
            ``"none"`` (per-patch losses ``(B, L)``, zero at visible patches).

    Raises:
        ValueError: mismatched shapes or a mask without any masked patch (with ``"mean"``).

    Example:
        >>> import torch
        >>> pred, tgt = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
        >>> masked_patch_mse(pred, tgt, torch.tensor([[0.0, 1.0]]))
        tensor(4.)
    """
    check_tensor("prediction", prediction, exact_ndim=3)
    check_same_shape("prediction", prediction, "target", target)
    check_reduction(reduction)
    if mask.shape != prediction.shape[:2]:
        raise ValueError(f"`mask` must be (B, L) = {tuple(prediction.shape[:2])}, got {tuple(mask.shape)}.")
    per_patch = (prediction.float() - target.detach().float()).pow(2).mean(dim=-1) * mask.float()
    if reduction == "none":
        return per_patch
    if reduction == "sum":
        return per_patch.sum()
    count = mask.float().sum()
    if float(count) == 0:
        raise ValueError("`mask` masks no patch: the masked-patch loss is undefined.")
    return per_patch.sum() / count


def normalized_feature_l1(student: Tensor, teacher: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """DMAE's distillation: ``mean |normalize(h_S) - normalize(sg(h_T))|`` with L2 normalisation over features.

    Args:
        student: ``(..., D)`` the student's (projected) features.
        teacher: ``(..., D)`` the teacher's features (detached).
        reduction: ``"mean"`` over every element (``nn.L1Loss``, the official code), ``"sum"``,
            or ``"none"`` (per-token sums over ``D``, shape ``(...)``).

    Example:
        >>> import torch
        >>> normalized_feature_l1(torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]]))
        tensor(0.)
    """
    check_tensor("student", student)
    check_same_shape(
        "student",
        student,
        "teacher",
        teacher,
        hint="Project the student feature to the teacher's width first.",
    )
    check_reduction(reduction)
    diff = (F.normalize(student.float(), dim=-1) - F.normalize(teacher.detach().float(), dim=-1)).abs()
    if reduction == "none":
        return diff.sum(dim=-1)
    return diff.mean() if reduction == "mean" else diff.sum()


def visible_smooth_l1(
    prediction: Tensor, target: Tensor, *, beta: float = 2.0, reduction: Reduction = "mean"
) -> Tensor:
    """DMJD's visible-token term: smooth L1 with threshold ``beta`` between predictions and targets.

    ``l(d) = 0.5 d^2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``; averaged over every element.

    Args:
        prediction: ``(B, V, P)`` the visible tokens' predictions (projector + predictor).
        target: ``(B, V, P)`` the targets at the same patches (detached).
        beta: the threshold (2.0 in DMJD).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (elementwise).

    Example:
        >>> import torch
        >>> visible_smooth_l1(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[1.0, 4.0]]]))
        tensor(1.6250)
    """
    check_tensor("prediction", prediction)
    check_same_shape("prediction", prediction, "target", target)
    check_reduction(reduction)
    beta = check_positive("beta", beta)
    return F.smooth_l1_loss(prediction.float(), target.detach().float(), beta=beta, reduction=reduction)


# ---------------------------------------------------------------- Hybrid Distill (arXiv 2306.15876)
__all__ += ["nt_xent", "relation_kl", "whitened_feature_smooth_l1"]


def relation_kl(
    student: Tensor, teacher: Tensor, *, eps: float = 1e-8, reduction: Reduction = "mean"
) -> Tensor:
    """Token-relation distillation: ``KL(R_T || R_S)`` of each row of two attention maps.

    ``R = softmax(Q K^T / sqrt(d))`` over the same tokens for both; each row is a distribution.
    ``l_row = sum_j R_T[j] (log R_T[j] - log R_S[j])``.

    Args:
        student: ``(..., N, N)`` the student's relations (rows sum to 1).
        teacher: ``(..., N, N)`` the teacher's relations (detached).
        eps: floor under the probabilities before the log.
        reduction: ``"mean"`` over every row, ``"sum"`` or ``"none"`` (per-row ``(..., N)``).

    Raises:
        ValueError: shapes differ or the last two dimensions are not square.

    Example:
        >>> import torch
        >>> r = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
        >>> relation_kl(r, r)
        tensor(0.)
    """
    check_tensor("student", student, min_ndim=2)
    check_same_shape(
        "student", student, "teacher", teacher, hint="Compare relations over the same tokens and heads."
    )
    check_reduction(reduction)
    if student.shape[-1] != student.shape[-2]:
        raise ValueError(
            f"relations must be square in their last two dimensions, got {tuple(student.shape)}."
        )
    t = teacher.detach().float().clamp_min(eps)
    s = student.float().clamp_min(eps)
    rows = (t * (t.log() - s.log())).sum(dim=-1)
    if reduction == "none":
        return rows
    return rows.mean() if reduction == "mean" else rows.sum()


def whitened_feature_smooth_l1(
    student: Tensor, teacher: Tensor, *, beta: float = 2.0, eps: float = 1e-6, reduction: Reduction = "mean"
) -> Tensor:
    """Feature distillation to a whitened target: smooth L1 between ``h_S`` and ``LN(sg(h_T))``.

    ``LN`` is a layer norm without affine parameters over the feature dimension (the "whitening" of
    feature distillation, FD, arXiv 2205.14141); ``l(d) = 0.5 d^2 / beta`` if ``|d| < beta`` else
    ``|d| - 0.5 beta``.

    Args:
        student: ``(..., D)`` the student's (projected) features.
        teacher: ``(..., D)`` the teacher's features (detached).
        beta: the smooth-L1 threshold.
        eps: the layer norm's epsilon.
        reduction: ``"mean"`` over every element, ``"sum"`` or ``"none"`` (elementwise).

    Raises:
        ValueError: shapes differ or ``beta <= 0``.

    Example:
        >>> import torch
        >>> whitened_feature_smooth_l1(torch.zeros(1, 2), torch.tensor([[2.0, 4.0]]))  # target (-1, 1)
        tensor(0.2500)
    """
    check_tensor("student", student)
    check_same_shape(
        "student",
        student,
        "teacher",
        teacher,
        hint="Project the student feature to the teacher's width first.",
    )
    check_reduction(reduction)
    beta = check_positive("beta", beta)
    t = teacher.detach().float()
    target = F.layer_norm(t, t.shape[-1:], eps=eps)
    return F.smooth_l1_loss(student.float(), target, beta=beta, reduction=reduction)


def nt_xent(
    first: Tensor, second: Tensor, *, temperature: float = 0.2, reduction: Reduction = "mean"
) -> Tensor:
    """SimCLR's NT-Xent: each of the ``2N`` views must pick its partner among the other ``2N - 1``.

    With ``z = normalize([first; second])`` and ``s_ij = z_i . z_j / temperature``,
    ``l_i = -log(exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik))``, ``p(i)`` the other view of image ``i``.

    Args:
        first: ``(N, D)`` projections of the first views.
        second: ``(N, D)`` projections of the second views (row ``i``: the same image).
        temperature: ``tau`` > 0.
        reduction: ``"mean"`` over the ``2N`` views, ``"sum"`` or ``"none"`` (``(2N,)``).

    Raises:
        ValueError: shapes differ, not 2-D, fewer than two images, or ``temperature <= 0``.

    Example:
        >>> import torch
        >>> z = torch.eye(4)
        >>> bool(nt_xent(z, z, temperature=0.1) < nt_xent(z, z.roll(1, 0), temperature=0.1))
        True
    """
    check_tensor("first", first, exact_ndim=2)
    check_same_shape("first", first, "second", second)
    check_reduction(reduction)
    temperature = check_positive("temperature", temperature)
    n = first.shape[0]
    if n < 2:
        raise ValueError(f"NT-Xent needs at least two images (negatives), got {n}.")
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner, reduction=reduction)
