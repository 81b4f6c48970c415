"""Losses of video distillation: MCM's R1 penalty; VDOT's transport gradient and relativistic GAN losses.

MCM's adversarial terms are the hinge losses of
:func:`~lightning_distill.losses.super_resolution.hinge_discriminator_loss` and
:func:`~lightning_distill.losses.super_resolution.hinge_generator_loss`; its consistency term is
:func:`~lightning_distill.losses.consistency.pseudo_huber_loss` between the spatial heads' outputs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "barycentric_gradient",
    "r1_penalty",
    "relativistic_critic_loss",
    "relativistic_generator_loss",
]


def r1_penalty(
    logits: Tensor, inputs: Tensor, *, reduction: Literal["mean", "sum", "none"] = "mean"
) -> Tensor:
    """R1 (Mescheder et al., 2018): ``‖∇ₓ D(x)‖²`` at real inputs, per sample, differentiable (for the discriminator).

    Args:
        logits: ``D(x)`` ``(N,)``, computed from ``inputs`` with grad enabled.
        inputs: the real inputs ``x`` ``(N, ...)`` with ``requires_grad=True``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(N,)``).

    Raises:
        ValueError: ``logits`` not ``(N,)`` for the ``N`` inputs, ``inputs`` without grad, or a bad reduction.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
        >>> r1_penalty((3 * x).sum(1), x).item()  # ∇ = (3, 3) for both: 18
        18.0
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if logits.ndim != 1 or logits.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"`logits` must be (N,) for inputs of batch {inputs.shape[0]}, got {tuple(logits.shape)}."
        )
    if not inputs.requires_grad:
        raise ValueError(
            "`inputs` must require grad (call `inputs.requires_grad_(True)` before the discriminator)."
        )
    (grad,) = torch.autograd.grad(logits.float().sum(), inputs, create_graph=True)
    per_sample = grad.float().flatten(1).square().sum(1)
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


def barycentric_gradient(source: Tensor, target: Tensor, plan: Tensor) -> Tensor:
    """``∇ᵢ = xᵢ − Σⱼ Pᵢⱼ yⱼ / Σⱼ Pᵢⱼ``: each source token minus its barycentric image under a transport plan.

    VDOT (arXiv 2512.06802): the gradient of the transport cost ``½ Σᵢⱼ Pᵢⱼ ‖xᵢ − yⱼ‖²`` with respect to
    ``xᵢ`` at a fixed plan, divided by the token's mass ``aᵢ = Σⱼ Pᵢⱼ`` (so the step does not shrink with
    the number of tokens). ``x − ∇`` is the barycentric projection: where the plan sends each source token.
    Computed in float32 (float64 stays float64); no gradient flows (it is a pseudo-target's direction).

    Args:
        source: the tokens that move, ``(B, N, D)``.
        target: the tokens they are transported to, ``(B, M, D)``.
        plan: a transport plan ``(B, N, M)`` with positive row sums (e.g. a Sinkhorn plan).

    Returns:
        ``∇`` ``(B, N, D)``.

    Raises:
        ValueError: shapes that do not match, or a plan with a row of zero mass.

    Example:
        >>> x, y = torch.tensor([[[0.0], [1.0]]]), torch.tensor([[[2.0], [5.0]]])
        >>> plan = torch.tensor([[[0.5, 0.0], [0.0, 0.5]]])  # 0 -> 2, 1 -> 5
        >>> barycentric_gradient(x, y, plan).flatten().tolist()
        [-2.0, -4.0]
    """
    if (
        source.ndim != 3
        or target.ndim != 3
        or source.shape[0] != target.shape[0]
        or source.shape[2] != target.shape[2]
    ):
        raise ValueError(
            f"`source` (B, N, D) and `target` (B, M, D) must share B and D, got {tuple(source.shape)} and "
            f"{tuple(target.shape)}."
        )
    expected = (source.shape[0], source.shape[1], target.shape[1])
    if tuple(plan.shape) != expected:
        raise ValueError(f"`plan` must be (B, N, M) = {expected}, got {tuple(plan.shape)}.")
    dtype = torch.promote_types(source.dtype, torch.float32)
    plan = plan.detach().to(dtype)
    mass = plan.sum(-1, keepdim=True)
    if bool((mass <= 0).any()):
        raise ValueError(
            "`plan` has a source token with zero mass (a row summing to 0); no barycentre exists."
        )
    image = (plan @ target.detach().to(dtype)) / mass
    return source.detach().to(dtype) - image


def _check_pair(real_logits: Tensor, fake_logits: Tensor) -> None:
    if real_logits.ndim != 1 or real_logits.shape != fake_logits.shape:
        raise ValueError(
            "`real_logits` and `fake_logits` must be paired (N,) vectors, got "
            f"{tuple(real_logits.shape)} and {tuple(fake_logits.shape)}."
        )


def relativistic_critic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The relativistic paired GAN loss of the critic: ``mean softplus(−(D(xᵢ) − D(x̂ᵢ)))``.

    Jolicoeur-Martineau (arXiv 1807.00734), RpGAN: the critic learns that each real sample is *more*
    real than its paired fake one (VDOT pairs a real video with the video generated for its condition).

    Args:
        real_logits: ``D(x)`` ``(N,)``.
        fake_logits: ``D(x̂)`` ``(N,)`` of the paired fakes (detached by the caller for the critic turn).

    Raises:
        ValueError: logits that are not paired ``(N,)`` vectors.

    Example:
        >>> relativistic_critic_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == torch.log(torch.tensor(2.0)).item()
        True
    """
    _check_pair(real_logits, fake_logits)
    return F.softplus(fake_logits.float() - real_logits.float()).mean()


def relativistic_generator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The relativistic paired GAN loss of the generator: ``mean softplus(−(D(x̂ᵢ) − D(xᵢ)))``.

    The generator's half of :func:`relativistic_critic_loss` with the roles swapped: each fake should
    look more real than its paired real sample; gradients reach the fakes through ``D``.

    Raises:
        ValueError: logits that are not paired ``(N,)`` vectors.

    Example:
        >>> round(relativistic_generator_loss(torch.tensor([1.0]), torch.tensor([1.0])).item(), 4)
        0.6931
    """
    _check_pair(real_logits, fake_logits)
    return F.softplus(real_logits.float() - fake_logits.float()).mean()
