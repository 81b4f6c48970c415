"""Set attributes of a LightningModule from trainer state by declared schedules.

``ProgressiveSchedule`` is a Lightning callback that, before every training batch, sets each
named attribute of the module (``"loss_weights.kd"``, ``"scale_factor"``, ``"phase"``,
``"timestep_range"``, ``"dataset.min_crop"``) to ``schedule.value_at(t)``, where ``t`` is
``trainer.global_step`` (optimizer steps) or ``trainer.current_epoch``. The schedules are pure
functions of ``t``, so a resumed run sets the same values as an uninterrupted one; stage
schedules call ``pl_module.on_stage_change(name, old, new)`` once per change, across resumes.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "PiecewiseSchedule",
    "ProgressiveSchedule",
    "Schedule",
    "StageSchedule",
    "StepSchedule",
    "build_schedule",
]

Unit = Literal["step", "epoch"]
_UNITS = ("step", "epoch")
Number = float | int
Value = Number | tuple[Number, ...]


# ---------------------------------------------------------------------- schedules
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


# ---------------------------------------------------------------------- the callback
@dataclass(frozen=True)
class _Entry:
    schedule: Schedule
    unit: Unit


_UNSET = object()


class ProgressiveSchedule(L.Callback):
    """Sets module attributes by dotted name from declared schedules of the training progress.

    The value for step ``t = trainer.global_step`` (the number of optimizer steps taken; with
    gradient accumulation all micro-batches of one step see the same value) or epoch
    ``t = trainer.current_epoch`` is set at the start of every training batch, at fit start, at the
    start of the sanity check and at train start (the last two after a checkpoint is restored). It
    is logged as ``schedule/<name>`` (sequences as ``schedule/<name>/<i>``; non-numbers are not
    logged). Note that in manual optimization ``global_step`` counts every ``optimizer.step()``.

    Names are dotted paths on the LightningModule: each part is a dict key, a list index or an
    attribute; the last one is replaced (a tensor, such as a buffer, is filled in place instead).
    The path must exist when the callback is set up.

    Stage schedules (``kind: stages``) call ``pl_module.on_stage_change(name, old, new)``, if the
    module defines it, right after the new value is set, once per change: not for the initial
    stage of a fresh run, and not again after a resume. The last stage seen is kept in the
    callback's checkpoint state, so a run resumed right at a boundary still makes the call once.

    Args:
        schedules: attribute name -> a schedule spec (see :func:`build_schedule`; an extra key
            ``unit`` overrides ``unit`` for that schedule) or, from Python, a :class:`Schedule`.
        unit: ``"step"`` (``trainer.global_step``) or ``"epoch"`` (``trainer.current_epoch``).
        log: whether to log the values.

    Raises:
        ValueError: if a spec is invalid (the message names its key) or ``unit`` is unknown.

    Example:
        >>> callback = ProgressiveSchedule(
        ...     {"loss_weights.kd": {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 100},
        ...      "phase": {"kind": "stages", "boundaries": [50], "values": [0, 1], "unit": "step"}})
        >>> callback.value_at("loss_weights.kd", 25), callback.value_at("phase", 50)
        (0.25, 1)
    """

    def __init__(
        self,
        schedules: dict[str, dict[str, Any] | Schedule],
        *,
        unit: Literal["step", "epoch"] = "step",
        log: bool = True,
    ) -> None:
        if unit not in _UNITS:
            raise ValueError(f"`unit` must be one of {_UNITS}, got {unit!r}.")
        if not isinstance(schedules, Mapping) or not schedules:
            raise ValueError(
                f"`schedules` must be a non-empty dict of attribute name -> schedule, got {schedules!r}."
            )
        self._entries: dict[str, _Entry] = {}
        for name, spec in schedules.items():
            if not isinstance(name, str) or not name or "" in name.split("."):
                raise ValueError(f"`schedules` keys must be dotted attribute names, got {name!r}.")
            entry_unit = unit
            if isinstance(spec, Mapping) and "unit" in spec:
                entry_unit = spec["unit"]
                if entry_unit not in _UNITS:
                    raise ValueError(
                        f"`schedules[{name!r}]`: 'unit' must be one of {_UNITS}, got {entry_unit!r}."
                    )
                spec = {key: value for key, value in spec.items() if key != "unit"}
            try:
                schedule = build_schedule(spec)
            except (ValueError, TypeError) as error:
                raise ValueError(f"`schedules[{name!r}]`: {error}") from error
            self._entries[name] = _Entry(schedule, entry_unit)
        self._log = log
        self._last_stage: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(schedules=sorted(self._entries))

    @property
    def schedules(self) -> dict[str, Schedule]:
        """Attribute name -> schedule."""
        return {name: entry.schedule for name, entry in self._entries.items()}

    def value_at(self, name: str, t: int) -> Any:
        """The value schedule ``name`` gives at step (or epoch, per its unit) ``t``.

        Raises:
            KeyError: if there is no schedule called ``name``.
        """
        if name not in self._entries:
            raise KeyError(f"No schedule named {name!r}; the schedules are {list(self._entries)}.")
        return self._entries[name].schedule.value_at(t)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name in self._entries:
            _check_path(pl_module, name)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # When resuming, the loops (and so global_step) are restored after on_fit_start; the values
        # are then set at the start of the sanity check and of training instead.
        if trainer.ckpt_path is None:
            self._apply(trainer, pl_module, log=False)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module, log=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module, log=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._apply(trainer, pl_module, log=self._log)

    def state_dict(self) -> dict[str, Any]:
        return {"last_stage": dict(self._last_stage)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, value in state_dict.get("last_stage", {}).items():
            if name in self._entries:
                self._last_stage[name] = value

    # ------------------------------------------------------------------ internals
    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, *, log: bool) -> None:
        for name, entry in self._entries.items():
            t = trainer.global_step if entry.unit == "step" else trainer.current_epoch
            value = entry.schedule.value_at(t)
            _assign(pl_module, name, value)
            if isinstance(entry.schedule, StageSchedule):
                old = self._last_stage.get(name, _UNSET)
                self._last_stage[name] = value
                if old is not _UNSET and old != value:
                    hook = getattr(pl_module, "on_stage_change", None)
                    if callable(hook):
                        hook(name, old, value)
            if log:
                for key, number in _loggable(f"schedule/{name}", value):
                    pl_module.log(key, number, on_step=True, on_epoch=False)


# ---------------------------------------------------------------------- helpers
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


def _loggable(key: str, value: Any) -> list[tuple[str, float]]:
    if isinstance(value, bool) or _is_number(value):
        return [(key, float(value))]
    if isinstance(value, Tensor) and value.numel() == 1:
        return [(key, float(value.item()))]
    if _is_number_sequence(value):
        return [(f"{key}/{i}", float(item)) for i, item in enumerate(value)]
    return []


def _child(obj: Any, part: str) -> Any:
    """The item or attribute ``part`` of ``obj``; raises ``LookupError`` if there is none."""
    if isinstance(obj, Mapping):
        if part in obj:
            return obj[part]
        raise LookupError(part)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)) and part.isdigit():
        if int(part) < len(obj):
            return obj[int(part)]
        raise LookupError(part)
    try:
        return getattr(obj, part)
    except AttributeError as error:
        raise LookupError(part) from error


def _candidates(obj: Any) -> list[str]:
    if isinstance(obj, Mapping):
        return [str(key) for key in obj]
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [str(i) for i in range(len(obj))]
    return [name for name in dir(obj) if not name.startswith("_")]


def _check_path(root: Any, name: str) -> None:
    """Raises ``ValueError`` (with close matches) unless ``name`` names a settable value of ``root``."""
    parts = name.split(".")
    obj = root
    for depth, part in enumerate(parts):
        try:
            child = _child(obj, part)
        except LookupError:
            prefix = ".".join(parts[:depth])
            close = [
                ".".join([*parts[:depth], match])
                for match in difflib.get_close_matches(part, _candidates(obj), n=5, cutoff=0.6)
            ]
            where = f"`{prefix}` ({type(obj).__name__})" if prefix else type(obj).__name__
            hint = f" Close matches: {close}." if close else ""
            raise ValueError(
                f"`schedules` key {name!r}: {where} has no attribute or key {part!r}.{hint} "
                "Schedules can only set attributes that exist when the callback is set up."
            ) from None
        if depth == len(parts) - 1:
            if isinstance(obj, tuple) or (isinstance(obj, Sequence) and not isinstance(obj, MutableSequence)):
                raise ValueError(f"`schedules` key {name!r}: cannot set an item of a {type(obj).__name__}.")
            attribute = getattr(type(obj), part, None)
            if isinstance(attribute, property) and attribute.fset is None:
                raise ValueError(f"`schedules` key {name!r}: {part!r} is a read-only property.")
            if callable(child) and not isinstance(child, (Tensor, torch.nn.Module)):
                raise ValueError(f"`schedules` key {name!r}: {part!r} is a method, not a value.")
        obj = child


def _assign(root: Any, name: str, value: Any) -> None:
    parts = name.split(".")
    obj = root
    for part in parts[:-1]:
        obj = _child(obj, part)
    last = parts[-1]
    current = _child(obj, last)
    if isinstance(current, Tensor):
        with torch.no_grad():
            current.copy_(torch.as_tensor(value, dtype=current.dtype, device=current.device))
    elif isinstance(obj, MutableMapping):
        obj[last] = value
    elif isinstance(obj, MutableSequence) and last.isdigit():
        obj[int(last)] = value
    else:
        setattr(obj, last, value)
