"""Point-cloud geometry: voxels, point-to-pixel projection, region pooling and SLIC superpixels.

Batched points are ``(N, 1 + 3 + F)`` tensors ``[batch_index, x, y, z, features...]`` (DESIGN.md);
the batch index is stored as a float and read with ``.long()``.

Example:
    >>> import torch
    >>> points = torch.tensor([[0, 0.05, 0.05, 0.05, 1.0], [0, 0.07, 0.02, 0.01, 3.0], [1, 0.5, 0.0, 0.0, 5.0]])
    >>> vox = voxelize(points, voxel_size=0.1)
    >>> vox.coords.tolist(), vox.features.squeeze(1).tolist(), vox.inverse.tolist()
    ([[0, 0, 0, 0], [1, 5, 0, 0]], [2.0, 5.0], [0, 0, 1])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Pairs",
    "Voxels",
    "pair_points_with_pixels",
    "project_points",
    "region_pool",
    "scaled_segment_count",
    "slic_superpixels",
    "to_sparse_tensor",
    "voxelize",
]


class Voxels(NamedTuple):
    """A cubic voxel grid over batched points.

    Attributes:
        coords: ``(V, 4)`` int32 ``[batch, ix, iy, iz]`` (spconv's index layout, spatial order x, y, z).
        features: ``(V, F)`` float mean of the features of the points in each voxel.
        inverse: ``(N,)`` int64 voxel of every point: ``features[inverse]`` maps voxels back to points.
        spatial_shape: ``[X, Y, Z]`` extent of the grid in voxels.
        batch_size: number of clouds in the batch.
    """

    coords: Tensor
    features: Tensor
    inverse: Tensor
    spatial_shape: list[int]
    batch_size: int


def voxelize(
    points: Tensor,
    voxel_size: float,
    *,
    features: Tensor | None = None,
    batch_size: int | None = None,
) -> Voxels:
    """Quantise batched points into cubic voxels and mean-pool their features.

    Voxel boundaries sit at multiples of ``voxel_size`` (a point falls in the same voxel whatever
    else is in the batch); indices are shifted by the batch's smallest index so they are >= 0.

    Args:
        points: ``(N, 4 + F)`` ``[batch, x, y, z, features...]``.
        voxel_size: edge of a voxel in metres (SLidR: 0.1).
        features: ``(N, F')`` features to pool instead of ``points[:, 4:]``.
        batch_size: number of clouds; defaults to ``max(batch) + 1``.

    Returns:
        :class:`Voxels`, voxels sorted by ``(batch, ix, iy, iz)``.

    Raises:
        ValueError: ``points`` not ``(N, >=4)``, ``voxel_size <= 0`` or mismatched ``features``.
    """
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"`points` must be (N, 4 + F) [batch, x, y, z, ...], got {tuple(points.shape)}.")
    if voxel_size <= 0:
        raise ValueError(f"`voxel_size` must be > 0, got {voxel_size}.")
    if features is None:
        features = points[:, 4:]
    if features.shape[0] != points.shape[0]:
        raise ValueError(f"`features` has {features.shape[0]} rows for {points.shape[0]} points.")
    batch = points[:, 0].long()
    if batch_size is None:
        batch_size = int(batch.max()) + 1 if len(batch) else 1
    grid = torch.floor(points[:, 1:4] / voxel_size).long()
    if len(grid):
        grid = grid - grid.amin(dim=0)
    extent = grid.amax(dim=0) + 1 if len(grid) else torch.ones(3, dtype=torch.long)
    key = ((batch * extent[0] + grid[:, 0]) * extent[1] + grid[:, 1]) * extent[2] + grid[:, 2]
    unique, inverse = torch.unique(key, return_inverse=True)
    coords = torch.stack(
        [
            unique // (extent[0] * extent[1] * extent[2]),
            unique // (extent[1] * extent[2]) % extent[0],
            unique // extent[2] % extent[1],
            unique % extent[2],
        ],
        dim=1,
    )
    pooled = region_pool(features.float(), inverse, len(unique))
    return Voxels(coords.int(), pooled, inverse, extent.tolist(), batch_size)


def to_sparse_tensor(voxels: Voxels) -> Any:
    """An spconv ``SparseConvTensor`` from :class:`Voxels` (CPU backward fix applied if needed).

    Indices are made contiguous int32: spconv reads them as a raw buffer and silently computes
    wrong results from a strided view (``torch.nonzero(...).int()`` is one).
    """
    from lightning_distill.lidar.spconv_cpu import import_spconv

    spconv = import_spconv()
    return spconv.SparseConvTensor(
        voxels.features.contiguous(),
        voxels.coords.int().contiguous(),
        voxels.spatial_shape,
        voxels.batch_size,
    )


def project_points(
    xyz: Tensor,
    K: Tensor,
    T_cam_from_lidar: Tensor,
    image_size: tuple[int, int],
    *,
    min_depth: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Project LiDAR points into a pinhole camera (OpenCV convention).

    ``p_cam = T_cam_from_lidar @ [x, y, z, 1]``, ``[u, v, 1] ~ K @ p_cam``; a point is visible when
    its depth exceeds ``min_depth`` (SLidR: 1 m) and its rounded pixel lies in the image.

    Args:
        xyz: ``(N, 3)`` points in the LiDAR frame.
        K: ``(3, 3)`` intrinsics.
        T_cam_from_lidar: ``(4, 4)`` extrinsics.
        image_size: ``(H, W)``.
        min_depth: nearest depth kept, metres.

    Returns:
        ``uv`` ``(N, 2)`` float pixel coordinates ``(u, v)`` (column, row), ``depth`` ``(N,)`` and
        the visibility ``mask`` ``(N,)`` bool.

    Raises:
        ValueError: wrong shapes.
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"`xyz` must be (N, 3), got {tuple(xyz.shape)}.")
    if K.shape != (3, 3) or T_cam_from_lidar.shape != (4, 4):
        raise ValueError(
            f"`K` must be (3, 3) and `T_cam_from_lidar` (4, 4), got {tuple(K.shape)} and "
            f"{tuple(T_cam_from_lidar.shape)}."
        )
    T = T_cam_from_lidar.to(xyz)
    cam = xyz @ T[:3, :3].T + T[:3, 3]
    depth = cam[:, 2]
    pix = cam @ K.to(xyz).T
    uv = pix[:, :2] / pix[:, 2:3].clamp_min(1e-6)
    height, width = image_size
    ui, vi = uv[:, 0].round(), uv[:, 1].round()
    mask = (depth > min_depth) & (ui >= 0) & (ui <= width - 1) & (vi >= 0) & (vi <= height - 1)
    return uv, depth, mask


class Pairs(NamedTuple):
    """Point-pixel correspondences of a batch.

    Attributes:
        point: ``(P,)`` index into the batched points.
        image: ``(P,)`` index into the flattened images ``b * C + c``.
        v: ``(P,)`` pixel row.
        u: ``(P,)`` pixel column.
    """

    point: Tensor
    image: Tensor
    v: Tensor
    u: Tensor


def pair_points_with_pixels(
    points: Tensor,
    K: Tensor,
    T_cam_from_lidar: Tensor,
    image_size: tuple[int, int],
    *,
    min_depth: float = 1.0,
) -> Pairs:
    """Every (point, camera, pixel) where a batched point projects into a camera image.

    Args:
        points: ``(N, 4 + F)`` batched points ``[batch, x, y, z, ...]``.
        K: ``(B, C, 3, 3)`` intrinsics of the ``C`` cameras of every cloud.
        T_cam_from_lidar: ``(B, C, 4, 4)`` extrinsics.
        image_size: ``(H, W)``.
        min_depth: nearest depth kept (metres).

    Returns:
        :class:`Pairs`; a point seen by two cameras appears twice.

    Raises:
        ValueError: calibration tensors not ``(B, C, 3, 3)`` / ``(B, C, 4, 4)``.
    """
    if K.ndim != 4 or K.shape[2:] != (3, 3) or T_cam_from_lidar.shape[:2] != K.shape[:2]:
        raise ValueError(
            f"`K` must be (B, C, 3, 3) and `T_cam_from_lidar` (B, C, 4, 4), got {tuple(K.shape)} and "
            f"{tuple(T_cam_from_lidar.shape)}."
        )
    batch = points[:, 0].long()
    num_cameras = K.shape[1]
    out: list[list[Tensor]] = [[], [], [], []]
    for b in range(K.shape[0]):
        index = torch.nonzero(batch == b).squeeze(1)
        for c in range(num_cameras):
            uv, _, mask = project_points(
                points[index, 1:4], K[b, c], T_cam_from_lidar[b, c], image_size, min_depth=min_depth
            )
            out[0].append(index[mask])
            out[1].append(torch.full((int(mask.sum()),), b * num_cameras + c, dtype=torch.long))
            out[2].append(uv[mask, 1].round().long())
            out[3].append(uv[mask, 0].round().long())
    return Pairs(*(torch.cat(parts).to(points.device) for parts in out))


def region_pool(features: Tensor, regions: Tensor, num_regions: int) -> Tensor:
    """Mean of ``features`` over each region id (scatter mean); empty regions are zero.

    Args:
        features: ``(N, D)``.
        regions: ``(N,)`` int64 region of each row, in ``[0, num_regions)``.
        num_regions: number of regions ``R``.

    Returns:
        ``(R, D)`` per-region means.

    Raises:
        ValueError: mismatched lengths or region ids out of range.
    """
    if features.ndim != 2 or regions.shape != features.shape[:1]:
        raise ValueError(
            f"`features` must be (N, D) and `regions` (N,), got {tuple(features.shape)} and {tuple(regions.shape)}."
        )
    if len(regions) and (int(regions.min()) < 0 or int(regions.max()) >= num_regions):
        raise ValueError(
            f"`regions` must lie in [0, {num_regions}), got [{int(regions.min())}, {int(regions.max())}]."
        )
    sums = features.new_zeros(num_regions, features.shape[1]).index_add_(0, regions, features)
    counts = torch.bincount(regions, minlength=num_regions).to(features.dtype)
    return sums / counts.clamp_min(1.0).unsqueeze(1)


def scaled_segment_count(
    image_size: tuple[int, int], *, segments: int = 150, reference: tuple[int, int] = (224, 416)
) -> int:
    """SLidR's 150 superpixels per image scaled by the image area.

    The reference is the 224 x 416 crop SLidR's networks see; at least 4 segments.

    >>> scaled_segment_count((224, 416)), scaled_segment_count((64, 128))
    (150, 13)
    """
    ratio = image_size[0] * image_size[1] / (reference[0] * reference[1])
    return max(4, round(segments * ratio))


def slic_superpixels(
    image: Tensor | np.ndarray,
    *,
    n_segments: int = 150,
    compactness: float = 6.0,
    sigma: float = 3.0,
) -> Tensor:
    """SLIC superpixels of an RGB image (scikit-image), SLidR's settings by default.

    Args:
        image: ``(3, H, W)`` tensor or ``(H, W, 3)`` array, RGB in [0, 1].
        n_segments: approximate number of superpixels (SLidR: 150 on nuScenes images).
        compactness: colour/space trade-off (SLidR: 6).
        sigma: Gaussian pre-smoothing (SLidR: 3).

    Returns:
        ``(H, W)`` int64 superpixel ids, starting at 0.

    Raises:
        ValueError: an image that is not three-channel.
    """
    from skimage.segmentation import slic

    array = image.detach().cpu().permute(1, 2, 0).numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"`image` must be (3, H, W) or (H, W, 3) RGB, got shape {tuple(array.shape)}.")
    segments = slic(
        array.astype(np.float64), n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0
    )
    return torch.from_numpy(segments.astype(np.int64))
