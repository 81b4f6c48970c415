"""Dual-head inference (DHO): mix a CE head and a KD head, with the mix chosen on validation data.

DHO (arXiv 2505.07675, erjui/DHO ``train_others.py::evaluate``) predicts with

    p = (1 - α) softmax(z_ce) + α softmax(z_kd / β)

and grid-searches ``α`` in ``0, 0.05, ..., 1`` and ``β`` in ``{0.5, 0.75, 1, 1.25, 1.5, 2, 4}`` for the
best validation accuracy (the first best in β-major, α-minor order, as the official loops keep it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DHO_ALPHAS", "DHO_BETAS", "mix_heads", "search_head_mixing"]

DHO_ALPHAS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(21))
DHO_BETAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


def mix_heads(ce_logits: Tensor, kd_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """``(1 - α) softmax(z_ce) + α softmax(z_kd / β)``: probabilities ``(B, K)``.

    Raises:
        ValueError: different shapes, ``alpha`` outside ``[0, 1]`` or ``beta`` <= 0.

    Example:
        >>> import torch
        >>> mix_heads(torch.zeros(1, 2), torch.tensor([[0.0, 100.0]]), 0.5, 1.0)
        tensor([[0.2500, 0.7500]])
    """
    if ce_logits.shape != kd_logits.shape:
        raise ValueError(
            f"`ce_logits` {tuple(ce_logits.shape)} and `kd_logits` {tuple(kd_logits.shape)} differ."
        )
    if not 0.0 <= alpha <= 1.0 or beta <= 0:
        raise ValueError(f"`alpha` must be in [0, 1] and `beta` > 0, got {alpha} and {beta}.")
    return (1 - alpha) * ce_logits.float().softmax(-1) + alpha * (kd_logits.float() / beta).softmax(-1)


@torch.no_grad()
def search_head_mixing(
    ce_logits: Tensor,
    kd_logits: Tensor,
    labels: Tensor,
    alphas: Sequence[float] = DHO_ALPHAS,
    betas: Sequence[float] = DHO_BETAS,
) -> tuple[float, float, float]:
    """The ``(α, β)`` of the best accuracy of :func:`mix_heads` on ``labels``, and that accuracy.

    Args:
        ce_logits: CE-head logits ``(N, K)`` on validation images.
        kd_logits: KD-head logits ``(N, K)``.
        labels: ``(N,)``.
        alphas: candidate weights of the KD head.
        betas: candidate temperatures of the KD head.

    Raises:
        ValueError: no labels, or mismatched shapes.

    Example:
        >>> import torch
        >>> ce, kd = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
        >>> search_head_mixing(ce, kd, torch.tensor([1, 1]))
        (0.4, 0.5, 1.0)
    """
    if labels.ndim != 1 or labels.numel() == 0 or labels.shape[0] != ce_logits.shape[0]:
        raise ValueError(
            f"`labels` must be (N,) with N = {ce_logits.shape[0]} > 0, got {tuple(labels.shape)}."
        )
    best = (-1.0, 0.0, 1.0)
    for beta in betas:
        for alpha in alphas:
            acc = float((mix_heads(ce_logits, kd_logits, alpha, beta).argmax(-1) == labels).float().mean())
            if acc > best[0]:
                best = (acc, float(alpha), float(beta))
    return best[1], best[2], best[0]
