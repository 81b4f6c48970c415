"""Scene completion pairs: one sparse LiDAR scan and the dense scene around it.

LiDiff and Distillation-DPO (arXiv 2504.11447) complete a single SemanticKITTI scan into the dense
scene; their ground truth is the map accumulated from every scan of the sequence with the poses.
Our stand-in does the same on :class:`~lightning_distill.lidar.scene.StreetSceneGenerator`
sequences:

1. generate ``num_frames`` sweeps of one street (the ego drives; the poses are ``world_from_lidar``);
2. move every sweep into the world frame, pool them, and bring the pool into the LiDAR frame of
   frame ``frame`` (default: the middle one, so the map extends both ahead and behind);
3. crop the pool and the scan of frame ``frame`` to the same horizontal range ``crop_range`` (the
   scan's range) and height band;
4. voxel-downsample both with the same grid (:func:`voxel_downsample`: one point per occupied voxel,
   the mean of its points), so every voxel the scan touches is a voxel of the target: every input
   point has a target point within ``voxel_size * sqrt(3)``;
5. draw exactly ``num_scan_points`` input points from the downsampled scan (without replacement
   when there are enough, with replacement otherwise), from a generator seeded by ``seed``.

The generator's scenes are static (parked and stopped cars are boxes, nothing moves), so the
accumulated map holds no motion trails and nothing is dropped; with real data, moving objects
would be removed before accumulating (as LiDiff's ground-truth maps do with SemanticKITTI's
moving-object labels). Deterministic from ``seed``.

Example:
    >>> pts = torch.tensor([[0.1, 0.1, 0.1], [0.3, 0.2, 0.1], [1.2, 0.0, 0.0]])
    >>> voxel_downsample(pts, 0.5)
    tensor([[0.2000, 0.1500, 0.1000],
            [1.2000, 0.0000, 0.0000]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_distill.lidar.scene import StreetSceneGenerator
from lightning_distill.lidar.sequence import relative_pose, transform_points

__all__ = ["CompletionSample", "completion_sample", "crop_points", "voxel_downsample"]


@dataclass(frozen=True)
class CompletionSample:
    """One completion pair, in the LiDAR frame of the scan.

    Attributes:
        scan: ``(num_scan_points, 3)`` float32 input points (the sparse scan, downsampled).
        target: ``(M, 3)`` float32 dense scene (every sweep accumulated, cropped, downsampled).
        pose: ``(4, 4)`` float32 ``world_from_lidar`` of the scan's frame.
    """

    scan: Tensor
    target: Tensor
    pose: Tensor


def voxel_downsample(points: Tensor, voxel_size: float) -> Tensor:
    """One point per occupied voxel: the mean of the points inside it.

    Voxel boundaries sit at multiples of ``voxel_size``, so two clouds downsampled alone or
    together occupy the same voxels. Output rows are sorted by voxel index (deterministic).

    Args:
        points: ``(N, 3)`` points.
        voxel_size: voxel edge in metres.

    Returns:
        ``(V, 3)`` points, ``V <= N``.

    Raises:
        ValueError: ``points`` not ``(N, 3)`` or ``voxel_size`` <= 0.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"`points` must be (N, 3), got {tuple(points.shape)}.")
    if not voxel_size > 0:
        raise ValueError(f"`voxel_size` must be > 0, got {voxel_size}.")
    if len(points) == 0:
        return points.clone()
    cells = torch.floor(points.double() / voxel_size).long()
    cells = cells - cells.amin(dim=0)
    extent = cells.amax(dim=0) + 1
    key = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]  # lexicographic voxel order
    _, inverse = torch.unique(key, return_inverse=True)
    count = torch.bincount(inverse).to(points.dtype)
    sums = torch.zeros(int(inverse.max()) + 1, 3, dtype=points.dtype).index_add_(0, inverse, points)
    return sums / count[:, None]


def crop_points(points: Tensor, crop_range: float, z_range: tuple[float, float]) -> Tensor:
    """Points within ``crop_range`` metres horizontally and with ``z`` inside ``z_range``.

    Raises:
        ValueError: ``points`` not ``(N, 3)``, ``crop_range`` <= 0 or an empty ``z_range``.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"`points` must be (N, 3), got {tuple(points.shape)}.")
    if not crop_range > 0:
        raise ValueError(f"`crop_range` must be > 0, got {crop_range}.")
    if not z_range[0] < z_range[1]:
        raise ValueError(f"`z_range` must be (low, high) with low < high, got {z_range}.")
    keep = (
        (points[:, :2].norm(dim=1) <= crop_range)
        & (points[:, 2] >= z_range[0])
        & (points[:, 2] <= z_range[1])
    )
    return points[keep]


def completion_sample(
    generator: StreetSceneGenerator,
    seed: int,
    *,
    num_frames: int = 5,
    frame: int | None = None,
    crop_range: float = 10.0,
    z_range: tuple[float, float] = (-3.0, 2.0),
    voxel_size: float = 0.4,
    num_scan_points: int = 256,
) -> CompletionSample:
    """The completion pair of the street laid out from ``seed`` (see the module docstring).

    Args:
        generator: the scene generator (its LiDAR settings decide how sparse the scan is).
        seed: scene seed; also seeds the draw of the input points.
        num_frames: sweeps accumulated into the dense target.
        frame: the sweep that is the input scan; ``None`` takes ``num_frames // 2``.
        crop_range: horizontal range of the scan and the target, metres.
        z_range: height band kept, metres in the LiDAR frame.
        voxel_size: voxel edge of the downsampling of scan and target, metres.
        num_scan_points: input points per sample (fixed, so that scans batch).

    Raises:
        ValueError: a non-positive count or size, ``frame`` outside the sequence, or a scan with no
            point inside the crop.
    """
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    if num_scan_points < 1:
        raise ValueError(f"`num_scan_points` must be >= 1, got {num_scan_points}.")
    frame = num_frames // 2 if frame is None else frame
    if not 0 <= frame < num_frames:
        raise ValueError(f"`frame` must be in [0, {num_frames}), got {frame}.")
    frames = generator.generate(seed, num_frames=num_frames)
    pose = frames[frame].pose
    # 1-2. every sweep into the scan's LiDAR frame (world -> scan frame through the poses).
    swept = [transform_points(f.points[:, :3], relative_pose(pose, f.pose)) for f in frames]
    dense = torch.cat(swept)
    scan = frames[frame].points[:, :3]
    # 3-4. same crop, same voxel grid.
    target = voxel_downsample(crop_points(dense, crop_range, z_range), voxel_size)
    scan = voxel_downsample(crop_points(scan, crop_range, z_range), voxel_size)
    if len(scan) == 0:
        raise ValueError(
            f"the scan of seed {seed} has no point within `crop_range`={crop_range} and `z_range`={z_range}."
        )
    # 5. a fixed number of input points.
    rng = torch.Generator().manual_seed(int(seed))
    if len(scan) >= num_scan_points:
        pick = torch.randperm(len(scan), generator=rng)[:num_scan_points]
    else:
        pick = torch.randint(len(scan), (num_scan_points,), generator=rng)
    return CompletionSample(
        scan=scan[pick].float().contiguous(), target=target.float().contiguous(), pose=pose
    )
