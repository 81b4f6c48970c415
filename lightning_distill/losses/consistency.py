"""Consistency-distillation losses: the pseudo-Huber distance and BOOT's bootstrap loss.

A consistency student :math:`f_\\theta(x_{t_{n+k}}, t_{n+k})` is trained to agree with a stop-gradient
target :math:`f_{\\theta^-}(\\hat x_{t_n}, t_n)` one solver step closer to the data (LCM, SLAM, MCM,
CTMSR, StableMaterials). The distance is the pseudo-Huber metric of improved consistency training
(Song & Dhariwal, arXiv 2310.14189):

.. math::
    d(a, b) = \\sqrt{\\lVert a - b \\rVert^2 + c^2} - c ,

which is quadratic for small errors and linear for large ones. The official LCM and SLAM scripts
apply it element-wise (``sqrt((a - b)² + c²) - c`` then the mean over all elements); that is the
``per_element=True`` default here. ``per_element=False`` gives the per-sample norm form of the paper.

All functions are pure (no Lightning), compute in float32, take the target detached, and return
float32: ``reduction="none"`` is one value per sample ``(B,)``, ``"mean"``/``"sum"`` reduce those.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_distill.losses._common import reduce
from lightning_distill.utils.checks import Reduction, check_non_negative, check_reduction, check_same_shape

__all__ = ["bootstrap_loss", "pseudo_huber_loss"]


def pseudo_huber_loss(
    prediction: Tensor,
    target: Tensor,
    *,
    c: float = 0.001,
    per_element: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    """Pseudo-Huber distance ``sqrt(d² + c²) - c`` between a prediction and a detached target.

    Args:
        prediction: the student's output ``(B, ...)``.
        target: the target ``(B, ...)`` (detached here).
        c: the Huber constant (SLAM/LCM: 0.001); ``c = 0`` is the absolute (or Euclidean) error.
        per_element: ``True`` (LCM/SLAM code): ``sqrt((a - b)² + c²) - c`` per element, averaged over
            each sample's elements; ``False`` (iCT paper): ``sqrt(‖a - b‖² + c²) - c`` per sample.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"`` for ``(B,)``.

    Returns:
        A float32 scalar, or ``(B,)`` with ``reduction="none"``.

    Raises:
        ValueError: shapes differ, ``c < 0``, or an unknown ``reduction``.

    Example:
        >>> pseudo_huber_loss(torch.tensor([[3.0]]), torch.tensor([[0.0]]), c=4.0)  # sqrt(9 + 16) - 4
        tensor(1.)
    """
    check_same_shape("prediction", prediction, "target", target)
    check_non_negative("c", c)
    check_reduction(reduction)
    diff = prediction.float() - target.detach().float()
    batch = diff.shape[0] if diff.ndim else 1
    diff = diff.reshape(batch, -1)
    if per_element:
        per_sample = ((diff.square() + c**2).sqrt() - c).mean(dim=1)
    else:
        per_sample = (diff.square().sum(dim=1) + c**2).sqrt() - c
    return reduce(per_sample, reduction)


def bootstrap_loss(
    prediction: Tensor,
    previous: Tensor,
    teacher_x0: Tensor,
    step: Tensor | float,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """BOOT's bootstrap loss: ``‖g(ε, s) − sg[g(ε, t) + δ (x̂₀ᵀ − g(ε, t))]‖² / δ²`` (arXiv 2306.05544).

    The student's signal ``g(ε, t)`` at the noisier time, moved by one teacher step of relative size
    ``δ`` towards the teacher's denoised prediction ``x̂₀ᵀ(x_t, t)`` (the DDIM step written in the
    signal space), is the target of the student at the next time ``s``. Dividing by ``δ²`` keeps the
    loss's scale independent of the step size (the paper's scaling).

    Args:
        prediction: ``g(ε, s)`` ``(B, ...)`` with gradient.
        previous: ``g(ε, t)`` ``(B, ...)`` (detached here).
        teacher_x0: the teacher's ``x̂₀(x_t, t)`` at ``x_t`` built from ``previous`` ``(B, ...)`` (detached here).
        step: ``δ`` in ``(0, 1]``, a number or per-sample ``(B,)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample mean squared error ``(B,)``).

    Raises:
        ValueError: shapes differ, ``δ`` outside ``(0, 1]``, or an unknown ``reduction``.

    Example:
        >>> g_s, g_t, x0 = torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2)
        >>> bootstrap_loss(g_s, g_t, x0, 0.5)  # target 0.5, squared error 0.25, / 0.25
        tensor(1.)
    """
    check_same_shape("prediction", prediction, "previous", previous)
    check_same_shape("prediction", prediction, "teacher_x0", teacher_x0)
    check_reduction(reduction)
    delta = torch.as_tensor(step, dtype=torch.float32, device=prediction.device)
    if delta.numel() and (bool((delta <= 0).any()) or bool((delta > 1).any())):
        raise ValueError(f"`step` (δ) must be in (0, 1], got {delta.tolist()}.")
    batch = prediction.shape[0]
    delta = delta.reshape(-1, *([1] * (prediction.ndim - 1))) if delta.ndim else delta
    previous = previous.detach().float()
    target = previous + delta * (teacher_x0.detach().float() - previous)
    per_sample = ((prediction.float() - target) / delta).square().reshape(batch, -1).mean(dim=1)
    return reduce(per_sample, reduction)
