"""Image pairs with known dense correspondences, made by warping embedded images (no download).

A pair is an image ``I`` (the source) and ``J = warp(I, H)`` (the target) for a random
homography ``H`` (:func:`random_homographies`: each corner of the image moved by up to
``strength · size`` pixels), plus a little photometric change (contrast, brightness, noise) so
that the target is not a pure resampling. A source point ``p`` (pixel ``(x, y)``, pixel centres
on integers) shows the same content as the target point ``H p``; :func:`warp_images` and
:func:`map_points` use kornia's conventions so that this holds exactly.

:class:`WarpedPairsDataModule` wraps any image datamodule of the repository (digits, MNIST-5k,
the natural patches) and serves fixed pairs per split (drawn once from ``seed``, so a teacher's
features can be cached per pair index, as the paper caches them per dataset). A batch is
``(source (B, C, S, S), target (B, C, S, S), source_points (B, K, 2), target_points (B, K, 2),
valid (B, K) bool, index (B,))``. Keypoints are drawn where the source has structure (weighted by
the smoothed gradient magnitude), and ``valid`` is false where ``H p`` leaves the target.

Example:
    >>> from lightning_distill.data import DigitsDataModule
    >>> dm = WarpedPairsDataModule(DigitsDataModule(size=16), num_train_pairs=8, num_val_pairs=4, num_test_pairs=4)
    >>> dm.setup()
    >>> src, tgt, p, q, valid, index = next(iter(dm.train_dataloader()))
    >>> tuple(src.shape), tuple(p.shape), valid.dtype
    ((8, 1, 16, 16), (8, 16, 2), torch.bool)
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.utils.checks import check_int, check_non_negative, check_tensor

__all__ = [
    "WarpedPairsDataModule",
    "make_pairs",
    "map_points",
    "random_homographies",
    "sample_keypoints",
    "warp_images",
]


def random_homographies(
    batch: int, size: int, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """Homographies ``(B, 3, 3)`` (pixel coordinates) moving each image corner by ``U(-s, s)·size`` in x and y.

    Raises:
        ValueError: ``strength`` outside ``[0, 0.5)`` or ``size`` < 2.
    """
    from kornia.geometry.transform import get_perspective_transform

    check_int("size", size, low=2)
    if not 0.0 <= strength < 0.5:
        raise ValueError(f"`strength` must be in [0, 0.5), got {strength}; set `data.init_args.strength`.")
    last = float(size - 1)
    corners = torch.tensor([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]]).expand(batch, 4, 2)
    jitter = (torch.rand(batch, 4, 2, generator=generator) * 2.0 - 1.0) * strength * size
    return get_perspective_transform(corners, corners + jitter)


def warp_images(images: Tensor, homographies: Tensor) -> Tensor:
    """``J(H p) = I(p)``: warp ``(B, C, H, W)`` images by ``(B, 3, 3)`` homographies (bilinear, border padding)."""
    from kornia.geometry.transform import warp_perspective

    check_tensor("images", images, exact_ndim=4)
    if homographies.shape != (images.shape[0], 3, 3):
        raise ValueError(
            f"`homographies` must be (B, 3, 3) with B = {images.shape[0]}, got {tuple(homographies.shape)}."
        )
    return warp_perspective(
        images,
        homographies.to(images),
        images.shape[-2:],
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )


def map_points(homographies: Tensor, points: Tensor) -> Tensor:
    """Points ``(B, K, 2)`` (x, y) mapped by ``(B, 3, 3)`` homographies: ``H p`` in inhomogeneous coordinates."""
    from kornia.geometry.linalg import transform_points

    check_tensor("points", points, exact_ndim=3)
    return transform_points(homographies.to(points), points)


def sample_keypoints(images: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_points`` distinct pixel centres ``(B, K, 2)`` per image, drawn with weight ∝ smoothed gradient magnitude.

    Flat images (no gradient anywhere) fall back to uniform weights.

    Raises:
        ValueError: more points than pixels.
    """
    from kornia.filters import gaussian_blur2d, sobel

    check_tensor("images", images, exact_ndim=4)
    b, _, h, w = images.shape
    check_int("num_points", num_points, low=1, high=h * w, high_name=f"the {h * w} pixels")
    magnitude = sobel(gaussian_blur2d(images, (3, 3), (1.0, 1.0))).mean(dim=1).flatten(1)  # (B, H*W)
    weights = magnitude + 1e-6 * magnitude.amax(dim=1, keepdim=True).clamp_min(1e-12)
    flat = torch.multinomial(weights, num_points, replacement=False, generator=generator)
    return torch.stack([(flat % w).float(), torch.div(flat, w, rounding_mode="floor").float()], dim=-1)


def make_pairs(
    images: Tensor,
    *,
    num_points: int,
    strength: float,
    photometric: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Warp each image into a target; return ``(source, target, source_points, target_points, valid)``.

    ``photometric`` scales the random contrast (``1 ± p``), brightness (``± p``) and pixel noise
    (``p / 4``) applied to the target.
    """
    b, _, h, w = images.shape
    homographies = random_homographies(b, h, strength, generator)
    target = warp_images(images, homographies)
    if photometric > 0:
        contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * photometric
        brightness = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * photometric
        noise = torch.randn(target.shape, generator=generator) * photometric / 4
        target = target * contrast + brightness + noise
    source_points = sample_keypoints(images, num_points, generator)
    target_points = map_points(homographies, source_points)
    x, y = target_points[..., 0], target_points[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return images, target, source_points, target_points, inside


class WarpedPairsDataModule(L.LightningDataModule):
    """Fixed warped pairs of the images of ``images`` (see the module docstring).

    Args:
        images: an image datamodule (``DigitsDataModule``, ``MNIST5kDataModule``,
            ``NaturalPatchesDataModule``, ...) whose train/val/test images become sources.
        num_train_pairs: training pairs (sources cycle through the training images).
        num_val_pairs: validation pairs.
        num_test_pairs: test pairs.
        num_points: keypoints per pair.
        strength: corner displacement of the homographies, as a fraction of the image side.
        photometric: strength of the target's contrast/brightness/noise change.
        batch_size: pairs per batch.
        seed: seed of the warps, keypoints and photometric changes.
        num_workers: DataLoader workers.

    Raises:
        ValueError: non-positive counts, ``strength`` outside ``[0, 0.5)`` or a negative ``photometric``.
    """

    def __init__(
        self,
        images: L.LightningDataModule,
        num_train_pairs: int = 1024,
        num_val_pairs: int = 256,
        num_test_pairs: int = 256,
        num_points: int = 16,
        strength: float = 0.15,
        photometric: float = 0.1,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_train_pairs", num_train_pairs),
            ("num_val_pairs", num_val_pairs),
            ("num_test_pairs", num_test_pairs),
            ("num_points", num_points),
            ("batch_size", batch_size),
        ):
            check_int(name, value, low=1)
        if not 0.0 <= strength < 0.5:
            raise ValueError(
                f"`strength` must be in [0, 0.5), got {strength}; set `data.init_args.strength`."
            )
        check_non_negative("photometric", photometric)
        if not hasattr(images, "train_images"):
            raise TypeError(
                f"`images` must be an image datamodule of lightning_distill.data (with `train_images`), got "
                f"{type(images).__name__}; set `data.init_args.images`."
            )
        self.images = images
        self.counts = {"train": num_train_pairs, "val": num_val_pairs, "test": num_test_pairs}
        self.num_points = num_points
        self.strength = strength
        self.photometric = photometric
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self._pairs: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._pairs:
            return
        self.images.setup(stage)
        splits = self.images._prepare()
        sources = {"train": self.images.train_images()[0], "val": splits["val"][0], "test": splits["test"][0]}
        for k, split in enumerate(("train", "val", "test")):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            pool = sources[split]
            picks = torch.randperm(len(pool), generator=generator).repeat(self.counts[split] // len(pool) + 1)
            chosen = pool[picks[: self.counts[split]]]
            pairs = make_pairs(
                chosen,
                num_points=self.num_points,
                strength=self.strength,
                photometric=self.photometric,
                generator=generator,
            )
            self._pairs[split] = TensorDataset(*pairs, torch.arange(self.counts[split]))

    def pairs(self, split: str) -> TensorDataset:
        """The fixed pairs of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        self.setup()
        return self._pairs[split]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) ^ self.seed)
        return DataLoader(
            self.pairs("train"),
            batch_size=min(self.batch_size, self.counts["train"]),
            shuffle=True,
            generator=generator,
            drop_last=self.counts["train"] > self.batch_size,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.pairs("val"), batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.pairs("test"), batch_size=self.batch_size, num_workers=self.num_workers)
