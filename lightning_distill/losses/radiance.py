"""Losses of the radiance / CT family: GloReDi's (DGR) image and latent-distillation terms, PVD's regression.

"Learning to Distill Global Representation for Sparse-View CT" (Li, Ma, Chen, Zhang, Shan; ICCV
2023; official code longzilicart/GloReDi). Pure functions, float32 inside; teacher sides detached.

* :func:`smooth_l1_pixel_loss` — the pixel loss of the official trainer (``SmoothL1``, β = 1).
* :func:`focal_frequency_loss` — Jiang et al.'s focal frequency loss as GloReDi calls it (α = 1,
  whole-image 2-D DFT, per-image spectrum weights normalised by their maximum, detached).
* :func:`latent_cosine_loss` — ``1 − cos`` between student and teacher latents along the channel
  axis, per position, on the first ``channel_ratio`` of the channels (the official ``latent_loss_fn``).
* :func:`dct2` and :func:`dct_band_mask` — the unnormalised 2-D DCT-II and the square band of
  coefficients the contrastive term keeps.
* :func:`supervised_contrastive_loss` — SupCon (Khosla et al.) over normalised embeddings and labels.
* :func:`pvd_regression_loss` — PVD's ``get_loss`` (megvii-research/AAAI2023-PVD) between student and
  teacher features, densities, colours or rendered RGB (default: the norm of the difference).
"""

from __future__ import annotations

import math

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
    "dct2",
    "dct_band_mask",
    "focal_frequency_loss",
    "latent_channels",
    "latent_cosine_loss",
    "smooth_l1_pixel_loss",
    "supervised_contrastive_loss",
    "pvd_regression_loss",
]


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, reduction: str) -> None:
    check_reduction(reduction)
    check_tensor(name_a, a, exact_ndim=4)
    check_tensor(name_b, b, exact_ndim=4)
    check_same_shape(name_a, a, name_b, b)


def smooth_l1_pixel_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Per-image mean Smooth-L1 (β = 1): ``0.5 d²`` for ``|d| < 1``, else ``|d| − 0.5``.

    Args:
        pred: reconstruction ``(B, C, H, W)``.
        target: ground truth ``(B, C, H, W)``.
        reduction: ``"mean"`` (scalar), ``"sum"`` or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes that differ or are not 4-D, an unknown reduction.

    Example:
        >>> float(smooth_l1_pixel_loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.5, 3.0]]]])))
        1.3125
    """
    _check_pair("pred", pred, "target", target, reduction)
    per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=1.0).flatten(1).mean(1)
    return reduce(per, reduction)


def focal_frequency_loss(
    pred: Tensor, target: Tensor, *, alpha: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """Focal frequency loss (Jiang et al., ICCV 2021), as GloReDi's ``FocalFrequencyLoss(alpha=1)``.

    With ``F`` the orthonormal 2-D DFT of each channel and ``d = |F(pred) − F(target)|²``, the
    spectrum weight is ``w = sg(|F(pred) − F(target)|^α / max_{u,v} |...|^α)`` (per image and
    channel, NaN -> 0, clamped to [0, 1]); the loss is ``mean_{c,u,v} w · d`` per image.

    Args:
        pred: reconstruction ``(B, C, H, W)``.
        target: ground truth ``(B, C, H, W)``.
        alpha: exponent of the spectrum weight (the official 1.0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes that differ or are not 4-D, ``alpha`` <= 0, an unknown reduction.

    Example:
        >>> x = torch.zeros(1, 1, 2, 2)
        >>> float(focal_frequency_loss(x, x))
        0.0
    """
    _check_pair("pred", pred, "target", target, reduction)
    check_positive("alpha", alpha)
    diff = torch.fft.fft2(pred.float(), norm="ortho") - torch.fft.fft2(target.float(), norm="ortho")
    distance = diff.real**2 + diff.imag**2  # (B, C, H, W)
    with torch.no_grad():
        weight = distance.sqrt() ** alpha
        weight = weight / weight.amax(dim=(-2, -1), keepdim=True)
        weight = torch.nan_to_num(weight, nan=0.0).clamp(0, 1)
    return reduce((weight * distance).flatten(1).mean(1), reduction)


def latent_cosine_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    channel_ratio: float = 0.5,
    reduction: Reduction = "mean",
) -> Tensor:
    """``mean_{h,w} (1 − cos(s[:, :k, h, w], sg(t[:, :k, h, w])))`` with ``k = int(C · channel_ratio)``.

    GloReDi's representation-direction distillation: the cosine is taken along the channel axis
    at every latent position, on the first ``k`` channels only (the official code slices the first
    half; the other half is left free for the sparse-view-specific content).

    Args:
        student: student latent ``(B, C, h, w)``.
        teacher: teacher latent ``(B, C, h, w)`` (detached here).
        channel_ratio: share of the channels compared, in ``(0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes that differ or are not 4-D, ``channel_ratio`` outside ``(0, 1]`` or
            keeping no channel.

    Example:
        >>> s = torch.tensor([[[[1.0]], [[0.0]], [[5.0]], [[5.0]]]])
        >>> t = torch.tensor([[[[0.0]], [[1.0]], [[5.0]], [[5.0]]]])
        >>> float(latent_cosine_loss(s, t))
        1.0
    """
    _check_pair("student", student, "teacher", teacher, reduction)
    keep = latent_channels(student.shape[1], channel_ratio)
    s = student[:, :keep].float()
    t = teacher[:, :keep].detach().float()
    per = (1.0 - F.cosine_similarity(s, t, dim=1)).flatten(1).mean(1)
    return reduce(per, reduction)


def latent_channels(channels: int, channel_ratio: float) -> int:
    """How many leading channels the latent terms use: ``int(channels · channel_ratio)`` (at least 1).

    Raises:
        ValueError: ``channel_ratio`` outside ``(0, 1]``, or no channel kept.
    """
    if not 0 < channel_ratio <= 1:
        raise ValueError(f"`channel_ratio` must be in (0, 1], got {channel_ratio!r}.")
    keep = int(channels * channel_ratio)
    if keep < 1:
        raise ValueError(
            f"`channel_ratio`={channel_ratio} keeps no channel of a {channels}-channel latent; raise it."
        )
    return keep


def dct2(x: Tensor) -> Tensor:
    """Unnormalised 2-D DCT-II over the last two axes (torch-dct's ``dct_2d`` with ``norm=None``).

    ``X[k, l] = Σ_{m,n} 4 cos(π k (2m+1) / 2H) cos(π l (2n+1) / 2W) x[m, n]``.

    Example:
        >>> float(dct2(torch.ones(1, 2, 2))[0, 0, 0])
        16.0
    """
    x = check_tensor("x", x, min_ndim=2).float()
    h, w = x.shape[-2:]
    return _dct_matrix(h, x.device) @ x @ _dct_matrix(w, x.device).T


def _dct_matrix(n: int, device: torch.device) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    m = torch.arange(n, dtype=torch.float64)[None, :]
    return (2 * torch.cos(math.pi * k * (2 * m + 1) / (2 * n))).to(device=device, dtype=torch.float32)


def dct_band_mask(size: int, low: float, high: float, *, device: torch.device | str | None = None) -> Tensor:
    """``(size, size)`` bool: DCT coefficients ``(k, l)`` with ``low·size < max(k, l) <= high·size``.

    GloReDi's square band-pass (``gen_DCT2_square_mask``; its ``√2 · √2 / 2`` factor is 0.99996,
    taken as 1). The official band is ``low = 0.1``, ``high = 0.6``.

    Raises:
        ValueError: not ``0 <= low < high <= 1``, or an empty band.

    Example:
        >>> dct_band_mask(4, 0.25, 0.5).int().tolist()
        [[0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    if not 0 <= low < high <= 1:
        raise ValueError(f"The DCT band must satisfy 0 <= low < high <= 1, got low={low!r}, high={high!r}.")
    idx = torch.arange(size, device=device)
    radius = torch.maximum(idx[:, None], idx[None, :])
    mask = (radius > low * size) & (radius <= high * size)
    if not mask.any():
        raise ValueError(
            f"The DCT band ({low}, {high}] keeps no coefficient of a {size}x{size} latent; widen it."
        )
    return mask


def supervised_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.07,
    reduction: Reduction = "mean",
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the ``L_out`` form) over ``N`` embeddings.

    ``L_i = −1/|P(i)| Σ_{p ∈ P(i)} log( exp(z_i·z_p/τ) / Σ_{a ≠ i} exp(z_i·z_a/τ) )``, where ``P(i)``
    are the other samples with the label of ``i``. Anchors without a positive are left out of
    the mean (and get 0 under ``reduction="none"``). The embeddings are used as given (GloReDi
    L2-normalises them first).

    Args:
        features: embeddings ``(N, D)``.
        labels: integer labels ``(N,)``.
        temperature: τ > 0 (GloReDi's default 0.07).
        reduction: ``"mean"`` over anchors with a positive, ``"sum"``, or ``"none"`` (``(N,)``).

    Raises:
        ValueError: ``features`` not 2-D, labels of another length, ``temperature`` <= 0, or no
            anchor with a positive.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> round(float(supervised_contrastive_loss(z, torch.tensor([0, 0, 1]), temperature=1.0)), 4)
        0.3133
    """
    check_reduction(reduction)
    features = check_tensor("features", features, exact_ndim=2).float()
    check_positive("temperature", temperature)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"`labels` must be (N,) with N = {features.shape[0]} (the rows of `features`), got {tuple(labels.shape)}."
        )
    n = features.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    logits = (features @ features.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]).to(features.device) & ~eye
    count = positive.sum(1)
    if not bool((count > 0).any()):
        raise ValueError(
            "`labels` give no anchor a positive (every label appears once); nothing to contrast."
        )
    per = -(log_prob.masked_fill(~positive, 0.0)).sum(1) / count.clamp_min(1)
    if reduction == "none":
        return per
    per = per[count > 0]
    return per.mean() if reduction == "mean" else per.sum()


# ---------------------------------------------------------------------- PVD (megvii-research/AAAI2023-PVD)
#: PVD's regression losses (``--loss_type``); ``norm_l2`` is the official default.
PVD_LOSS_TYPES = ("norm_l2", "mse", "norm_l1", "smooth_l1")


def pvd_regression_loss(student: Tensor, teacher: Tensor, loss_type: str = "norm_l2") -> Tensor:
    """PVD's ``get_loss`` between a student quantity and the teacher's (features, density, colour or RGB).

    ``norm_l2`` (the official default): the Frobenius norm ``‖s − t‖₂`` of the whole tensor (not a
    mean: it grows as the square root of the number of entries); ``mse``: mean squared error;
    ``norm_l1``: ``Σ |s − t|``; ``smooth_l1``: mean Smooth-L1 with β = 0.05. The teacher is detached.

    Raises:
        ValueError: different shapes, or an unknown ``loss_type``.
    """
    check_same_shape("student", student, "teacher", teacher,
                     hint="PVD compares the two fields at the same sample points")  # fmt: skip
    if loss_type not in PVD_LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {PVD_LOSS_TYPES}, got {loss_type!r}.")
    diff = student.float() - teacher.detach().float()
    if loss_type == "norm_l2":
        return diff.pow(2).sum().clamp_min(1e-24).sqrt()
    if loss_type == "mse":
        return diff.pow(2).mean()
    if loss_type == "norm_l1":
        return diff.abs().sum()
    return F.smooth_l1_loss(student.float(), teacher.detach().float(), beta=0.05)
