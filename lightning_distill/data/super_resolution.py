"""Paired super-resolution data (LR, HR) from images that ship inside Python packages (no download).

:class:`SuperResolutionDataModule` cuts ``hr_size`` RGB patches from the natural images scikit-image
ships (grey ones repeated to three channels) and/or from scikit-learn's 8x8 digits upsampled to
``hr_size``, and pairs each with a low-resolution input made by :func:`bicubic_downsample` (×2/×4/×8,
``degradation="bicubic"``) or by the Real-ESRGAN-style two-stage chain
(:func:`realistic_degradation`, ``degradation="realistic"``).

Splits: five natural images (:data:`HELD_OUT_IMAGES`: a cat, a cup of coffee, coins, a clock and a
rocket, our "Set5") are never trained on; validation uses ``hr_size`` crops of them and the
test set one central ``test_size`` crop of each (five whole test images, as SR papers test on Set5).
Digits split 80/10/10 by a fixed permutation.

Every random choice (crop positions, flips, rotations, the degradation) is a pure function of
``seed``, the epoch and the sample index, so two runs with the same seeds see the same pairs and a
resumed run sees what an uninterrupted one would.

Example:
    >>> dm = SuperResolutionDataModule(scale=2, hr_size=16, patches_per_image=4)
    >>> dm.setup()
    >>> lr, hr = next(iter(dm.train_dataloader()))
    >>> tuple(lr.shape[1:]), tuple(hr.shape[1:])
    ((3, 8, 8), (3, 16, 16))
"""

from __future__ import annotations

import functools
from typing import Literal

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.super_resolution.degradations import (
    bicubic_downsample,
    check_scale_fits,
    realistic_degradation,
)
from lightning_distill.utils.checks import check_choice, check_int, check_positive
from lightning_distill.utils.random import stable_seed

__all__ = ["HELD_OUT_IMAGES", "TRAIN_IMAGES", "PairedSRDataset", "SuperResolutionDataModule"]

#: scikit-image pictures training patches are cut from.
TRAIN_IMAGES = (
    "astronaut",
    "immunohistochemistry",
    "colorwheel",
    "camera",
    "page",
    "text",
    "moon",
    "brick",
    "grass",
    "gravel",
    "cell",
)
#: Held out for validation and test (our Set5-like set).
HELD_OUT_IMAGES = ("chelsea", "coffee", "coins", "clock", "rocket")

Degradation = Literal["bicubic", "realistic"]


def _seed(*parts: int | str) -> int:
    return stable_seed(*parts)  # not hash(): a string's hash differs between processes (DDP ranks)


@functools.lru_cache(maxsize=32)
def _picture(name: str, zoom: float) -> np.ndarray:
    """skimage picture ``name`` as RGB float in [0, 1], downscaled by ``zoom`` (antialiased); cached."""
    import skimage.data
    from skimage.transform import rescale

    image = getattr(skimage.data, name)()
    image = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    image = image.astype(np.float64) / 255.0
    out = np.clip(rescale(image, zoom, anti_aliasing=True, channel_axis=2), 0.0, 1.0)
    out.flags.writeable = False
    return out


class PairedSRDataset(Dataset):
    """``(lr, hr)`` pairs of HR images ``(N, 3, H, W)``: optional flips/rotations, then the degradation.

    Items are ``index`` or ``(epoch, index)`` (from :class:`EpochShuffleSampler`); evaluation sets
    use epoch ``-1`` so their LR images never change.
    """

    def __init__(self, hr: Tensor, scale: int, degradation: Degradation, seed: int, augment: bool) -> None:
        self.hr, self.scale, self.degradation, self.seed, self.augment = hr, scale, degradation, seed, augment

    def __len__(self) -> int:
        return self.hr.shape[0]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = item if isinstance(item, tuple) else (-1, item)
        hr = self.hr[index]
        gen = torch.Generator().manual_seed(_seed(self.seed, epoch, index, "sr"))
        if self.augment:
            flip, turns = bool(torch.rand((), generator=gen) < 0.5), int(torch.randint(4, (), generator=gen))
            hr = torch.rot90(hr.flip(-1) if flip else hr, turns, dims=(-2, -1))
        if self.degradation == "bicubic":
            lr = bicubic_downsample(hr, self.scale)
        else:
            lr = realistic_degradation(hr, self.scale, gen)
        return lr.contiguous(), hr.contiguous()


class SuperResolutionDataModule(L.LightningDataModule):
    """Paired SR data from skimage pictures and upsampled digits (see the module docstring).

    Args:
        scale: SR factor (2, 4 or 8 in the papers; any int >= 1 dividing the sizes).
        hr_size: side of training/validation HR patches (divisible by ``scale``).
        source: ``"natural"`` (skimage pictures), ``"digits"`` (sklearn digits upsampled to
            ``hr_size``) or ``"both"`` (training on both, evaluation on the natural images).
        degradation: ``"bicubic"`` or ``"realistic"`` (two-stage blur/resize/noise/JPEG).
        patches_per_image: training crops per training picture (validation: a quarter of it per
            held-out picture, at least 2).
        zoom: the pictures are downscaled by this factor first (antialiased), so a patch holds edges
            and texture rather than a few flat pixels.
        test_size: side of the one central test crop per held-out picture (divisible by ``scale``).
        batch_size: training batch size (evaluation: all at once up to 64).
        seed: seed of crops, splits, augmentation and degradations.
        num_workers: DataLoader workers.

    Raises:
        ValueError: a size not divisible by ``scale``, an unknown ``source``/``degradation``, or a
            crop larger than a downscaled picture.
    """

    def __init__(
        self,
        scale: int = 2,
        hr_size: int = 32,
        source: Literal["natural", "digits", "both"] = "natural",
        degradation: Degradation = "bicubic",
        patches_per_image: int = 64,
        zoom: float = 0.25,
        test_size: int = 64,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_scale_fits(hr_size, scale, key="hr_size")
        check_scale_fits(test_size, scale, key="test_size")
        check_choice("source", source, ("natural", "digits", "both"))
        check_choice("degradation", degradation, ("bicubic", "realistic"))
        check_int("patches_per_image", patches_per_image, low=1)
        check_int("batch_size", batch_size, low=1)
        check_positive("zoom", zoom)
        if hr_size < 4 * scale and source != "digits":
            raise ValueError(f"`hr_size`={hr_size} is too small for ×{scale}: use at least {4 * scale}.")
        self.scale = scale
        self.hr_size = hr_size
        self.source = source
        self.degradation = degradation
        self.patches_per_image = patches_per_image
        self.zoom = zoom
        self.test_size = test_size
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self._splits: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ images
    def _picture(self, name: str) -> np.ndarray:
        return _picture(name, self.zoom)

    def _crops(self, name: str, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
        picture = self._picture(name)
        h, w = picture.shape[:2]
        if min(h, w) < size:
            raise ValueError(
                f"A {size}px crop does not fit {name!r} downscaled by `zoom`={self.zoom} ({h}x{w}); "
                "lower `hr_size`/`test_size` or raise `zoom`."
            )
        rows, cols = rng.integers(0, h - size + 1, count), rng.integers(0, w - size + 1, count)
        return [picture[r : r + size, c : c + size] for r, c in zip(rows, cols)]

    def _digits(self) -> dict[str, Tensor]:
        from sklearn.datasets import load_digits

        digits = torch.from_numpy(load_digits().images / 16.0).float()[:, None]
        up = F.interpolate(digits, size=(self.hr_size, self.hr_size), mode="bicubic", align_corners=False)
        up = up.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
        order = torch.randperm(
            up.shape[0], generator=torch.Generator().manual_seed(_seed(self.seed, "digits"))
        )
        n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
        return {
            "train": up[order[:n_train]],
            "val": up[order[n_train : n_train + n_val]],
            "test": up[order[n_train + n_val :]],
        }

    def _prepare(self) -> dict[str, Tensor]:
        if self._splits is not None:
            return self._splits

        def stack(arrays: list[np.ndarray]) -> Tensor:
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()

        splits: dict[str, Tensor] = {}
        if self.source in ("natural", "both"):
            rng = np.random.default_rng(self.seed)
            train = [
                c for n in TRAIN_IMAGES for c in self._crops(n, self.patches_per_image, self.hr_size, rng)
            ]
            val_count = max(2, self.patches_per_image // 4)
            val = [c for n in HELD_OUT_IMAGES for c in self._crops(n, val_count, self.hr_size, rng)]
            test = []
            for name in HELD_OUT_IMAGES:
                picture = self._picture(name)
                h, w = picture.shape[:2]
                if min(h, w) < self.test_size:
                    raise ValueError(f"`test_size`={self.test_size} is larger than {name!r} ({h}x{w}).")
                top, left = (h - self.test_size) // 2, (w - self.test_size) // 2
                test.append(picture[top : top + self.test_size, left : left + self.test_size])
            splits = {"train": stack(train), "val": stack(val), "test": stack(test)}
        if self.source in ("digits", "both"):
            digits = self._digits()
            if self.source == "digits":
                splits = digits
            else:
                splits["train"] = torch.cat([splits["train"], digits["train"]])
        self._splits = splits
        return splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def hr_images(self, split: str) -> Tensor:
        """The HR images ``(N, 3, H, W)`` of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        check_choice("split", split, ("train", "val", "test"))
        return self._prepare()[split]

    # ------------------------------------------------------------------ loaders
    def _dataset(self, split: str, augment: bool) -> PairedSRDataset:
        return PairedSRDataset(self.hr_images(split), self.scale, self.degradation, self.seed, augment)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train", augment=True)
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=int(torch.initial_seed()) ^ self.seed),
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self._dataset(split, augment=False), batch_size=64, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
