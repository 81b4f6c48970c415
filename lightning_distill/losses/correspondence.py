"""Losses of dense-feature distillation for semantic correspondence (DistillDIFT).

* :func:`cosine_similarity_maps` — ``S[b, n, m] = cos(f_src[b, n], f_tgt[b, m])``: how much each
  source location looks like each target location.
* :func:`similarity_distillation_loss` — DistillDIFT's loss (Fundel et al., arXiv 2412.03512):
  cross-entropy between the teacher's and the student's row-wise softmax of similarity maps at
  temperature ``τ`` (0.01), ``L = −mean_{b,n} Σ_m softmax(S_T/τ)[b,n,m] · log softmax(S_S/τ)[b,n,m]``.

Pure functions of tensors (no Lightning); computed in float32; the teacher side detached.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import reduce
from lightning_distill.utils.checks import Reduction, check_positive, check_reduction, check_tensor

__all__ = ["cosine_similarity_maps", "similarity_distillation_loss"]


def cosine_similarity_maps(source: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every source location with every target location.

    Args:
        source: ``(B, N, C)`` features of ``N`` source locations.
        target: ``(B, M, C)`` features of ``M`` target locations.
        eps: floor of the feature norms.

    Returns:
        ``(B, N, M)`` float32 similarities in ``[-1, 1]``.

    Raises:
        ValueError: not 3-D, or batch or channel sizes differ.

    Example:
        >>> import torch
        >>> s = cosine_similarity_maps(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[2.0, 0.0], [0.0, 3.0]]]))
        >>> s.tolist()
        [[[1.0, 0.0]]]
    """
    check_tensor("source", source, exact_ndim=3)
    check_tensor("target", target, exact_ndim=3)
    if source.shape[0] != target.shape[0] or source.shape[2] != target.shape[2]:
        raise ValueError(
            f"`source` {tuple(source.shape)} and `target` {tuple(target.shape)} must share the batch and channel "
            "sizes: (B, N, C) and (B, M, C)."
        )
    a = F.normalize(source.float(), dim=-1, eps=eps)
    b = F.normalize(target.float(), dim=-1, eps=eps)
    return a @ b.transpose(1, 2)


def similarity_distillation_loss(
    student_source: Tensor,
    student_target: Tensor,
    teacher_source: Tensor,
    teacher_target: Tensor,
    *,
    temperature: float = 0.01,
    reduction: Reduction = "mean",
) -> Tensor:
    """DistillDIFT: cross-entropy from the teacher's to the student's softmax over target locations.

    ``p_T = softmax(S_T / τ)`` and ``log p_S = log_softmax(S_S / τ)`` over the last dimension (the
    target locations), with ``S = cosine_similarity_maps(source, target)``;
    ``L[b, n] = −Σ_m p_T[b, n, m] log p_S[b, n, m]``. The teacher may have any channel count, but
    both must describe the same ``N`` source and ``M`` target locations (resize the teacher's
    feature map to the student's grid first).

    Args:
        student_source: ``(B, N, C_s)`` student features at the source locations.
        student_target: ``(B, M, C_s)`` student features at the target locations.
        teacher_source: ``(B, N, C_t)`` teacher features (detached here).
        teacher_target: ``(B, M, C_t)`` teacher features (detached here).
        temperature: softmax temperature ``τ`` of both maps (the paper: 0.01).
        reduction: ``"mean"`` over ``B·N`` rows, ``"sum"``, or ``"none"`` (``(B, N)``).

    Raises:
        ValueError: mismatched shapes, ``temperature`` <= 0 or an unknown ``reduction``.

    Example:
        >>> import torch
        >>> f = torch.eye(3).unsqueeze(0)
        >>> loss = similarity_distillation_loss(f, f, f, f, temperature=0.01)
        >>> round(float(loss), 4)
        0.0
    """
    check_positive("temperature", temperature)
    check_reduction(reduction)
    for name, tensor in (
        ("student_source", student_source),
        ("student_target", student_target),
        ("teacher_source", teacher_source),
        ("teacher_target", teacher_target),
    ):
        check_tensor(name, tensor, exact_ndim=3)
    if (
        student_source.shape[:2] != teacher_source.shape[:2]
        or student_target.shape[:2] != teacher_target.shape[:2]
    ):
        raise ValueError(
            f"student and teacher must describe the same locations: student_source {tuple(student_source.shape)}, "
            f"teacher_source {tuple(teacher_source.shape)}, student_target {tuple(student_target.shape)}, "
            f"teacher_target {tuple(teacher_target.shape)} (B, N|M, C); resize the teacher map to the student grid."
        )
    s_student = cosine_similarity_maps(student_source, student_target)
    s_teacher = cosine_similarity_maps(teacher_source.detach(), teacher_target.detach())
    p_teacher = F.softmax(s_teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(s_student / temperature, dim=-1)
    rows = -(p_teacher * log_p_student).sum(dim=-1)  # (B, N)
    if reduction == "none":
        return rows
    return reduce(rows.flatten(), reduction)
