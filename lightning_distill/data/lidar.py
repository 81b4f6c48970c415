"""LightningDataModules of the LiDAR family on synthetic street scenes (open3d ray casting).

* :class:`SyntheticLidarDataModule`: single frames with cameras, labels and SLIC superpixels
  (SLidR, CALICO).
* :class:`SyntheticSequenceDataModule`: windows of consecutive frames with ego poses (LiMA).
* :class:`SemiSupervisedLidarDataModule`: a fraction of the training scenes labelled, batches
  ``{"labelled": ..., "unlabelled": ...}`` (LaserMix++).

The real datasets are :mod:`lightning_distill.data.semantic_kitti` and
:mod:`lightning_distill.data.nuscenes`. Batches follow :mod:`lightning_distill.lidar.batches`;
scenes, geometry and the split come from the toolkit :mod:`lightning_distill.lidar` (which never
imports this module).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.data.lidar_checks import check_lidar_sample
from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.geometry import scaled_segment_count, slic_superpixels
from lightning_distill.lidar.scene import CLASS_NAMES, StreetSceneGenerator
from lightning_distill.lidar.semi import labelled_split, mask_labels
from lightning_distill.lidar.sequence import PAST_KEYS, collate_sequence
from lightning_distill.utils.fingerprint import config_hash

__all__ = [
    "CyclingSampler",
    "SemiSupervisedLidarDataModule",
    "SyntheticLidarDataModule",
    "SyntheticSequenceDataModule",
]

_SPLIT_OFFSET = {"train": 0, "val": 500_000, "test": 750_000}
_MEMORY: dict[str, dict[str, list[dict[str, Tensor]]]] = {}


_SPLIT_ARGUMENTS = ("labelled_fraction", "split_seed", "use_unlabelled")


class SyntheticLidarDataModule(L.LightningDataModule):
    """Street scenes from :class:`~lightning_distill.lidar.scene.StreetSceneGenerator`, with SLIC superpixels.

    Scenes are generated once per process and settings (kept in memory) and, with ``cache_dir``,
    saved to ``<cache_dir>/synthetic_lidar_<hash of the settings>.pt`` for later runs.

    Args:
        num_scenes: training scenes.
        val_scenes: validation scenes.
        test_scenes: test scenes.
        num_frames: frames per scene (ego motion); each frame is a sample.
        beams: LiDAR beams.
        elevation_deg: lowest and highest beam elevation.
        azimuth_steps: rays per beam.
        image_size: ``(H, W)``.
        num_cameras: cameras per frame at evenly spaced yaws.
        horizontal_fov_deg: camera field of view.
        curb_height: sidewalk height above the road (metres).
        superpixel_segments: SLIC segments per image; default SLidR's 150 scaled by image area
            (:func:`~lightning_distill.lidar.geometry.scaled_segment_count`).
        superpixel_compactness: SLIC compactness (SLidR: 6).
        superpixel_sigma: SLIC smoothing; default SLidR's 3 scaled by ``H / 224``.
        batch_size: clouds per batch.
        num_workers: DataLoader workers.
        seed: scene seeds derive from it (train, val and test scenes never coincide).
        cache_dir: directory of the on-disk cache; ``None`` keeps scenes in memory only.

    Raises:
        ValueError: non-positive counts.
    """

    #: How :meth:`_loader` batches samples (a subclass with other keys sets its own).
    collate_samples = staticmethod(collate)

    def __init__(
        self,
        num_scenes: int = 200,
        val_scenes: int = 20,
        test_scenes: int = 40,
        num_frames: int = 1,
        beams: int = 16,
        elevation_deg: tuple[float, float] = (-25.0, 3.0),
        azimuth_steps: int = 384,
        image_size: tuple[int, int] = (64, 128),
        num_cameras: int = 4,
        horizontal_fov_deg: float = 90.0,
        curb_height: float = 0.05,
        superpixel_segments: int | None = None,
        superpixel_compactness: float = 6.0,
        superpixel_sigma: float | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_scenes", num_scenes),
            ("num_frames", num_frames),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}; set `data.init_args.{name}`.")
        if val_scenes < 0 or test_scenes < 0:
            raise ValueError(f"`val_scenes` and `test_scenes` must be >= 0, got {val_scenes}, {test_scenes}.")
        self.save_hyperparameters()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.generator = StreetSceneGenerator(
            beams=beams,
            elevation_deg=tuple(elevation_deg),
            azimuth_steps=azimuth_steps,
            image_size=self.image_size,
            num_cameras=num_cameras,
            horizontal_fov_deg=horizontal_fov_deg,
            curb_height=curb_height,
        )
        self.superpixel_segments = superpixel_segments or scaled_segment_count(self.image_size)
        self.superpixel_sigma = (
            3.0 * self.image_size[0] / 224 if superpixel_sigma is None else superpixel_sigma
        )
        self.superpixel_compactness = superpixel_compactness
        self.splits: dict[str, list[dict[str, Tensor]]] = {}

    @property
    def settings_key(self) -> str:
        """Hash of everything that changes the generated scenes."""
        settings = {
            k: v for k, v in self.hparams.items() if k not in ("batch_size", "num_workers", "cache_dir")
        }
        settings["superpixels"] = (
            self.superpixel_segments,
            self.superpixel_sigma,
            self.superpixel_compactness,
        )
        settings["version"] = 1
        return config_hash(settings, default=str)

    def prepare_data(self) -> None:
        self._load()

    def setup(self, stage: str | None = None) -> None:
        self.splits = self._load()

    def scenes(self, split: str) -> list[dict[str, Tensor]]:
        """The samples of ``"train"``, ``"val"`` or ``"test"`` (generated on first use)."""
        if not self.splits:
            self.splits = self._load()
        return self.splits[split]

    def make_sample(self, seed: int, scene: int) -> list[dict[str, Tensor]]:
        """The samples (one per frame) of the scene laid out from ``seed``."""
        samples = []
        for t, frame in enumerate(self.generator.generate(seed, num_frames=self.hparams.num_frames)):
            superpixels = torch.stack(
                [
                    slic_superpixels(
                        image,
                        n_segments=self.superpixel_segments,
                        compactness=self.superpixel_compactness,
                        sigma=self.superpixel_sigma,
                    )
                    for image in frame.images
                ]
            )
            samples.append(
                {
                    "points": frame.points,
                    "labels": frame.labels,
                    "instances": frame.instances,
                    "images": frame.images,
                    "pixel_labels": frame.pixel_labels,
                    "superpixels": superpixels,
                    "K": frame.K,
                    "T_cam_from_lidar": frame.T_cam_from_lidar,
                    "pose": frame.pose,
                    "scene": torch.tensor(scene),
                    "frame": torch.tensor(t),
                }
            )
        return samples

    def _load(self) -> dict[str, list[dict[str, Tensor]]]:
        key = self.settings_key
        if key in _MEMORY:
            return _MEMORY[key]
        path = Path(self.hparams.cache_dir) / f"synthetic_lidar_{key}.pt" if self.hparams.cache_dir else None
        if path is not None and path.is_file():
            splits = torch.load(path, weights_only=True)
            self.check_scenes(splits, where=str(path))
        else:
            counts = {
                "train": self.hparams.num_scenes,
                "val": self.hparams.val_scenes,
                "test": self.hparams.test_scenes,
            }
            base = self.hparams.seed * 1_000_000
            splits = {
                split: [s for i in range(n) for s in self.make_sample(base + _SPLIT_OFFSET[split] + i, i)]
                for split, n in counts.items()
            }
            self.check_scenes(splits, where=f"{type(self).__name__} (generated)")
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(splits, tmp)
                tmp.replace(path)
        _MEMORY[key] = splits
        return splits

    @staticmethod
    def check_scenes(splits: dict[str, list[dict[str, Tensor]]], *, where: str) -> None:
        """Check every sample of every split once (finite points, labels in range, non-empty training split).

        Raises:
            ValueError: naming ``where`` (the cache file or the generator), the split, the sample and the problem.
        """
        if not splits.get("train"):
            raise ValueError(f"{where}: the training split has no samples; raise `num_scenes`.")
        for split, samples in splits.items():
            for k, sample in enumerate(samples):
                label = f"{where}: {split} sample {k} (scene {int(sample.get('scene', -1))})"
                check_lidar_sample(sample, num_classes=len(CLASS_NAMES), where=label)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        scenes = self.scenes(split)
        if not shuffle:
            return DataLoader(
                scenes,
                batch_size=self.hparams.batch_size,
                collate_fn=self.collate_samples,
                num_workers=self.hparams.num_workers,
            )
        # The order is a function of (run seed, data seed, epoch) and the loader's position is saved
        # in checkpoints, so a resumed run trains on the batches an uninterrupted one would.
        seed = int(torch.initial_seed()) ^ int(self.hparams.seed)
        return ResumableDataLoader(
            scenes,
            batch_size=self.hparams.batch_size,
            sampler=EpochShuffleSampler(len(scenes), seed=seed, yield_epoch=False),
            collate_fn=self.collate_samples,
            num_workers=self.hparams.num_workers,
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


class SyntheticSequenceDataModule(SyntheticLidarDataModule):
    """Windows of consecutive frames (current + ``history`` past ones) of the synthetic street scenes.

    Each scene is generated with ``num_frames`` frames (default ``history + 1``); every frame
    ``t >= history`` is the current frame of one sample, whose past frames are ``t-1 .. t-history``.
    Cameras overlap when ``horizontal_fov_deg > 360 / num_cameras``. Batches are
    :func:`collate_sequence` dicts; every other argument is that of
    :class:`~lightning_distill.data.lidar.SyntheticLidarDataModule`.

    Args:
        history: past frames per sample (LiMA's memory length).
        num_frames: frames per scene; ``None`` means ``history + 1``.
        **kwargs: the arguments of :class:`~lightning_distill.data.lidar.SyntheticLidarDataModule`.

    Raises:
        ValueError: ``history < 1`` or ``num_frames <= history``.
    """

    def __init__(
        self,
        history: int = 2,
        num_frames: int | None = None,
        num_scenes: int = 200,
        val_scenes: int = 20,
        test_scenes: int = 40,
        beams: int = 16,
        elevation_deg: tuple[float, float] = (-25.0, 3.0),
        azimuth_steps: int = 384,
        image_size: tuple[int, int] = (64, 128),
        num_cameras: int = 4,
        horizontal_fov_deg: float = 110.0,
        curb_height: float = 0.05,
        superpixel_segments: int | None = None,
        superpixel_compactness: float = 6.0,
        superpixel_sigma: float | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"`history` must be an int >= 1, got {history!r}; set `data.init_args.history`.")
        num_frames = history + 1 if num_frames is None else num_frames
        if num_frames <= history:
            raise ValueError(
                f"`num_frames` must exceed `history` ({history}), got {num_frames}; set `data.init_args.num_frames`."
            )
        super().__init__(
            num_scenes=num_scenes,
            val_scenes=val_scenes,
            test_scenes=test_scenes,
            num_frames=num_frames,
            beams=beams,
            elevation_deg=elevation_deg,
            azimuth_steps=azimuth_steps,
            image_size=image_size,
            num_cameras=num_cameras,
            horizontal_fov_deg=horizontal_fov_deg,
            curb_height=curb_height,
            superpixel_segments=superpixel_segments,
            superpixel_compactness=superpixel_compactness,
            superpixel_sigma=superpixel_sigma,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.history = history

    def make_sample(self, seed: int, scene: int) -> list[dict[str, Tensor]]:
        """The windows of the scene laid out from ``seed``: one per frame ``t >= history``."""
        frames = super().make_sample(seed, scene)
        windows = []
        for t in range(self.history, len(frames)):
            sample = dict(frames[t])
            past = [frames[t - 1 - j] for j in range(self.history)]
            for key, past_key in PAST_KEYS.items():
                sample[past_key] = torch.stack([f[key] for f in past])
            windows.append(sample)
        return windows

    # The parent's loaders: a training order that is a function of (run seed, data seed, epoch) and
    # not of the global random state, which DDP re-seeds at setup (a plain `shuffle=True` loader
    # drew another order under DDP than in one process), and a position saved in checkpoints.
    collate_samples = staticmethod(collate_sequence)

    def state_dict(self) -> dict[str, Any]:
        return {"settings_key": self.settings_key, "history": self.history}


class SemiSupervisedLidarDataModule(SyntheticLidarDataModule):
    """Synthetic street scenes with only a fraction of the training scenes labelled.

    Takes every argument of :class:`~lightning_distill.data.lidar.SyntheticLidarDataModule`, plus:

    Args:
        labelled_fraction: fraction of training scenes that keep their labels (LaserMix's
            1% / 10% / 20% / 50% splits); at least one scene.
        split_seed: which scenes are labelled (fixed across training seeds by default).
        use_unlabelled: serve the unlabelled scans too; ``False`` gives the supervised-only baseline.
        **kwargs: the arguments of ``SyntheticLidarDataModule``.

    Raises:
        ValueError: ``labelled_fraction`` outside (0, 1], or a split that leaves no unlabelled scene
            while ``use_unlabelled`` is true.
    """

    def __init__(
        self,
        labelled_fraction: float = 0.05,
        split_seed: int = 0,
        use_unlabelled: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < labelled_fraction <= 1:
            raise ValueError(
                f"`labelled_fraction` must be in (0, 1], got {labelled_fraction}; set "
                "`data.init_args.labelled_fraction`."
            )
        self.labelled_fraction = labelled_fraction
        self.split_seed = split_seed
        self.use_unlabelled = use_unlabelled
        labelled, unlabelled = labelled_split(self.hparams.num_scenes, labelled_fraction, seed=split_seed)
        if use_unlabelled and len(unlabelled) == 0:
            raise ValueError(
                f"`labelled_fraction`={labelled_fraction} labels every one of the {self.hparams.num_scenes} scenes; "
                "lower it or set `data.init_args.use_unlabelled=false`."
            )
        self.labelled_scenes, self.unlabelled_scenes = labelled.tolist(), unlabelled.tolist()

    @property
    def settings_key(self) -> str:
        """Hash of the scene settings; the split arguments leave the scenes (and their cache) alone."""
        split = {k: self.hparams.pop(k) for k in _SPLIT_ARGUMENTS if k in self.hparams}
        try:
            return super().settings_key
        finally:
            self.hparams.update(split)

    def labelled_samples(self) -> list[dict[str, Tensor]]:
        """Training samples of the labelled scenes (all their frames), labels intact."""
        keep = set(self.labelled_scenes)
        return [s for s in self.scenes("train") if int(s["scene"]) in keep]

    def unlabelled_samples(self) -> list[dict[str, Tensor]]:
        """Training samples of the other scenes, labels replaced by the ignore index."""
        keep = set(self.unlabelled_scenes)
        return [mask_labels(s) for s in self.scenes("train") if int(s["scene"]) in keep]

    def train_dataloader(self) -> dict[str, DataLoader]:
        labelled, unlabelled = self.labelled_samples(), self.unlabelled_samples()
        # one epoch = one pass over the unlabelled scans (full batches: LaserMix pairs labelled and
        # unlabelled clouds one to one), whether they are served or not
        batch_size = self.hparams.batch_size
        batches = max(1, max(len(unlabelled), len(labelled)) // batch_size)
        # orders are functions of (run seed, data seed, epoch), positions are saved in checkpoints
        seed = int(torch.initial_seed()) ^ int(self.hparams.seed)
        loaders = {
            "labelled": ResumableDataLoader(
                labelled,
                batch_size=batch_size,
                sampler=CyclingSampler(len(labelled), batches * batch_size, seed=seed),
                collate_fn=collate,
                num_workers=self.hparams.num_workers,
            )
        }
        if self.use_unlabelled:
            loaders["unlabelled"] = ResumableDataLoader(
                unlabelled,
                batch_size=batch_size,
                sampler=EpochShuffleSampler(len(unlabelled), seed=seed + 1, yield_epoch=False),
                drop_last=len(unlabelled) >= batch_size,
                collate_fn=collate,
                num_workers=self.hparams.num_workers,
            )
        return loaders


class CyclingSampler(Sampler):
    """``num_samples`` indices of ``range(length)``: fresh permutations back to back, a function of
    ``(seed, epoch)`` (Lightning calls :meth:`set_epoch`)."""

    def __init__(self, length: int, num_samples: int, seed: int = 0) -> None:
        self.length, self.num_samples, self.seed, self.epoch = length, num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF)
        rounds = math.ceil(self.num_samples / self.length)
        order = torch.cat([torch.randperm(self.length, generator=gen) for _ in range(rounds)])
        yield from order[: self.num_samples].tolist()
