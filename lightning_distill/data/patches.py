"""Natural-image patches cut from the photographs and textures scikit-image ships (no download).

:class:`NaturalPatchesDataModule` cuts ``patches_per_image`` random square crops from each of ten
images of :mod:`skimage.data` (camera, astronaut, coffee, chelsea, coins, moon, rocket, brick,
grass, gravel), converted to grey and downscaled by ``zoom`` first so a crop holds structure,
not a few flat pixels. The label of a crop is the image it was cut from: a 10-way "which
picture/texture" task that linear and k-NN probes of a self-supervised backbone can be scored
on, with natural statistics instead of pen strokes. Crops are split into train/val/test like the
digits (stratified, from ``seed``); training batches get random shifts (``shift``) and, with
``flip=True``, random horizontal flips (a pure function of seed, epoch and index, so resume is exact).

Example:
    >>> dm = NaturalPatchesDataModule(size=16, patches_per_image=20)
    >>> dm.setup()
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape[1:]), int(y.max()) <= 9
    ((1, 16, 16), True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_distill.data.images import (
    ArrayImageDataModule,
    EpochShuffleSampler,
    ResumableDataLoader,
    TensorImageDataset,
)
from lightning_distill.utils.checks import check_int, check_positive
from lightning_distill.utils.random import stable_seed

__all__ = ["SKIMAGE_IMAGES", "FlipShiftDataset", "NaturalPatchesDataModule"]

#: The scikit-image images patches are cut from; the label is the index in this tuple.
SKIMAGE_IMAGES = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "coins",
    "moon",
    "rocket",
    "brick",
    "grass",
    "gravel",
)


class FlipShiftDataset(TensorImageDataset):
    """:class:`TensorImageDataset` plus a random horizontal flip with probability 1/2 (seeded per epoch and index)."""

    def __getitem__(self, item):
        out = super().__getitem__(item)
        epoch, index = item if isinstance(item, tuple) else (0, item)
        gen = torch.Generator().manual_seed(stable_seed(self.seed, epoch, index, "flip"))
        if bool(torch.rand((), generator=gen) < 0.5):
            out = (out[0].flip(-1), *out[1:])
        return out


class NaturalPatchesDataModule(ArrayImageDataModule):
    """Grey ``crop x crop`` patches of ten scikit-image pictures, labelled by picture (see the module docstring).

    Args:
        patches_per_image: crops cut from each picture (the dataset has ten times as many).
        crop: side of a crop in pixels of the downscaled picture (resized to ``size`` if given).
        zoom: downscaling factor applied to each picture before cropping.
        flip: random horizontal flips of training crops.
        (the rest as in :class:`~lightning_distill.data.images.ArrayImageDataModule`)

    Raises:
        ValueError: a non-positive count, crop or zoom, or a crop larger than a downscaled picture.
    """

    num_classes = len(SKIMAGE_IMAGES)

    def __init__(
        self,
        patches_per_image: int = 300,
        crop: int = 32,
        zoom: float = 0.25,
        flip: bool = True,
        size: int | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        shift: int = 2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        check_int("patches_per_image", patches_per_image, low=10)
        check_int("crop", crop, low=4)
        check_positive("zoom", zoom)
        super().__init__(
            size=size,
            batch_size=batch_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            shift=shift,
            seed=seed,
            num_workers=num_workers,
        )
        self.patches_per_image = patches_per_image
        self.crop = crop
        self.zoom = zoom
        self.flip = flip

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        import skimage.data
        from skimage.color import rgb2gray
        from skimage.transform import rescale

        rng = np.random.default_rng(self.seed)
        crops, labels = [], []
        for label, name in enumerate(SKIMAGE_IMAGES):
            image = getattr(skimage.data, name)()
            grey = rgb2gray(image[..., :3]) if image.ndim == 3 else image.astype(np.float64) / 255.0
            grey = np.clip(rescale(grey, self.zoom, anti_aliasing=True), 0.0, 1.0)
            h, w = grey.shape
            if min(h, w) < self.crop:
                raise ValueError(
                    f"`crop` ({self.crop}) is larger than {name!r} downscaled by `zoom` ({self.zoom}): {h}x{w}; "
                    "lower `crop` or raise `zoom`."
                )
            rows = rng.integers(0, h - self.crop + 1, self.patches_per_image)
            cols = rng.integers(0, w - self.crop + 1, self.patches_per_image)
            crops += [grey[r : r + self.crop, c : c + self.crop] for r, c in zip(rows, cols)]
            labels += [label] * self.patches_per_image
        return np.stack(crops).astype(np.float32), np.asarray(labels, dtype=np.int64)

    def train_dataloader(self) -> DataLoader:
        if not self.flip:
            return super().train_dataloader()
        x, y = self.train_images()
        dataset = FlipShiftDataset(x, y, shift=self.shift, background=self.background, seed=self.seed)
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=self._shuffle_seed()),
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
        )
