"""Super-resolution losses: pixel L1 to the ground truth, L1 to a teacher's SR output, Charbonnier.

Images are ``(B, C, H, W)``; each loss is the per-image mean over ``C, H, W`` (shape ``(B,)`` with
``reduction="none"``), computed in float32. The teacher side is detached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import reduce
from lightning_distill.utils.checks import (
    Reduction,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "charbonnier_loss",
    "pixel_l1_loss",
    "teacher_sr_l1_loss",
    "flow_velocity_l1_loss",
    "teacher_sr_mse_loss",
    "hsd_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "scale_distillation_loss",
    "feature_distance_loss",
    "inverse_l1_weight",
    "distribution_trajectory_matching_loss",
]


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


def flow_velocity_l1_loss(velocity: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """``mean |v − sg(v*)|`` per image: OFTSR's L1 on velocities (Zhu et al., arXiv 2412.09465).

    The flow teacher regresses ``v_φ(x_t, t)`` on ``x_1 − x_0``; the distilled student regresses its
    velocity on a bootstrapped target, on the teacher's velocity (alignment) and at the boundary.
    The target side is detached.

    Args:
        velocity: ``(B, C, H, W)`` predicted velocity.
        target: ``(B, C, H, W)`` target velocity.
        reduction: ``"mean"``/``"sum"`` over images or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes differ or are not 4-D, or an unknown reduction.

    Example:
        >>> import torch
        >>> flow_velocity_l1_loss(torch.ones(2, 1, 2, 2), -torch.ones(2, 1, 2, 2), reduction="none")
        tensor([2., 2.])
    """
    _check_images("velocity", velocity, "target", target, reduction)
    return reduce((velocity.float() - target.detach().float()).abs().flatten(1).mean(dim=1), reduction)


def teacher_sr_mse_loss(student_sr: Tensor, teacher_sr: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """``mean (SR_student − sg(SR_teacher))²`` per image: TAD-SR's regression to the teacher's multi-step output.

    Example:
        >>> import torch
        >>> teacher_sr_mse_loss(torch.full((2, 1, 2, 2), 2.0), torch.zeros(2, 1, 2, 2), reduction="none")
        tensor([4., 4.])
    """
    _check_images("student_sr", student_sr, "teacher_sr", teacher_sr, reduction)
    return reduce((student_sr.float() - teacher_sr.detach().float()).pow(2).flatten(1).mean(dim=1), reduction)


def hsd_loss(x0: Tensor, gradient: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """``mean(sg(g) · x̂₀)`` per image: TAD-SR's high-frequency score distillation (HSD) term.

    TAD-SR (He et al., arXiv 2408.07476): ``g`` is the difference of the teacher's noise predictions
    at the student's and the teacher's outputs noised alike; its gradient w.r.t. ``x̂₀`` is ``g / x0[0].numel()``
    per image (divided by ``B`` for ``"mean"``). Non-finite entries of ``g`` count as 0.

    Args:
        x0: ``(B, C, H, W)`` the student's output.
        gradient: ``(B, C, H, W)`` ``g`` (detached here).
        reduction: ``"mean"``/``"sum"`` over images or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes differ or are not 4-D, or an unknown reduction.

    Example:
        >>> import torch
        >>> hsd_loss(torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 0.5)).item()
        1.5
    """
    _check_images("x0", x0, "gradient", gradient, reduction)
    g = torch.nan_to_num(gradient.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    return reduce((g * x0.float()).flatten(1).mean(dim=1), reduction)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``mean relu(1 − D(real)) + mean relu(1 + D(fake))``: the hinge loss of a discriminator (scalar).

    Raises:
        ValueError: logits that are not ``(B,)`` vectors.

    Example:
        >>> import torch
        >>> hinge_discriminator_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])).item()
        1.25
    """
    check_tensor("real_logits", real_logits, exact_ndim=1)
    check_tensor("fake_logits", fake_logits, exact_ndim=1)
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """``−mean D(fake)``: the generator's side of the hinge GAN (scalar).

    Raises:
        ValueError: logits that are not a ``(B,)`` vector.

    Example:
        >>> import torch
        >>> hinge_generator_loss(torch.tensor([1.0, 3.0])).item()
        -2.0
    """
    check_tensor("fake_logits", fake_logits, exact_ndim=1)
    return -fake_logits.float().mean()


def scale_distillation_loss(
    student_x0: Tensor, target_x0: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    """``mean (x̂0_student − sg(target))²`` per image: YONOS-SR's scale-distillation regression.

    The student (harder scale) and the target come from the same noisy ``x_t`` and timestep; the
    target is the frozen teacher's x̂0 from its easier LR input (or, for the direct-training ablation,
    the HR image itself).

    Example:
        >>> import torch
        >>> scale_distillation_loss(torch.full((2, 1, 2, 2), 3.0), torch.ones(2, 1, 2, 2), reduction="none")
        tensor([4., 4.])
    """
    _check_images("student_x0", student_x0, "target_x0", target_x0, reduction)
    return reduce((student_x0.float() - target_x0.detach().float()).pow(2).flatten(1).mean(dim=1), reduction)


# ---------------------------------------------------------------------------------------------- CTMSR
def feature_distance_loss(
    features: Sequence[Tensor], target_features: Sequence[Tensor], *, reduction: Reduction = "mean"
) -> Tensor:
    """``Σ_l mean_hw ‖n(f_l) − n(sg(g_l))‖²`` per image: a differentiable LPIPS-like feature distance.

    ``n`` scales each pixel's channel vector to unit length (LPIPS without its learned layer weights;
    the same formula as :class:`~lightning_distill.super_resolution.metrics.FeatureDistance`, which is
    a no-grad metric). CTMSR trains with a perceptual distance; this is its offline stand-in.

    Args:
        features: per-layer maps ``(B, C_l, H_l, W_l)`` of the image being trained.
        target_features: the same layers of the target image (detached).
        reduction: ``"mean"``/``"sum"`` over images or ``"none"`` (``(B,)``).

    Raises:
        ValueError: no layers, a different number of layers, or shapes that differ.

    Example:
        >>> import torch
        >>> f = [torch.tensor([[[[3.0]], [[4.0]]]])]
        >>> round(feature_distance_loss(f, [torch.tensor([[[[4.0]], [[-3.0]]]])]).item(), 4)
        2.0
    """
    check_reduction(reduction)
    if len(features) == 0 or len(features) != len(target_features):
        raise ValueError(
            f"`features` and `target_features` must list the same (non-zero) number of layers, got "
            f"{len(features)} and {len(target_features)}."
        )
    total: Tensor | None = None
    for k, (a, b) in enumerate(zip(features, target_features)):
        check_tensor(f"features[{k}]", a, exact_ndim=4)
        check_same_shape(f"features[{k}]", a, f"target_features[{k}]", b)
        a, b = a.float(), b.detach().float()
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        term = (a - b).pow(2).sum(dim=1).mean(dim=(-2, -1))
        total = term if total is None else total + term
    return reduce(total, reduction)


def inverse_l1_weight(sr: Tensor, hr: Tensor, *, eps: float = 1e-8) -> Tensor:
    """``1 / mean |SR − HR|`` per image ``(B,)``, detached: CTMSR's "improved" weighting of the DTM loss.

    Example:
        >>> import torch
        >>> inverse_l1_weight(torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, 1, 2, 2))
        tensor([2., 2.])
    """
    check_positive("eps", eps)
    _check_images("sr", sr, "hr", hr, "mean")
    return 1.0 / ((sr.detach().float() - hr.float()).abs().flatten(1).mean(dim=1) + eps)


def distribution_trajectory_matching_loss(
    sr: Tensor,
    fake_x0: Tensor,
    real_x0: Tensor,
    *,
    weight: Tensor | None = None,
    distance: Callable[[Tensor, Tensor], Tensor] | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """CTMSR's distribution trajectory matching: ``½ w d(SR, sg(SR − (D(z_t) − D(x_t))))`` per image.

    ``z_t`` and ``x_t`` are the student's output and the ground truth noised to the same point of
    the LR→HR trajectory with the same noise; ``D`` is the frozen self-copy's denoiser, so
    ``g = D(z_t) − D(x_t)`` says how the generated distribution's trajectory departs from the real
    one. The loss moves ``SR`` by ``−g``; with ``d`` the mean squared error its gradient is
    ``w g / (C H W)``.

    Args:
        sr: ``(B, C, H, W)`` the student's output (gets the gradient).
        fake_x0: ``(B, C, H, W)`` the frozen denoiser at the noised student output (detached).
        real_x0: ``(B, C, H, W)`` the frozen denoiser at the noised ground truth (detached).
        weight: optional per-image weight ``(B,)`` (the official "improved" weighting is
            :func:`inverse_l1_weight`).
        distance: per-image distance ``(SR, target) -> (B,)`` (the official code: LPIPS); ``None``
            is the per-image mean squared error.
        reduction: ``"mean"``/``"sum"`` over images or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes differ, a weight that is not ``(B,)``, or a distance that does not return ``(B,)``.

    Example:
        >>> import torch
        >>> sr = torch.zeros(1, 1, 2, 2)
        >>> distribution_trajectory_matching_loss(sr, torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item()
        0.5
    """
    _check_images("sr", sr, "fake_x0", fake_x0, reduction)
    check_same_shape("sr", sr, "real_x0", real_x0)
    target = (sr.detach().float() - (fake_x0.detach().float() - real_x0.detach().float())).to(sr.dtype)
    if distance is None:
        per_image = (sr.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    else:
        per_image = distance(sr, target).float().reshape(-1)
        if per_image.shape[0] != sr.shape[0]:
            raise ValueError(
                f"`distance` must return one value per image ({sr.shape[0]}), got shape {tuple(per_image.shape)}."
            )
    if weight is not None:
        if weight.shape != per_image.shape:
            raise ValueError(f"`weight` must have shape ({sr.shape[0]},), got {tuple(weight.shape)}.")
        per_image = weight.detach().float() * per_image
    return reduce(0.5 * per_image, reduction)
