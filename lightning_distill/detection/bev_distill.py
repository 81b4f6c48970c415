"""BEV distillation parts shared by cross-modal recipes: box keypoints, bilinear BEV sampling, Gaussian box
masks, and running a LiDAR or a camera detector on a batch.

UniDistill (Zhou et al., CVPR 2023; megvii-research/CVPR2023-UniDistill) compares teacher and student
BEV maps only at nine keypoints per ground-truth box (:func:`box_keypoints`: the four BEV corners, the
centre and the four edge midpoints, in the official code's order), read by bilinear interpolation
(:func:`sample_bev`), and their head outputs under a Gaussian mask around each box
(:func:`gaussian_box_mask`, CenterNet's radius at ``min_overlap`` 0.7, peak 1 at the centre cell).

Example:
    >>> from lightning_distill.detection.heads import BEVGrid
    >>> grid = BEVGrid(0.0, 0.0, 1.0, (8, 8))
    >>> boxes = torch.tensor([[4.5, 3.5, 0.0, 4.0, 2.0, 1.5, 0.0]])
    >>> box_keypoints(boxes)[0, 4].tolist()  # the centre
    [4.5, 3.5]
    >>> float(gaussian_box_mask(grid, [boxes])[0, 4, 3])
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.detection.boxes import boxes_to_corners_bev, check_boxes
from lightning_distill.detection.camera import LiftSplatDetector, project_lidar_depth
from lightning_distill.detection.heads import BEVGrid, draw_gaussian, gaussian_radius

__all__ = [
    "NUM_KEYPOINTS",
    "bev_low_channels",
    "box_keypoints",
    "gaussian_box_mask",
    "is_camera_detector",
    "padded_keypoints",
    "run_bev_detector",
    "sample_bev",
]

#: Keypoints per box: 4 corners, the centre, 4 edge midpoints.
NUM_KEYPOINTS = 9


def box_keypoints(boxes: Tensor) -> Tensor:
    """UniDistill's nine BEV keypoints ``(M, 9, 2)`` (metres) of ``(M, 7)`` boxes.

    Order as the official code: the four corners (a loop round the box), the centre, then the midpoints
    of the edges (corner 0-1, 1-2, 2-3, 3-0).

    Raises:
        ValueError: ``boxes`` is not ``(M, 7)``.
    """
    check_boxes("boxes", boxes)
    corners = boxes_to_corners_bev(boxes.float())  # (M, 4, 2)
    centre = corners.mean(dim=1, keepdim=True)
    edges = (corners + corners.roll(-1, dims=1)) / 2  # midpoints of 0-1, 1-2, 2-3, 3-0
    return torch.cat([corners, centre, edges], dim=1)


def padded_keypoints(boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Keypoints of a batch, padded: ``(B, M, 9, 2)`` metres and the mask ``(B, M)`` (1 for a real box)."""
    b = len(boxes)
    m = max([len(bx) for bx in boxes] + [1])
    device = boxes[0].device if b else torch.device("cpu")
    points = torch.zeros(b, m, NUM_KEYPOINTS, 2, device=device)
    mask = torch.zeros(b, m, device=device)
    for i, bx in enumerate(boxes):
        if len(bx):
            points[i, : len(bx)] = box_keypoints(bx)
            mask[i, : len(bx)] = 1.0
    return points, mask


def sample_bev(features: Tensor, grid: BEVGrid, points: Tensor) -> Tensor:
    """Bilinear samples of ``(B, C, X, Y)`` BEV maps at ``(B, M, P, 2)`` metric points: ``(B, M, P, C)``.

    Cell ``(ix, iy)`` covers ``[x_min + ix·s, x_min + (ix + 1)·s)``, its value sits at the cell centre;
    points off the map read zeros (``grid_sample`` with ``align_corners=False``, as the official code).

    Raises:
        ValueError: ``features`` is not ``(B, C, X, Y)`` on ``grid`` or ``points`` not ``(B, M, P, 2)``.
    """
    if features.ndim != 4 or tuple(features.shape[-2:]) != tuple(grid.size):
        raise ValueError(f"`features` must be (B, C, X, Y) with (X, Y) = {tuple(grid.size)}, got {tuple(features.shape)}.")  # fmt: skip
    if points.ndim != 4 or points.shape[-1] != 2 or points.shape[0] != features.shape[0]:
        raise ValueError(
            f"`points` must be (B, M, P, 2) with B = {features.shape[0]}, got {tuple(points.shape)}."
        )
    nx, ny = grid.size
    gx = (points[..., 0] - grid.x_min) / grid.cell_size  # continuous cell coordinates along X (rows)
    gy = (points[..., 1] - grid.y_min) / grid.cell_size
    # grid_sample's last axis is (width, height) = (Y, X) here, normalised to [-1, 1] over the map's extent
    norm = torch.stack([gy / ny * 2 - 1, gx / nx * 2 - 1], dim=-1).to(features.dtype)
    out = F.grid_sample(features, norm, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.permute(0, 2, 3, 1)  # (B, M, P, C)


def gaussian_box_mask(grid: BEVGrid, boxes: Sequence[Tensor], *, min_overlap: float = 0.7) -> Tensor:
    """UniDistill's response mask ``(B, X, Y)``: a Gaussian around each box's centre cell, 1 there, max-merged.

    The radius is CenterNet's for the box's BEV size in cells at ``min_overlap`` (official: 0.7), truncated,
    at least 0 (a radius 0 box marks its centre cell only).
    """
    nx, ny = grid.size
    mask = torch.zeros(len(boxes), nx, ny)
    for i, bx in enumerate(boxes):
        if not len(bx):
            continue
        bx = bx.detach().float().cpu()
        radius = gaussian_radius(bx[:, 3] / grid.cell_size, bx[:, 4] / grid.cell_size, min_overlap)
        cx = torch.floor((bx[:, 0] - grid.x_min) / grid.cell_size).long()
        cy = torch.floor((bx[:, 1] - grid.y_min) / grid.cell_size).long()
        for j in range(len(bx)):
            if 0 <= cx[j] < nx and 0 <= cy[j] < ny:
                draw_gaussian(mask[i], (int(cx[j]), int(cy[j])), max(0, int(radius[j])))
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    return mask.to(device)


def is_camera_detector(model: nn.Module) -> bool:
    """Whether ``model`` reads camera images (a :class:`LiftSplatDetector`) rather than points."""
    return isinstance(model, LiftSplatDetector)


def bev_low_channels(model: nn.Module) -> int:
    """Channels of a detector's low-level BEV map (``bev_low``): camera context channels, or the voxel
    detector's last sparse width times its height levels.

    Raises:
        ValueError: a model that is neither.
    """
    if is_camera_detector(model):
        return int(model.context_channels)
    if hasattr(model, "sparse_widths") and hasattr(model, "spatial_shape"):
        return int(model.sparse_widths[-1] * (model.spatial_shape[2] // model.stride))
    raise ValueError(
        f"cannot tell the BEV channels of {type(model).__name__}: expected a LiftSplatDetector or a VoxelDetector."
    )


def run_bev_detector(model: nn.Module, batch: dict[str, Any]) -> Any:
    """Run a LiDAR detector on the batch's points, or a camera detector on its images (with the projected
    LiDAR depth channel when the detector takes one)."""
    if is_camera_detector(model):
        depth = None
        if model.lidar_depth_input:
            depth = project_lidar_depth(
                batch["points"], batch["batch_index"], batch["K"], batch["T_cam_from_lidar"], model.image_size
            )
        return model(batch["images"], batch["K"], batch["T_cam_from_lidar"], lidar_depth=depth)
    return model(batch["points"], batch["batch_index"], len(batch["boxes"]))
