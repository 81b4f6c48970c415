"""The probe the strategy matrix adds to a recipe's ``lightning-distill fit`` run (see ``tools/strategy_matrix.py``).

Given on the command line as ``--trainer.callbacks+=tests.strategies.worker.MatrixProbe`` with the
environment variable ``LD_MATRIX_OUT`` naming a folder, every rank writes ``rank<r>.pt`` at the end
of fit: the logged ``train/*`` values of every step, the full module state (FSDP2 ``DTensor`` shards
gathered), the callbacks' states, which parameters learn and which modules are frozen, and how
often the recipe read its rank.

``LD_MATRIX_RANK_BLIND=1`` makes ``self.global_rank`` read 0 inside the recipe (the trainer's rank is
untouched): with the same data on every rank (``use_distributed_sampler=false``), a DDP run then must
equal a single-process run step for step, because the recipes that seed their noise by rank draw the
same noise on every rank too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["MatrixProbe"]

_RANK_READS = {"count": 0}


def _blind_rank(self: Any) -> int:
    _RANK_READS["count"] += 1
    return 0


def _full(value: Any) -> Any:
    """A CPU copy of ``value`` with ``DTensor`` shards gathered; containers are walked."""
    if isinstance(value, torch.Tensor):
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _full(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_full(v) for v in value)
    return value


class MatrixProbe(pl.Callback):
    """Records what the strategy matrix compares across ranks and against a single-process run."""

    def __init__(self) -> None:
        self.out = Path(os.environ.get("LD_MATRIX_OUT", "."))
        self.steps: list[dict[str, float]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if os.environ.get("LD_MATRIX_RANK_BLIND") == "1":
            cls = type(pl_module)
            blind = type(
                cls.__name__,
                (cls,),
                {
                    "global_rank": property(_blind_rank),
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                },
            )
            pl_module.__class__ = blind
            for callback in trainer.callbacks:  # callbacks that seed their draws by rank (PreferencePairs)
                if callable(getattr(callback, "_rank", None)):
                    callback._rank = lambda: 0

    def _snapshot(self, trainer: pl.Trainer) -> None:
        values = {
            k: float(v.detach().float()) if isinstance(v, torch.Tensor) else float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        }
        if values:
            self.steps.append(values)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning moves a step's logged values into callback_metrics after on_train_batch_end:
        # the values seen here are those of the previous step.
        self._snapshot(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer)
        names = {id(p): n for n, p in pl_module.named_parameters()}
        trainable = []
        if hasattr(pl_module, "trainable_parameters"):
            trainable = [names[id(p)] for p in pl_module.trainable_parameters() if id(p) in names]
        frozen_ids = (
            {id(m) for m in pl_module.frozen_modules()} if hasattr(pl_module, "frozen_modules") else set()
        )
        frozen = [n for n, m in pl_module.named_modules() if id(m) in frozen_ids]
        callbacks = {}
        for k, cb in enumerate(trainer.callbacks):
            if cb is self or isinstance(cb, ModelCheckpoint):  # its paths and scores live on rank 0
                continue
            try:
                state = cb.state_dict()
            except Exception as err:  # noqa: BLE001 - recorded, compared as text
                state = {"error": repr(err)}
            if state:
                callbacks[f"{k}:{type(cb).__name__}"] = _full(state)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
            "global_step": trainer.global_step,
            "steps": self.steps,
            "state": _full(pl_module.state_dict()),
            "trainable": trainable,
            "frozen": frozen,
            "callbacks": callbacks,
            "rank_reads": _RANK_READS["count"],
        }
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")
