"""SemanticKITTI as a LightningDataModule (labels, KITTI odometry colour images, calibration, poses).

The label map and the file readers are :mod:`lightning_distill.lidar.datasets`; the shared loaders
:class:`~lightning_distill.data.lidar_real.RealLidarDataModule`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_distill.data.lidar_real import RealLidarDataModule
from lightning_distill.lidar.datasets import (
    KITTI_LABEL_LOOKUP,
    KITTI_LAYOUT,
    SEMANTIC_KITTI_CLASSES,
    homogeneous,
    read_kitti_matrices,
    require_path,
)
from lightning_distill.lidar.scene import IGNORE_INDEX

__all__ = ["SemanticKITTIDataModule"]


class SemanticKITTIDataModule(RealLidarDataModule):
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
        ValueError: (when a frame is read) an empty scan, NaN/inf points, or labels out of range; the
            message names the file.
    """

    layout = KITTI_LAYOUT
    num_classes = len(SEMANTIC_KITTI_CLASSES)

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
            folder = require_path(self.root / "sequences" / sequence, f"sequence {sequence}", self.layout)
            scans = sorted(require_path(folder / "velodyne", "velodyne folder", self.layout).glob("*.bin"))
            if not scans:
                raise FileNotFoundError(
                    f"No .bin scans in {str(folder / 'velodyne')!r}. Expected layout: {self.layout}"
                )
            calib = read_kitti_matrices(require_path(folder / "calib.txt", "calibration", self.layout))
            if "Tr" not in calib:
                raise ValueError(f"{str(folder / 'calib.txt')!r} has no 'Tr:' line (velodyne -> camera 0).")
            Tr = homogeneous(calib["Tr"])
            poses_file = require_path(
                folder / "poses.txt", "poses (KITTI odometry poses/<seq>.txt)", self.layout
            )
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
                        "pose": np.linalg.inv(Tr) @ homogeneous(poses[frame].reshape(3, 4)) @ Tr,
                        "scene": scene,
                        "frame": frame,
                        "past": [],
                    }
                )
        return records

    def read_cameras(self, record: dict[str, Any]) -> dict[str, Tensor]:
        for path, _ in record["cameras"]:
            require_path(path, f"camera image {path.parent.name}/{path.name}", self.layout)
        return super().read_cameras(record)

    def read_points(self, record: dict[str, Any]) -> dict[str, Tensor]:
        raw = np.fromfile(require_path(record["scan"], "scan", self.layout), dtype=np.float32)
        if raw.size % 4:
            raise ValueError(
                f"{str(record['scan'])!r} holds {raw.size} floats, not x, y, z, remission per point."
            )
        points = torch.from_numpy(raw.reshape(-1, 4).copy())
        if record["label"] is None:
            labels = torch.full((len(points),), IGNORE_INDEX, dtype=torch.long)
            return {"points": points, "labels": labels, "instances": labels.clone()}
        path = require_path(record["label"], "label file (or set `with_labels: false`)", self.layout)
        raw_labels = np.fromfile(path, dtype=np.uint32)
        if len(raw_labels) != len(points):
            raise ValueError(f"{str(path)!r} holds {len(raw_labels)} labels for {len(points)} points.")
        semantic = (raw_labels & 0xFFFF).astype(np.int64)
        return {
            "points": points,
            "labels": torch.from_numpy(KITTI_LABEL_LOOKUP[semantic]),
            "instances": torch.from_numpy((raw_labels >> 16).astype(np.int64)),
        }
