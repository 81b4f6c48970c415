"""Scene completion data: a sparse scan and the dense scene accumulated over its sequence.

:class:`CompletionDataModule` serves :func:`~lightning_distill.lidar_generation.completion.completion_sample`
pairs generated from :class:`~lightning_distill.lidar.scene.StreetSceneGenerator` sequences
(deterministic from ``seed``; train, val and test streets never coincide). Batches are dicts:

================ ============================= =============================================
key              shape                         meaning
================ ============================= =============================================
``scan``         ``(B, S, 3)`` float32         input points (``S = num_scan_points``)
``target``       ``(B, M, 3)`` float32         dense scene, padded to the batch's largest
``target_mask``  ``(B, M)`` bool               ``True`` for real target points
================ ============================= =============================================

Samples are generated once per process and settings (kept in memory). Real data (SemanticKITTI
with LiDiff's accumulated maps) plugs in as any datamodule serving the same keys.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.lidar.scene import StreetSceneGenerator
from lightning_distill.lidar_generation.completion import completion_sample
from lightning_distill.utils.fingerprint import config_hash

__all__ = ["CompletionDataModule", "collate_completion"]

_SPLIT_OFFSET = {"train": 0, "val": 500_000, "test": 750_000}
_MEMORY: dict[str, dict[str, list[dict[str, Tensor]]]] = {}


def collate_completion(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack scans and pad targets to the largest one (mask ``True`` on real points).

    Raises:
        ValueError: scans of different sizes.
    """
    sizes = {tuple(s["scan"].shape) for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"every scan of a batch must have the same shape, got {sorted(sizes)}.")
    longest = max(len(s["target"]) for s in samples)
    target = torch.zeros(len(samples), longest, 3)
    mask = torch.zeros(len(samples), longest, dtype=torch.bool)
    for i, s in enumerate(samples):
        target[i, : len(s["target"])] = s["target"]
        mask[i, : len(s["target"])] = True
    return {"scan": torch.stack([s["scan"] for s in samples]), "target": target, "target_mask": mask}


class CompletionDataModule(L.LightningDataModule):
    """Completion pairs (sparse scan, dense accumulated scene) from synthetic street sequences.

    Args:
        num_train: training streets (one pair each).
        num_val: validation streets.
        num_test: test streets.
        num_frames: sweeps accumulated into each dense target.
        crop_range: horizontal range of scan and target, metres.
        voxel_size: voxel edge of the downsampling of scan and target, metres.
        num_scan_points: input points per sample.
        beams: LiDAR beams (fewer beams: a sparser scan).
        azimuth_steps: rays per beam.
        batch_size: pairs per batch.
        num_workers: DataLoader workers.
        seed: street seeds derive from it.

    Raises:
        ValueError: non-positive counts or sizes (the message names the ``data.init_args`` key).
    """

    def __init__(
        self,
        num_train: int = 64,
        num_val: int = 8,
        num_test: int = 16,
        num_frames: int = 5,
        crop_range: float = 10.0,
        voxel_size: float = 0.4,
        num_scan_points: int = 256,
        beams: int = 16,
        azimuth_steps: int = 256,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_train", num_train),
            ("num_frames", num_frames),
            ("num_scan_points", num_scan_points),
            ("beams", beams),
            ("azimuth_steps", azimuth_steps),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}; set `data.init_args.{name}`.")
        for name, value in (("num_val", num_val), ("num_test", num_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}; set `data.init_args.{name}`.")
        for name, value in (("crop_range", crop_range), ("voxel_size", voxel_size)):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0, got {value!r}; set `data.init_args.{name}`.")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.num_frames = num_frames
        self.crop_range = float(crop_range)
        self.voxel_size = float(voxel_size)
        self.num_scan_points = num_scan_points
        self.beams, self.azimuth_steps = beams, azimuth_steps
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.generator = StreetSceneGenerator(
            beams=beams, azimuth_steps=azimuth_steps, max_range=crop_range + 5.0, image_size=(4, 4)
        )
        self.splits: dict[str, list[dict[str, Tensor]]] = {}

    @property
    def settings_key(self) -> str:
        """Hash of everything that changes the generated pairs."""
        settings = {
            k: getattr(self, k)
            for k in (
                "num_train",
                "num_val",
                "num_test",
                "num_frames",
                "crop_range",
                "voxel_size",
                "num_scan_points",
                "beams",
                "azimuth_steps",
                "seed",
            )
        }
        return config_hash({**settings, "version": 1}, default=str)

    def setup(self, stage: str | None = None) -> None:
        self.splits = self._load()

    def samples(self, split: str) -> list[dict[str, Tensor]]:
        """The pairs of ``"train"``, ``"val"`` or ``"test"`` (generated on first use)."""
        if not self.splits:
            self.splits = self._load()
        return self.splits[split]

    def _load(self) -> dict[str, list[dict[str, Tensor]]]:
        key = self.settings_key
        if key not in _MEMORY:
            counts = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
            base = self.seed * 1_000_000
            _MEMORY[key] = {
                split: [self._make(base + _SPLIT_OFFSET[split] + i) for i in range(n)]
                for split, n in counts.items()
            }
        return _MEMORY[key]

    def _make(self, seed: int) -> dict[str, Tensor]:
        pair = completion_sample(
            self.generator,
            seed,
            num_frames=self.num_frames,
            crop_range=self.crop_range,
            voxel_size=self.voxel_size,
            num_scan_points=self.num_scan_points,
        )
        return {"scan": pair.scan, "target": pair.target}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        samples = self.samples(split)
        if not shuffle:
            return DataLoader(
                samples,
                batch_size=self.batch_size,
                collate_fn=collate_completion,
                num_workers=self.num_workers,
            )
        seed = int(torch.initial_seed()) ^ int(self.seed)
        return ResumableDataLoader(
            samples,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(samples), seed=seed, yield_epoch=False),
            collate_fn=collate_completion,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {"settings_key": self.settings_key}
