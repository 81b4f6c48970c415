"""Argument checks with messages that name the argument, the value received and what is allowed.

The one home of input validation: recipes check their constructor arguments with
:func:`check_option` (the message names the config key to change), loss functions check tensors
and numbers with the ``check_*`` helpers, and parts such as the teacher-output cache check their
options with :func:`check_int` and :func:`check_choice`.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Literal

from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "check_choice",
    "check_int",
    "check_non_negative",
    "check_option",
    "check_positive",
    "check_reduction",
    "check_same_batch",
    "check_same_shape",
    "check_tensor",
]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")


def check_option(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise a ``ValueError`` naming the config key when a constructor argument is invalid.

    Raises:
        ValueError: ``"`key` must be <allowed>, got <value>; set `model.init_args.<key>`."`` unless ``ok``.

    Example:
        >>> check_option(2 >= 1, "ratio", 2, "an integer >= 1")
        >>> check_option(0 >= 1, "ratio", 0, "an integer >= 1")
        Traceback (most recent call last):
        ...
        ValueError: `ratio` must be an integer >= 1, got 0; set `model.init_args.ratio`.
    """
    if not ok:
        raise ValueError(f"`{key}` must be {allowed}, got {value!r}; set `model.init_args.{key}`.")


def check_int(
    name: str,
    value: object,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
    high_name: str | None = None,
) -> None:
    """Raise a ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) in ``[low, high]``.

    Args:
        name: the argument's name, for the message.
        value: the value received.
        low: smallest allowed value (``None``: no bound).
        high: largest allowed value (``None``: no bound).
        optional: also allow ``None``.
        high_name: how the message names ``high`` (e.g. ``"output_dim=10"``).

    Example:
        >>> check_int("num_slots", 2, low=1)
        >>> check_int("top_k", 11, low=1, high=10, optional=True, high_name="output_dim=10")
        Traceback (most recent call last):
        ...
        ValueError: `top_k` must be None or an int in [1, output_dim=10], got 11.
    """
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if ok:
        return
    if low is not None and high is not None:
        allowed = f"an int in [{low}, {high_name or high}]"
    elif low == 0:
        allowed = "a non-negative int"
    elif low == 1:
        allowed = "a positive int"
    elif low is not None:
        allowed = f"an int >= {low}"
    elif high is not None:
        allowed = f"an int <= {high_name or high}"
    else:
        allowed = "an int"
    raise ValueError(f"`{name}` must be {'None or ' if optional else ''}{allowed}, got {value!r}.")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise a ``ValueError`` unless ``value`` is one of ``choices``.

    Example:
        >>> check_choice("dtype", "float64", ("float16", "float32"))
        Traceback (most recent call last):
        ...
        ValueError: `dtype` must be one of ('float16', 'float32'), got 'float64'.
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def check_tensor(name: str, value: object, *, min_ndim: int = 1, exact_ndim: int | None = None) -> Tensor:
    """Check that ``value`` is a floating-point tensor with enough dimensions, and return it.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: too few dimensions, or not ``exact_ndim`` of them.
    """
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
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        message = (
            f"`{name_a}` and `{name_b}` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
        raise ValueError(f"{message} {hint}".rstrip())


def check_same_batch(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same size along dimension 0."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same batch size (dimension 0), "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}."
        )


def check_positive(name: str, value: object) -> float:
    """Check that ``value`` is a finite real number > 0 and return it as a float.

    Example:
        >>> check_positive("temperature", 4)
        4.0
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return value


def check_non_negative(name: str, value: object) -> float:
    """Check that ``value`` is a finite real number >= 0 and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
    return value


def check_reduction(reduction: object) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``"mean"``, ``"sum"``, ``"none"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
