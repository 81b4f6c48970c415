"""Samples of a Gaussian mixture as a LightningDataModule: the data side of the exact-score bench.

:class:`GMMDataModule` draws fixed train/val/test sets from a preset mixture
(:func:`lightning_distill.diffusion.gmm.make_mixture`), each a pure function of ``seed``, and
serves ``(x, label)`` batches with ``x`` of shape ``(B, D)``. The label is the class of the mode
a point came from when ``conditional=True``, else ``-1`` (:data:`~lightning_distill.data.UNLABELLED`).
:attr:`GMMDataModule.mixture` builds the same mixture for the teacher, so a config names the data
once and the analytic teacher from the same arguments::

    data:
      class_path: lightning_distill.data.GMMDataModule
      init_args: {preset: ring, num_classes: 8, conditional: true}
    model:
      init_args:
        teacher:
          class_path: lightning_distill.diffusion.gmm.AnalyticTeacher
          init_args:
            gmm:
              class_path: lightning_distill.diffusion.gmm.make_mixture
              init_args: {preset: ring, num_classes: 8}
            schedule: ...
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import UNLABELLED, EpochShuffleSampler, ResumableDataLoader
from lightning_distill.diffusion.gmm import PRESETS, GaussianMixture, make_mixture

__all__ = ["GMMDataModule", "PointDataset"]

_SPLITS = ("train", "val", "test")


class PointDataset(Dataset):
    """Points ``(N, D)`` and labels ``(N,)``; items by ``index`` or ``(epoch, index)``."""

    def __init__(self, points: Tensor, labels: Tensor) -> None:
        if points.ndim != 2 or labels.shape != (points.shape[0],):
            raise ValueError(
                f"`points` must be (N, D) and `labels` (N,), got {tuple(points.shape)} and {tuple(labels.shape)}."
            )
        self.points = points
        self.labels = labels

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        index = item[1] if isinstance(item, tuple) else item
        return self.points[index], self.labels[index]


def _split_seed(seed: int, split: str) -> int:
    """An independent seed per split, so changing ``num_train`` does not change the val set."""
    return int(np.random.SeedSequence([seed, _SPLITS.index(split)]).generate_state(1)[0])


class GMMDataModule(L.LightningDataModule):
    """Train/val/test samples of a preset Gaussian mixture, served as ``(x, label)`` batches.

    Args:
        preset: mixture name, see :func:`~lightning_distill.diffusion.gmm.make_mixture`.
        num_classes: classes the modes are dealt into (mode ``i`` gets ``i % num_classes``);
            required when ``conditional``.
        options: other keyword arguments of the preset (e.g. ``{"std": 0.1}``).
        num_train: training points.
        num_val: validation points (also the reference set of sample metrics).
        num_test: test points.
        batch_size: batch size of every loader.
        conditional: serve the class of each point's mode as its label; otherwise ``-1``.
        seed: seed of the data (independent of the training seed); each split has its own stream.
        num_workers: DataLoader workers.

    Raises:
        ValueError: sizes < 1, an unknown preset or option, or ``conditional`` without
            ``num_classes``.

    Example:
        >>> dm = GMMDataModule("ring", num_classes=8, conditional=True, num_train=64, batch_size=16)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), bool((y >= 0).all()), dm.mixture.num_modes
        ((16, 2), True, 8)
    """

    def __init__(
        self,
        preset: Literal["ring", "grid", "line_1d", "blobs"] = "ring",
        num_classes: int | None = None,
        options: dict[str, Any] | None = None,
        num_train: int = 10000,
        num_val: int = 2000,
        num_test: int = 2000,
        batch_size: int = 256,
        conditional: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(
                f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}; set `data.init_args.preset`."
            )
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}; set `data.init_args.{name}`.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}; set `data.init_args.batch_size`.")
        if conditional and num_classes is None:
            raise ValueError(
                "`conditional=True` needs `num_classes` (e.g. the number of modes for one class per mode); "
                "set `data.init_args.num_classes`."
            )
        self.save_hyperparameters()
        self.preset = preset
        self.num_classes = num_classes
        self.options = dict(options or {})
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size = batch_size
        self.conditional = conditional
        self.seed = seed
        self.num_workers = num_workers
        self._mixture = make_mixture(preset, num_classes=num_classes, options=self.options)
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    @property
    def mixture(self) -> GaussianMixture:
        """A fresh copy of the mixture the data comes from (build the teacher from it)."""
        return make_mixture(self.preset, num_classes=self.num_classes, options=self.options)

    @property
    def dim(self) -> int:
        """Dimension ``D`` of the points."""
        return self._mixture.dim

    def split(self, name: Literal["train", "val", "test"]) -> tuple[Tensor, Tensor]:
        """Points ``(N, D)`` and labels ``(N,)`` of a split."""
        if name not in _SPLITS:
            raise ValueError(f"`name` must be one of {_SPLITS}, got {name!r}.")
        return self._prepare()[name]

    def _prepare(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._splits is None:
            sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
            self._splits = {}
            for name, n in sizes.items():
                gen = torch.Generator().manual_seed(_split_seed(self.seed, name))
                x, modes = self._mixture.sample(n, gen, return_modes=True)
                if self.conditional:
                    labels = self._mixture.class_of_mode[modes].clone()
                else:
                    labels = torch.full((n,), UNLABELLED, dtype=torch.long)
                self._splits[name] = (x.contiguous(), labels)
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def train_dataloader(self) -> DataLoader:
        dataset = PointDataset(*self.split("train"))
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=int(torch.initial_seed()) ^ self.seed),
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(
            PointDataset(*self.split(name)), batch_size=self.batch_size, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
