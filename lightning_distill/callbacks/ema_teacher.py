"""An exponential moving average of a module, kept as a frozen teacher of the LightningModule.

``EMATeacher`` keeps ``target = m * target + (1 - m) * source`` after every optimizer step, where
``source`` and ``target`` are dotted attribute paths on the LightningModule. It serves as the mean
teacher, the BYOL/DINO momentum encoder, the consistency-model target or an evaluation EMA.

- The target is a frozen submodule of the LightningModule (``requires_grad_(False)``, eval mode),
  so it is saved in checkpoints with the module and the recipe calls it like any teacher. If it
  does not exist at ``setup`` the callback makes it: a deep copy of the source.
- One ``torch._foreach_lerp_`` over tensor lists built once, after the strategy has wrapped,
  moved and converted the model; no host-device synchronisation (the momentum is a Python float
  computed from ``trainer.global_step``).
- fp32 master weights when the target is bf16/fp16 (``precision="bf16-true"``): the tiny
  ``(1 - m) * (source - target)`` steps are not lost to rounding.
- Integer buffers (``num_batches_tracked``) are copied; float buffers (BatchNorm statistics) are
  averaged or copied (``buffers``).
- Acts on real optimizer steps only (``trainer.global_step`` advanced), so gradient accumulation
  does not multiply updates; works with manual optimization.
- DDP: every rank updates its own replica from identical weights, so replicas stay identical.
  FSDP2 (``ModelParallelStrategy`` + ``fully_shard``): the average is taken on the local shards;
  see :class:`EMATeacher` for how the target gets sharded like the source.

Example: a mean teacher in your own LightningModule (the student learns from labels and from
agreement with its EMA).

>>> import torch
>>> import lightning.pytorch as pl
>>> from torch import nn
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from lightning_distill.callbacks.ema_teacher import EMATeacher
>>> class MeanTeacher(pl.LightningModule):
...     def __init__(self):
...         super().__init__()
...         self.student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
...
...     def training_step(self, batch, batch_idx):
...         x, y = batch
...         logits = self.student(x + 0.1 * torch.randn_like(x))
...         with torch.no_grad():
...             teacher = self.ema_student(x).softmax(-1)  # made by EMATeacher at setup
...         consistency = (logits.softmax(-1) - teacher).pow(2).sum(-1).mean()
...         return nn.functional.cross_entropy(logits, y) + consistency
...
...     def configure_optimizers(self):
...         return torch.optim.SGD(self.student.parameters(), lr=0.1)
>>> _ = pl.seed_everything(0, verbose=False)
>>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
>>> trainer = pl.Trainer(
...     max_steps=4, callbacks=[EMATeacher(momentum=0.99)], logger=False, enable_checkpointing=False,
...     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
>>> model = MeanTeacher()
>>> trainer.fit(model, DataLoader(data, batch_size=8))
>>> model.ema_student.training, any(p.requires_grad for p in model.ema_student.parameters())
(False, False)
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - older torch
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:
        DTensor = None  # type: ignore[assignment,misc]

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # pragma: no cover - older torch
    try:
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    except ImportError:
        FSDPModule = None  # type: ignore[assignment,misc]
        fully_shard = None  # type: ignore[assignment]

__all__ = ["EMATeacher", "EMAUpdater"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SCHEDULES = ("constant", "cosine")
_BUFFER_POLICIES = ("average", "copy")
# Module attributes holding forward/backward hooks; a copied target does not inherit them (taps such
# as FeatureHooks on the student would otherwise be deep-copied together with their owner).
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _is_dtensor(tensor: Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def _is_float(tensor: Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


class EMAUpdater:
    """Pairs the tensors of a live module with those of its average and updates the average in place.

    The plain-PyTorch core of :class:`EMATeacher`, usable without Lightning. The tensor lists are built
    once, here; build a new updater if the modules are moved, converted or re-sharded.

    Args:
        source: The live module (e.g. the student).
        target: Its average, with the same parameter and buffer names, shapes and sharding.
        buffers: ``"average"`` treats float buffers like parameters; ``"copy"`` copies them.
            Integer and bool buffers are always copied.
        master: fp32 master tensors by name (from :meth:`master_state_dict`), for targets held in
            bf16/fp16. Missing names start from the target's values.

    Raises:
        ValueError: If ``buffers`` is not ``"average"`` or ``"copy"``, or the two modules differ in
            parameter/buffer names, shapes, devices or sharding.

    Example:
        >>> import copy
        >>> live = torch.nn.Linear(2, 1)
        >>> ema = copy.deepcopy(live).requires_grad_(False)
        >>> updater = EMAUpdater(live, ema)
        >>> with torch.no_grad():
        ...     _ = live.weight.add_(1.0)
        >>> before = ema.weight.clone()
        >>> updater.update(0.9)
        >>> torch.allclose(ema.weight, before + 0.1 * (live.weight - before))
        True
    """

    def __init__(
        self,
        source: nn.Module,
        target: nn.Module,
        buffers: Literal["average", "copy"] = "copy",
        master: Mapping[str, Tensor] | None = None,
    ) -> None:
        if buffers not in _BUFFER_POLICIES:
            raise ValueError(f"`buffers` must be one of {_BUFFER_POLICIES}, got {buffers!r}.")
        master = dict(master or {})
        averaged = list(_paired(source.named_parameters(), target.named_parameters(), "parameter"))
        copied = []
        for name, live, avg in _paired(source.named_buffers(), target.named_buffers(), "buffer"):
            (averaged if buffers == "average" and _is_float(avg) else copied).append((name, live, avg))
        self.sharded = False
        # Averaged pairs whose accumulator has the live dtype, and those that need a cast of the live
        # tensor (a bf16 student averaged into fp32 masters).
        self._avg: list[Tensor] = []
        self._live: list[Tensor] = []
        self._avg_cast: list[Tensor] = []
        self._live_cast: list[Tensor] = []
        # Low-precision target tensors and their fp32 masters, copied after every update.
        self._lowp_targets: list[Tensor] = []
        self._master_list: list[Tensor] = []
        self._masters: dict[str, Tensor] = {}
        # Tensors copied verbatim: integer buffers, and float buffers under ``buffers="copy"``.
        self._copy_dst: list[Tensor] = []
        self._copy_src: list[Tensor] = []
        # All pairs, for swapping the average into the live module.
        self._all_live: list[Tensor] = []
        self._all_target: list[Tensor] = []
        for name, live, avg in averaged:
            live_t, avg_t = self._local_pair(name, live, avg)
            if avg_t.dtype in _LOW_PRECISION:
                acc = avg_t.detach().float().clone()
                if name in master:
                    acc.copy_(master[name])
                self._masters[name] = acc
                self._master_list.append(acc)
                self._lowp_targets.append(avg_t)
            else:
                acc = avg_t
            if live_t.dtype == acc.dtype:
                self._avg.append(acc)
                self._live.append(live_t)
            else:
                self._avg_cast.append(acc)
                self._live_cast.append(live_t)
        for name, live, avg in copied:
            live_t, avg_t = self._local_pair(name, live, avg)
            self._copy_dst.append(avg_t)
            self._copy_src.append(live_t)

    def _local_pair(self, name: str, live: Tensor, avg: Tensor) -> tuple[Tensor, Tensor]:
        if _is_dtensor(live) != _is_dtensor(avg):
            raise ValueError(
                f"`{name}` is {'sharded' if _is_dtensor(live) else 'not sharded'} in the source but "
                f"{'sharded' if _is_dtensor(avg) else 'not sharded'} in the target; shard both the same way."
            )
        if _is_dtensor(live):
            self.sharded = True
            if tuple(live.placements) != tuple(avg.placements) or live.device_mesh != avg.device_mesh:
                raise ValueError(
                    f"`{name}` is sharded differently: source placements {tuple(live.placements)}, target "
                    f"{tuple(avg.placements)}; shard the target with the same `fully_shard` mesh."
                )
            live, avg = live.to_local(), avg.to_local()
        if live.shape != avg.shape or live.device != avg.device:
            raise ValueError(
                f"`{name}` has shape {tuple(live.shape)} on {live.device} in the source but "
                f"{tuple(avg.shape)} on {avg.device} in the target; they must match."
            )
        return live, avg

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """Moves every averaged tensor towards the live one: ``avg = momentum * avg + (1 - momentum) * live``.

        Args:
            momentum: Weight of the old average, a Python float in [0, 1].
        """
        weight = 1.0 - momentum
        if self._avg:
            torch._foreach_lerp_(self._avg, self._live, weight)
        if self._avg_cast:
            live = [t.to(a.dtype) for a, t in zip(self._avg_cast, self._live_cast)]
            torch._foreach_lerp_(self._avg_cast, live, weight)
        self._finish()

    @torch.no_grad()
    def copy_(self) -> None:
        """Sets the average to the live values (the warm-up before averaging starts)."""
        if self._avg:
            torch._foreach_copy_(self._avg, self._live)
        if self._avg_cast:
            torch._foreach_copy_(self._avg_cast, self._live_cast)
        self._finish()

    def _finish(self) -> None:
        if self._lowp_targets:
            torch._foreach_copy_(self._lowp_targets, self._master_list)
        if self._copy_dst:
            torch._foreach_copy_(self._copy_dst, self._copy_src)

    @torch.no_grad()
    def swap_in(self) -> list[Tensor]:
        """Copies the average into the live module and returns the live values for :meth:`swap_out`."""
        backup = [t.detach().clone() for t in self.live_tensors]
        torch._foreach_copy_(self.live_tensors, self.target_tensors)
        return backup

    @torch.no_grad()
    def swap_out(self, backup: list[Tensor]) -> None:
        """Restores the live values saved by :meth:`swap_in`."""
        torch._foreach_copy_(self.live_tensors, backup)

    @property
    def live_tensors(self) -> list[Tensor]:
        """The live tensors (local shards when sharded), parameters first."""
        if not self._all_live:
            self._all_live = [*self._live, *self._live_cast, *self._copy_src]
        return self._all_live

    @property
    def target_tensors(self) -> list[Tensor]:
        """The target tensors in the order of :attr:`live_tensors`."""
        if not self._all_target:
            masters = {id(m): t for m, t in zip(self._master_list, self._lowp_targets)}
            averaged = [masters.get(id(a), a) for a in [*self._avg, *self._avg_cast]]
            self._all_target = [*averaged, *self._copy_dst]
        return self._all_target

    def master_state_dict(self) -> dict[str, Tensor]:
        """The fp32 master tensors by name; empty when the target is fp32."""
        return dict(self._masters)

    @torch.no_grad()
    def load_master_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Loads fp32 masters saved by :meth:`master_state_dict` and copies them into the target.

        Raises:
            ValueError: If a saved master has a different shape from this updater's.
        """
        for name, value in state.items():
            if name in self._masters:
                if self._masters[name].shape != value.shape:
                    raise ValueError(
                        f"Saved master weight `{name}` has shape {tuple(value.shape)}, expected "
                        f"{tuple(self._masters[name].shape)}."
                    )
                self._masters[name].copy_(value)
        if self._lowp_targets:
            torch._foreach_copy_(self._lowp_targets, self._master_list)


def _paired(live_named, avg_named, kind: str):
    """Yields ``(name, live, avg)`` after checking that both modules have the same names in order."""
    live_items, avg_items = list(live_named), list(avg_named)
    live_names, avg_names = [n for n, _ in live_items], [n for n, _ in avg_items]
    if live_names != avg_names:
        missing = sorted(set(live_names) - set(avg_names))[:5]
        extra = sorted(set(avg_names) - set(live_names))[:5]
        raise ValueError(
            f"Source and target differ in their {kind}s: missing in the target {missing}, extra in the "
            f"target {extra} (first five); the target must be a copy of the source."
        )
    for (name, live), (_, avg) in zip(live_items, avg_items):
        yield name, live, avg


class EMATeacher(Callback):
    r"""Keeps an exponential moving average of a submodule as a frozen teacher of the LightningModule.

    After every optimizer step ``k = trainer.global_step - 1`` (zero-based):

    - ``k < start_step``: the target is set to the source (warm-up copy);
    - otherwise, if :meth:`should_update` (every ``update_every``-th step):
      ``target = m_k * target + (1 - m_k) * source`` with ``m_k =`` :meth:`momentum_at` ``(k, K)``,
      ``K = total_steps`` or ``trainer.estimated_stepping_batches``.

    The constant schedule is ``m_k = momentum``; the cosine schedule (BYOL, DINO) rises from
    ``momentum`` to ``final_momentum``: ``m_k = final - (final - momentum) * (cos(pi k / K) + 1) / 2``.

    **Where the target comes from.** If the LightningModule already has the ``target`` attribute (a
    recipe's ``self.ema_student = copy.deepcopy(self.student)``), it is used and frozen. Otherwise the
    callback makes it in ``setup`` as a deep copy of the source (forward/backward hooks are not copied)
    and attaches it with ``pl_module.register_frozen(target, module)`` when the module has that method,
    else with ``setattr``; it is then part of the module's ``state_dict`` and checkpoints. Give your
    optimizer only trainable parameters (``self.student.parameters()``, or those with
    ``requires_grad``); a warning names a target found in an optimizer. If the source only exists after
    ``configure_model``, the target is made in ``on_fit_start`` (a warning says that checkpoints with
    the target then need it made in ``configure_model`` to resume).

    **FSDP2** (``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``): the average is
    taken on the local shards, so source and target must be sharded alike. A target made by the callback
    at ``setup`` (source built in ``__init__``) is sharded in ``on_fit_start`` by calling ``fully_shard``
    on the target submodules that mirror the source's FSDP modules, with the source's mesh and
    ``reshard_after_forward=True`` (so a forward-only root does not keep stale gathered weights). To
    choose another FSDP2 configuration, or when the source is built in ``configure_model``, make and
    shard the target there yourself: ``self.ema_student = copy.deepcopy(self.student)`` before
    sharding, then ``fully_shard`` both alike. Before each update the target's FSDP modules are
    resharded. Under sharding, fp32 masters of a bf16 target are not saved (only rank 0's callback state
    reaches the checkpoint) and are re-derived from the target on resume; ``save_averaged_as_source``
    is refused.

    Args:
        source: Dotted path of the averaged module on the LightningModule, e.g. ``"student"``.
        target: Dotted path of the average, e.g. ``"ema_student"``.
        momentum: Weight of the old average, in [0, 1] (the start value for ``"cosine"``).
        schedule: ``"constant"`` or ``"cosine"``.
        final_momentum: The cosine schedule's value at the last step, in [0, 1].
        start_step: Optimizer steps before this index copy the source instead of averaging.
        update_every: Average after every ``update_every``-th optimizer step.
        buffers: ``"average"`` averages float buffers (BatchNorm statistics) like parameters;
            ``"copy"`` copies them. Integer buffers are always copied.
        swap_for_eval: Put the averaged weights into the source for validation and test, and the
            live ones back afterwards.
        save_averaged_as_source: Save the averaged weights under the source's keys in checkpoints
            (the live weights travel alongside and are restored on resume), so a checkpoint loaded
            for inference holds the average in the source.
        total_steps: Length ``K`` of the cosine schedule in optimizer steps; ``None`` takes
            ``trainer.estimated_stepping_batches`` (set it under manual optimization with several
            optimizer steps per batch, where ``global_step`` counts every optimizer's step).
        log_name: Name under which the momentum is logged; ``None`` turns logging off. Give a second
            instance its own name.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, or ``source`` and ``target`` overlap.
    """

    def __init__(
        self,
        source: str = "student",
        target: str = "ema_student",
        momentum: float = 0.999,
        schedule: Literal["constant", "cosine"] = "constant",
        final_momentum: float = 1.0,
        start_step: int = 0,
        update_every: int = 1,
        buffers: Literal["average", "copy"] = "copy",
        swap_for_eval: bool = False,
        save_averaged_as_source: bool = False,
        total_steps: int | None = None,
        log_name: str | None = "ema/momentum",
    ) -> None:
        for name, path in (("source", source), ("target", target)):
            if not isinstance(path, str):
                raise TypeError(f"`{name}` must be a str (a dotted module path), got {type(path).__name__}.")
            if not path or not all(part.isidentifier() or part.isdigit() for part in path.split(".")):
                raise ValueError(
                    f"`{name}` must be a dotted attribute path such as 'student' or 'model.encoder', got "
                    f"{path!r}; set `init_args.{name}` of EMATeacher."
                )
        if source == target or target.startswith(source + ".") or source.startswith(target + "."):
            raise ValueError(
                f"`source` ({source!r}) and `target` ({target!r}) must name separate modules, neither inside "
                "the other."
            )
        for name, value in (("momentum", momentum), ("final_momentum", final_momentum)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1], got {value}; set `init_args.{name}` of EMATeacher."
                )
        if schedule not in _SCHEDULES:
            raise ValueError(f"`schedule` must be one of {_SCHEDULES}, got {schedule!r}.")
        if buffers not in _BUFFER_POLICIES:
            raise ValueError(f"`buffers` must be one of {_BUFFER_POLICIES}, got {buffers!r}.")
        for name, value, low in (("start_step", start_step, 0), ("update_every", update_every, 1)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
            if value < low:
                raise ValueError(
                    f"`{name}` must be >= {low}, got {value}; set `init_args.{name}` of EMATeacher."
                )
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ValueError(f"`total_steps` must be None or an int >= 1, got {total_steps!r}.")
        for name, value in (
            ("swap_for_eval", swap_for_eval),
            ("save_averaged_as_source", save_averaged_as_source),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}.")
        if log_name is not None and (not isinstance(log_name, str) or not log_name):
            raise ValueError(f"`log_name` must be None or a non-empty str, got {log_name!r}.")

        self.source = source
        self.target = target
        self.momentum = float(momentum)
        self.schedule = schedule
        self.final_momentum = float(final_momentum)
        self.start_step = start_step
        self.update_every = update_every
        self.buffers = buffers
        self.swap_for_eval = swap_for_eval
        self.save_averaged_as_source = save_averaged_as_source
        self.total_steps = total_steps
        self.log_name = log_name

        self._updater: EMAUpdater | None = None
        self._created = False
        self._last_step = 0  # trainer.global_step when the callback last acted
        self._pending_master: dict[str, Tensor] = {}
        self._total: float | None = None
        self._backup: list[Tensor] | None = None
        self._fsdp_modules: list[nn.Module] = []

    # ---------------------------------------------------------------- override points
    def momentum_at(self, step: int, total_steps: int | float) -> float:
        """The momentum after optimizer step ``step`` (zero-based) of ``total_steps``.

        Args:
            step: Zero-based index of the optimizer step just taken.
            total_steps: Length of the schedule; steps beyond it get ``final_momentum``.

        Returns:
            The momentum, a Python float.

        Example:
            >>> ema = EMATeacher(momentum=0.996, schedule="cosine")
            >>> [round(ema.momentum_at(k, 100), 4) for k in (0, 50, 100)]
            [0.996, 0.998, 1.0]
        """
        if self.schedule == "constant":
            return self.momentum
        progress = min(max(step / total_steps, 0.0), 1.0)
        return (
            self.final_momentum
            - (self.final_momentum - self.momentum) * (math.cos(math.pi * progress) + 1) / 2
        )

    def should_update(self, step: int) -> bool:
        """Whether to average after optimizer step ``step`` (zero-based, at or after ``start_step``).

        Override to update only after some optimizer steps (e.g. only after generator steps).
        """
        return (step + 1) % self.update_every == 0

    # ---------------------------------------------------------------- Lightning hooks
    @property
    def state_key(self) -> str:
        return self._generate_state_key(source=self.source, target=self.target)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._last_step = 0
        self._created = False
        target = _find(pl_module, self.target, "target")
        if target is not None:
            if "." not in self.target and callable(getattr(pl_module, "register_frozen", None)):
                pl_module.register_frozen(self.target, target)  # the base then keeps it frozen and in eval
            _freeze(target)
            return
        source = _find(pl_module, self.source, "source")
        if source is not None and not _has_dtensors(source):
            self._attach(pl_module, _copy_without_hooks(source))
        # else: made in on_fit_start, once configure_model has built the source.

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = self._prepare(pl_module)
        assert self._updater is not None
        if self._updater.sharded and self.save_averaged_as_source:
            raise ValueError(
                "`save_averaged_as_source=True` is not supported with sharded modules; set it to False "
                "(the target is saved in the checkpoint anyway)."
            )
        if self._created and trainer.ckpt_path is None:
            self._updater.copy_()  # start from the source as it is after the strategy's setup
        self._warn_if_in_optimizer(trainer, target)
        self._total = None
        if self.schedule == "cosine":
            total = self.total_steps if self.total_steps is not None else trainer.estimated_stepping_batches
            if not math.isfinite(total) or total < 1:
                raise ValueError(
                    f"The cosine schedule needs a finite number of steps, but the trainer estimates {total}; "
                    "set `init_args.total_steps` of EMATeacher or `trainer.max_steps`."
                )
            self._total = total

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        target = pl_module.get_submodule(self.target)
        if target.training:
            target.eval()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        global_step = trainer.global_step
        if global_step <= self._last_step:
            return  # no optimizer step since the last call (gradient accumulation)
        self._last_step = global_step
        step = global_step - 1
        if step < self.start_step:
            momentum = 0.0
        elif self.should_update(step):
            momentum = self.momentum_at(step, self._total if self._total is not None else 1)
        else:
            return
        updater = self._build(pl_module)
        for module in self._fsdp_modules:
            module.reshard()
        if momentum == 0.0:
            updater.copy_()
        else:
            updater.update(momentum)
        if self.log_name is not None:
            pl_module.log(self.log_name, momentum, on_step=True, on_epoch=False, batch_size=1)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._swap_out()
        if self._updater is not None and not self._updater.sharded:
            self._pending_master = self._updater.master_state_dict()
        self._updater = None
        self._fsdp_modules = []

    def state_dict(self) -> dict[str, Any]:
        master: dict[str, Tensor] = {}
        if self._updater is not None:
            master = {} if self._updater.sharded else self._updater.master_state_dict()
            if self._updater.sharded and self._updater.master_state_dict():
                rank_zero_warn(
                    "EMATeacher: the fp32 master weights of a sharded low-precision target are not saved; on "
                    "resume they restart from the target's values."
                )
        else:
            master = dict(self._pending_master)
        return {"last_step": self._last_step, "master": master}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict.get("last_step", 0))
        master = dict(state_dict.get("master") or {})
        if self._updater is not None:
            if not self._updater.sharded:
                self._updater.load_master_state_dict(master)
        else:
            self._pending_master = master

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.save_averaged_as_source:
            return
        weights = checkpoint["state_dict"]
        source_prefix, target_prefix = self.source + ".", self.target + "."
        live = {}
        for key in list(weights):
            if key.startswith(source_prefix):
                averaged = target_prefix + key[len(source_prefix) :]
                if averaged in weights:
                    live[key] = weights[key]
                    weights[key] = weights[averaged]
        checkpoint.setdefault("ema_teacher_live_source", {})[self.state_key] = live

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        live = checkpoint.get("ema_teacher_live_source", {}).get(self.state_key)
        if live:
            # The module was loaded with the averaged weights in the source; put the live ones back.
            pl_module.load_state_dict(live, strict=False)

    # ---------------------------------------------------------------- helpers
    def _prepare(self, pl_module: pl.LightningModule) -> nn.Module:
        """Makes the target if needed, freezes it, shards it like the source and builds the updater."""
        source = self._source(pl_module)
        target = _find(pl_module, self.target, "target")
        if target is None:
            if _has_dtensors(source):
                raise ValueError(
                    f"EMATeacher: the source `{self.source}` is sharded but the target `{self.target}` does not "
                    f"exist, and a sharded module cannot be copied. In `configure_model`, make it before "
                    f"sharding (`self.{self.target} = copy.deepcopy(self.{self.source})`) and `fully_shard` it "
                    "like the source."
                )
            rank_zero_warn(
                f"EMATeacher made the target `{self.target}` after `configure_model` because the source "
                f"`{self.source}` did not exist at setup. Checkpoints now contain it; to resume from them, make "
                f"the target in `configure_model` too (`self.{self.target} = copy.deepcopy(self.{self.source})`)."
            )
            target = self._attach(pl_module, _copy_without_hooks(source))
        _freeze(target)
        if _has_dtensors(source) and not _has_dtensors(target):
            _shard_like(source, target)
        self._fsdp_modules = _fsdp_modules_owning(pl_module, self.target)
        self._build(pl_module)
        return target

    def _source(self, pl_module: pl.LightningModule) -> nn.Module:
        source = _find(pl_module, self.source, "source")
        if source is None:
            raise ValueError(_missing_message(pl_module, self.source, "source"))
        return source

    def _attach(self, pl_module: pl.LightningModule, module: nn.Module) -> nn.Module:
        parent_path, _, leaf = self.target.rpartition(".")
        if not parent_path and callable(getattr(pl_module, "register_frozen", None)):
            pl_module.register_frozen(leaf, module)
        else:
            parent = _find(pl_module, parent_path, "target") if parent_path else pl_module
            if parent is None:
                raise ValueError(_missing_message(pl_module, parent_path, "target"))
            setattr(parent, leaf, module)
        _freeze(module)
        self._created = True
        return module

    def _build(self, pl_module: pl.LightningModule) -> EMAUpdater:
        if self._updater is None:
            self._updater = EMAUpdater(
                self._source(pl_module),
                pl_module.get_submodule(self.target),
                buffers=self.buffers,
                master=self._pending_master,
            )
            self._pending_master = {}
        return self._updater

    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if not self.swap_for_eval or self._backup is not None:
            return
        if self._updater is None:
            self._prepare(pl_module)
        assert self._updater is not None
        for module in self._fsdp_modules + _fsdp_modules_owning(pl_module, self.source):
            module.reshard()
        self._backup = self._updater.swap_in()

    def _swap_out(self) -> None:
        if self._backup is not None and self._updater is not None:
            self._updater.swap_out(self._backup)
        self._backup = None

    def _warn_if_in_optimizer(self, trainer: pl.Trainer, target: nn.Module) -> None:
        ids = {id(p) for p in target.parameters()}
        for index, optimizer in enumerate(trainer.optimizers):
            found = sum(id(p) in ids for group in optimizer.param_groups for p in group["params"])
            if found:
                rank_zero_warn(
                    f"EMATeacher: {found} parameters of the target `{self.target}` are in optimizer {index}. They "
                    "are frozen and get no gradient, but should not be there: pass only trainable parameters, "
                    f"e.g. `self.{self.source}.parameters()` or `(p for p in self.parameters() if p.requires_grad)`."
                )


def _find(root: nn.Module, path: str, name: str) -> nn.Module | None:
    """The module at ``path`` under ``root``; ``None`` if an attribute on the way is missing or None."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if not isinstance(obj, nn.Module):
        raise TypeError(f"`{name}`={path!r} names a {type(obj).__name__}, not an nn.Module.")
    return obj


def _missing_message(root: nn.Module, path: str, name: str) -> str:
    names = [n for n, _ in root.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5) or [n for n in names if "." not in n][:10]
    return (
        f"EMATeacher: `{name}`={path!r} is not a submodule of {type(root).__name__}; closest valid paths: "
        f"{close}. Set `init_args.{name}` of EMATeacher."
    )


def _freeze(module: nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


def _has_dtensors(module: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in module.parameters())


def _copy_without_hooks(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` without its forward/backward hooks (their owners are not copied)."""
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(sub, attr, None)
            if hooks:
                memo[id(hooks)] = type(hooks)()
    return copy.deepcopy(module, memo)


def _fsdp_modules_owning(root: nn.Module, path: str) -> list[nn.Module]:
    """The FSDP2 modules at or inside ``path`` and its ancestors: those that may hold its gathered weights."""
    if FSDPModule is None:
        return []
    found = [m for m in root.get_submodule(path).modules() if isinstance(m, FSDPModule)]
    parts = path.split(".")
    for depth in range(len(parts)):
        ancestor = root.get_submodule(".".join(parts[:depth])) if depth else root
        if isinstance(ancestor, FSDPModule):
            found.append(ancestor)
    return found


def _shard_like(source: nn.Module, target: nn.Module) -> None:
    """Applies ``fully_shard`` to the target submodules that mirror the source's FSDP2 modules."""
    if fully_shard is None:  # pragma: no cover - torch without FSDP2
        raise RuntimeError("The source is sharded but this torch has no `fully_shard`.")
    names = [n for n, m in source.named_modules() if isinstance(m, FSDPModule)] or [""]
    for name in sorted(names, key=lambda n: -1 if n == "" else n.count("."), reverse=True):
        src = source.get_submodule(name)
        mesh = next(p for p in src.parameters() if _is_dtensor(p)).device_mesh
        fully_shard(target.get_submodule(name), mesh=mesh, reshard_after_forward=True)
