"""Readers for the real datasets LiDAR users train on: SemanticKITTI and nuScenes (with lidarseg).

Both data modules serve batches in the layout of :mod:`lightning_distill.lidar.batches` (see its
table and :func:`~lightning_distill.lidar.batches.collate`), so a recipe that trains on
:class:`~lightning_distill.data.lidar.SyntheticLidarDataModule` runs on real data when the
``data:`` block of its config names one of these instead:

* ``points (N, 5)`` ``[batch, x, y, z, intensity]`` in the LiDAR frame, x forward, y left, z up
  (nuScenes' ``LIDAR_TOP`` has x right, y forward: its points, extrinsics and poses are turned by
  -90° about z into our convention); intensity in [0, 1] (nuScenes' 0-255 is divided by 255).
* ``labels (N,)``: the evaluation classes (:data:`SEMANTIC_KITTI_CLASSES`,
  :data:`NUSCENES_LIDARSEG_CLASSES`), -1 (:data:`~lightning_distill.lidar.scene.IGNORE_INDEX`) for
  ignored points; ``instances (N,)``: SemanticKITTI's instance ids, -1 on nuScenes (lidarseg has none).
* ``images``, ``K``, ``T_cam_from_lidar`` (OpenCV camera from LiDAR), ``superpixels`` (SLIC with
  SLidR's settings scaled to ``image_size``) per camera; ``pixel_labels`` are all -1 (neither
  dataset labels pixels). Without cameras (SemanticKITTI ``with_images=False``, nuScenes
  ``cameras=()``) these keys are absent: a LiDAR-only batch.
* ``pose (B, 4, 4)`` ``world_from_lidar``; ``scene``, ``frame``: sequence index in the split and
  frame (sample) index within it.
* With ``labelled_fraction``, the training loader yields ``{"labelled": batch, "unlabelled": batch}``
  like :class:`~lightning_distill.data.lidar.SemiSupervisedLidarDataModule` (LaserMix++), the
  split drawn over training scans; unlabelled scans carry -1 labels.
* With ``history > 0``, the ``past_*`` keys of :mod:`lightning_distill.lidar.sequence` (LiMA's
  memory): the previous frames' images, intrinsics, extrinsics and poses.

Images are resized to ``image_size`` and ``K`` scaled to match (pixel centres at integer
coordinates: ``c' = (c + 0.5) s - 0.5``, ``f' = f s``).

Example:
    >>> SEMANTIC_KITTI_LEARNING_MAP[252], SEMANTIC_KITTI_CLASSES[0], SEMANTIC_KITTI_LEARNING_MAP[52]
    (0, 'car', -1)
    >>> NUSCENES_LIDARSEG_CLASSES[NUSCENES_LIDARSEG_MAP["vehicle.bus.rigid"]]
    'bus'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_distill.lidar.scene import IGNORE_INDEX
from lightning_distill.lidar.semi import mask_labels

__all__ = [
    "KITTI_LABEL_LOOKUP",
    "KITTI_LAYOUT",
    "NUSCENES_CAMERAS",
    "NUSCENES_LAYOUT",
    "NUSCENES_LIDARSEG_CLASSES",
    "NUSCENES_LIDARSEG_MAP",
    "NUSCENES_SPLITS",
    "OURS_FROM_NUSCENES_LIDAR",
    "PAST_CAMERA_KEYS",
    "SEMANTIC_KITTI_CLASSES",
    "SEMANTIC_KITTI_LEARNING_MAP",
    "FrameDataset",
    "MaskedLabels",
    "collate_frames",
    "homogeneous",
    "quaternion_matrix",
    "read_camera_image",
    "read_kitti_matrices",
    "require_path",
]

# SemanticKITTI's 19 evaluation classes and the learning map from the raw label ids (the lower 16
# bits of a .label value), after `config/semantic-kitti.yaml` (`labels`, `learning_map`) of the
# official API, github.com/PRBonn/semantic-kitti-api; its 0 ("unlabeled") becomes our -1 and the
# other classes move down by one. Moving objects merge into their static class.
SEMANTIC_KITTI_CLASSES: tuple[str, ...] = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
    "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
    "terrain", "pole", "traffic-sign",
)  # fmt: skip
_KITTI_RAW_TO_NAME: dict[int, str | None] = {
    0: None, 1: None,  # unlabeled, outlier
    10: "car", 11: "bicycle", 13: "other-vehicle", 15: "motorcycle", 16: "other-vehicle",  # bus, on-rails
    18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist", 32: "motorcyclist",
    40: "road", 44: "parking", 48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence",
    52: None, 60: "road", 70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole",  # other-structure, lane-marking
    81: "traffic-sign", 99: None,  # other-object
    252: "car", 253: "bicyclist", 254: "person", 255: "motorcyclist",  # moving-*
    256: "other-vehicle", 257: "other-vehicle", 258: "truck", 259: "other-vehicle",
}  # fmt: skip
SEMANTIC_KITTI_LEARNING_MAP: dict[int, int] = {
    raw: IGNORE_INDEX if name is None else SEMANTIC_KITTI_CLASSES.index(name)
    for raw, name in _KITTI_RAW_TO_NAME.items()
}

# nuScenes-lidarseg: the 16 classes of its segmentation challenge and the 32 general categories
# that feed them, after the nuScenes-lidarseg challenge's class definition (nuscenes.org, and
# `eval/lidarseg/utils.py` of github.com/nutonomy/nuscenes-devkit). Categories not listed (noise,
# animal, personal_mobility, stroller, wheelchair, debris, pushable_pullable, bicycle_rack,
# ambulance, police vehicle, static.other, vehicle.ego) are ignored (-1).
KITTI_LABEL_LOOKUP = np.full(1 << 16, IGNORE_INDEX, dtype=np.int64)  # raw ids outside the map are ignored
KITTI_LABEL_LOOKUP[list(SEMANTIC_KITTI_LEARNING_MAP)] = list(SEMANTIC_KITTI_LEARNING_MAP.values())

NUSCENES_LIDARSEG_CLASSES: tuple[str, ...] = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
    "manmade", "vegetation",
)  # fmt: skip
_NUSCENES_CATEGORY_TO_NAME: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
    "flat.driveable_surface": "driveable_surface",
    "flat.other": "other_flat",
    "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain",
    "static.manmade": "manmade",
    "static.vegetation": "vegetation",
}
NUSCENES_LIDARSEG_MAP: dict[str, int] = {
    category: NUSCENES_LIDARSEG_CLASSES.index(name) for category, name in _NUSCENES_CATEGORY_TO_NAME.items()
}
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT",
)  # fmt: skip
# the devkit's mini splits (`nuscenes/utils/splits.py`); larger splits are given as lists or files
NUSCENES_SPLITS: dict[str, tuple[str, ...]] = {
    "mini_train": (
        "scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
        "scene-1100",
    ),
    "mini_val": ("scene-0103", "scene-0916"),
}  # fmt: skip
# our LiDAR frame (x forward, y left, z up) from nuScenes' LIDAR_TOP frame (x right, y forward, z up)
OURS_FROM_NUSCENES_LIDAR = np.array(
    [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
PAST_CAMERA_KEYS = {"images": "past_images", "K": "past_K", "T_cam_from_lidar": "past_T_cam_from_lidar"}


def collate_frames(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Batch real-data samples: points concatenated with a batch index, every other key stacked.

    With cameras this is :func:`~lightning_distill.lidar.batches.collate` (plus the ``past_*`` keys of
    :func:`~lightning_distill.lidar.sequence.collate_sequence` when the samples carry them); without,
    the camera keys are simply absent.

    Raises:
        ValueError: an empty list.
    """
    if not samples:
        raise ValueError("`samples` is empty.")
    points = [
        torch.cat([torch.full((len(s["points"]), 1), float(b)), s["points"]], 1)
        for b, s in enumerate(samples)
    ]
    batch = {
        "points": torch.cat(points),
        "labels": torch.cat([s["labels"] for s in samples]),
        "instances": torch.cat([s["instances"] for s in samples]),
    }
    for key in samples[0]:
        if key not in batch:
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    return batch


def require_path(path: Path, what: str, layout: str) -> Path:
    """``path`` if it exists, else ``FileNotFoundError`` naming ``what`` and the expected ``layout``."""
    if not path.exists():
        raise FileNotFoundError(f"Missing {what}: {str(path)!r}. Expected layout: {layout}")
    return path


def quaternion_matrix(rotation: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """4x4 rigid transform from a nuScenes ``[w, x, y, z]`` quaternion and a translation."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = (float(v) for v in rotation)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def read_camera_image(path: Path, image_size: tuple[int, int], K: np.ndarray) -> tuple[Tensor, Tensor]:
    """An RGB image ``(3, H, W)`` in [0, 1] resized to ``image_size``, and ``K`` scaled to match."""
    from PIL import Image

    with Image.open(path) as raw:
        image = raw.convert("RGB")
    width, height = image.size
    if (height, width) != image_size:
        image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
    sx, sy = image_size[1] / width, image_size[0] / height
    scaled = np.array(K, dtype=np.float64)
    scaled[0] = scaled[0] * sx
    scaled[1] = scaled[1] * sy
    scaled[0, 2] += 0.5 * sx - 0.5
    scaled[1, 2] += 0.5 * sy - 0.5
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    return tensor, torch.from_numpy(scaled).float()


class FrameDataset(Dataset):
    """A list of frame records read lazily by ``read``."""

    def __init__(self, records: list[dict[str, Any]], read: Callable[[dict[str, Any]], dict[str, Tensor]]):
        self.records, self.read = records, read

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.read(self.records[index])


class MaskedLabels(Dataset):
    """A dataset whose samples have every label replaced by the ignore index (unlabelled scans)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return mask_labels(self.data[index])


KITTI_LAYOUT = (
    "<root>/sequences/<seq>/{velodyne/<frame>.bin, labels/<frame>.label, image_2/<frame>.png, calib.txt, "
    "poses.txt} (SemanticKITTI's labels and KITTI odometry's velodyne, colour images, calibration and poses "
    "unpacked into one tree)."
)


def read_kitti_matrices(path: Path) -> dict[str, np.ndarray]:
    """``name: 12 numbers`` lines of a KITTI ``calib.txt`` as 3x4 matrices."""
    matrices = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        name, values = line.split(":", 1)
        numbers = np.array(values.split(), dtype=np.float64)
        if numbers.size == 12:
            matrices[name.strip()] = numbers.reshape(3, 4)
    return matrices


def homogeneous(matrix_3x4: np.ndarray) -> np.ndarray:
    """A 3x4 ``[R | t]`` as a 4x4 rigid transform."""
    T = np.eye(4)
    T[:3] = matrix_3x4
    return T


NUSCENES_LAYOUT = (
    "<root>/<version>/{sample, sample_data, calibrated_sensor, ego_pose, sensor, scene, lidarseg, category}.json, "
    "<root>/samples/LIDAR_TOP/*.pcd.bin, <root>/samples/CAM_*/*.jpg, <root>/lidarseg/<version>/<token>_lidarseg.bin "
    "(nuScenes with the nuScenes-lidarseg extension unpacked into the same root)."
)
