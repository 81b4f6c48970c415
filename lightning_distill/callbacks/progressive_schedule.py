"""Set attributes of a LightningModule from trainer state by declared schedules.

``ProgressiveSchedule`` is a Lightning callback that, before every training batch, sets each
named attribute of the module (``"loss_weights.kd"``, ``"scale_factor"``, ``"phase"``,
``"timestep_range"``, ``"dataset.min_crop"``) to ``schedule.value_at(t)``, where ``t`` is
``trainer.global_step`` (optimizer steps) or ``trainer.current_epoch``. The schedules are pure
functions of ``t``, so a resumed run sets the same values as an uninterrupted one; stage
schedules call ``pl_module.on_stage_change(name, old, new)`` once per change, across resumes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lightning_distill.utils.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PiecewiseSchedule,
    Schedule,
    StageSchedule,
    StepSchedule,
    build_schedule,
)

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
