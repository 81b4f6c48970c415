"""Distribution-matching losses of the DMD family: DMD/VSD gradients, the pseudo-target loss, denoising, GAN.

A one-step generator :math:`G_\\theta` is trained so that its samples :math:`x = G_\\theta(z)` move
along :math:`-g`, where :math:`g` is (an estimate of) the gradient of
:math:`\\mathrm{KL}(p_\\text{fake} \\| p_\\text{real})` w.r.t. :math:`x`, built from a frozen *real*
score (the teacher) and a *fake* score that tracks the generator's distribution. Since
:math:`g` is not a gradient of anything the generator computes, it is injected with the
**pseudo-target loss** (DMD2, SwiftBrush, FastGen ``common_loss.py``):

.. math::
    L(x) = \\tfrac12 \\lVert x - \\mathrm{sg}(x - g) \\rVert^2, \\qquad \\nabla_x L = g .

All functions are pure (no Lightning), work on any ``(B, ...)`` tensors, compute in float32, and
return float32. ``reduction="none"`` gives one value per sample ``(B,)`` (the mean over the
non-batch dimensions, as ``F.mse_loss`` per sample); ``"mean"``/``"sum"`` reduce those over the
batch. So ``"mean"`` is the element-wise mean used by the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import reduce
from lightning_distill.utils.checks import (
    Reduction,
    check_non_negative,
    check_reduction,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "cfg_augmentation_gradient",
    "distribution_matching_gradient",
    "dmd_normaliser",
    "denoising_loss",
    "dmd_gradient",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "pseudo_target_loss",
    "vsd_gradient",
]


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _per_sample_weight(name: str, weight: Tensor | float, like: Tensor) -> Tensor:
    if not isinstance(weight, Tensor):
        return torch.as_tensor(float(weight), dtype=torch.float32, device=like.device)
    weight = weight.detach().float()
    if weight.ndim == 0:
        return weight
    if weight.ndim != 1 or weight.shape[0] != like.shape[0]:
        raise ValueError(
            f"`{name}` must be a number, a scalar tensor or have shape ({like.shape[0]},) (one value per sample), "
            f"got shape {tuple(weight.shape)}."
        )
    return weight.reshape(-1, *([1] * (like.ndim - 1)))


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_gradient(
    x0_pred_fake: Tensor,
    x0_pred_real: Tensor,
    x0: Tensor,
    *,
    normalise: bool = True,
    eps: float = 0.0,
) -> Tensor:
    """The DMD2 distribution-matching gradient, normalised per sample.

    "Improved Distribution Matching Distillation for Fast Image Synthesis" (Yin et al., arXiv
    2405.14867; ``main/sd_guidance.py::compute_distribution_matching_loss``):

    .. math::
        g = \\frac{\\hat x_0^\\text{fake}(x_t, t) - \\hat x_0^\\text{real}(x_t, t)}
                 {\\operatorname{mean}_{c,h,w} \\lvert x_0 - \\hat x_0^\\text{real}(x_t, t) \\rvert + \\epsilon}

    where :math:`x_t` noises the generator sample :math:`x_0` and the real prediction carries the
    teacher's CFG. Non-finite entries (0/0 when the sample equals the teacher's denoised
    estimate) become 0: the official code's ``torch.nan_to_num`` maps NaN to 0 but ±inf to the
    largest float, which would blow the update up; here every non-finite entry means "no update".

    Args:
        x0_pred_fake: the fake score's x₀ prediction ``(B, ...)``.
        x0_pred_real: the real (teacher) score's x₀ prediction ``(B, ...)``.
        x0: the generator samples ``(B, ...)``.
        normalise: divide by the per-sample mean absolute error of the teacher (DMD2). ``False``
            gives the raw difference (the DMD paper's gradient up to its weighting).
        eps: added to the normaliser (FastGen uses 1e-6; DMD2 uses 0).

    Returns:
        ``g``, float32, shape ``(B, ...)``, detached.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the shapes differ or ``eps < 0``.

    Example:
        >>> x0 = torch.tensor([[1.0, 3.0]])
        >>> real = torch.tensor([[0.0, 1.0]])  # mean |x0 - real| = 1.5
        >>> fake = torch.tensor([[3.0, 1.0]])
        >>> dmd_gradient(fake, real, x0)
        tensor([[2., 0.]])
        >>> dmd_gradient(real, real, x0).abs().sum().item()  # fake == real: no update
        0.0
    """
    for name, value in (("x0_pred_fake", x0_pred_fake), ("x0_pred_real", x0_pred_real), ("x0", x0)):
        check_tensor(name, value)
    check_same_shape("x0_pred_fake", x0_pred_fake, "x0_pred_real", x0_pred_real)
    check_same_shape("x0", x0, "x0_pred_real", x0_pred_real)
    eps = check_non_negative("eps", eps)
    with torch.no_grad():
        real = x0_pred_real.detach().float()
        grad = x0_pred_fake.detach().float() - real
        if normalise:
            scale = (x0.detach().float() - real).abs().reshape(x0.shape[0], -1).mean(dim=1) + eps
            grad = grad / scale.reshape(-1, *([1] * (grad.ndim - 1)))
        return _finite_or_zero(grad)


def vsd_gradient(eps_real: Tensor, eps_fake: Tensor, weight: Tensor | float) -> Tensor:
    """The variational score distillation gradient of SwiftBrush, in ε space.

    "SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational Score Distillation"
    (Nguyen & Tran, arXiv 2312.05239; ``train_swiftbrush.py``):

    .. math::
        g = w(t)\\,\\big(\\hat\\varepsilon_\\text{real}(x_t, t) - \\hat\\varepsilon_\\text{fake}(x_t, t)\\big),
        \\qquad w(t) = \\sigma_t^2 = 1 - \\bar\\alpha_t \\text{ in the official code},

    both predictions with the same CFG scale (4.5), made non-finite-safe as in the official code.
    It points the same way as the DMD gradient: with :math:`\\hat x_0 = (x_t - \\sigma_t\\hat\\varepsilon)/\\alpha_t`,
    :math:`\\hat x_0^\\text{fake} - \\hat x_0^\\text{real} = \\tfrac{\\sigma_t}{\\alpha_t}(\\hat\\varepsilon_\\text{real} - \\hat\\varepsilon_\\text{fake})`,
    so ``weight = σ/α`` gives the unnormalised DMD gradient.

    Args:
        eps_real: the teacher's ε prediction ``(B, ...)``.
        eps_fake: the fake score's (LoRA) ε prediction ``(B, ...)``.
        weight: ``w(t)``: a number, or per sample ``(B,)`` (e.g. ``sigma**2`` from ``NoiseSchedule.alpha_sigma``).

    Returns:
        ``g``, float32, shape ``(B, ...)``, detached, non-finite entries set to 0.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the shapes differ or ``weight`` is not a scalar or ``(B,)``.

    Example:
        >>> vsd_gradient(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]]), torch.tensor([0.5]))
        tensor([[ 0.5000, -1.0000]])
    """
    check_tensor("eps_real", eps_real)
    check_tensor("eps_fake", eps_fake)
    check_same_shape("eps_real", eps_real, "eps_fake", eps_fake)
    with torch.no_grad():
        w = _per_sample_weight("weight", weight, eps_real)
        return _finite_or_zero(w * (eps_real.detach().float() - eps_fake.detach().float()))


def pseudo_target_loss(x: Tensor, grad: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """:math:`\\tfrac12 \\lVert x - \\mathrm{sg}(x - g) \\rVert^2` written as an MSE to a no-grad target.

    The generator loss of DMD2, SwiftBrush, Phased/Decoupled DMD: its value is ``½ mean(g²)`` but
    its gradient w.r.t. ``x`` is ``g`` scaled by the reduction: ``g / x.numel()`` for
    ``"mean"`` (the official ``0.5 * F.mse_loss(x, (x - g).detach())``), ``g / x[0].numel()``
    for ``"sum"``. Computed in float32; the gradient reaches ``x`` in its own dtype.

    Args:
        x: the generator samples ``(B, ...)``, with grad.
        grad: the update direction ``g`` ``(B, ...)`` (detached here).
        reduction: ``"none"`` for per-sample values ``(B,)`` (½ the mean of ``g²`` over the
            non-batch dimensions), ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the shapes differ or ``reduction`` is unknown.

    Example:
        >>> x = torch.zeros(1, 2, requires_grad=True)
        >>> g = torch.tensor([[2.0, -4.0]])
        >>> loss = pseudo_target_loss(x, g, reduction="sum")  # 1/2 * mean(4, 16)
        >>> loss.item()
        5.0
        >>> loss.backward()
        >>> x.grad * x[0].numel()  # the gradient is g
        tensor([[ 2., -4.]])
    """
    check_tensor("x", x)
    check_tensor("grad", grad)
    check_same_shape("x", x, "grad", grad)
    check_reduction(reduction)
    x32 = x.float()
    target = (x32 - grad.float()).detach()
    per_sample = 0.5 * _per_sample_mean(F.mse_loss(x32, target, reduction="none"))
    return reduce(per_sample, reduction)


def denoising_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weighting: Tensor | float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Weighted denoising MSE :math:`w(t)\\,\\lVert f_\\phi(x_t, t) - y \\rVert^2` (mean over non-batch dims).

    The fake-score objective of the DMD family, with ``y`` the target of the model's
    parameterisation (``NoiseSchedule.target``: ε, x₀, v or the flow velocity). SwiftBrush's LoRA
    loss ``mse(α_t ε̂, α_t ε)`` is ``weighting = α_t²``.

    Args:
        pred: the model output ``(B, ...)``.
        target: the regression target ``(B, ...)``; detached.
        weighting: ``w(t)``: ``None`` (1), a number, or per sample ``(B,)``.
        reduction: ``"none"`` for ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the shapes differ, ``weighting`` is not a scalar or ``(B,)``, or ``reduction`` is unknown.

    Example:
        >>> pred, target = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]])
        >>> denoising_loss(pred, target, reduction="none")
        tensor([1., 2.])
        >>> denoising_loss(pred, target, weighting=torch.tensor([1.0, 0.5]))
        tensor(1.)
    """
    check_tensor("pred", pred)
    check_tensor("target", target)
    check_same_shape("pred", pred, "target", target)
    check_reduction(reduction)
    per_sample = _per_sample_mean((pred.float() - target.detach().float()) ** 2)
    if weighting is not None:
        per_sample = per_sample * _per_sample_weight("weighting", weighting, per_sample)
    return reduce(per_sample, reduction)


def gan_generator_loss(fake_logits: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Non-saturating generator loss :math:`\\operatorname{softplus}(-D(x_\\text{fake})) = -\\log\\sigma(D(x_\\text{fake}))`.

    DMD2's ``gen_cls_loss`` on the discriminator head over fake-score features.

    Args:
        fake_logits: discriminator logits on generator samples ``(B,)`` or ``(B, ...)`` (averaged
            over the non-batch dimensions per sample).
        reduction: ``"none"`` for ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32.

    Raises:
        TypeError: if ``fake_logits`` is not a floating-point tensor.
        ValueError: if it has no batch dimension or ``reduction`` is unknown.

    Example:
        >>> round(gan_generator_loss(torch.tensor([0.0])).item(), 4)  # log 2
        0.6931
    """
    check_tensor("fake_logits", fake_logits)
    check_reduction(reduction)
    return reduce(_per_sample_mean(F.softplus(-fake_logits.float())), reduction)


def gan_discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    """Non-saturating discriminator loss :math:`\\operatorname{softplus}(-D(x_\\text{real})) + \\operatorname{softplus}(D(x_\\text{fake}))`.

    DMD2's ``guidance_cls_loss``: real data should score high, generator samples (detached by the
    caller) low. Each term is averaged over its own batch, so the two batches may differ in size
    (except for ``reduction="none"``, which adds the terms sample by sample).

    Args:
        real_logits: logits on real data ``(B_r,)`` or ``(B_r, ...)``.
        fake_logits: logits on generator samples ``(B_f,)`` or ``(B_f, ...)``.
        reduction: ``"mean"``: mean of each term, added; ``"sum"``: sums, added; ``"none"``:
            per-sample sum of the two terms, ``(B,)`` (needs ``B_r == B_f``).

    Returns:
        The loss in float32.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: for an unknown ``reduction``, or different batch sizes with ``reduction="none"``.

    Example:
        >>> round(gan_discriminator_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # 2 log 2
        1.3863
    """
    check_tensor("real_logits", real_logits)
    check_tensor("fake_logits", fake_logits)
    check_reduction(reduction)
    real_term = _per_sample_mean(F.softplus(-real_logits.float()))
    fake_term = _per_sample_mean(F.softplus(fake_logits.float()))
    if reduction == "none":
        if real_term.shape != fake_term.shape:
            raise ValueError(
                "`reduction='none'` needs `real_logits` and `fake_logits` with the same batch size, got "
                f"{tuple(real_logits.shape)} and {tuple(fake_logits.shape)}."
            )
        return real_term + fake_term
    return reduce(real_term, reduction) + reduce(fake_term, reduction)


# ----------------------------------------------------------------------------------------------
# Decoupled DMD: the CFG-augmentation and distribution-matching terms of DMD's gradient
# ----------------------------------------------------------------------------------------------
def _per_sample_scale(value: Tensor, like: Tensor) -> Tensor:
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def dmd_normaliser(x0: Tensor, x0_real_guided: Tensor) -> Tensor:
    """DMD2's per-sample normaliser ``mean_{c,h,w} |x0 - x0_real,cfg|`` ``(B,)``, float32, detached.

    Decoupled DMD (Liu et al., arXiv 2511.22677) divides each of its two terms by it.

    Example:
        >>> dmd_normaliser(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]))
        tensor([1.5000])
    """
    return (x0.detach().float() - x0_real_guided.detach().float()).abs().reshape(x0.shape[0], -1).mean(1)


def cfg_augmentation_gradient(
    x0_real_cond: Tensor, x0_real_uncond: Tensor, guidance_scale: float, scale: Tensor | None = None
) -> Tensor:
    """The CA term in x0 space, ``g_CA = (a - 1)(x0_real,u - x0_real,c) / scale``, ``(B, ...)`` float32.

    Descending along ``g_CA`` moves a sample by ``(a - 1)(x0_real,c - x0_real,u)``, the CFG
    direction: Eq. 6's ``(a - 1)(s_real,c - s_real,u)`` up to the factor ``alpha / sigma^2 > 0``.
    ``scale`` is a per-sample normaliser ``(B,)`` or ``None``; non-finite entries become 0.

    Raises:
        ValueError: if the two predictions differ in shape.

    Example:
        >>> cfg_augmentation_gradient(torch.tensor([[2.0]]), torch.tensor([[1.0]]), 3.0)
        tensor([[-2.]])
    """
    if x0_real_cond.shape != x0_real_uncond.shape:
        raise ValueError(
            f"`x0_real_cond` and `x0_real_uncond` must have the same shape, got "
            f"{tuple(x0_real_cond.shape)} and {tuple(x0_real_uncond.shape)}."
        )
    grad = (guidance_scale - 1.0) * (x0_real_uncond.detach().float() - x0_real_cond.detach().float())
    grad = grad if scale is None else grad / _per_sample_scale(scale, grad)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def distribution_matching_gradient(
    x0_fake_cond: Tensor, x0_real_cond: Tensor, scale: Tensor | None = None
) -> Tensor:
    """The DM term in x0 space, ``g_DM = (x0_fake,c - x0_real,c) / scale``, ``(B, ...)`` float32.

    Raises:
        ValueError: if the two predictions differ in shape.

    Example:
        >>> distribution_matching_gradient(torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([2.0]))
        tensor([[-1.]])
    """
    if x0_fake_cond.shape != x0_real_cond.shape:
        raise ValueError(
            f"`x0_fake_cond` and `x0_real_cond` must have the same shape, got {tuple(x0_fake_cond.shape)} "
            f"and {tuple(x0_real_cond.shape)}."
        )
    grad = x0_fake_cond.detach().float() - x0_real_cond.detach().float()
    grad = grad if scale is None else grad / _per_sample_scale(scale, grad)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
