"""Feature statistics that taps record: BatchNorm batch statistics and spatial attention maps.

The built-in transforms of :class:`~lightning_distill.callbacks.FeatureHooks` (``"bn_stats"``,
``"attention"``), usable on any tensor. Plain PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bn_stats", "spatial_attention"]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


def bn_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a batch, as a BatchNorm layer computes them.

    The statistics SRe2L/CDA match against a teacher's running statistics when they tap the input
    of each BatchNorm layer. Reduced over every dimension but the channel dimension 1, in fp32 for
    half-precision inputs.

    Args:
        x: a batch ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` (any rank >= 2).

    Returns:
        ``(mean, var)``, each of shape ``(C,)``; ``var`` is biased (divides by the count).

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: if ``x`` has fewer than 2 dimensions.

    Example:
        >>> x = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])  # (N=2, C=1, H=1, W=2)
        >>> mean, var = bn_stats(x)
        >>> mean, var
        (tensor([4.]), tensor([5.]))
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got {_describe(x)}.")
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (N, C, ...), got shape {tuple(x.shape)}.")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    dims = [0, *range(2, x.ndim)]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


def spatial_attention(x: Tensor) -> Tensor:
    """Spatial attention map: the channel mean of the squared activations.

    The attention of attention transfer (Zagoruyko & Komodakis, arXiv 1612.03928) with p = 2,
    before any normalisation (the loss normalises).

    Args:
        x: features ``(B, C, H, W)`` (or ``(B, C, *spatial)``).

    Returns:
        ``(B, H, W)`` (or ``(B, *spatial)``): ``mean_c x[:, c] ** 2``.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: if ``x`` has fewer than 3 dimensions.

    Example:
        >>> spatial_attention(torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]]))  # (B=1, C=2, H=1, W=2)
        tensor([[[5., 2.]]])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got {_describe(x)}.")
    if x.ndim < 3:
        raise ValueError(f"`x` must have shape (B, C, *spatial), got shape {tuple(x.shape)}.")
    return x.pow(2).mean(dim=1)
