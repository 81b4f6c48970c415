"""4D semantic occupancy: the LiDAR street sequences voxelised into ``(T, X, Y, Z)`` class grids.

DynamicCity (arXiv 2410.18084) generates sequences of semantic occupancy grids (CarlaSC,
Occ3D-Waymo). Our stand-in comes from :class:`~lightning_distill.lidar.scene.StreetSceneGenerator`:
the labelled points of every frame of a sequence are moved to world coordinates with the frame
poses and pooled (so the grid holds every surface the sweep has seen, not one sparse ring), then,
for each frame ``t``, moved into that frame's LiDAR frame and voxelised around the ego vehicle. A
voxel takes the most frequent point label inside it, shifted by one (``0`` is empty space), so
class ``k + 1`` is :data:`~lightning_distill.lidar.scene.CLASS_NAMES` ``[k]``. The ego drives, so
the scene slides through the grid over time: that is the 4D part. Deterministic from the seed.

Example:
    >>> grid = OccupancyGrid(size=(8, 8, 4), voxel_size=(2.0, 2.0, 1.0), z_min=-2.0)
    >>> points = torch.tensor([[0.5, 0.5, -1.5], [0.6, 0.4, -1.6], [0.7, 0.5, -1.4], [100.0, 0.0, 0.0]])
    >>> occ = voxelise(points, torch.tensor([2, 2, 4, 1]), grid)
    >>> occ.shape, int(occ[4, 4, 0]), int((occ > 0).sum())
    (torch.Size([8, 8, 4]), 3, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_distill.lidar.scene import CLASS_NAMES, StreetSceneGenerator
from lightning_distill.lidar.sequence import transform_points

__all__ = [
    "OCCUPANCY_CLASSES",
    "OccupancyGrid",
    "OccupancyIoU",
    "class_frequency_distance",
    "occupancy_sequence",
    "voxelise",
]

#: Class names of the occupancy grids: ``0`` is empty space, then the street-scene classes.
OCCUPANCY_CLASSES: tuple[str, ...] = ("empty", *CLASS_NAMES)


@dataclass(frozen=True)
class OccupancyGrid:
    """A box around the sensor cut into voxels.

    Args:
        size: voxels along x (forward), y (left), z (up).
        voxel_size: voxel edge lengths in metres along x, y, z.
        z_min: height of the grid's floor in the LiDAR frame (the road is at ``-lidar_height``).

    The x and y ranges are centred on the sensor: ``[-size·voxel/2, size·voxel/2)``.

    Raises:
        ValueError: a non-positive size or voxel edge.
    """

    size: tuple[int, int, int] = (32, 32, 8)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 0.5)
    z_min: float = -2.0

    def __post_init__(self) -> None:
        if len(self.size) != 3 or any(int(s) < 1 for s in self.size):
            raise ValueError(f"`size` must be three positive voxel counts (x, y, z), got {self.size}.")
        if len(self.voxel_size) != 3 or any(float(v) <= 0 for v in self.voxel_size):
            raise ValueError(f"`voxel_size` must be three positive lengths (x, y, z), got {self.voxel_size}.")

    @property
    def origin(self) -> Tensor:
        """The grid's lowest corner ``(3,)`` in the LiDAR frame."""
        sx, sy, _ = self.size
        vx, vy, _ = self.voxel_size
        return torch.tensor([-sx * vx / 2, -sy * vy / 2, self.z_min])


def voxelise(points: Tensor, labels: Tensor, grid: OccupancyGrid) -> Tensor:
    """Semantic occupancy ``(X, Y, Z)`` int64 of labelled points: the majority label + 1 per voxel, 0 empty.

    Args:
        points: ``(N, >=3)`` xyz (extra columns ignored) in the grid's frame.
        labels: ``(N,)`` class indices ``>= 0``; negative labels (ignored points) are dropped.
        grid: the voxel box.

    Ties go to the lower class index (deterministic).

    Raises:
        ValueError: ``points`` not ``(N, >=3)`` or ``labels`` not ``(N,)``.
    """
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"`points` must be (N, >=3), got {tuple(points.shape)}.")
    if labels.shape != points.shape[:1]:
        raise ValueError(
            f"`labels` must be ({points.shape[0]},) to match `points`, got {tuple(labels.shape)}."
        )
    size = torch.tensor(grid.size)
    index = ((points[:, :3].float() - grid.origin) / torch.tensor(grid.voxel_size)).floor().long()
    keep = (labels >= 0) & (index >= 0).all(1) & (index < size).all(1)
    index, labels = index[keep], labels[keep]
    num_classes = len(CLASS_NAMES) if labels.numel() == 0 else max(len(CLASS_NAMES), int(labels.max()) + 1)
    flat = (index[:, 0] * size[1] + index[:, 1]) * size[2] + index[:, 2]
    num_voxels = int(size.prod())
    counts = torch.bincount(flat * num_classes + labels, minlength=num_voxels * num_classes)
    counts = counts.view(num_voxels, num_classes)
    occupancy = torch.where(counts.sum(1) > 0, counts.argmax(1) + 1, 0)
    return occupancy.view(*grid.size)


def occupancy_sequence(
    generator: StreetSceneGenerator, seed: int, num_frames: int, grid: OccupancyGrid
) -> Tensor:
    """The 4D semantic occupancy ``(T, X, Y, Z)`` int64 of the sequence laid out from ``seed``.

    Every frame's points are pooled in world coordinates, then voxelised in each frame's LiDAR
    frame (see the module docstring).

    Raises:
        ValueError: ``num_frames`` < 1.
    """
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    frames = generator.generate(seed=seed, num_frames=num_frames)
    world = torch.cat([transform_points(f.points[:, :3], f.pose) for f in frames])
    labels = torch.cat([f.labels for f in frames])
    grids = [voxelise(transform_points(world, torch.linalg.inv(f.pose)), labels, grid) for f in frames]
    return torch.stack(grids)


class OccupancyIoU(MulticlassConfusionMatrix):
    """Occupancy IoU (occupied vs empty) and semantic mIoU (mean over the non-empty classes), as DynamicCity reports.

    A torchmetrics confusion matrix over all voxels seen (DDP-safe), read out at :meth:`compute` as
    ``{"iou": ..., "miou": ...}``; a class absent from both prediction and target is left out of the mean.

    Args:
        num_classes: occupancy classes, class 0 being empty space.

    Example:
        >>> metric = OccupancyIoU(3)
        >>> metric.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'iou': 1.0, 'miou': 0.5}
    """

    def __init__(self, num_classes: int = len(OCCUPANCY_CLASSES)) -> None:
        super().__init__(num_classes=num_classes)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds.reshape(-1), target.reshape(-1))

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        cm = self.confmat.double()  # rows: target, columns: prediction
        tp_occupied = cm[1:, 1:].sum()
        iou = tp_occupied / (tp_occupied + cm[0, 1:].sum() + cm[1:, 0].sum()).clamp_min(1)
        union = cm.sum(0) + cm.sum(1) - cm.diag()
        per_class = (cm.diag() / union.clamp_min(1))[1:]
        seen = union[1:] > 0
        miou = per_class[seen].mean() if bool(seen.any()) else per_class.new_zeros(())
        return {"iou": iou.float(), "miou": miou.float()}


def class_frequency_distance(a: Tensor, b: Tensor, num_classes: int = len(OCCUPANCY_CLASSES)) -> Tensor:
    """Total variation between the voxel class frequencies of two sets of occupancy grids (a float scalar).

    Example:
        >>> float(class_frequency_distance(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2))
        0.25
    """
    pa = torch.bincount(a.reshape(-1), minlength=num_classes).double()
    pb = torch.bincount(b.reshape(-1), minlength=num_classes).double()
    return (0.5 * (pa / pa.sum() - pb / pb.sum()).abs().sum()).float()
