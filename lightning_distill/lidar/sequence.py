"""Short LiDAR+camera sequences: windows of consecutive frames with ego poses, and the geometry between them.

A *window* is the current frame ``t`` and its ``history`` past frames ``t-1, ..., t-history``
(served by :class:`~lightning_distill.data.lidar.SyntheticSequenceDataModule`). The current frame
keeps the layout of :mod:`lightning_distill.lidar.batches`; the past frames add, after
:func:`collate_sequence`:

======================== ================================ ==============================================
key                      shape                            meaning
======================== ================================ ==============================================
``past_images``          ``(B, L, C, 3, H, W)`` float32   images of frame ``t - 1 - j`` at index ``j``
``past_K``               ``(B, L, C, 3, 3)`` float32      intrinsics
``past_T_cam_from_lidar`` ``(B, L, C, 4, 4)`` float32     extrinsics
``past_pose``            ``(B, L, 4, 4)`` float32         ``world_from_lidar`` of the past frames
======================== ================================ ==============================================

``L = history``; index ``j`` holds lag ``j + 1`` (the previous frame first). A point of frame ``t``
is moved into frame ``t - k`` by ``T = inv(pose_{t-k}) @ pose_t`` (:func:`relative_pose`), which is
exact for static surfaces.

Example:
    >>> import torch
    >>> pose_now = torch.eye(4); pose_now[0, 3] = 4.0     # the ego drove 4 m forward
    >>> T = relative_pose(torch.eye(4), pose_now)          # current LiDAR -> past LiDAR
    >>> transform_points(torch.tensor([[10.0, 1.0, 0.0]]), T).tolist()
    [[14.0, 1.0, 0.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.geometry import Pairs, pair_points_with_pixels, region_pool

__all__ = [
    "PAST_KEYS",
    "collate_sequence",
    "cross_view_mean",
    "gather_pixel_features",
    "pair_points_with_past_pixels",
    "relative_pose",
    "transform_points",
]

PAST_KEYS = {
    "images": "past_images",
    "K": "past_K",
    "T_cam_from_lidar": "past_T_cam_from_lidar",
    "pose": "past_pose",
}


def relative_pose(pose_to: Tensor, pose_from: Tensor) -> Tensor:
    """``to_from_from = inv(world_from_to) @ world_from_from`` for ``world_from_lidar`` poses.

    Args:
        pose_to: ``(..., 4, 4)`` pose of the frame the points go to.
        pose_from: ``(..., 4, 4)`` pose of the frame the points are in.

    Returns:
        ``(..., 4, 4)`` rigid transform from the ``pose_from`` frame to the ``pose_to`` frame.

    Raises:
        ValueError: poses that are not ``(..., 4, 4)`` or whose batch shapes differ.
    """
    if pose_to.shape[-2:] != (4, 4) or pose_to.shape != pose_from.shape:
        raise ValueError(
            f"`pose_to` and `pose_from` must both be (..., 4, 4), got {tuple(pose_to.shape)} and "
            f"{tuple(pose_from.shape)}."
        )
    return torch.linalg.inv(pose_to.double()).matmul(pose_from.double()).to(pose_from.dtype)


def transform_points(xyz: Tensor, T: Tensor) -> Tensor:
    """Apply a rigid ``(4, 4)`` transform to ``(N, 3)`` points: ``R @ x + t``.

    Raises:
        ValueError: ``xyz`` not ``(N, 3)`` or ``T`` not ``(4, 4)``.
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"`xyz` must be (N, 3), got {tuple(xyz.shape)}.")
    if T.shape != (4, 4):
        raise ValueError(f"`T` must be (4, 4), got {tuple(T.shape)}.")
    T = T.to(xyz)
    return xyz @ T[:3, :3].T + T[:3, 3]


def pair_points_with_past_pixels(
    points: Tensor,
    pose: Tensor,
    past_pose: Tensor,
    past_K: Tensor,
    past_T_cam_from_lidar: Tensor,
    image_size: tuple[int, int],
    *,
    min_depth: float = 1.0,
) -> Pairs:
    """Pair current-frame points with the pixels of one past frame's cameras, through the ego poses.

    Cloud ``b``'s points are moved into the past LiDAR frame with
    ``relative_pose(past_pose[b], pose[b])`` and projected with the past frame's calibration
    (:func:`~lightning_distill.lidar.geometry.pair_points_with_pixels`). Occlusion in the past view
    is not checked: a point hidden behind another surface at ``t - k`` takes that surface's pixel.

    Args:
        points: ``(N, 4 + F)`` batched points of the current frame ``[batch, x, y, z, ...]``.
        pose: ``(B, 4, 4)`` ``world_from_lidar`` of the current frame.
        past_pose: ``(B, 4, 4)`` ``world_from_lidar`` of the past frame.
        past_K: ``(B, C, 3, 3)`` intrinsics of the past frame's cameras.
        past_T_cam_from_lidar: ``(B, C, 4, 4)`` their extrinsics.
        image_size: ``(H, W)``.
        min_depth: nearest depth kept (metres).

    Returns:
        :class:`~lightning_distill.lidar.geometry.Pairs` indexing the current points and the past
        images flattened as ``b * C + c``.

    Raises:
        ValueError: poses not ``(B, 4, 4)`` or a batch size that differs from the calibration's.
    """
    if pose.ndim != 3 or pose.shape[1:] != (4, 4) or past_pose.shape != pose.shape:
        raise ValueError(
            f"`pose` and `past_pose` must both be (B, 4, 4), got {tuple(pose.shape)} and {tuple(past_pose.shape)}."
        )
    if past_K.shape[0] != pose.shape[0]:
        raise ValueError(f"`past_K` holds {past_K.shape[0]} clouds, `pose` {pose.shape[0]}.")
    moved = points.clone()
    batch = points[:, 0].long()
    T = relative_pose(past_pose, pose)  # (B, 4, 4) current LiDAR -> past LiDAR
    for b in range(pose.shape[0]):
        index = batch == b
        moved[index, 1:4] = transform_points(points[index, 1:4], T[b])
    return pair_points_with_pixels(moved, past_K, past_T_cam_from_lidar, image_size, min_depth=min_depth)


def gather_pixel_features(pixel_features: Tensor, pairs: Pairs) -> Tensor:
    """The feature of each pair's pixel: ``(P, D)`` from ``(I, D, H, W)`` maps.

    Raises:
        ValueError: ``pixel_features`` not 4-D.
    """
    if pixel_features.ndim != 4:
        raise ValueError(f"`pixel_features` must be (I, D, H, W), got {tuple(pixel_features.shape)}.")
    return pixel_features[pairs.image, :, pairs.v, pairs.u]


def cross_view_mean(pair_features: Tensor, pair_point: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """Average the features of every view of a point: each pair gets the mean over its point's pairs.

    A point seen by several cameras (overlapping fields of view) gets one unified feature, the
    mean of its pixels' features in all of them; a point seen once keeps its feature.

    Args:
        pair_features: ``(P, D)`` a feature per (point, camera) pair.
        pair_point: ``(P,)`` the point of each pair, in ``[0, num_points)``.
        num_points: number of points ``N``.

    Returns:
        ``(P, D)`` the unified feature of each pair's point and ``(N,)`` the number of views per point.

    Raises:
        ValueError: mismatched lengths or point ids out of range.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
        >>> fused, views = cross_view_mean(f, torch.tensor([0, 0, 1]), 2)
        >>> fused.tolist(), views.tolist()
        ([[0.5, 0.5], [0.5, 0.5], [2.0, 2.0]], [2, 1])
    """
    per_point = region_pool(pair_features, pair_point, num_points)  # (N, D)
    return per_point[pair_point], torch.bincount(pair_point, minlength=num_points)


def collate_sequence(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """:func:`~lightning_distill.lidar.batches.collate` of the current frames plus the stacked ``past_*`` keys."""
    batch = collate(samples)
    for key in PAST_KEYS.values():
        batch[key] = torch.stack([s[key] for s in samples])
    return batch
