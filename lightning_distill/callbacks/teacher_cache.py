"""Lightning integration of the teacher-output cache: open it for a run, log its hit rate.

The store itself (memory-mapped logits and augmentation parameters, the manifest that refuses a
cache built for another dataset or teacher) is :class:`~lightning_distill.models.TeacherCache`;
the replayable augmentations are in :mod:`lightning_distill.utils.augment`, the dataset wrapper
that adds sample indices is :class:`~lightning_distill.data.IndexedDataset`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_distill.models.teacher_store import TeacherCache, check_cache_options
from lightning_distill.utils.augment import ReplayableAugmentation

__all__ = ["TeacherCacheCallback"]


class TeacherCacheCallback(Callback):
    """Open a :class:`TeacherCache` for the training run and log its hit rate as ``cache/hit_rate``.

    At ``on_train_start`` (when the train DataLoader exists) rank 0 creates or checks the cache
    for ``trainer.train_dataloader.dataset`` and ``pl_module.<teacher_attribute>``; the other ranks
    open it after a barrier. In ``training_step`` call :meth:`teacher_outputs` with the raw batch
    and its sample indices (wrap the dataset in :class:`~lightning_distill.data.IndexedDataset`).

    Args:
        directory: Where the cache files live.
        output_dim: The teacher's output width ``C``.
        top_k: Store only the top-k logits; see :class:`TeacherCache`.
        dtype: ``"float16"`` or ``"float32"``.
        augmentation: A :class:`~lightning_distill.utils.augment.ReplayableAugmentation` or ``None``.
        num_slots: Number of epochs with distinct augmentations.
        dataset_id: Use this id instead of hashing dataset samples.
        teacher_id: Use this id instead of hashing the teacher's weights.
        teacher_attribute: Name of the teacher attribute of the LightningModule.
        seed: Seed of new augmentation parameters; ``None`` takes ``seed_everything``'s (or 0).
        rebuild: Rebuild a cache that does not match instead of raising.
        log_prefix: Prefix of the logged hit rate.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        output_dim: int,
        top_k: int | None = None,
        dtype: Literal["float16", "float32"] = "float16",
        augmentation: ReplayableAugmentation | None = None,
        num_slots: int = 1,
        dataset_id: str | None = None,
        teacher_id: str | None = None,
        teacher_attribute: str = "teacher",
        seed: int | None = None,
        rebuild: bool = False,
        log_prefix: str = "cache",
    ):
        check_cache_options(output_dim, top_k, dtype, augmentation, num_slots, seed)
        self.directory = Path(directory)
        self.output_dim = output_dim
        self.top_k = top_k
        self.dtype = dtype
        self.augmentation = augmentation
        self.num_slots = num_slots
        self.dataset_id = dataset_id
        self.teacher_id = teacher_id
        self.teacher_attribute = teacher_attribute
        self.rebuild = rebuild
        self.log_prefix = log_prefix
        self._seed = seed
        self._cache: TeacherCache | None = None
        self._trainer: pl.Trainer | None = None
        self._pl_module: pl.LightningModule | None = None
        self._batch_counts: tuple[int, int] | None = None  # (hits, lookups) of the current batch

    @property
    def state_key(self) -> str:
        return self._generate_state_key(directory=str(self.directory))

    @property
    def seed(self) -> int:
        if self._seed is None:
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._seed

    @property
    def cache(self) -> TeacherCache:
        """The open cache (after ``on_train_start``)."""
        if self._cache is None:
            raise RuntimeError("the teacher cache opens at on_train_start; it is not open yet.")
        return self._cache

    def teacher_outputs(
        self,
        inputs: Tensor,
        indices: Tensor,
        *,
        teacher: Callable[[Tensor], Tensor] | None = None,
        epoch: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`TeacherCache.teacher_outputs` with the module's teacher and the current epoch."""
        cache = self.cache
        if teacher is None:
            teacher = getattr(self._pl_module, self.teacher_attribute)
        if epoch is None:
            epoch = self._trainer.current_epoch if self._trainer is not None else 0
        before = (cache.hits, cache.lookups)
        augmented, outputs = cache.teacher_outputs(teacher, inputs, indices, epoch)
        hits, lookups = self._batch_counts or (0, 0)
        self._batch_counts = (hits + self.cache.hits - before[0], lookups + self.cache.lookups - before[1])
        return augmented, outputs

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._pl_module = trainer, pl_module
        if self.teacher_id is None and not isinstance(
            getattr(pl_module, self.teacher_attribute, None), nn.Module
        ):
            raise ValueError(
                f"{type(pl_module).__name__} has no nn.Module attribute {self.teacher_attribute!r}; set "
                "`teacher_attribute` to the name of its teacher, or give `teacher_id`."
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise ValueError(
                f"TeacherCacheCallback needs a single training DataLoader to key the cache, got {type(loader).__name__}."
            )
        teacher = None if self.teacher_id is not None else getattr(pl_module, self.teacher_attribute)
        kwargs = dict(
            output_dim=self.output_dim,
            top_k=self.top_k,
            dtype=self.dtype,
            augmentation=self.augmentation,
            num_slots=self.num_slots,
            dataset_id=self.dataset_id,
            teacher_id=self.teacher_id,
            seed=self.seed,
        )
        if trainer.is_global_zero:
            self._cache = TeacherCache(
                self.directory, loader.dataset, teacher, rebuild=self.rebuild, **kwargs
            )
        trainer.strategy.barrier("teacher_cache_created")
        if not trainer.is_global_zero:
            self._cache = TeacherCache(self.directory, loader.dataset, teacher, create=False, **kwargs)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_counts = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_counts is None or self._batch_counts[1] == 0:
            return
        hits, lookups = self._batch_counts
        pl_module.log(
            f"{self.log_prefix}/hit_rate", hits / lookups, on_step=False, on_epoch=True, batch_size=lookups
        )
        self._batch_counts = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._cache is not None:
            self._cache.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        self._trainer = self._pl_module = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "seed" in state_dict:
            self._seed = int(state_dict["seed"])
