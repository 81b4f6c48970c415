"""Synthetic camera+LiDAR data as a LightningDataModule, and a reader for real scans.

A batch (see :func:`collate`) is a dict:

=================== ============================ ==================================================
key                 shape                        meaning
=================== ============================ ==================================================
``points``          ``(N, 5)`` float32           ``[batch, x, y, z, intensity]``, LiDAR frame
``labels``          ``(N,)`` int64               class per point (:data:`~lightning_distill.lidar.scene.CLASS_NAMES`)
``instances``       ``(N,)`` int64               object id per point (unique within a scene)
``images``          ``(B, C, 3, H, W)`` float32  RGB in [0, 1], ``C`` cameras per cloud
``pixel_labels``    ``(B, C, H, W)`` int64       class per pixel, -1 for sky
``superpixels``     ``(B, C, H, W)`` int64       SLIC superpixel ids per image
``K``               ``(B, C, 3, 3)`` float32     intrinsics
``T_cam_from_lidar`` ``(B, C, 4, 4)`` float32    extrinsics (OpenCV camera from LiDAR)
``pose``            ``(B, 4, 4)`` float32        ``world_from_lidar`` (ego motion within a sequence)
``scene``/``frame`` ``(B,)`` int64               scene index in its split, frame within the sequence
=================== ============================ ==================================================

Real scans read by :func:`read_scan` come as ``(N, 4)`` ``[x, y, z, intensity]`` and are batched by
:func:`batch_points` into the same ``points`` layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.lidar.geometry import scaled_segment_count, slic_superpixels
from lightning_distill.lidar.scene import StreetSceneGenerator

__all__ = ["SyntheticLidarDataModule", "batch_points", "collate", "read_scan"]

_SPLIT_OFFSET = {"train": 0, "val": 500_000, "test": 750_000}
_MEMORY: dict[str, dict[str, list[dict[str, Tensor]]]] = {}


def batch_points(scans: list[Tensor]) -> Tensor:
    """Concatenate ``(N_i, 3 + F)`` clouds into ``(sum N_i, 4 + F)`` with the batch index first.

    >>> batch_points([torch.zeros(2, 4), torch.ones(1, 4)])[:, 0].tolist()
    [0.0, 0.0, 1.0]

    Raises:
        ValueError: an empty list or clouds with different widths.
    """
    if not scans:
        raise ValueError("`scans` is empty.")
    widths = {s.shape[1] for s in scans}
    if len(widths) != 1 or min(widths) < 3:
        raise ValueError(f"every scan must be (N, 3 + F) with the same F, got widths {sorted(widths)}.")
    return torch.cat(
        [torch.cat([torch.full((len(s), 1), float(b), dtype=s.dtype), s], dim=1) for b, s in enumerate(scans)]
    )


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Batch scene samples: points concatenated with a batch index column, the rest stacked."""
    batch: dict[str, Tensor] = {
        "points": batch_points([s["points"] for s in samples]),
        "labels": torch.cat([s["labels"] for s in samples]),
        "instances": torch.cat([s["instances"] for s in samples]),
    }
    for key in ("images", "pixel_labels", "superpixels", "K", "T_cam_from_lidar", "pose", "scene", "frame"):
        batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    return batch


def read_scan(path: str | Path) -> Tensor:
    """A LiDAR scan as ``(N, 4)`` float32 ``[x, y, z, intensity]``.

    ``.bin``: KITTI / SemanticKITTI layout (float32, four values per point). ``.pcd`` / ``.ply``:
    read with open3d's tensor API; the ``intensity`` attribute is used when present, else zeros.

    Raises:
        ValueError: an unsupported suffix, or a ``.bin`` file whose size is not a multiple of 16 bytes.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No scan at {str(path)!r}.")
    suffix = path.suffix.lower()
    if suffix == ".bin":
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % 4:
            raise ValueError(
                f"{str(path)!r} holds {raw.size} floats, not a multiple of 4 (x, y, z, intensity)."
            )
        return torch.from_numpy(raw.reshape(-1, 4).copy())
    if suffix in (".pcd", ".ply"):
        import open3d as o3d

        cloud = o3d.t.io.read_point_cloud(str(path))
        xyz = cloud.point.positions.numpy().astype(np.float32)
        if "intensity" in cloud.point:
            intensity = cloud.point["intensity"].numpy().astype(np.float32).reshape(-1, 1)
        else:
            intensity = np.zeros((len(xyz), 1), dtype=np.float32)
        return torch.from_numpy(np.concatenate([xyz, intensity], axis=1))
    raise ValueError(f"`path` must end in .bin, .pcd or .ply, got {str(path)!r}.")


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
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

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
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(splits, tmp)
                tmp.replace(path)
        _MEMORY[key] = splits
        return splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        scenes = self.scenes(split)
        if not shuffle:
            return DataLoader(
                scenes,
                batch_size=self.hparams.batch_size,
                collate_fn=collate,
                num_workers=self.hparams.num_workers,
            )
        # The order is a function of (run seed, data seed, epoch) and the loader's position is saved
        # in checkpoints, so a resumed run trains on the batches an uninterrupted one would.
        seed = int(torch.initial_seed()) ^ int(self.hparams.seed)
        return ResumableDataLoader(
            scenes,
            batch_size=self.hparams.batch_size,
            sampler=EpochShuffleSampler(len(scenes), seed=seed, yield_epoch=False),
            collate_fn=collate,
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
