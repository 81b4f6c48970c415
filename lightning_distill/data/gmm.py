"""Samples of a Gaussian mixture as a LightningDataModule: the data side of the exact-score bench.

:class:`GMMDataModule` draws fixed train/val/test sets from a preset mixture
(:func:`lightning_distill.diffusion.gmm.make_mixture`) or any
:class:`~lightning_distill.diffusion.mixture.GaussianMixture` (``gmm``, the argument the analytic
teacher takes), each a pure function of ``seed``, and serves ``(x, label)`` batches with ``x`` of
shape ``(B, D)``. The label is the class of the mode a point came from when ``conditional=True``,
else ``-1`` (:data:`~lightning_distill.data.UNLABELLED`). :attr:`GMMDataModule.mixture` builds the
same mixture for the teacher; in a run, ``setup`` refuses a teacher whose ``gmm`` differs from the
data's (means, covariances, weights, and the classes of the modes when conditional). A config names
the data and the analytic teacher with the same arguments::

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

A mixture of one's own goes to both the same way, e.g.
``gmm: {class_path: lightning_distill.diffusion.gmm.GaussianMixture, init_args: {means: [[0, 0], [3, 0]],
stds: 0.2, weights: [0.3, 0.7], class_of_mode: [0, 1]}}`` under ``data.init_args`` and under the
teacher's ``init_args``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import UNLABELLED, EpochShuffleSampler, ResumableDataLoader
from lightning_distill.diffusion.gmm import PRESETS, make_mixture
from lightning_distill.diffusion.mixture import GaussianMixture

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
    """Train/val/test samples of a Gaussian mixture (a preset or any ``gmm``), served as ``(x, label)`` batches.

    Args:
        preset: mixture name, see :func:`~lightning_distill.diffusion.gmm.make_mixture` (default
            ``"ring"``; leave it unset when giving ``gmm``).
        num_classes: classes the preset's modes are dealt into (mode ``i`` gets ``i % num_classes``);
            required when ``conditional`` with a preset.
        options: other keyword arguments of the preset (e.g. ``{"std": 0.1}``).
        gmm: a mixture of one's own instead of a preset (its classes are its ``class_of_mode``),
            e.g. the one given to the analytic teacher.
        num_train: training points.
        num_val: validation points (also the reference set of sample metrics).
        num_test: test points.
        batch_size: batch size of every loader.
        conditional: serve the class of each point's mode as its label; otherwise ``-1``.
        seed: seed of the data (independent of the training seed); each split has its own stream.
        num_workers: DataLoader workers.

    Raises:
        ValueError: sizes < 1, an unknown preset or option, ``conditional`` without classes, or
            ``gmm`` together with ``preset``, ``num_classes`` or ``options``. In ``setup``: a teacher
            (``trainer.lightning_module.teacher.gmm``) whose mixture differs from the data's, or
            sampled points that are not finite (a mixture that overflows float32).

    Example:
        >>> dm = GMMDataModule("ring", num_classes=8, conditional=True, num_train=64, batch_size=16)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), bool((y >= 0).all()), dm.mixture.num_modes
        ((16, 2), True, 8)
    """

    def __init__(
        self,
        preset: Literal["ring", "grid", "line_1d", "blobs"] | None = None,
        num_classes: int | None = None,
        options: dict[str, Any] | None = None,
        gmm: GaussianMixture | None = None,
        num_train: int = 10000,
        num_val: int = 2000,
        num_test: int = 2000,
        batch_size: int = 256,
        conditional: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if gmm is not None:
            given = [
                k for k, v in (("preset", preset), ("num_classes", num_classes), ("options", options)) if v
            ]
            if not isinstance(gmm, GaussianMixture) or given:
                raise ValueError(
                    f"`gmm` must be a GaussianMixture given instead of a preset, got a {type(gmm).__name__}"
                    f"{' with ' + ', '.join(given) if given else ''}; set `data.init_args.gmm` or "
                    "`data.init_args.preset`, not both."
                )
            if conditional and gmm.num_classes == 0:
                raise ValueError(
                    "`conditional=True` needs a mixture with classes (`class_of_mode`); set it in "
                    "`data.init_args.gmm`."
                )
        elif preset is None:
            preset = "ring"
        if gmm is None and preset not in PRESETS:
            raise ValueError(
                f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}; set `data.init_args.preset`."
            )
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}; set `data.init_args.{name}`.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}; set `data.init_args.batch_size`.")
        if conditional and gmm is None and num_classes is None:
            raise ValueError(
                "`conditional=True` needs `num_classes` (e.g. the number of modes for one class per mode); "
                "set `data.init_args.num_classes`."
            )
        self.save_hyperparameters(ignore=["gmm"])
        self.preset = preset
        self.num_classes = num_classes
        self.options = dict(options or {})
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size = batch_size
        self.conditional = conditional
        self.seed = seed
        self.num_workers = num_workers
        if gmm is None:
            gmm = make_mixture(preset, num_classes=num_classes, options=self.options)
        self._mixture = gmm
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    @property
    def mixture(self) -> GaussianMixture:
        """A fresh copy of the mixture the data comes from (build the teacher from it)."""
        return copy.deepcopy(self._mixture)

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
                self._check_split(name, x, labels)
                self._splits[name] = (x.contiguous(), labels)
        return self._splits

    def _check_split(self, name: str, x: Tensor, labels: Tensor) -> None:
        """Refuse a split that would train on NaN/inf points or labels outside the mixture's classes."""
        where = f"GMMDataModule {name} split ({_describe(self._mixture)})"
        if x.shape != (labels.shape[0], self._mixture.dim):
            raise ValueError(
                f"{where}: points of shape {tuple(x.shape)} and labels {tuple(labels.shape)}; expected "
                f"({labels.shape[0]}, {self._mixture.dim}) and ({labels.shape[0]},)."
            )
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(
                f"{where}: {int((~finite).sum())} of {x.shape[0]} sampled points are NaN/inf (e.g. points "
                f"{(~finite).nonzero().flatten()[:5].tolist()}); the mixture's means and covariances overflow "
                "float32. Rescale `data.init_args.gmm` (or the preset's `options`)."
            )
        if self.conditional:
            outside = (labels < 0) | (labels >= self._mixture.num_classes)
            if bool(outside.any()):
                raise ValueError(
                    f"{where}: labels {torch.unique(labels[outside])[:5].tolist()} are outside "
                    f"[0, {self._mixture.num_classes}); check the mixture's `class_of_mode`."
                )

    def setup(self, stage: str | None = None) -> None:
        self.check_teacher()
        self._prepare()

    def check_teacher(self, teacher: Any = None) -> None:
        """Refuse a teacher whose mixture (``teacher.gmm``) is not the data's; ``None``: the run's teacher, if any.

        Compares the modes' means, covariances and weights, and their classes when the data is
        conditional. A teacher without a ``gmm`` (a network) is not checked.

        Raises:
            ValueError: naming what differs, with both mixtures.
        """
        if teacher is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
            teacher = getattr(module, "teacher", None)
        other = getattr(teacher, "gmm", None)
        if not isinstance(other, GaussianMixture):
            return
        problem = _difference(self._mixture, other, classes=self.conditional)
        if problem:
            raise ValueError(
                f"The data's mixture and the teacher's differ ({problem}): data (`data.init_args`) "
                f"{_describe(self._mixture)}; teacher (`model.init_args.teacher.init_args.gmm`) "
                f"{_describe(other)}. Give both the same preset and options, or the same `gmm`."
            )

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


def _difference(a: GaussianMixture, b: GaussianMixture, *, classes: bool) -> str:
    """What differs between two mixtures (``""`` if nothing, up to float tolerance)."""
    if (a.num_modes, a.dim) != (b.num_modes, b.dim):
        return f"{a.num_modes} vs {b.num_modes} modes in {a.dim} vs {b.dim} dimensions"
    for name in ("means", "covs", "weights"):
        x, y = getattr(a, name).double().cpu(), getattr(b, name).double().cpu()
        if not torch.allclose(x, y, rtol=1e-5, atol=1e-6):
            return f"`{name}` differ by up to {float((x - y).abs().max()):.3g}"
    if classes and not torch.equal(a.class_of_mode.cpu(), b.class_of_mode.cpu()):
        return "the classes of the modes (`class_of_mode`) differ"
    return ""


def _describe(gmm: GaussianMixture) -> str:
    with torch.no_grad():
        stds = gmm.eigvals.sqrt().mean(-1)
    return (
        f"{gmm.num_modes} modes in {gmm.dim} dimensions, {gmm.num_classes} classes, means "
        f"{[[round(v, 3) for v in row] for row in gmm.means[:3].tolist()]}{'...' if gmm.num_modes > 3 else ''}, "
        f"stds {[round(v, 3) for v in stds[:3].tolist()]}{'...' if gmm.num_modes > 3 else ''}"
    )
