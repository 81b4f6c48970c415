"""Sparse-view CT slices made offline: phantoms, their sinograms and filtered back-projections.

:class:`SparseViewCTDataModule` serves ``(sparse_fbp, dense_fbp, target)`` triples ``(1, N, N)``
each: the FBP of ``views`` equally spaced parallel-beam views over 180° (the sparse-view input,
18 / 36 / 72 in the paper's tables), the FBP of ``dense_views`` views (DGR's teacher input; GloReDi
uses twice the sparse count) and the phantom itself (the label). Sinograms come from the torch
projector of :mod:`lightning_distill.radiance.ct`; optional Poisson noise on the photon counts
(``photons`` incident photons per ray; ``None``: noiseless, the official default).

Phantoms: random ellipses (:func:`~lightning_distill.radiance.ct.random_ellipses`) for training,
validation and test, seeded apart (``seed`` + split offsets); the test set ends with the Shepp–Logan
phantom. Everything is a pure function of ``seed`` and is computed once in ``setup``.

Example:
    >>> dm = SparseViewCTDataModule(size=32, views=18, num_train=4, num_val=2, num_test=2)
    >>> dm.setup()
    >>> sparse, dense, target = next(iter(dm.train_dataloader()))
    >>> tuple(sparse.shape), tuple(dense.shape), tuple(target.shape)
    ((4, 1, 32, 32), (4, 1, 32, 32), (4, 1, 32, 32))
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.radiance.ct import (
    filtered_back_projection,
    radon_forward,
    random_ellipses,
    shepp_logan,
    view_angles,
)
from lightning_distill.utils.checks import check_int, check_positive
from lightning_distill.utils.random import stable_seed

__all__ = ["SparseViewCTDataModule", "simulate_fbp"]

_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def simulate_fbp(
    images: Tensor, views: int, *, photons: float | None = None, seed: int = 0, chunk: int = 64
) -> Tensor:
    """FBP ``(B, 1, N, N)`` of ``images`` ``(B, 1, N, N)`` seen from ``views`` angles, with optional Poisson noise.

    Noise: counts ``~ Poisson(photons · exp(−p · 4 / N))`` for line integrals ``p`` (the image spans
    4 attenuation lengths per unit intensity across the field), mapped back to ``p``.
    """
    check_int("views", views, low=1)
    angles = view_angles(views)
    g = torch.Generator().manual_seed(stable_seed(seed, views, "poisson"))
    out = []
    for part in images.split(chunk):
        sino = radon_forward(part, angles)
        if photons is not None:
            scale = 4.0 / images.shape[-1]
            counts = torch.poisson(photons * torch.exp(-sino * scale), generator=g).clamp_min(1.0)
            sino = -torch.log(counts / photons) / scale
        out.append(filtered_back_projection(sino, angles))
    return torch.cat(out)


class SparseViewCTDataModule(L.LightningDataModule):
    """Phantom slices with sparse- and dense-view FBP inputs; see the module docstring.

    Args:
        size: image side ``N`` (pixels; the detector has ``N`` bins).
        views: sparse views of the student input.
        dense_views: views of the teacher input (``None``: ``2 * views``, GloReDi's ``teacher_angle_scale``).
        num_train: training slices.
        num_val: validation slices.
        num_test: test slices (the last is the Shepp–Logan phantom).
        photons: incident photons per ray for Poisson noise; ``None``: noiseless.
        batch_size: training batch size.
        seed: seed of the phantoms, the noise and the shuffling.
        num_workers: data-loader workers.

    Raises:
        ValueError: a size, view count or split size out of range, or ``photons`` <= 0.
    """

    def __init__(
        self,
        size: int = 64,
        views: int = 18,
        dense_views: int | None = None,
        num_train: int = 256,
        num_val: int = 32,
        num_test: int = 32,
        photons: float | None = None,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("size", size, low=16)
        check_int("views", views, low=1)
        check_int("dense_views", dense_views, low=1, optional=True)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            check_int(name, value, low=1)
        check_int("batch_size", batch_size, low=1)
        check_int("num_workers", num_workers, low=0)
        if photons is not None:
            check_positive("photons", photons)
        self.save_hyperparameters()
        self.size, self.views = size, views
        self.dense_views = dense_views if dense_views is not None else 2 * views
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.photons, self.batch_size, self.seed, self.num_workers = photons, batch_size, seed, num_workers
        self.splits: dict[str, TensorDataset] = {}

    def phantoms(self, split: str) -> Tensor:
        """The ``(n, 1, N, N)`` label images of ``split``."""
        n = self.counts[split]
        base = self.seed + _SPLIT_OFFSET[split]
        images = [random_ellipses(self.size, base + i) for i in range(n)]
        if split == "test":
            images[-1] = shepp_logan(self.size)
        return torch.stack(images)[:, None]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in ("train", "val", "test"):
            target = self.phantoms(split)
            offset = _SPLIT_OFFSET[split]
            sparse = simulate_fbp(target, self.views, photons=self.photons, seed=self.seed + offset)
            dense = simulate_fbp(target, self.dense_views, photons=self.photons, seed=self.seed + offset + 1)
            self.splits[split] = TensorDataset(sparse, dense, target)

    def train_dataloader(self) -> DataLoader:
        data = self.splits["train"]
        return ResumableDataLoader(
            data,
            batch_size=min(self.batch_size, len(data)),
            sampler=EpochShuffleSampler(len(data), seed=self.seed, yield_epoch=False),
            drop_last=len(data) > self.batch_size,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=32, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=32, num_workers=self.num_workers)
