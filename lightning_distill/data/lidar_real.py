"""The LightningDataModule base of the real LiDAR datasets: splits of frame records, cameras, loaders.

:class:`RealLidarDataModule` holds what :class:`~lightning_distill.data.semantic_kitti.SemanticKITTIDataModule`
and :class:`~lightning_distill.data.nuscenes.NuScenesLidarDataModule` share: frame windows for
LiMA's memory (``history``), image reading and SLIC superpixels, the semi-supervised split of
LaserMix++ (``labelled_fraction``) and resumable loaders. The file formats are
:mod:`lightning_distill.lidar.datasets`; the batch layout is :mod:`lightning_distill.lidar.batches`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.data.lidar import CyclingSampler
from lightning_distill.data.lidar_checks import check_lidar_sample
from lightning_distill.lidar.datasets import (
    PAST_CAMERA_KEYS,
    FrameDataset,
    MaskedLabels,
    collate_frames,
    read_camera_image,
    require_path,
)
from lightning_distill.lidar.geometry import scaled_segment_count, slic_superpixels
from lightning_distill.lidar.scene import IGNORE_INDEX
from lightning_distill.lidar.semi import labelled_split

__all__ = ["RealLidarDataModule"]


class RealLidarDataModule(L.LightningDataModule):
    """What both readers share: splits of frame records, image reading, superpixels, loaders."""

    layout = ""
    #: Classes of the labels (subclasses set it); a read label outside ``[0, num_classes)`` and -1 is refused.
    num_classes = 0

    def __init__(
        self,
        root: str,
        image_size: tuple[int, int],
        history: int,
        labelled_fraction: float | None,
        split_seed: int,
        use_unlabelled: bool,
        superpixel_segments: int | None,
        superpixel_compactness: float,
        superpixel_sigma: float | None,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("history", history, 0),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(
                    f"`{name}` must be an int >= {least}, got {value!r}; set `data.init_args.{name}`."
                )
        if labelled_fraction is not None and not 0 < labelled_fraction <= 1:
            raise ValueError(
                f"`labelled_fraction` must be in (0, 1] or None, got {labelled_fraction}; set "
                "`data.init_args.labelled_fraction`."
            )
        self.labelled_fraction, self.split_seed, self.use_unlabelled = (
            labelled_fraction,
            split_seed,
            use_unlabelled,
        )
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"`image_size` must be (H, W) with positive sides, got {image_size!r}.")
        self.root = Path(root)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.history = history
        self.superpixel_segments = superpixel_segments or scaled_segment_count(self.image_size)
        self.superpixel_sigma = (
            3.0 * self.image_size[0] / 224 if superpixel_sigma is None else superpixel_sigma
        )
        self.superpixel_compactness = superpixel_compactness
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.records: dict[str, list[dict[str, Any]]] = {}

    # subclasses: the frame records of a split (sequence order) and how to read one frame
    def split_records(self, split: str) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement `split_records(split)`.")

    def read_points(self, record: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement `read_points(record)`.")

    @property
    def uses_images(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must implement the `uses_images` property.")

    def setup(self, stage: str | None = None) -> None:
        require_path(self.root, "dataset root", self.layout)
        for split in ("train", "val", "test"):
            if split not in self.records:
                self.records[split] = self._windows(self.split_records(split))

    def _windows(self, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Frames whose ``history`` predecessors are in the same sequence, with those attached."""
        if self.history and not self.uses_images:
            raise ValueError("`history` > 0 serves past images (LiMA): it needs cameras; set `history: 0`.")
        windows = []
        for i, frame in enumerate(frames):
            past = [frames[i - 1 - j] for j in range(self.history) if i - 1 - j >= 0]
            if len(past) == self.history and all(p["scene"] == frame["scene"] for p in past):
                windows.append({**frame, "past": past})
        return windows

    def read_cameras(self, record: dict[str, Any]) -> dict[str, Tensor]:
        images, Ks = zip(*(read_camera_image(path, self.image_size, K) for path, K in record["cameras"]))
        return {
            "images": torch.stack(images),
            "K": torch.stack(Ks),
            "T_cam_from_lidar": torch.from_numpy(np.stack(record["T_cam_from_lidar"])).float(),
        }

    def read(self, record: dict[str, Any]) -> dict[str, Tensor]:
        """One sample in the layout of :func:`~lightning_distill.lidar.batches.collate` (unbatched).

        Raises:
            ValueError: a scan with no points, NaN/inf points or pixels, or labels out of range
                (:func:`~lightning_distill.data.lidar_checks.check_lidar_sample`), naming the file.
        """
        sample = self.read_points(record)
        check_lidar_sample(sample, num_classes=self.num_classes, where=str(record["scan"]))
        if self.uses_images:
            sample.update(self.read_cameras(record))
            sample["superpixels"] = torch.stack(
                [
                    slic_superpixels(
                        image,
                        n_segments=self.superpixel_segments,
                        compactness=self.superpixel_compactness,
                        sigma=self.superpixel_sigma,
                    )
                    for image in sample["images"]
                ]
            )
            sample["pixel_labels"] = torch.full(sample["superpixels"].shape, IGNORE_INDEX, dtype=torch.long)
            if not bool(torch.isfinite(sample["images"]).all()):
                raise ValueError(f"The camera images of {str(record['scan'])!r} hold NaN/inf pixels.")
        sample["pose"] = torch.from_numpy(record["pose"]).float()
        sample["scene"], sample["frame"] = torch.tensor(record["scene"]), torch.tensor(record["frame"])
        if record["past"]:
            past = [self.read_cameras(p) for p in record["past"]]
            for key, past_key in PAST_CAMERA_KEYS.items():
                sample[past_key] = torch.stack([p[key] for p in past])
            sample["past_pose"] = torch.from_numpy(np.stack([p["pose"] for p in record["past"]])).float()
        return sample

    def dataset(self, split: str) -> FrameDataset:
        """The samples of ``"train"``, ``"val"`` or ``"test"``, read on access."""
        if split not in self.records:
            self.setup()
        return FrameDataset(self.records[split], self.read)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        if not shuffle:
            return DataLoader(
                data, batch_size=self.batch_size, collate_fn=collate_frames, num_workers=self.num_workers
            )
        # order = f(run seed, data seed, epoch); the position is saved in checkpoints (exact resume)
        seed = int(torch.initial_seed()) ^ int(self.seed)
        return ResumableDataLoader(
            data,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(data), seed=seed, yield_epoch=False),
            collate_fn=collate_frames,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        if self.labelled_fraction is None:
            return self._loader("train", shuffle=True)
        data = self.dataset("train")
        labelled, unlabelled = labelled_split(len(data), self.labelled_fraction, seed=self.split_seed)
        if self.use_unlabelled and len(unlabelled) == 0:
            raise ValueError(
                f"`labelled_fraction`={self.labelled_fraction} labels all {len(data)} training scans; lower it "
                "or set `data.init_args.use_unlabelled=false`."
            )
        # as SemiSupervisedLidarDataModule: an epoch is one pass over the unlabelled scans, the
        # labelled ones cycled; orders are functions of (run seed, data seed, epoch)
        batches = max(1, max(len(unlabelled), len(labelled)) // self.batch_size)
        seed = int(torch.initial_seed()) ^ int(self.seed)
        loaders = {
            "labelled": ResumableDataLoader(
                Subset(data, labelled.tolist()),
                batch_size=self.batch_size,
                sampler=CyclingSampler(len(labelled), batches * self.batch_size, seed=seed),
                collate_fn=collate_frames,
                num_workers=self.num_workers,
            )
        }
        if self.use_unlabelled:
            loaders["unlabelled"] = ResumableDataLoader(
                MaskedLabels(Subset(data, unlabelled.tolist())),
                batch_size=self.batch_size,
                sampler=EpochShuffleSampler(len(unlabelled), seed=seed + 1, yield_epoch=False),
                drop_last=len(unlabelled) >= self.batch_size,
                collate_fn=collate_frames,
                num_workers=self.num_workers,
            )
        return loaders

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
