"""Matching losses between real and synthetic batches (pure functions, no Lightning).

Both inputs are *class-blocked*: rows ``c * n`` to ``(c + 1) * n - 1`` of the real batch and rows
``c * m`` to ``(c + 1) * m - 1`` of the synthetic batch belong to class ``c`` (``n`` real and ``m``
synthetic images per class). The losses compare per-class means, as distribution matching (DM,
arXiv 2110.04181) and DataDAM (arXiv 2310.00093) do:

* :func:`classwise_mean_discrepancy`: ``sum_c || mean_{i in c} r_i - mean_{j in c} s_j ||^2`` (DM's
  loss; DataDAM's ``L_MMD`` on the final embeddings);
* :func:`attention_map`: DataDAM's spatial attention ``a = normalise_2(sum_channels |f|^p)``;
* :func:`attention_matching_loss`: DataDAM's ``L_SAM``, the discrepancy of per-class mean attention
  maps summed over layers.

Computed in fp32 whatever the input precision (``|f|^4`` overflows fp16 quickly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_map", "attention_matching_loss", "classwise_mean_discrepancy"]


def classwise_mean_discrepancy(real: Tensor, synthetic: Tensor, num_classes: int) -> Tensor:
    r"""Squared distance between the per-class means of two class-blocked batches, summed over classes.

    .. math::
        L = \sum_{c=1}^{K} \Big\| \frac{1}{n}\sum_{i \in c} r_i - \frac{1}{m}\sum_{j \in c} s_j \Big\|_2^2

    The "MSE_B" error of the official DataDAM code (a sum, not a mean, over classes and features).

    Args:
        real: ``(K * n, ...)`` real features (detach them: only the synthetic side learns).
        synthetic: ``(K * m, ...)`` synthetic features, the same trailing shape.
        num_classes: ``K``.

    Returns:
        A scalar (fp32).

    Raises:
        ValueError: trailing shapes differ, or a batch size is not a multiple of ``num_classes``.

    Example:
        >>> import torch
        >>> real = torch.tensor([[1.0], [3.0], [0.0], [0.0]])  # class 0: mean 2; class 1: mean 0
        >>> syn = torch.tensor([[1.0], [1.0]])  # one image per class
        >>> classwise_mean_discrepancy(real, syn, num_classes=2)  # (2 - 1)^2 + (0 - 1)^2
        tensor(2.)
    """
    if real.shape[1:] != synthetic.shape[1:]:
        raise ValueError(
            f"`real` and `synthetic` must have the same feature shape, got {tuple(real.shape)} and "
            f"{tuple(synthetic.shape)}."
        )
    if num_classes < 1 or real.shape[0] % num_classes or synthetic.shape[0] % num_classes:
        raise ValueError(
            f"Batch sizes {real.shape[0]} (real) and {synthetic.shape[0]} (synthetic) must be positive multiples "
            f"of `num_classes`={num_classes} (class-blocked batches)."
        )
    real_mean = real.float().reshape(num_classes, real.shape[0] // num_classes, -1).mean(1)
    syn_mean = synthetic.float().reshape(num_classes, synthetic.shape[0] // num_classes, -1).mean(1)
    return (real_mean - syn_mean).pow(2).sum()


def attention_map(features: Tensor, power: float = 4.0) -> Tensor:
    r"""DataDAM's spatial attention: ``a = v / ||v||_2`` with ``v = vec(sum_c |f_c|^p)``.

    Args:
        features: activations ``(B, C, H, W)`` (or ``(B, C, *spatial)``).
        power: the exponent ``p`` (paper 4; the official code uses 1).

    Returns:
        ``(B, H * W)`` attention vectors of unit L2 norm (fp32).

    Raises:
        ValueError: ``features`` has fewer than 3 dimensions, or ``power <= 0``.

    Example:
        >>> import torch
        >>> f = torch.tensor([[[[1.0, -2.0]], [[0.0, 1.0]]]])  # (B=1, C=2, H=1, W=2)
        >>> attention_map(f, power=1.0)  # v = (1, 3) / sqrt(10)
        tensor([[0.3162, 0.9487]])
    """
    if features.ndim < 3:
        raise ValueError(f"`features` must be (B, C, *spatial), got shape {tuple(features.shape)}.")
    if not power > 0:
        raise ValueError(f"`power` must be > 0, got {power}.")
    v = features.float().abs().pow(power).sum(dim=1).flatten(1)
    return F.normalize(v, p=2.0, dim=1)


def attention_matching_loss(
    real_features: Sequence[Tensor],
    synthetic_features: Sequence[Tensor],
    num_classes: int,
    *,
    power: float = 4.0,
) -> Tensor:
    r"""DataDAM's spatial attention matching, summed over layers.

    .. math::
        L_{SAM} = \sum_{l} \sum_{c=1}^{K} \Big\| \frac{1}{n}\sum_{i \in c} a_l(x_i)
                  - \frac{1}{m}\sum_{j \in c} a_l(s_j) \Big\|_2^2

    with :func:`attention_map` ``a_l`` of layer ``l``.

    Args:
        real_features: per layer, real activations ``(K * n, C_l, H_l, W_l)`` (no gradient needed).
        synthetic_features: per layer, synthetic activations ``(K * m, C_l, H_l, W_l)``.
        num_classes: ``K``.
        power: the exponent ``p``.

    Returns:
        A scalar (fp32).

    Raises:
        ValueError: different numbers of layers, no layer, or the errors of the helpers.
    """
    if len(real_features) != len(synthetic_features) or not real_features:
        raise ValueError(
            f"Need the same, non-zero number of layers for real and synthetic features, got "
            f"{len(real_features)} and {len(synthetic_features)}."
        )
    losses = [
        classwise_mean_discrepancy(attention_map(r, power), attention_map(s, power), num_classes)
        for r, s in zip(real_features, synthetic_features)
    ]
    return sum(losses[1:], losses[0])
