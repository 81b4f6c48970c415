"""Cylindrical voxels: a ``(rho, phi, z)`` grid over batched points, as used by Cylinder3D and SLidR.

A spinning LiDAR samples space densely near the sensor and sparsely far away; cutting space by
radius, azimuth and height keeps the number of points per voxel more even than cubic voxels do.
:class:`CylindricalGrid` fixes the grid (voxel size per axis and the covered ranges; points outside
the radius or height range are clamped into the border voxels, as Cylinder3D does), and
:meth:`CylindricalGrid.voxelize` returns the same :class:`~lightning_distill.lidar.geometry.Voxels` as
cubic voxelisation, so :func:`~lightning_distill.lidar.geometry.to_sparse_tensor` makes the spconv
tensor (indices ``[batch, i_rho, i_phi, i_z]``).

Example:
    >>> import torch
    >>> grid = CylindricalGrid(voxel_size=(1.0, 90.0, 1.0), rho_range=(0.0, 4.0), z_range=(-2.0, 2.0))
    >>> grid.spatial_shape
    [4, 4, 4]
    >>> points = torch.tensor([[0, 1.5, 0.1, 0.2, 1.0], [0, 1.6, 0.2, 0.3, 3.0], [1, -2.5, 0.0, -1.5, 5.0]])
    >>> vox = grid.voxelize(points)
    >>> vox.coords.tolist(), vox.features.squeeze(1).tolist(), vox.inverse.tolist()
    ([[0, 1, 2, 2], [1, 2, 3, 0]], [2.0, 5.0], [0, 0, 1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_distill.lidar.geometry import Voxels, region_pool
from lightning_distill.lidar.networks import point_inputs

__all__ = ["CylindricalGrid", "cylindrical_coordinates", "cylindrical_point_features"]


def cylindrical_coordinates(xyz: Tensor) -> Tensor:
    """``(rho, phi, z)``: horizontal distance, azimuth in ``[-pi, pi]`` (radians, 0 along +x) and height.

    Args:
        xyz: ``(N, 3)`` points.

    Returns:
        ``(N, 3)`` cylindrical coordinates, same dtype.

    Raises:
        ValueError: ``xyz`` not ``(N, 3)``.
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"`xyz` must be (N, 3), got {tuple(xyz.shape)}.")
    return torch.stack(
        [torch.hypot(xyz[:, 0], xyz[:, 1]), torch.atan2(xyz[:, 1], xyz[:, 0]), xyz[:, 2]], dim=1
    )


class CylindricalGrid:
    """A fixed ``(rho, phi, z)`` voxel grid.

    Voxel ``(i, j, k)`` covers ``rho in [rho_0 + i d_rho, rho_0 + (i + 1) d_rho)``,
    ``phi in [-pi + j d_phi, -pi + (j + 1) d_phi)`` and ``z in [z_0 + k d_z, z_0 + (k + 1) d_z)``;
    the last voxel of each axis also takes its upper edge (``phi = pi``) and, for ``rho`` and
    ``z``, everything beyond the range (and, for ``z``, below it).

    Args:
        voxel_size: ``(d_rho, d_phi, d_z)``: metres, degrees, metres (SLidR: 0.1 m, 1 degree,
            0.1 m).
        rho_range: ``(rho_0, rho_1)`` metres covered radially (Cylinder3D: 0-50 m).
        z_range: ``(z_0, z_1)`` metres covered in height (Cylinder3D on SemanticKITTI: -4 to 2 m).

    Raises:
        ValueError: a non-positive voxel size, an empty range or an azimuth size above 360 degrees.
    """

    def __init__(
        self,
        voxel_size: Sequence[float] = (0.1, 1.0, 0.1),
        rho_range: Sequence[float] = (0.0, 50.0),
        z_range: Sequence[float] = (-4.0, 2.0),
    ) -> None:
        if len(voxel_size) != 3 or min(voxel_size) <= 0:
            raise ValueError(
                f"`voxel_size` must be three positive numbers (rho, phi, z), got {tuple(voxel_size)}."
            )
        if voxel_size[1] > 360:
            raise ValueError(f"the azimuth voxel size must be <= 360 degrees, got {voxel_size[1]}.")
        for name, bounds in (("rho_range", rho_range), ("z_range", z_range)):
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ValueError(f"`{name}` must be (low, high) with low < high, got {tuple(bounds)}.")
        if rho_range[0] < 0:
            raise ValueError(f"`rho_range` must start at >= 0, got {tuple(rho_range)}.")
        self.voxel_size = (float(voxel_size[0]), math.radians(float(voxel_size[1])), float(voxel_size[2]))
        self.lower = (float(rho_range[0]), -math.pi, float(z_range[0]))
        upper = (float(rho_range[1]), math.pi, float(z_range[1]))
        self.spatial_shape = [
            max(1, math.ceil((hi - lo) / size - 1e-9))
            for lo, hi, size in zip(self.lower, upper, self.voxel_size)
        ]

    def indices(self, xyz: Tensor) -> Tensor:
        """``(N, 3)`` int64 voxel indices ``(i_rho, i_phi, i_z)`` of points ``(N, 3)``, clamped into the grid."""
        cyl = cylindrical_coordinates(xyz.double())
        lower = torch.tensor(self.lower, dtype=torch.float64, device=xyz.device)
        size = torch.tensor(self.voxel_size, dtype=torch.float64, device=xyz.device)
        index = torch.floor((cyl - lower) / size).long()
        shape = torch.tensor(self.spatial_shape, device=xyz.device)
        return torch.minimum(index.clamp_min(0), shape - 1)

    def centers(self, indices: Tensor) -> Tensor:
        """Cartesian ``(N, 3)`` float64 centres of voxels given as ``(N, 3)`` indices ``(i_rho, i_phi, i_z)``."""
        lower = torch.tensor(self.lower, dtype=torch.float64, device=indices.device)
        size = torch.tensor(self.voxel_size, dtype=torch.float64, device=indices.device)
        rho, phi, z = (lower + (indices.double() + 0.5) * size).unbind(dim=1)
        return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], dim=1)

    def voxelize(
        self, points: Tensor, *, features: Tensor | None = None, batch_size: int | None = None
    ) -> Voxels:
        """Quantise batched points into cylindrical voxels and mean-pool their features.

        Args:
            points: ``(N, 4 + F)`` ``[batch, x, y, z, features...]``.
            features: ``(N, F')`` to pool instead of ``points[:, 4:]``.
            batch_size: number of clouds; defaults to ``max(batch) + 1``.

        Returns:
            :class:`~lightning_distill.lidar.geometry.Voxels` with ``coords`` ``[batch, i_rho, i_phi,
            i_z]`` sorted, ``spatial_shape`` the grid's, and ``inverse`` the voxel of every point.

        Raises:
            ValueError: ``points`` not ``(N, >=4)`` or mismatched ``features``.
        """
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"`points` must be (N, 4 + F) [batch, x, y, z, ...], got {tuple(points.shape)}.")
        if features is None:
            features = points[:, 4:]
        if features.shape[0] != points.shape[0]:
            raise ValueError(f"`features` has {features.shape[0]} rows for {points.shape[0]} points.")
        batch = points[:, 0].long()
        if batch_size is None:
            batch_size = int(batch.max()) + 1 if len(batch) else 1
        index = self.indices(points[:, 1:4])
        n_rho, n_phi, n_z = self.spatial_shape
        key = ((batch * n_rho + index[:, 0]) * n_phi + index[:, 1]) * n_z + index[:, 2]
        unique, inverse = torch.unique(key, return_inverse=True)
        coords = torch.stack(
            [
                unique // (n_rho * n_phi * n_z),
                unique // (n_phi * n_z) % n_rho,
                unique // n_z % n_phi,
                unique % n_z,
            ],
            dim=1,
        )
        pooled = region_pool(features.float(), inverse, len(unique))
        return Voxels(coords.int(), pooled, inverse, list(self.spatial_shape), batch_size)

    def __repr__(self) -> str:
        d_rho, d_phi, d_z = self.voxel_size
        return f"CylindricalGrid(voxel_size=({d_rho}, {math.degrees(d_phi):g}, {d_z}), shape={self.spatial_shape})"


def cylindrical_point_features(
    backbone: nn.Module, points: Tensor, grid: CylindricalGrid, *, input_features: str = "ones"
) -> Tensor:
    """Per-point features ``(N, C)`` of a sparse 3D backbone run on cylindrical voxels.

    The cylindrical counterpart of :func:`~lightning_distill.lidar.networks.sparse_point_features`.
    """
    from lightning_distill.lidar.geometry import to_sparse_tensor

    voxels = grid.voxelize(points, features=point_inputs(points, input_features))
    return backbone(to_sparse_tensor(voxels)).features[voxels.inverse]
