"""Schedules: pure functions from a step (or epoch) index to a value.

Constant, linear, cosine, exponential, step, piecewise and stage schedules, and
:func:`build_schedule`, which makes one from a dict such as
``{"kind": "linear", "start": 0, "end": 1, "steps": 100}``. The
:class:`~lightning_distill.callbacks.ProgressiveSchedule` callback sets module attributes from
them; toolkits use them directly (CDA's crop-scale curriculum). Plain Python, no Lightning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "PiecewiseSchedule",
    "Schedule",
    "StageSchedule",
    "StepSchedule",
    "build_schedule",
]

Number = float | int
Value = Number | tuple[Number, ...]


class Schedule:
    """A pure function from a step (or epoch) index ``t >= 0`` to a value."""

    def value_at(self, t: int) -> Any:
        """The value at step (or epoch) ``t``; every schedule kind (subclass) defines it."""
        raise NotImplementedError(f"{type(self).__name__} must implement `value_at`.")


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """Always ``value`` (any object).

    Example:
        >>> ConstantSchedule(0.5).value_at(1000)
        0.5
    """

    value: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _freeze(self.value))

    def value_at(self, t: int) -> Any:
        return self.value


@dataclass(frozen=True)
class LinearSchedule(Schedule):
    """``start`` until ``begin``, then linear to ``end`` over ``steps``, then ``end``.

    ``start`` and ``end`` are numbers or equal-length sequences of numbers (interpolated
    element-wise into a tuple, e.g. a ``timestep_range``).

    Example:
        >>> s = LinearSchedule(start=0.0, end=1.0, steps=100, begin=10)
        >>> s.value_at(0), s.value_at(60), s.value_at(500)
        (0.0, 0.5, 1.0)
    """

    start: Value
    end: Value
    steps: int
    begin: int = 0

    def __post_init__(self) -> None:
        _check_pair("start", self.start, "end", self.end)
        _check_int("steps", self.steps, minimum=1)
        _check_int("begin", self.begin, minimum=0)

    def value_at(self, t: int) -> Value:
        return _lerp(self.start, self.end, _progress(t, self.begin, self.steps))


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """Half-cosine from ``start`` to ``end`` over ``steps`` after ``begin``:
    ``end + (start - end) * (1 + cos(pi * p)) / 2`` with ``p = clamp((t - begin) / steps, 0, 1)``.

    Example:
        >>> s = CosineSchedule(start=1.0, end=0.0, steps=10)
        >>> s.value_at(0), s.value_at(5), s.value_at(10)
        (1.0, 0.5, 0.0)
    """

    start: Value
    end: Value
    steps: int
    begin: int = 0

    def __post_init__(self) -> None:
        _check_pair("start", self.start, "end", self.end)
        _check_int("steps", self.steps, minimum=1)
        _check_int("begin", self.begin, minimum=0)

    def value_at(self, t: int) -> Value:
        p = _progress(t, self.begin, self.steps)
        return _lerp(self.start, self.end, (1.0 - math.cos(math.pi * p)) / 2.0)


@dataclass(frozen=True)
class ExponentialSchedule(Schedule):
    """``start * gamma ** max(t - begin, 0)``.

    Example:
        >>> s = ExponentialSchedule(start=1.0, gamma=0.5)
        >>> s.value_at(0), s.value_at(3)
        (1.0, 0.125)
    """

    start: Value
    gamma: float
    begin: int = 0

    def __post_init__(self) -> None:
        _check_value("start", self.start)
        _check_real("gamma", self.gamma, positive=True)
        _check_int("begin", self.begin, minimum=0)

    def value_at(self, t: int) -> Value:
        return _scale(self.start, float(self.gamma) ** max(t - self.begin, 0))


@dataclass(frozen=True)
class StepSchedule(Schedule):
    """``start * gamma ** k`` where ``k`` counts the milestones ``<= t`` (like ``MultiStepLR``).

    Example:
        >>> s = StepSchedule(start=1.0, milestones=[10, 20], gamma=0.1)
        >>> s.value_at(9), s.value_at(10), s.value_at(25)
        (1.0, 0.1, 0.010000000000000002)
    """

    start: Value
    milestones: Sequence[int]
    gamma: float

    def __post_init__(self) -> None:
        _check_value("start", self.start)
        _check_increasing("milestones", self.milestones)
        _check_real("gamma", self.gamma, positive=True)
        object.__setattr__(self, "milestones", tuple(self.milestones))

    def value_at(self, t: int) -> Value:
        passed = sum(1 for milestone in self.milestones if milestone <= t)
        return _scale(self.start, float(self.gamma) ** passed)


@dataclass(frozen=True)
class PiecewiseSchedule(Schedule):
    """Through ``points`` ``[(t_0, v_0), (t_1, v_1), ...]`` with increasing ``t_i``.

    ``interpolation="linear"`` interpolates between points (numbers or equal-length sequences)
    and returns floats (tuples of floats); ``"constant"`` holds ``v_i`` on ``[t_i, t_{i+1})`` and
    returns the given values, of any type. Before ``t_0`` the
    value is ``v_0``, after the last point the last value.

    Example:
        >>> s = PiecewiseSchedule(points=[(0, 0.0), (10, 1.0), (20, 0.0)])
        >>> s.value_at(5), s.value_at(15), s.value_at(99)
        (0.5, 0.5, 0.0)
        >>> PiecewiseSchedule(points=[(0, "a"), (10, "b")], interpolation="constant").value_at(12)
        'b'
    """

    points: Sequence[tuple[int, Any]]
    interpolation: Literal["linear", "constant"] = "linear"

    def __post_init__(self) -> None:
        if self.interpolation not in ("linear", "constant"):
            raise ValueError(f"`interpolation` must be 'linear' or 'constant', got {self.interpolation!r}.")
        if isinstance(self.points, (str, bytes)) or not isinstance(self.points, Sequence) or not self.points:
            raise ValueError(f"`points` must be a non-empty list of (t, value) pairs, got {self.points!r}.")
        points = []
        for point in self.points:
            if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 2:
                raise ValueError(f"`points` must hold (t, value) pairs, got {point!r}.")
            points.append((point[0], _freeze(point[1])))
        _check_increasing("points' steps", [t for t, _ in points])
        if self.interpolation == "linear":
            for t, value in points:
                _check_pair("points' first value", points[0][1], f"the value at t={t}", value)
        object.__setattr__(self, "points", tuple(points))

    def value_at(self, t: int) -> Any:
        points = self.points
        linear = self.interpolation == "linear"
        if t <= points[0][0]:
            return _lerp(points[0][1], points[0][1], 0.0) if linear else points[0][1]
        for (t0, v0), (t1, v1) in zip(points, points[1:]):
            if t < t1:
                return _lerp(v0, v1, (t - t0) / (t1 - t0)) if linear else v0
        return _lerp(points[-1][1], points[-1][1], 0.0) if linear else points[-1][1]


@dataclass(frozen=True)
class StageSchedule(Schedule):
    """Discrete stages: ``values[k]`` where ``k`` counts the ``boundaries <= t``.

    A :class:`ProgressiveSchedule` calls ``pl_module.on_stage_change(name, old, new)`` when the
    stage of a ``StageSchedule`` changes (and only for this kind).

    Example:
        >>> s = StageSchedule(boundaries=[2000, 5000], values=[0, 1, 2])
        >>> s.value_at(1999), s.value_at(2000), s.value_at(7000)
        (0, 1, 2)
    """

    boundaries: Sequence[int]
    values: Sequence[Any]

    def __post_init__(self) -> None:
        _check_increasing("boundaries", self.boundaries)
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
            raise ValueError(f"`values` must be a list, got {self.values!r}.")
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"`values` must have one more entry than `boundaries` ({len(self.boundaries) + 1}), "
                f"got {len(self.values)}."
            )
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        object.__setattr__(self, "values", tuple(_freeze(value) for value in self.values))

    def value_at(self, t: int) -> Any:
        return self.values[sum(1 for boundary in self.boundaries if boundary <= t)]


_KINDS: dict[str, type[Schedule]] = {
    "constant": ConstantSchedule,
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "exponential": ExponentialSchedule,
    "step": StepSchedule,
    "piecewise": PiecewiseSchedule,
    "stages": StageSchedule,
}


def build_schedule(spec: Mapping[str, Any] | Schedule) -> Schedule:
    """Builds a schedule from a dict such as ``{"kind": "linear", "start": 0, "end": 1, "steps": 100}``.

    The other keys are the arguments of the kind's class: ``constant`` (value), ``linear`` and
    ``cosine`` (start, end, steps, begin), ``exponential`` (start, gamma, begin), ``step`` (start,
    milestones, gamma), ``piecewise`` (points, interpolation), ``stages`` (boundaries, values).

    Args:
        spec: the dict, or a :class:`Schedule`, returned as is.

    Returns:
        The schedule.

    Raises:
        ValueError: if the kind is unknown, a key is missing or unknown, or a value is invalid.

    Example:
        >>> build_schedule({"kind": "step", "start": 1.0, "milestones": [5], "gamma": 0.5}).value_at(7)
        0.5
    """
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"A schedule must be a dict with a 'kind' key or a Schedule, got {spec!r}.")
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"'kind' must be one of {list(_KINDS)}, got {kind!r}.")
    cls = _KINDS[kind]
    fields = {field.name: field for field in dataclasses.fields(cls)}
    arguments = {key: value for key, value in spec.items() if key != "kind"}
    unknown = [key for key in arguments if key not in fields]
    if unknown:
        raise ValueError(f"unknown keys {unknown} for kind {kind!r}; allowed keys are {list(fields)}.")
    missing = [
        name
        for name, field in fields.items()
        if name not in arguments
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"kind {kind!r} needs the keys {missing}.")
    return cls(**arguments)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_number_sequence(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(_is_number(item) for item in value)
    )


def _check_value(name: str, value: object) -> None:
    if not (_is_number(value) or _is_number_sequence(value)):
        raise ValueError(f"`{name}` must be a number or a list of numbers, got {value!r}.")


def _check_pair(name_a: str, a: object, name_b: str, b: object) -> None:
    _check_value(name_a, a)
    _check_value(name_b, b)
    if _is_number(a) != _is_number(b) or (not _is_number(a) and len(a) != len(b)):  # type: ignore[arg-type]
        raise ValueError(
            f"`{name_a}` and `{name_b}` must both be numbers or lists of one length, got {a!r} and {b!r}."
        )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def _check_real(name: str, value: object, *, positive: bool) -> None:
    if not _is_number(value) or not math.isfinite(value) or (positive and value <= 0):  # type: ignore[arg-type]
        raise ValueError(f"`{name}` must be a finite number{' > 0' if positive else ''}, got {value!r}.")


def _check_increasing(name: str, values: object) -> None:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"`{name}` must be a list of ints, got {values!r}.")
    for value in values:
        _check_int(name, value, minimum=0)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"`{name}` must be strictly increasing, got {list(values)}.")


def _freeze(value: Any) -> Any:
    """Lists (from YAML) become tuples, so values compare and hash the same after a reload."""
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _progress(t: int, begin: int, steps: int) -> float:
    return min(max((t - begin) / steps, 0.0), 1.0)


def _lerp(a: Value, b: Value, weight: float) -> Value:
    if _is_number(a):
        return float(a) + (float(b) - float(a)) * weight  # type: ignore[arg-type]
    return tuple(float(x) + (float(y) - float(x)) * weight for x, y in zip(a, b))  # type: ignore[arg-type]


def _scale(value: Value, factor: float) -> Value:
    if _is_number(value):
        return float(value) * factor  # type: ignore[arg-type]
    return tuple(float(item) * factor for item in value)  # type: ignore[union-attr]
