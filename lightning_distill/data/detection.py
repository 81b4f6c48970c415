"""LightningDataModule of the 3D detection family: labelled synthetic street scenes.

:class:`DetectionSceneDataModule` serves frames (or whole sequences) from
:class:`~lightning_distill.detection.scenes.DetectionSceneGenerator`, batched by
:func:`collate_detection`:

======================= ============================ ===================================================
key                     shape                        meaning
======================= ============================ ===================================================
``points``              ``(N, 4)`` float32           ``x, y, z, intensity`` of every cloud, LiDAR frame
``batch_index``         ``(N,)`` int64               which frame of the batch each point belongs to
``point_labels``        ``(N,)`` int64               class per point (``detection.POINT_CLASS_NAMES``)
``point_boxes``         ``(N,)`` int64               box (index in its frame's list) a point hit, -1 none
``boxes``               list of ``(M_i, 7)`` float32 ``[x, y, z, dx, dy, dz, yaw]``
``labels``              list of ``(M_i,)`` int64     class per box (``detection.CLASSES``)
``track_ids``           list of ``(M_i,)`` int64     object id, stable across a sequence
``velocities``          list of ``(M_i, 2)`` float32 ground velocity along the LiDAR x and y (m/s)
``num_points_in_box``   list of ``(M_i,)`` int64     LiDAR points on the object
``occlusion``           list of ``(M_i,)`` float32   hidden share of the object's points
``difficulty``          list of ``(M_i,)`` int64     0 easy, 1 moderate, 2 hard, -1 ignore
``boxes_2d``            list of ``(M_i, C, 4)``      per-camera ``[u0, v0, u1, v1]`` (amodal, clipped to the image)
``visible_2d``          list of ``(M_i, C)`` bool    whether that camera sees the object
``visible_pixels``      list of ``(M_i, C)`` int64   pixels of that camera that see the object
``images``              ``(B, C, 3, H, W)`` float32  camera images; ``K``, ``T_cam_from_lidar`` beside
``pixel_labels``        ``(B, C, H, W)`` int64       class per pixel (``POINT_CLASS_NAMES``), -1 for sky
``pixel_boxes``         ``(B, C, H, W)`` int64       box a pixel sees, -1 none
``pose``                ``(B, 4, 4)`` float32        ``world_from_lidar``
``scene``, ``frame``    ``(B,)`` int64               scene index in its split, frame in its sequence
======================= ============================ ===================================================

With ``serve="sequences"`` a dataset item is a whole scene (``num_frames`` frames) and a batch
holds ``batch_size`` scenes flattened frame by frame (``B = batch_size * num_frames``, scene-major).

``object_complete="replace"`` serves object-complete frames (X-Ray distillation: the points of every
tracked box gathered over its sequence, :mod:`lightning_distill.detection.object_complete`) instead
of the raw ones; ``"add"`` keeps the raw frame and adds them as ``complete_points`` ``(N', 4)`` with
``complete_batch_index`` ``(N',)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.detection.object_complete import object_complete_sequence
from lightning_distill.detection.scenes import DetectionSceneGenerator
from lightning_distill.utils.fingerprint import config_hash

__all__ = ["DetectionSceneDataModule", "collate_detection"]

_SPLIT_OFFSET = {"train": 0, "val": 500_000, "test": 750_000}
_MEMORY: dict[str, dict[str, list[list[dict[str, Tensor]]]]] = {}
_PER_POINT = ("point_labels", "point_boxes")
_PER_BOX = (
    "boxes",
    "labels",
    "track_ids",
    "velocities",
    "num_points_in_box",
    "occlusion",
    "difficulty",
    "boxes_2d",
    "visible_2d",
    "visible_pixels",
)
_STACKED = ("images", "pixel_labels", "pixel_boxes", "K", "T_cam_from_lidar", "pose", "scene", "frame")


def collate_detection(samples: list[dict[str, Tensor]] | list[list[dict[str, Tensor]]]) -> dict[str, Any]:
    """Batch frames (or sequences of frames, flattened scene by scene) into the layout of this module.

    Raises:
        ValueError: an empty list.
    """
    if not samples:
        raise ValueError("`samples` is empty.")
    frames = [f for s in samples for f in s] if isinstance(samples[0], (list, tuple)) else list(samples)
    batch: dict[str, Any] = {
        "points": torch.cat([f["points"] for f in frames]),
        "batch_index": torch.cat(
            [torch.full((len(f["points"]),), b, dtype=torch.long) for b, f in enumerate(frames)]
        ),
    }
    if "complete_points" in frames[0]:
        batch["complete_points"] = torch.cat([f["complete_points"] for f in frames])
        batch["complete_batch_index"] = torch.cat(
            [torch.full((len(f["complete_points"]),), b, dtype=torch.long) for b, f in enumerate(frames)]
        )
    for key in _PER_POINT:
        if key in frames[0]:
            batch[key] = torch.cat([f[key] for f in frames])
    for key in _PER_BOX:
        if key in frames[0]:
            batch[key] = [f[key] for f in frames]
    for key in _STACKED:
        if key in frames[0]:
            batch[key] = torch.stack([torch.as_tensor(f[key]) for f in frames])
    return batch


class DetectionSceneDataModule(L.LightningDataModule):
    """Labelled street scenes (cars, pedestrians, cyclists) for 3D detection, deterministic from ``seed``.

    Scenes are generated once per process and settings (kept in memory) and, with ``cache_dir``,
    saved to ``<cache_dir>/detection_scenes_<hash of the settings>.pt``. Train, validation and test
    scenes come from disjoint seeds.

    Args:
        num_scenes: training scenes.
        val_scenes: validation scenes.
        test_scenes: test scenes.
        num_frames: frames per scene (the ego drives ``speed x frame_interval`` per frame; objects move).
        serve: ``"frames"`` (every frame is a sample) or ``"sequences"`` (every scene is a sample).
        beams: LiDAR beams.
        elevation_deg: lowest and highest beam elevation.
        azimuth_steps: rays per beam.
        max_range: LiDAR range (metres); boxes farther away are not labelled.
        image_size: ``(H, W)`` of the camera images.
        num_cameras: cameras at evenly spaced yaws, the first looking forward.
        horizontal_fov_deg: camera field of view.
        cars: inclusive range of cars per scene.
        pedestrians: inclusive range of pedestrians per scene.
        cyclists: inclusive range of cyclists per scene.
        min_points: boxes with fewer LiDAR points get difficulty -1 (ignored by the metric).
        speed: ego speed, m/s.
        frame_interval: seconds between frames.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: scene seeds derive from it.
        cache_dir: directory of the on-disk cache; ``None`` keeps scenes in memory only.
        object_complete: ``"none"`` (raw frames), ``"replace"`` (object-complete frames instead) or
            ``"add"`` (raw frames plus ``complete_points``); see the module docstring.
        object_complete_voxel: de-duplication cell (metres) of the accumulated object points; ``None`` keeps all.

    Raises:
        ValueError: non-positive counts, an unknown ``serve`` or ``object_complete``.
    """

    def __init__(
        self,
        num_scenes: int = 64,
        val_scenes: int = 8,
        test_scenes: int = 16,
        num_frames: int = 1,
        serve: Literal["frames", "sequences"] = "frames",
        beams: int = 32,
        elevation_deg: tuple[float, float] = (-25.0, 3.0),
        azimuth_steps: int = 512,
        max_range: float = 50.0,
        image_size: tuple[int, int] = (48, 96),
        num_cameras: int = 1,
        horizontal_fov_deg: float = 90.0,
        cars: tuple[int, int] = (3, 10),
        pedestrians: tuple[int, int] = (2, 8),
        cyclists: tuple[int, int] = (1, 4),
        min_points: int = 1,
        speed: float = 8.0,
        frame_interval: float = 0.5,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        object_complete: Literal["none", "replace", "add"] = "none",
        object_complete_voxel: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_scenes", num_scenes),
            ("num_frames", num_frames),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}; set `data.init_args.{name}`.")
        for name, value in (("val_scenes", val_scenes), ("test_scenes", test_scenes)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}; set `data.init_args.{name}`.")
        if serve not in ("frames", "sequences"):
            raise ValueError(
                f"`serve` must be 'frames' or 'sequences', got {serve!r}; set `data.init_args.serve`."
            )
        if object_complete not in ("none", "replace", "add"):
            raise ValueError(
                f"`object_complete` must be 'none', 'replace' or 'add', got {object_complete!r}; "
                "set `data.init_args.object_complete`."
            )
        self.save_hyperparameters()
        # attributes, not hparams: under LightningCLI a datamodule nested in a model's config (a teacher's
        # training data) gets the top-level `data:` section's hparams
        self.object_complete, self.object_complete_voxel = object_complete, object_complete_voxel
        self.generator = DetectionSceneGenerator(
            cars=tuple(cars),
            pedestrians=tuple(pedestrians),
            cyclists=tuple(cyclists),
            min_points=min_points,
            beams=beams,
            elevation_deg=tuple(elevation_deg),
            azimuth_steps=azimuth_steps,
            max_range=max_range,
            image_size=(int(image_size[0]), int(image_size[1])),
            num_cameras=num_cameras,
            horizontal_fov_deg=horizontal_fov_deg,
            speed=speed,
            frame_interval=frame_interval,
        )
        self.splits: dict[str, list[list[dict[str, Tensor]]]] = {}

    @property
    def settings_key(self) -> str:
        """Hash of everything that changes the generated scenes."""
        ignored = ("batch_size", "num_workers", "cache_dir", "serve")
        settings = {
            k: v for k, v in self.hparams.items() if k not in ignored and not k.startswith("object_complete")
        }
        if self.object_complete != "none":  # raw scenes keep their earlier key
            settings["object_complete"] = (self.object_complete, self.object_complete_voxel)
        settings["version"] = 2
        return config_hash(settings, default=str)

    def prepare_data(self) -> None:
        self._load()

    def setup(self, stage: str | None = None) -> None:
        self.splits = self._load()

    def sequences(self, split: str) -> list[list[dict[str, Tensor]]]:
        """The scenes of ``"train"``, ``"val"`` or ``"test"``, each a list of its frames (generated on first use)."""
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"`split` must be one of {tuple(_SPLIT_OFFSET)}, got {split!r}.")
        if not self.splits:
            self.splits = self._load()
        return self.splits[split]

    def frames(self, split: str) -> list[dict[str, Tensor]]:
        """Every frame of ``split``, scene by scene."""
        return [f for scene in self.sequences(split) for f in scene]

    def make_scene(self, seed: int, scene: int) -> list[dict[str, Tensor]]:
        """The frames (sample dicts) of the scene laid out from ``seed``."""
        samples = []
        for t, f in enumerate(self.generator.generate(seed, num_frames=self.hparams.num_frames)):
            samples.append(
                {
                    "points": f.points,
                    "point_labels": f.labels,
                    "point_boxes": f.point_boxes,
                    "boxes": f.boxes,
                    "labels": f.box_labels,
                    "track_ids": f.track_ids,
                    "velocities": f.velocities,
                    "num_points_in_box": f.num_points_in_box,
                    "occlusion": f.occlusion,
                    "difficulty": f.difficulty,
                    "boxes_2d": f.boxes_2d,
                    "visible_2d": f.visible_2d,
                    "visible_pixels": f.visible_pixels,
                    "images": f.images,
                    "pixel_labels": f.pixel_labels,
                    "pixel_boxes": f.pixel_boxes,
                    "K": f.K,
                    "T_cam_from_lidar": f.T_cam_from_lidar,
                    "pose": f.pose,
                    "scene": torch.tensor(scene),
                    "frame": torch.tensor(t),
                }
            )
        if self.object_complete != "none":
            complete = object_complete_sequence(samples, voxel_size=self.object_complete_voxel)
            if self.object_complete == "add":
                return [{**s, "complete_points": c["points"]} for s, c in zip(samples, complete)]
            return complete
        return samples

    def _load(self) -> dict[str, list[list[dict[str, Tensor]]]]:
        key = self.settings_key
        if key in _MEMORY:
            return _MEMORY[key]
        cache_dir = self.hparams.cache_dir
        path = Path(cache_dir) / f"detection_scenes_{key}.pt" if cache_dir else None
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
                split: [self.make_scene(base + _SPLIT_OFFSET[split] + i, i) for i in range(n)]
                for split, n in counts.items()
            }
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(splits, tmp)
                tmp.replace(path)
        _check_scenes(splits, where=str(path) if path is not None and path.is_file() else type(self).__name__)
        _MEMORY[key] = splits
        return splits

    def _items(self, split: str) -> list:
        return self.sequences(split) if self.hparams.serve == "sequences" else self.frames(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        items = self._items(split)
        if not shuffle:
            return DataLoader(
                items,
                batch_size=self.hparams.batch_size,
                collate_fn=collate_detection,
                num_workers=self.hparams.num_workers,
            )
        # the order is a function of (run seed, data seed, epoch); the position is saved in checkpoints
        seed = int(torch.initial_seed()) ^ int(self.hparams.seed)
        return ResumableDataLoader(
            items,
            batch_size=self.hparams.batch_size,
            sampler=EpochShuffleSampler(len(items), seed=seed, yield_epoch=False),
            collate_fn=collate_detection,
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


def _check_scenes(splits: dict[str, list[list[dict[str, Tensor]]]], *, where: str) -> None:
    """Finite points and boxes, one label per box, a non-empty training split.

    Raises:
        ValueError: naming ``where``, the split, the scene and the frame.
    """
    if not splits.get("train"):
        raise ValueError(f"{where}: the training split has no scenes; raise `num_scenes`.")
    for split, scenes in splits.items():
        for s, scene in enumerate(scenes):
            for t, frame in enumerate(scene):
                label = f"{where}: {split} scene {s} frame {t}"
                if not torch.isfinite(frame["points"]).all() or not torch.isfinite(frame["boxes"]).all():
                    raise ValueError(f"{label}: non-finite points or boxes.")
                if frame["boxes"].shape[0] != frame["labels"].shape[0]:
                    raise ValueError(
                        f"{label}: {len(frame['boxes'])} boxes but {len(frame['labels'])} labels."
                    )
