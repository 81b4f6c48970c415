"""nuScenes with nuScenes-lidarseg as a LightningDataModule, read from its JSON tables (no devkit).

The class map, the camera names and the file readers are :mod:`lightning_distill.lidar.datasets`;
the shared loaders :class:`~lightning_distill.data.lidar_real.RealLidarDataModule`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_distill.data.lidar_real import RealLidarDataModule
from lightning_distill.lidar.datasets import (
    NUSCENES_CAMERAS,
    NUSCENES_LAYOUT,
    NUSCENES_LIDARSEG_CLASSES,
    NUSCENES_LIDARSEG_MAP,
    NUSCENES_SPLITS,
    OURS_FROM_NUSCENES_LIDAR,
    quaternion_matrix,
    require_path,
)
from lightning_distill.lidar.scene import IGNORE_INDEX

__all__ = ["NuScenesLidarDataModule"]


class NuScenesLidarDataModule(RealLidarDataModule):
    """nuScenes key frames with nuScenes-lidarseg labels, read from its JSON tables (no devkit).

    Each sample (a key frame, 2 Hz) gives the ``LIDAR_TOP`` sweep (``.pcd.bin``, float32 x, y, z,
    intensity, ring), its lidarseg labels mapped to the 16 challenge classes, and the key-frame
    image of each camera. A point reaches camera ``c`` through the ego poses at both timestamps:
    ``T_cam_from_lidar = inv(ego_from_cam) inv(global_from_ego(t_cam)) global_from_ego(t_lidar)
    ego_from_lidar``; ``pose = global_from_ego(t_lidar) ego_from_lidar`` (both then turned into
    our x-forward LiDAR frame).

    Args:
        root: the folder holding ``<version>/``, ``samples/`` and ``lidarseg/``.
        version: table folder, e.g. ``"v1.0-mini"`` or ``"v1.0-trainval"``.
        train_split: scenes to train on: ``"mini_train"``, ``"mini_val"`` (the devkit's mini
            splits), ``"all"`` (every scene of the tables), a list of scene names, or the path of a
            text file with one scene name a line (e.g. written from the devkit's
            ``create_splits_scenes()["train"]``).
        val_split: validation scenes, same forms.
        test_split: test scenes, same forms (default the validation scenes: nuScenes' test set has
            no public labels).
        cameras: camera channels, default all six; ``()`` serves LiDAR-only batches.
        with_labels: read lidarseg labels; ``False`` gives -1 (unlabelled sweeps, or no lidarseg).
        image_size: ``(H, W)`` the 900 x 1600 images are resized to (SLidR: 224 x 416).
        history: past key frames per sample (LiMA's memory), from the same scene.
        labelled_fraction: LaserMix++'s semi-supervised split: this fraction of the training scans
            keeps its labels (at least one) and the training loader yields ``{"labelled",
            "unlabelled"}`` batches; ``None`` serves plain batches.
        split_seed: which scans are labelled.
        use_unlabelled: with ``labelled_fraction``, serve the unlabelled scans too (``False``: the
            supervised-only baseline).
        superpixel_segments: SLIC segments; default SLidR's 150 scaled by image area.
        superpixel_compactness: SLIC compactness (SLidR: 6).
        superpixel_sigma: SLIC smoothing; default SLidR's 3 scaled by ``H / 224``.
        batch_size: clouds per batch.
        num_workers: DataLoader workers.
        seed: mixed into the training order (with the run's seed).

    Raises:
        ValueError: bad arguments, an unknown camera or scene name, a sample without a camera.
        FileNotFoundError: (at ``setup`` or when a sample is read) a missing table or file; the
            message names it and the expected layout.
        ValueError: (when a sample is read) an empty sweep, NaN/inf points, or labels out of range;
            the message names the file.
    """

    layout = NUSCENES_LAYOUT
    num_classes = len(NUSCENES_LIDARSEG_CLASSES)

    def __init__(
        self,
        root: str,
        version: str = "v1.0-mini",
        train_split: str | Sequence[str] = "mini_train",
        val_split: str | Sequence[str] = "mini_val",
        test_split: str | Sequence[str] | None = None,
        cameras: Sequence[str] = NUSCENES_CAMERAS,
        with_labels: bool = True,
        image_size: tuple[int, int] = (224, 416),
        history: int = 0,
        labelled_fraction: float | None = None,
        split_seed: int = 0,
        use_unlabelled: bool = True,
        superpixel_segments: int | None = None,
        superpixel_compactness: float = 6.0,
        superpixel_sigma: float | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root, image_size, history, labelled_fraction, split_seed, use_unlabelled, superpixel_segments, superpixel_compactness, superpixel_sigma,
            batch_size, num_workers, seed,
        )  # fmt: skip
        self.save_hyperparameters()
        unknown = [c for c in cameras if c not in NUSCENES_CAMERAS]
        if unknown:
            raise ValueError(f"`cameras` must be among {NUSCENES_CAMERAS}, got unknown {unknown}.")
        self.version, self.cameras, self.with_labels = version, tuple(cameras), with_labels
        self.splits = {
            "train": train_split,
            "val": val_split,
            "test": val_split if test_split is None else test_split,
        }
        self._tables: dict[str, Any] | None = None
        self._label_lookup: np.ndarray | None = None

    @property
    def uses_images(self) -> bool:
        return bool(self.cameras)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.with_labels and self._label_lookup is None:
            self._label_lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
            for index, name in self._index()["categories"].items():
                self._label_lookup[index] = NUSCENES_LIDARSEG_MAP.get(name, IGNORE_INDEX)
        self._tables = None  # the records hold what reading needs; keep workers light

    def _table(self, name: str) -> list[dict[str, Any]]:
        path = require_path(
            self.root / self.version / f"{name}.json", f"nuScenes table {name}.json", self.layout
        )
        return json.loads(path.read_text())

    def _index(self) -> dict[str, Any]:
        """Token look-ups over the tables, built once."""
        if self._tables is not None:
            return self._tables
        by_token = {
            name: {row["token"]: row for row in self._table(name)}
            for name in ("sample", "calibrated_sensor", "ego_pose", "sensor", "scene")
        }
        key_frames: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self._table("sample_data"):
            if row.get("is_key_frame", False):
                sensor = by_token["sensor"][
                    by_token["calibrated_sensor"][row["calibrated_sensor_token"]]["sensor_token"]
                ]
                key_frames[(row["sample_token"], sensor["channel"])] = row
        lidarseg: dict[str, str] = {}
        category_of_index: dict[int, str] = {}
        if self.with_labels:
            lidarseg = {row["sample_data_token"]: row["filename"] for row in self._table("lidarseg")}
            category_of_index = {int(row["index"]): row["name"] for row in self._table("category")}
        self._tables = {
            **by_token,
            "key_frames": key_frames,
            "lidarseg": lidarseg,
            "categories": category_of_index,
        }
        return self._tables

    def scene_names(self, split: str) -> list[str]:
        """Scene names of ``"train"``, ``"val"`` or ``"test"`` as configured."""
        spec = self.splits[split]
        if isinstance(spec, str):
            if spec in NUSCENES_SPLITS:
                return list(NUSCENES_SPLITS[spec])
            if spec == "all":
                return [row["name"] for row in self._index()["scene"].values()]
            path = Path(spec)
            if not path.is_file():
                raise ValueError(
                    f"`{split}_split` must be 'mini_train', 'mini_val', 'all', a list of scene names or a text "
                    f"file of scene names, got {spec!r} (no such file)."
                )
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [str(name) for name in spec]

    def _transform(self, sample_data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``global_from_ego`` at the record's timestamp, ``ego_from_sensor`` and its calibration row."""
        tables = self._index()
        ego = tables["ego_pose"][sample_data["ego_pose_token"]]
        calib = tables["calibrated_sensor"][sample_data["calibrated_sensor_token"]]
        return (
            quaternion_matrix(ego["rotation"], ego["translation"]),
            quaternion_matrix(calib["rotation"], calib["translation"]),
            calib,
        )

    def split_records(self, split: str) -> list[dict[str, Any]]:
        tables = self._index()
        scenes_by_name = {row["name"]: row for row in tables["scene"].values()}
        records = []
        for scene_index, name in enumerate(self.scene_names(split)):
            if name not in scenes_by_name:
                raise ValueError(
                    f"scene {name!r} of the {split} split is not in {self.version}/scene.json "
                    f"(it has {len(scenes_by_name)} scenes, e.g. {sorted(scenes_by_name)[:3]})."
                )
            token, frame = scenes_by_name[name]["first_sample_token"], 0
            while token:
                sample = tables["sample"][token]
                records.append(self._record(sample, scene_index, frame))
                token, frame = sample.get("next", ""), frame + 1
        return records

    def _record(self, sample: dict[str, Any], scene: int, frame: int) -> dict[str, Any]:
        tables = self._index()
        lidar = tables["key_frames"].get((sample["token"], "LIDAR_TOP"))
        if lidar is None:
            raise ValueError(f"sample {sample['token']} has no LIDAR_TOP key frame in sample_data.json.")
        global_from_ego_l, ego_from_lidar, _ = self._transform(lidar)
        ours_to_nus = np.linalg.inv(OURS_FROM_NUSCENES_LIDAR)
        global_from_lidar = global_from_ego_l @ ego_from_lidar
        cameras, extrinsics = [], []
        for channel in self.cameras:
            cam = tables["key_frames"].get((sample["token"], channel))
            if cam is None:
                raise ValueError(f"sample {sample['token']} has no {channel} key frame in sample_data.json.")
            global_from_ego_c, ego_from_cam, calib = self._transform(cam)
            K = np.asarray(calib.get("camera_intrinsic") or [], dtype=np.float64)
            if K.shape != (3, 3):
                raise ValueError(
                    f"calibrated_sensor of {channel} has no 3x3 camera_intrinsic, got {K.tolist()}."
                )
            cameras.append((self.root / cam["filename"], K))
            cam_from_global = np.linalg.inv(global_from_ego_c @ ego_from_cam)
            extrinsics.append(cam_from_global @ global_from_lidar @ ours_to_nus)
        label = None
        if self.with_labels:
            filename = tables["lidarseg"].get(lidar["token"])
            if filename is None:
                raise ValueError(
                    f"lidarseg.json has no labels for the LIDAR_TOP sweep {lidar['token']} (sample "
                    f"{sample['token']}); set `with_labels: false` for unlabelled sweeps."
                )
            label = self.root / filename
        return {
            "scan": self.root / lidar["filename"],
            "label": label,
            "cameras": cameras,
            "T_cam_from_lidar": extrinsics,
            "pose": global_from_lidar @ ours_to_nus,
            "scene": scene,
            "frame": frame,
            "past": [],
        }

    def read_cameras(self, record: dict[str, Any]) -> dict[str, Tensor]:
        for path, _ in record["cameras"]:
            require_path(path, f"camera image {path.parent.name}/{path.name}", self.layout)
        return super().read_cameras(record)

    def read_points(self, record: dict[str, Any]) -> dict[str, Tensor]:
        raw = np.fromfile(require_path(record["scan"], "LIDAR_TOP sweep", self.layout), dtype=np.float32)
        if raw.size % 5:
            raise ValueError(
                f"{str(record['scan'])!r} holds {raw.size} floats, not x, y, z, intensity, ring per point."
            )
        raw = raw.reshape(-1, 5)
        xyz = raw[:, :3].astype(np.float64) @ OURS_FROM_NUSCENES_LIDAR[:3, :3].T
        points = torch.from_numpy(np.concatenate([xyz, raw[:, 3:4] / 255.0], axis=1).astype(np.float32))
        instances = torch.full((len(points),), IGNORE_INDEX, dtype=torch.long)
        if record["label"] is None:
            return {"points": points, "labels": instances.clone(), "instances": instances}
        path = require_path(record["label"], "lidarseg label file (or set `with_labels: false`)", self.layout)
        raw_labels = np.fromfile(path, dtype=np.uint8)
        if len(raw_labels) != len(points):
            raise ValueError(f"{str(path)!r} holds {len(raw_labels)} labels for {len(points)} points.")
        if self._label_lookup is None:
            self.setup()
        labels = torch.from_numpy(self._label_lookup[raw_labels.astype(np.int64)])
        return {"points": points, "labels": labels, "instances": instances}
