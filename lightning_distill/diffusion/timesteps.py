"""Timestep samplers for distillation training and the timestep lists of few-step generators.

Every sampler draws ``n`` timesteps through an optional ``torch.Generator`` (``None`` uses the
global RNG), on ``device``. Bounds can be given as indices (``int``) or as fractions of ``T``
(``float`` in ``[0, 1]``, converted with ``int(fraction * T)`` as the official DMD2 and SwiftBrush
code do). Intervals are half-open, ``[low, high)``:

* DMD2's generator timesteps ``U[0.02 T, 0.98 T]`` (both ends included, ``torch.randint(20, 981)``
  for T = 1000) are ``uniform_timesteps(n, 20, 981, num_train_timesteps=1000)``; ``low=0.02,
  high=0.98`` gives ``[20, 980)``.
* SwiftBrush's ``torch.randint(int(0.02 T), int(0.981 T))`` is ``uniform_timesteps(n, 0.02, 0.981, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["evenly_spaced_timesteps", "shifted_timesteps", "subinterval_timesteps", "uniform_timesteps"]


def _to_index(name: str, value: object, num_train_timesteps: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"`{name}` must be an int (an index) or a float (a fraction of T), got {type(value).__name__}."
        )
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` given as a fraction of T must be in [0, 1], got {value}.")
        return int(value * num_train_timesteps)
    if not 0 <= value <= num_train_timesteps:
        raise ValueError(f"`{name}` given as an index must be in [0, {num_train_timesteps}], got {value}.")
    return value


def _check_common(n: object, num_train_timesteps: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be an integer >= 0, got {n!r}.")
    if (
        isinstance(num_train_timesteps, bool)
        or not isinstance(num_train_timesteps, int)
        or num_train_timesteps < 1
    ):
        raise ValueError(f"`num_train_timesteps` must be an integer >= 1, got {num_train_timesteps!r}.")


def uniform_timesteps(
    n: int,
    low: int | float = 0,
    high: int | float = 1.0,
    *,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integer timesteps drawn uniformly from ``[low, high)``.

    Args:
        n: how many.
        low: first allowed timestep: an index, or a fraction of ``T`` (float).
        high: end of the interval (excluded): an index, or a fraction of ``T``.
        num_train_timesteps: ``T``.
        generator: the random source (``None``: the global RNG); draws happen on its device and
            move to ``device``, so a CPU generator gives the same timesteps on every device.
        device: where the result lives (defaults to the generator's device, else CPU).

    Returns:
        ``(n,)`` int64 timesteps.

    Raises:
        TypeError: if a bound is neither int nor float.
        ValueError: if a bound is out of range or ``low >= high``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> t = uniform_timesteps(1000, 0.02, 0.98, num_train_timesteps=1000, generator=g)
        >>> int(t.min()) >= 20, int(t.max()) < 980, t.dtype
        (True, True, torch.int64)
    """
    _check_common(n, num_train_timesteps)
    lo = _to_index("low", low, num_train_timesteps)
    hi = _to_index("high", high, num_train_timesteps)
    if lo >= hi:
        raise ValueError(
            f"`low` must be below `high`; got the index interval [{lo}, {hi}) from low={low}, high={high}."
        )
    return torch.randint(lo, hi, (n,), generator=generator, device=_draw_device(generator, device)).to(
        _device(generator, device)
    )


def subinterval_timesteps(
    n: int,
    boundaries: Sequence[int | float],
    phase: int,
    *,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integer timesteps uniform on one phase of a split of the timestep range (Phased DMD).

    ``boundaries`` is strictly decreasing, from high noise to low noise, e.g. ``(1.0, 0.5, 0.0)``
    or ``(1000, 500, 0)``; phase ``k`` is ``[boundaries[k + 1], boundaries[k])``, so phase 0 is
    the noisiest.

    Args:
        n: how many.
        boundaries: ``K + 1`` decreasing bounds (indices or fractions of ``T``) for ``K`` phases.
        phase: which phase, ``0 <= phase < K``.
        num_train_timesteps: ``T``.
        generator: the random source (``None``: the global RNG).
        device: where the result lives.

    Returns:
        ``(n,)`` int64 timesteps.

    Raises:
        ValueError: fewer than two boundaries, boundaries not strictly decreasing (as indices), or
            ``phase`` out of range.

    Example:
        >>> t = subinterval_timesteps(500, (1.0, 0.5, 0.0), 1, num_train_timesteps=1000)
        >>> int(t.min()) >= 0, int(t.max()) < 500
        (True, True)
    """
    _check_common(n, num_train_timesteps)
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence) or len(boundaries) < 2:
        raise ValueError(f"`boundaries` must be a sequence of at least 2 bounds, got {boundaries!r}.")
    indices = [_to_index(f"boundaries[{k}]", b, num_train_timesteps) for k, b in enumerate(boundaries)]
    if any(a <= b for a, b in zip(indices[:-1], indices[1:])):
        raise ValueError(
            f"`boundaries` must be strictly decreasing (from high noise to low noise), got indices {indices} "
            f"from {list(boundaries)}."
        )
    if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase < len(indices) - 1:
        raise ValueError(f"`phase` must be an integer in [0, {len(indices) - 1}), got {phase!r}.")
    return uniform_timesteps(
        n,
        indices[phase + 1],
        indices[phase],
        num_train_timesteps=num_train_timesteps,
        generator=generator,
        device=device,
    )


def shifted_timesteps(
    n: int,
    shift: float = 3.0,
    *,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Continuous flow timesteps with the SD3 shift: :math:`t = T\\,\\frac{s u}{1 + (s - 1) u}`, :math:`u \\sim U(0, 1)`.

    ``shift > 1`` moves mass towards high noise (σ near 1); ``shift = 1`` is uniform in σ. The
    result is what a flow model receives (σ T), to be used with a ``kind="flow"`` schedule.

    Args:
        n: how many.
        shift: the shift ``s > 0``.
        num_train_timesteps: ``T``.
        generator: the random source (``None``: the global RNG).
        device: where the result lives.

    Returns:
        ``(n,)`` float32 timesteps in ``[0, T)``.

    Raises:
        ValueError: if ``shift <= 0``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> t = shifted_timesteps(4000, 3.0, generator=g)
        >>> bool((t.median() / 1000 - 0.75).abs() < 0.02)  # median of u is 1/2, and 3 * 0.5 / 2 = 0.75
        True
    """
    _check_common(n, num_train_timesteps)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
        raise ValueError(f"`shift` must be a number > 0, got {shift!r}.")
    u = torch.rand((n,), generator=generator, device=_draw_device(generator, device), dtype=torch.float32)
    u = u.to(_device(generator, device))
    sigma = shift * u / (1.0 + (shift - 1.0) * u)
    return sigma * num_train_timesteps


def evenly_spaced_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """The timesteps of DMD2's ``num_steps``-step generator: ``T - 1, T - 1 - T // K, ...`` (``K`` of them).

    This is DMD2's ``range(T - 1, 0, -(T // K))`` whenever that range has ``K`` entries (K = 1, 2,
    4, 8 for T = 1000); where it has more or fewer (K = 7, or K = T) this keeps exactly ``K``.

    Args:
        num_steps: number of generator steps ``K >= 1``.
        num_train_timesteps: ``T``.

    Returns:
        ``K`` decreasing integer timesteps, starting at ``T - 1``.

    Raises:
        ValueError: if ``num_steps`` is not in ``[1, T]``.

    Example:
        >>> evenly_spaced_timesteps(4, 1000)
        (999, 749, 499, 249)
    """
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, int)
        or not 1 <= num_steps <= num_train_timesteps
    ):
        raise ValueError(f"`num_steps` must be an integer in [1, {num_train_timesteps}], got {num_steps!r}.")
    return tuple(range(num_train_timesteps - 1, -1, -(num_train_timesteps // num_steps)))[:num_steps]


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Where to draw: the generator's device (a generator only draws there), else the target device."""
    return generator.device if generator is not None else _device(None, device)


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")
