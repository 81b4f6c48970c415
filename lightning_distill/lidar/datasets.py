"""Readers for the real datasets LiDAR users train on: SemanticKITTI and nuScenes (with lidarseg).

Both data modules serve batches in the layout of :mod:`lightning_distill.lidar.data` (see its
table and :func:`~lightning_distill.lidar.data.collate`), so a recipe that trains on
:class:`~lightning_distill.lidar.data.SyntheticLidarDataModule` runs on real data when the
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
  like :class:`~lightning_distill.lidar.semi.SemiSupervisedLidarDataModule` (LaserMix++), the
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

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.lidar.geometry import scaled_segment_count, slic_superpixels
from lightning_distill.lidar.scene import IGNORE_INDEX
from lightning_distill.lidar.semi import _CyclingSampler, labelled_split, mask_labels

__all__ = [
    "NUSCENES_CAMERAS",
    "NUSCENES_LIDARSEG_CLASSES",
    "NUSCENES_LIDARSEG_MAP",
    "NuScenesLidarDataModule",
    "SEMANTIC_KITTI_CLASSES",
    "SEMANTIC_KITTI_LEARNING_MAP",
    "SemanticKITTIDataModule",
    "collate_frames",
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
_KITTI_LOOKUP = np.full(1 << 16, IGNORE_INDEX, dtype=np.int64)  # raw ids outside the map are ignored
_KITTI_LOOKUP[list(SEMANTIC_KITTI_LEARNING_MAP)] = list(SEMANTIC_KITTI_LEARNING_MAP.values())

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
_NUSCENES_SPLITS: dict[str, tuple[str, ...]] = {
    "mini_train": (
        "scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
        "scene-1100",
    ),
    "mini_val": ("scene-0103", "scene-0916"),
}  # fmt: skip
# our LiDAR frame (x forward, y left, z up) from nuScenes' LIDAR_TOP frame (x right, y forward, z up)
_OURS_FROM_NUSCENES_LIDAR = np.array(
    [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
_PAST_KEYS = {"images": "past_images", "K": "past_K", "T_cam_from_lidar": "past_T_cam_from_lidar"}


def collate_frames(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Batch real-data samples: points concatenated with a batch index, every other key stacked.

    With cameras this is :func:`~lightning_distill.lidar.data.collate` (plus the ``past_*`` keys of
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


def _require(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"Missing {what}: {str(path)!r}. Expected layout: {layout}")
    return path


def _quaternion_matrix(rotation: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """4x4 rigid transform from a nuScenes ``[w, x, y, z]`` quaternion and a translation."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = (float(v) for v in rotation)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def _read_image(path: Path, image_size: tuple[int, int], K: np.ndarray) -> tuple[Tensor, Tensor]:
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


class _FrameDataset(Dataset):
    """A list of frame records read lazily by ``read``."""

    def __init__(self, records: list[dict[str, Any]], read: Callable[[dict[str, Any]], dict[str, Tensor]]):
        self.records, self.read = records, read

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.read(self.records[index])


class _MaskedLabels(Dataset):
    """A dataset whose samples have every label replaced by the ignore index (unlabelled scans)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return mask_labels(self.data[index])


class _RealLidarDataModule(L.LightningDataModule):
    """What both readers share: splits of frame records, image reading, superpixels, loaders."""

    layout = ""

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
        _require(self.root, "dataset root", self.layout)
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
        images, Ks = zip(*(_read_image(path, self.image_size, K) for path, K in record["cameras"]))
        return {
            "images": torch.stack(images),
            "K": torch.stack(Ks),
            "T_cam_from_lidar": torch.from_numpy(np.stack(record["T_cam_from_lidar"])).float(),
        }

    def read(self, record: dict[str, Any]) -> dict[str, Tensor]:
        """One sample in the layout of :func:`~lightning_distill.lidar.data.collate` (unbatched)."""
        sample = self.read_points(record)
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
        sample["pose"] = torch.from_numpy(record["pose"]).float()
        sample["scene"], sample["frame"] = torch.tensor(record["scene"]), torch.tensor(record["frame"])
        if record["past"]:
            past = [self.read_cameras(p) for p in record["past"]]
            for key, past_key in _PAST_KEYS.items():
                sample[past_key] = torch.stack([p[key] for p in past])
            sample["past_pose"] = torch.from_numpy(np.stack([p["pose"] for p in record["past"]])).float()
        return sample

    def dataset(self, split: str) -> _FrameDataset:
        """The samples of ``"train"``, ``"val"`` or ``"test"``, read on access."""
        if split not in self.records:
            self.setup()
        return _FrameDataset(self.records[split], self.read)

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
                sampler=_CyclingSampler(len(labelled), batches * self.batch_size, seed=seed),
                collate_fn=collate_frames,
                num_workers=self.num_workers,
            )
        }
        if self.use_unlabelled:
            loaders["unlabelled"] = ResumableDataLoader(
                _MaskedLabels(Subset(data, unlabelled.tolist())),
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


_KITTI_LAYOUT = (
    "<root>/sequences/<seq>/{velodyne/<frame>.bin, labels/<frame>.label, image_2/<frame>.png, calib.txt, "
    "poses.txt} (SemanticKITTI's labels and KITTI odometry's velodyne, colour images, calibration and poses "
    "unpacked into one tree)."
)


def _read_kitti_matrices(path: Path) -> dict[str, np.ndarray]:
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


def _homogeneous(matrix_3x4: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3] = matrix_3x4
    return T


class SemanticKITTIDataModule(_RealLidarDataModule):
    """SemanticKITTI scans with labels, KITTI odometry colour images, calibration and poses.

    Expected tree (the usual way of unpacking SemanticKITTI's ``data_odometry_labels`` over KITTI
    odometry's ``velodyne``, ``color`` and ``calib`` archives)::

        <root>/sequences/<seq>/velodyne/<frame>.bin   float32 (x, y, z, remission)
                               labels/<frame>.label   uint32: semantic id (low 16 bits) | instance << 16
                               image_2/<frame>.png    left colour camera (when `with_images`)
                               calib.txt              P0..P3, Tr (velodyne -> rectified camera 0)
                               poses.txt              camera-0 pose of each frame, 12 numbers a line

    Camera ``image_<n>`` projects with ``P<n> @ Tr``: ``K = P<n>[:, :3]`` and
    ``T_cam_from_lidar = [I | K^-1 P<n>[:, 3]] @ Tr`` (KITTI's rectified cameras are OpenCV-convention).
    ``pose = Tr^-1 @ poses[frame] @ Tr`` (``world_from_lidar``, the world being camera 0 at frame 0).

    Args:
        root: dataset root holding ``sequences/``.
        train_sequences: training sequences (SemanticKITTI: 00-07, 09, 10).
        val_sequences: validation sequences (SemanticKITTI: 08).
        test_sequences: test sequences; default 08 too (11-21 have no public labels: give them with
            ``with_labels=False``).
        with_images: read camera images (for image-to-LiDAR distillation); ``False`` serves LiDAR-only
            batches (LaserMix-style training), without the camera keys.
        with_labels: read ``labels/``; ``False`` gives -1 labels and instances.
        cameras: KITTI colour cameras, ``image_2`` (left) and/or ``image_3`` (right).
        image_size: ``(H, W)`` images are resized to (KITTI's are about 370 x 1226).
        history: past frames per sample (LiMA's memory), the frames just before in the same sequence.
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
        ValueError: bad arguments.
        FileNotFoundError: (at ``setup`` or when a frame is read) a missing folder or file; the
            message names it and the expected layout.
    """

    layout = _KITTI_LAYOUT

    def __init__(
        self,
        root: str,
        train_sequences: Sequence[str | int] = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
        val_sequences: Sequence[str | int] = ("08",),
        test_sequences: Sequence[str | int] = ("08",),
        with_images: bool = True,
        with_labels: bool = True,
        cameras: Sequence[str] = ("image_2",),
        image_size: tuple[int, int] = (192, 640),
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
        bad = [c for c in cameras if c not in ("image_2", "image_3")]
        if bad or (with_images and not cameras):
            raise ValueError(f"`cameras` must name 'image_2' and/or 'image_3', got {list(cameras)!r}.")
        self.sequences = {
            split: [self._sequence_name(s) for s in seqs]
            for split, seqs in (("train", train_sequences), ("val", val_sequences), ("test", test_sequences))
        }
        self.with_images, self.with_labels, self.cameras = with_images, with_labels, tuple(cameras)

    @staticmethod
    def _sequence_name(sequence: str | int) -> str:
        if isinstance(sequence, int) or (isinstance(sequence, str) and sequence.isdigit()):
            return f"{int(sequence):02d}"
        raise ValueError(f"sequences must be numbers like '08' or 8, got {sequence!r}.")

    @property
    def uses_images(self) -> bool:
        return self.with_images

    def split_records(self, split: str) -> list[dict[str, Any]]:
        records = []
        for scene, sequence in enumerate(self.sequences[split]):
            folder = _require(self.root / "sequences" / sequence, f"sequence {sequence}", self.layout)
            scans = sorted(_require(folder / "velodyne", "velodyne folder", self.layout).glob("*.bin"))
            if not scans:
                raise FileNotFoundError(
                    f"No .bin scans in {str(folder / 'velodyne')!r}. Expected layout: {self.layout}"
                )
            calib = _read_kitti_matrices(_require(folder / "calib.txt", "calibration", self.layout))
            if "Tr" not in calib:
                raise ValueError(f"{str(folder / 'calib.txt')!r} has no 'Tr:' line (velodyne -> camera 0).")
            Tr = _homogeneous(calib["Tr"])
            poses_file = _require(folder / "poses.txt", "poses (KITTI odometry poses/<seq>.txt)", self.layout)
            poses = np.loadtxt(poses_file, dtype=np.float64, ndmin=2)
            if poses.shape[1] != 12:
                raise ValueError(f"{str(poses_file)!r} must hold 12 numbers a line, got {poses.shape[1]}.")
            cameras, extrinsics = [], []
            for camera in self.cameras if self.with_images else ():
                P = calib.get(f"P{camera[-1]}")
                if P is None:
                    raise ValueError(
                        f"{str(folder / 'calib.txt')!r} has no 'P{camera[-1]}:' line for {camera}."
                    )
                K = P[:, :3]
                offset = np.eye(4)
                offset[:3, 3] = np.linalg.solve(K, P[:, 3])
                cameras.append((camera, K))
                extrinsics.append(offset @ Tr)
            for scan in scans:
                frame = int(scan.stem)
                if frame >= len(poses):
                    raise ValueError(
                        f"{str(poses_file)!r} has {len(poses)} poses, none for frame {scan.stem}."
                    )
                records.append(
                    {
                        "scan": scan,
                        "label": folder / "labels" / f"{scan.stem}.label" if self.with_labels else None,
                        "cameras": [(folder / name / f"{scan.stem}.png", K) for name, K in cameras],
                        "T_cam_from_lidar": extrinsics,
                        "pose": np.linalg.inv(Tr) @ _homogeneous(poses[frame].reshape(3, 4)) @ Tr,
                        "scene": scene,
                        "frame": frame,
                        "past": [],
                    }
                )
        return records

    def read_cameras(self, record: dict[str, Any]) -> dict[str, Tensor]:
        for path, _ in record["cameras"]:
            _require(path, f"camera image {path.parent.name}/{path.name}", self.layout)
        return super().read_cameras(record)

    def read_points(self, record: dict[str, Any]) -> dict[str, Tensor]:
        raw = np.fromfile(_require(record["scan"], "scan", self.layout), dtype=np.float32)
        if raw.size % 4:
            raise ValueError(
                f"{str(record['scan'])!r} holds {raw.size} floats, not x, y, z, remission per point."
            )
        points = torch.from_numpy(raw.reshape(-1, 4).copy())
        if record["label"] is None:
            labels = torch.full((len(points),), IGNORE_INDEX, dtype=torch.long)
            return {"points": points, "labels": labels, "instances": labels.clone()}
        path = _require(record["label"], "label file (or set `with_labels: false`)", self.layout)
        raw_labels = np.fromfile(path, dtype=np.uint32)
        if len(raw_labels) != len(points):
            raise ValueError(f"{str(path)!r} holds {len(raw_labels)} labels for {len(points)} points.")
        semantic = (raw_labels & 0xFFFF).astype(np.int64)
        return {
            "points": points,
            "labels": torch.from_numpy(_KITTI_LOOKUP[semantic]),
            "instances": torch.from_numpy((raw_labels >> 16).astype(np.int64)),
        }


_NUSCENES_LAYOUT = (
    "<root>/<version>/{sample, sample_data, calibrated_sensor, ego_pose, sensor, scene, lidarseg, category}.json, "
    "<root>/samples/LIDAR_TOP/*.pcd.bin, <root>/samples/CAM_*/*.jpg, <root>/lidarseg/<version>/<token>_lidarseg.bin "
    "(nuScenes with the nuScenes-lidarseg extension unpacked into the same root)."
)


class NuScenesLidarDataModule(_RealLidarDataModule):
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
    """

    layout = _NUSCENES_LAYOUT

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
        path = _require(self.root / self.version / f"{name}.json", f"nuScenes table {name}.json", self.layout)
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
            if spec in _NUSCENES_SPLITS:
                return list(_NUSCENES_SPLITS[spec])
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
            _quaternion_matrix(ego["rotation"], ego["translation"]),
            _quaternion_matrix(calib["rotation"], calib["translation"]),
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
        ours_to_nus = np.linalg.inv(_OURS_FROM_NUSCENES_LIDAR)
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
            _require(path, f"camera image {path.parent.name}/{path.name}", self.layout)
        return super().read_cameras(record)

    def read_points(self, record: dict[str, Any]) -> dict[str, Tensor]:
        raw = np.fromfile(_require(record["scan"], "LIDAR_TOP sweep", self.layout), dtype=np.float32)
        if raw.size % 5:
            raise ValueError(
                f"{str(record['scan'])!r} holds {raw.size} floats, not x, y, z, intensity, ring per point."
            )
        raw = raw.reshape(-1, 5)
        xyz = raw[:, :3].astype(np.float64) @ _OURS_FROM_NUSCENES_LIDAR[:3, :3].T
        points = torch.from_numpy(np.concatenate([xyz, raw[:, 3:4] / 255.0], axis=1).astype(np.float32))
        instances = torch.full((len(points),), IGNORE_INDEX, dtype=torch.long)
        if record["label"] is None:
            return {"points": points, "labels": instances.clone(), "instances": instances}
        path = _require(record["label"], "lidarseg label file (or set `with_labels: false`)", self.layout)
        raw_labels = np.fromfile(path, dtype=np.uint8)
        if len(raw_labels) != len(points):
            raise ValueError(f"{str(path)!r} holds {len(raw_labels)} labels for {len(points)} points.")
        if self._label_lookup is None:
            self.setup()
        labels = torch.from_numpy(self._label_lookup[raw_labels.astype(np.int64)])
        return {"points": points, "labels": labels, "instances": instances}
