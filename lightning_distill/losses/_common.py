"""Reductions and small numerics shared by the loss files (private; argument checks live in
:mod:`lightning_distill.utils.checks`)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_distill.utils.checks import Reduction

__all__ = ["kl_rows", "reduce"]


def reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    """Reduce a per-sample loss of shape ``(B,)`` over the batch."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) summed over the last dimension, from log-probabilities.

    Terms where ``p`` is exactly zero count as zero (``0 log 0 = 0``), also when ``log_q`` is
    ``-inf`` there, so that masked classes neither produce NaN values nor NaN gradients.
    """
    p = log_p.exp()
    support = p > 0
    log_ratio = torch.where(support, log_p - log_q, torch.zeros_like(log_p))
    return (p * log_ratio).sum(dim=-1)
