"""An exponential moving average of a module, kept as a frozen teacher of the LightningModule.

Size: one callback (the arithmetic is :class:`~lightning_distill.utils.ema.EMAUpdater`); the rest
is its runnable docstring and the FSDP2 sharding, precision and resume handling of one update,
which belong together.

``EMATeacher`` keeps ``target = d * target + (1 - d) * source`` after every optimizer step, where
``source`` and ``target`` are dotted attribute paths on the LightningModule. It serves as the mean
teacher, the BYOL/DINO momentum encoder, the consistency-model target or an evaluation EMA.

- The target is a frozen submodule of the LightningModule (``requires_grad_(False)``, eval mode),
  so it is saved in checkpoints with the module and the recipe calls it like any teacher. If it
  does not exist at ``setup`` the callback makes it: a deep copy of the source.
- One ``torch._foreach_lerp_`` over tensor lists built once, after the strategy has wrapped,
  moved and converted the model; no host-device synchronisation (the decay is a Python float
  computed from ``trainer.global_step``).
- fp32 master weights when the target is bf16/fp16 (``precision="bf16-true"``): the tiny
  ``(1 - d) * (source - target)`` steps are not lost to rounding.
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
...     max_steps=4, callbacks=[EMATeacher(decay=0.99)], logger=False, enable_checkpointing=False,
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
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_distill.utils.ema import BUFFER_POLICIES, EMAUpdater, is_dtensor

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # pragma: no cover - older torch
    try:
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    except ImportError:
        FSDPModule = None  # type: ignore[assignment,misc]
        fully_shard = None  # type: ignore[assignment]

__all__ = ["EMATeacher"]

_SCHEDULES = ("constant", "cosine")
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


class EMATeacher(Callback):
    r"""Keeps an exponential moving average of a submodule as a frozen teacher of the LightningModule.

    After every optimizer step ``k = trainer.global_step - 1`` (zero-based):

    - ``k < start_step``: the target is set to the source (warm-up copy);
    - otherwise, if :meth:`should_update` (every ``update_every``-th step):
      ``target = d_k * target + (1 - d_k) * source`` with ``d_k =`` :meth:`decay_at` ``(k, K)``,
      ``K = total_steps`` or ``trainer.estimated_stepping_batches``.

    The constant schedule is ``d_k = decay``; the cosine schedule (BYOL, DINO) rises from
    ``decay`` to ``final_decay``: ``d_k = final - (final - decay) * (cos(pi k / K) + 1) / 2``.

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
        decay: Weight of the old average, in [0, 1] (the start value for ``"cosine"``); what BYOL
            and DINO call the momentum of the target network.
        schedule: ``"constant"`` or ``"cosine"``.
        final_decay: The cosine schedule's value at the last step, in [0, 1].
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
        log_name: Name under which the decay is logged; ``None`` turns logging off. Give a second
            instance its own name.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, or ``source`` and ``target`` overlap.
    """

    def __init__(
        self,
        source: str = "student",
        target: str = "ema_student",
        decay: float = 0.999,
        schedule: Literal["constant", "cosine"] = "constant",
        final_decay: float = 1.0,
        start_step: int = 0,
        update_every: int = 1,
        buffers: Literal["average", "copy"] = "copy",
        swap_for_eval: bool = False,
        save_averaged_as_source: bool = False,
        total_steps: int | None = None,
        log_name: str | None = "ema/decay",
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
        for name, value in (("decay", decay), ("final_decay", final_decay)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1], got {value}; set `init_args.{name}` of EMATeacher."
                )
        if schedule not in _SCHEDULES:
            raise ValueError(f"`schedule` must be one of {_SCHEDULES}, got {schedule!r}.")
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"`buffers` must be one of {BUFFER_POLICIES}, got {buffers!r}.")
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
        self.decay = float(decay)
        self.schedule = schedule
        self.final_decay = float(final_decay)
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
    def decay_at(self, step: int, total_steps: int | float) -> float:
        """The decay after optimizer step ``step`` (zero-based) of ``total_steps``.

        Args:
            step: Zero-based index of the optimizer step just taken.
            total_steps: Length of the schedule; steps beyond it get ``final_decay``.

        Returns:
            The decay, a Python float.

        Example:
            >>> ema = EMATeacher(decay=0.996, schedule="cosine")
            >>> [round(ema.decay_at(k, 100), 4) for k in (0, 50, 100)]
            [0.996, 0.998, 1.0]
        """
        if self.schedule == "constant":
            return self.decay
        progress = min(max(step / total_steps, 0.0), 1.0)
        return self.final_decay - (self.final_decay - self.decay) * (math.cos(math.pi * progress) + 1) / 2

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
            decay = 0.0
        elif self.should_update(step):
            decay = self.decay_at(step, self._total if self._total is not None else 1)
        else:
            return
        updater = self._build(pl_module)
        for module in self._fsdp_modules:
            module.reshard()
        if decay == 0.0:
            updater.copy_()
        else:
            updater.update(decay)
        if self.log_name is not None:
            pl_module.log(self.log_name, decay, on_step=True, on_epoch=False, batch_size=1)

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
    return any(is_dtensor(p) for p in module.parameters())


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
        mesh = next(p for p in src.parameters() if is_dtensor(p)).device_mesh
        fully_shard(target.get_submodule(name), mesh=mesh, reshard_after_forward=True)
