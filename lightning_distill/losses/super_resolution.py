"""Super-resolution losses: pixel L1 to the ground truth, L1 to a teacher's SR output, Charbonnier.

Images are ``(B, C, H, W)``; each loss is the per-image mean over ``C, H, W`` (shape ``(B,)`` with
``reduction="none"``), computed in float32. The teacher side is detached.
"""

from __future__ import annotations

from torch import Tensor

from lightning_distill.losses._common import reduce
from lightning_distill.utils.checks import (
    Reduction,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)

__all__ = ["charbonnier_loss", "pixel_l1_loss", "teacher_sr_l1_loss"]


def _check_images(name_a: str, a: Tensor, name_b: str, b: Tensor, reduction: str) -> None:
    check_reduction(reduction)
    check_tensor(name_a, a, exact_ndim=4)
    check_tensor(name_b, b, exact_ndim=4)
    check_same_shape(
        name_a, a, name_b, b, hint="An SR network built for another scale, or an HR image of another size?"
    )


def pixel_l1_loss(sr: Tensor, hr: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """``mean |SR − HR|`` per image: IMDN's (and EDSR's) training loss.

    Args:
        sr: ``(B, C, H, W)`` network output.
        hr: ``(B, C, H, W)`` ground truth.
        reduction: ``"mean"``/``"sum"`` over images or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes differ or are not 4-D, or an unknown reduction.

    Example:
        >>> import torch
        >>> pixel_l1_loss(torch.full((1, 3, 2, 2), 0.5), torch.zeros(1, 3, 2, 2)).item()
        0.5
    """
    _check_images("sr", sr, "hr", hr, reduction)
    return reduce((sr.float() - hr.float()).abs().flatten(1).mean(dim=1), reduction)


def teacher_sr_l1_loss(student_sr: Tensor, teacher_sr: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """``mean |SR_student − sg(SR_teacher)|`` per image: output distillation from a larger SR network.

    Example:
        >>> import torch
        >>> teacher_sr_l1_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), reduction="none")
        tensor([1., 1.])
    """
    _check_images("student_sr", student_sr, "teacher_sr", teacher_sr, reduction)
    return reduce((student_sr.float() - teacher_sr.detach().float()).abs().flatten(1).mean(dim=1), reduction)


def charbonnier_loss(sr: Tensor, hr: Tensor, *, eps: float = 1e-3, reduction: Reduction = "mean") -> Tensor:
    """``mean sqrt((SR − HR)² + ε²)`` per image, a smooth L1 (Charbonnier penalty).

    Example:
        >>> import torch
        >>> round(charbonnier_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), eps=0.1).item(), 4)
        0.1
    """
    check_positive("eps", eps)
    _check_images("sr", sr, "hr", hr, reduction)
    diff = sr.float() - hr.float()
    return reduce((diff.pow(2) + eps**2).sqrt().flatten(1).mean(dim=1), reduction)
