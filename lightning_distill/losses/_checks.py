"""Input checks and reductions shared by the loss functions (private).

Every check raises with a message that names the argument, the value received and what is
allowed, so that the loss functions themselves stay short.
"""

from __future__ import annotations

from numbers import Real
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def check_tensor(name: str, value: object, *, min_ndim: int = 1, exact_ndim: int | None = None) -> Tensor:
    """Checks that ``value`` is a floating-point tensor with enough dimensions, and returns it."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor, got dtype {value.dtype}; "
            "convert it with `.float()` if it holds real values."
        )
    if exact_ndim is not None and value.ndim != exact_ndim:
        raise ValueError(f"`{name}` must have {exact_ndim} dimensions, got shape {tuple(value.shape)}.")
    if value.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimensions, got shape {tuple(value.shape)}."
        )
    return value


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor, *, hint: str = "") -> None:
    """Raises ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        message = (
            f"`{name_a}` and `{name_b}` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
        raise ValueError(f"{message} {hint}".rstrip())


def check_same_batch(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raises ``ValueError`` unless ``a`` and ``b`` have the same size along dimension 0."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same batch size (dimension 0), "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}."
        )


def check_positive(name: str, value: object) -> float:
    """Checks that ``value`` is a finite real number > 0 and returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return value


def check_non_negative(name: str, value: object) -> float:
    """Checks that ``value`` is a finite real number >= 0 and returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
    return value


def check_reduction(reduction: object) -> None:
    """Raises ``ValueError`` unless ``reduction`` is one of ``"mean"``, ``"sum"``, ``"none"``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    """Reduces a per-sample loss of shape ``(B,)`` over the batch."""
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
