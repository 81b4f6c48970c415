"""Losses of the LiDAR generation recipes (issue 22): pure functions, no Lightning.

Shared by two recipes; each appends its section below and lists its names in ``__all__``.

* DynamicCity (arXiv 2410.18084): :func:`lovasz_softmax_loss`, :func:`gaussian_kl_loss`,
  :func:`occupancy_vae_losses` (the VAE's CE + Lovász + β·KL terms), :func:`masked_denoising_loss`
  (the DiT's loss on the rolled-out planes).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.utils.checks import check_reduction

__all__ = [
    "gaussian_kl_loss",
    "lovasz_softmax_loss",
    "masked_denoising_loss",
    "noise_prediction_loss",
    "occupancy_vae_losses",
    "preference_score_distillation_loss",
    "score_distillation_loss",
]


# ---------------------------------------------------------------------- DynamicCity (4D occupancy VAE)
def lovasz_softmax_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    classes: Literal["present", "all"] = "present",
) -> Tensor:
    r"""Lovász-softmax loss (Berman, Triki, Blaschko, CVPR 2018, arXiv 1705.08790): a convex surrogate of 1 − IoU.

    For each class ``c``, with foreground ``F_c = {i : y_i = c}`` and errors
    ``m_i = |[y_i = c] − p_i(c)|`` of the softmax probabilities, the loss is the Lovász extension of
    the Jaccard loss :math:`\Delta_J(M) = |M| / |F_c \cup M|` (``M``: the mispredicted voxels) at
    ``m``: sort the errors in decreasing order ``π``; then
    :math:`\bar\Delta(m) = \sum_i m_{\pi_i} (\Delta_J(\{\pi_1..\pi_i\}) − \Delta_J(\{\pi_1..\pi_{i−1}\}))`.
    The result is averaged over the classes (those present in ``target`` with ``classes="present"``,
    the paper's and DynamicCity's default). With one-hot probabilities it equals 1 − IoU exactly.
    All voxels of the batch form one set (``per_image=False``, the official default). Softmax in float32.

    Args:
        logits: class scores ``(B, K, ...)``.
        target: class ids ``(B, ...)`` int64.
        ignore_index: voxels with this label are left out.
        classes: average over the classes ``"present"`` in ``target`` or over ``"all"`` ``K``.

    Returns:
        A float32 scalar (0 when no voxel is left).

    Raises:
        ValueError: shapes that do not match, labels outside ``[0, K)`` (other than ``ignore_index``),
            or an unknown ``classes``.

    Example:
        >>> target = torch.tensor([[0, 1, 1, 2]])
        >>> perfect = 50.0 * F.one_hot(target, 3).permute(0, 2, 1).float()
        >>> float(lovasz_softmax_loss(perfect, target)) < 1e-6
        True
    """
    if classes not in ("present", "all"):
        raise ValueError(f"`classes` must be 'present' or 'all', got {classes!r}.")
    if logits.ndim < 2 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"`logits` (B, K, ...) and `target` (B, ...) must match, got {tuple(logits.shape)} and {tuple(target.shape)}."
        )
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1).movedim(1, -1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"`target` must hold class ids in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]."
        )
    losses = []
    for c in range(num_classes):
        foreground = (labels == c).float()
        if classes == "present" and foreground.sum() == 0:
            continue
        errors = (foreground - probs[:, c]).abs()
        errors, order = errors.sort(descending=True)
        losses.append(torch.dot(errors, _lovasz_jaccard_gradient(foreground[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def _lovasz_jaccard_gradient(foreground_sorted: Tensor) -> Tensor:
    """Increments ``Δ_J(π_1..π_i) − Δ_J(π_1..π_{i−1})`` of the Jaccard loss along the sorted order ``(N,)``."""
    total = foreground_sorted.sum()
    intersection = total - foreground_sorted.cumsum(0)  # |F \ M_i|
    union = total + (1.0 - foreground_sorted).cumsum(0)  # |F ∪ M_i|
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def gaussian_kl_loss(
    mean: Tensor, logvar: Tensor, *, reduction: Literal["mean", "sum", "none"] = "mean"
) -> Tensor:
    r"""KL divergence of ``N(mean, exp(logvar))`` from ``N(0, 1)``, per latent element.

    :math:`\mathrm{KL} = \tfrac12 (\mu^2 + e^{\log\sigma^2} − 1 − \log\sigma^2)`, elementwise ``(B, ...)``;
    ``"mean"`` averages over every element (DynamicCity's VAE), ``"sum"`` sums, ``"none"`` keeps the shape.

    Raises:
        ValueError: ``mean`` and ``logvar`` of different shapes, or an unknown ``reduction``.

    Example:
        >>> float(gaussian_kl_loss(torch.zeros(2, 3), torch.zeros(2, 3)))
        0.0
    """
    check_reduction(reduction)
    if mean.shape != logvar.shape:
        raise ValueError(
            f"`mean` and `logvar` must have one shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}."
        )
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    if reduction == "none":
        return kl
    return kl.mean() if reduction == "mean" else kl.sum()


def occupancy_vae_losses(
    logits: Tensor,
    target: Tensor,
    mean: Tensor,
    logvar: Tensor,
    *,
    ignore_index: int | None = None,
) -> dict[str, Tensor]:
    """DynamicCity's VAE terms ``{"ce", "lovasz", "kl"}`` (weighed by the caller: CE + Lovász + β·KL).

    Args:
        logits: decoded class scores ``(B, K, T, X, Y, Z)``.
        target: occupancy class ids ``(B, T, X, Y, Z)``.
        mean: latent mean (any shape; the rollout ``(B, C, H, W)`` of a HexPlane).
        logvar: latent log-variance, the shape of ``mean``.
        ignore_index: labels left out of CE and Lovász.

    Returns:
        Three float32 scalars: mean cross-entropy over voxels, :func:`lovasz_softmax_loss`, :func:`gaussian_kl_loss`.

    Raises:
        ValueError: shapes that do not match (see the two losses).

    Example:
        >>> logits, target = torch.randn(1, 3, 2, 2, 2, 2), torch.randint(0, 3, (1, 2, 2, 2, 2))
        >>> sorted(occupancy_vae_losses(logits, target, torch.zeros(1, 4), torch.zeros(1, 4)))
        ['ce', 'kl', 'lovasz']
    """
    lovasz = lovasz_softmax_loss(logits, target, ignore_index=ignore_index)
    ce = F.cross_entropy(logits.float(), target, ignore_index=-100 if ignore_index is None else ignore_index)
    return {"ce": ce, "lovasz": lovasz, "kl": gaussian_kl_loss(mean, logvar)}


def masked_denoising_loss(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    r"""DynamicCity's DiT loss: the denoising MSE over the rolled-out planes only, the rollout's padding left out.

    Per sample, :math:`\sum_{c,h,w} m_{hw} (\hat y − y)^2 / (C \sum_{h,w} m_{hw})`; ``"mean"`` averages
    over the batch, ``"sum"`` sums, ``"none"`` returns ``(B,)``. In float32.

    Args:
        prediction: the denoiser's output ``(B, C, H, W)``.
        target: the regression target (ε for ε-prediction), the same shape.
        mask: ``(H, W)`` or broadcastable ``(1, 1, H, W)``, 1 where a plane lies, 0 on the padding.

    Raises:
        ValueError: shapes that differ, a mask that does not broadcast, an empty mask, or an unknown ``reduction``.

    Example:
        >>> mask = torch.tensor([[1.0, 0.0]])
        >>> float(masked_denoising_loss(torch.ones(1, 1, 1, 2), torch.tensor([[[[0.0, 5.0]]]]), mask))
        1.0
    """
    check_reduction(reduction)
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(
            f"`prediction` and `target` must both be (B, C, H, W), got {tuple(prediction.shape)} and {tuple(target.shape)}."
        )
    mask = mask.float().reshape(1, 1, *mask.shape[-2:]) if mask.ndim in (2, 4) else mask
    if mask.ndim != 4 or tuple(mask.shape[-2:]) != tuple(prediction.shape[-2:]) or mask.sum() <= 0:
        raise ValueError(
            f"`mask` must be a non-empty (H, W) = {tuple(prediction.shape[-2:])} mask, got {tuple(mask.shape)}."
        )
    squared = (prediction.float() - target.float()).square() * mask
    per_sample = squared.flatten(1).sum(1) / (mask.sum() * prediction.shape[1])
    if reduction == "none":
        return per_sample
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


# ---------------------------------------------------------------------- Distillation-DPO (scene completion)
def noise_prediction_loss(
    pred: Tensor, noise: Tensor, *, reduction: Literal["mean", "sum", "none"] = "mean"
) -> Tensor:
    r"""The ε-MSE of point diffusion (LiDiff; Distillation-DPO's auxiliary models): ``mean ‖ε̂ − ε‖²`` per sample.

    .. math:: \mathcal{L} = \frac{1}{N \cdot 3} \sum_{n, d} (\hat\epsilon_{n,d} - \epsilon_{n,d})^2

    Args:
        pred: predicted noise ``(B, N, 3)`` (any ``(B, ...)`` works).
        noise: the noise that was added, same shape.
        reduction: over the batch.

    Returns:
        A scalar, or ``(B,)`` with ``reduction="none"``.

    Raises:
        ValueError: shapes differ, or an unknown ``reduction``.

    Example:
        >>> noise_prediction_loss(torch.ones(2, 4, 3), torch.zeros(2, 4, 3))
        tensor(1.)
    """
    check_reduction(reduction)
    if pred.shape != noise.shape or pred.ndim < 2:
        raise ValueError(
            f"`pred` and `noise` must have the same (B, ...) shape, got {tuple(pred.shape)} and {tuple(noise.shape)}."
        )
    per_sample = (pred.float() - noise.float()).square().flatten(1).mean(dim=1)
    return _reduce_batch(per_sample, reduction)


def score_distillation_loss(
    x0: Tensor,
    teacher_eps: Tensor,
    fake_eps: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    r"""Score distillation (VSD/DMD) as a loss whose gradient in ``x0`` is ``ε_teacher − ε_fake``.

    .. math:: \mathcal{L} = \operatorname{mean}\big(\operatorname{sg}(\epsilon_T(x_t) - \epsilon_\phi(x_t)) \cdot \hat x_0\big)

    With ``x_t = x̂_0 + σ_t ε`` and ``s = −ε/σ``, ``(ε_T − ε_φ)/σ_t = s_φ − s_T`` is the gradient of
    ``KL(p_student ‖ p_teacher)`` in the sample, so a descent step moves ``x̂_0`` toward the
    teacher's distribution. Its value is not meaningful, only its gradient.

    Args:
        x0: the student's samples ``(B, N, 3)`` (with their graph).
        teacher_eps: the teacher's noise prediction on the noised samples, same shape (detached here).
        fake_eps: the auxiliary (fake-score) model's prediction, same shape (detached here).
        reduction: over the batch (each sample's mean over its elements first).

    Raises:
        ValueError: shapes differ, or an unknown ``reduction``.

    Example:
        >>> x0 = torch.zeros(1, 2, 3, requires_grad=True)
        >>> score_distillation_loss(x0, torch.ones(1, 2, 3), torch.zeros(1, 2, 3)).backward()
        >>> x0.grad[0, 0]
        tensor([0.1667, 0.1667, 0.1667])
    """
    check_reduction(reduction)
    if not x0.shape == teacher_eps.shape == fake_eps.shape or x0.ndim < 2:
        raise ValueError(
            "`x0`, `teacher_eps` and `fake_eps` must have the same (B, ...) shape, got "
            f"{tuple(x0.shape)}, {tuple(teacher_eps.shape)} and {tuple(fake_eps.shape)}."
        )
    direction = teacher_eps.detach().float() - fake_eps.detach().float()
    per_sample = (direction * x0.float()).flatten(1).mean(dim=1)
    return _reduce_batch(per_sample, reduction)


def preference_score_distillation_loss(
    x0_winner: Tensor,
    x0_loser: Tensor,
    teacher_eps_winner: Tensor,
    aux_eps_winner: Tensor,
    teacher_eps_loser: Tensor,
    aux_eps_loser: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    r"""Distillation-DPO's student objective (arXiv 2504.11447): score distillation on winners minus losers.

    .. math::

        \mathcal{L} = \operatorname{mean}\big(\operatorname{sg}(\epsilon_T(x^w_t) - \epsilon_{\phi_w}(x^w_t)) \cdot \hat x^w_0\big)
                     - \operatorname{mean}\big(\operatorname{sg}(\epsilon_T(x^l_t) - \epsilon_{\phi_l}(x^l_t)) \cdot \hat x^l_0\big)

    ``φ_w`` / ``φ_l`` are the auxiliary diffusion models fitted to the student's winners / losers.
    The released code multiplies the score difference by ``x_t − x_0`` (the noise it added), which
    does not depend on the student's weights, so its gradient is zero; this is the intended form,
    with the student's samples ``x̂_0`` carrying the gradient (the sign as in the released code:
    winners pulled toward the teacher, losers pushed away).

    Args:
        x0_winner, x0_loser: the student's preferred / rejected samples ``(P, N, 3)`` (with graph).
        teacher_eps_winner, aux_eps_winner: teacher and winner-auxiliary noise predictions on the
            noised winners (detached here).
        teacher_eps_loser, aux_eps_loser: the same on the noised losers.
        reduction: over the pairs.

    Raises:
        ValueError: shapes differ, or an unknown ``reduction``.

    Example:
        >>> xw = torch.zeros(1, 2, 3, requires_grad=True); xl = torch.zeros(1, 2, 3, requires_grad=True)
        >>> one, zero = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
        >>> preference_score_distillation_loss(xw, xl, one, zero, one, zero).backward()
        >>> round(float(xw.grad[0, 0, 0]), 4), round(float(xl.grad[0, 0, 0]), 4)
        (0.1667, -0.1667)
    """
    if x0_winner.shape != x0_loser.shape:
        raise ValueError(
            f"`x0_winner` and `x0_loser` must have the same shape, got {tuple(x0_winner.shape)} and {tuple(x0_loser.shape)}."
        )
    winner = score_distillation_loss(x0_winner, teacher_eps_winner, aux_eps_winner, reduction="none")
    loser = score_distillation_loss(x0_loser, teacher_eps_loser, aux_eps_loser, reduction="none")
    check_reduction(reduction)
    return _reduce_batch(winner - loser, reduction)


def _reduce_batch(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
