"""Losses of video distillation (MCM): the R1 penalty of the frame discriminator.

MCM's adversarial terms are the hinge losses of
:func:`~lightning_distill.losses.super_resolution.hinge_discriminator_loss` and
:func:`~lightning_distill.losses.super_resolution.hinge_generator_loss`; its consistency term is
:func:`~lightning_distill.losses.consistency.pseudo_huber_loss` between the spatial heads' outputs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["r1_penalty"]


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
