"""Cylindrical voxels: points fall in their voxel, centres round-trip, edges and clamping, spconv tensor."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.lidar.cylindrical import (
    CylindricalGrid,
    cylindrical_coordinates,
    cylindrical_point_features,
)
from lightning_distill.lidar.geometry import to_sparse_tensor
from lightning_distill.lidar.networks import SparseUNet

GRID = dict(voxel_size=(0.5, 5.0, 0.25), rho_range=(0.0, 20.0), z_range=(-3.0, 2.0))


def random_points(n: int, clouds: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.cat(
        [(torch.rand(n, 2, generator=g) - 0.5) * 30, torch.rand(n, 1, generator=g) * 4.5 - 2.8], dim=1
    )
    batch = torch.randint(0, clouds, (n, 1), generator=g).float()
    return torch.cat([batch, xyz, torch.rand(n, 1, generator=g)], dim=1)


def test_cylindrical_coordinates_by_hand():
    xyz = torch.tensor([[3.0, 4.0, 1.0], [0.0, -2.0, 0.0], [-1.0, 0.0, -2.0]])
    expected = torch.tensor([[5.0, math.atan2(4, 3), 1.0], [2.0, -math.pi / 2, 0.0], [1.0, math.pi, -2.0]])
    torch.testing.assert_close(cylindrical_coordinates(xyz), expected)


def test_every_point_lies_in_its_voxel_and_centres_round_trip():
    grid = CylindricalGrid(**GRID)
    points = random_points(2000)
    vox = grid.voxelize(points)
    cyl = cylindrical_coordinates(points[:, 1:4].double())
    inside = (cyl[:, 0] < 20.0) & (cyl[:, 2] >= -3.0) & (cyl[:, 2] < 2.0)
    assert inside.float().mean() > 0.5
    index = vox.coords[vox.inverse, 1:].double()
    sizes = torch.tensor([0.5, math.radians(5.0), 0.25], dtype=torch.float64)
    lower = torch.tensor([0.0, -math.pi, -3.0], dtype=torch.float64) + index * sizes
    ok = (cyl >= lower - 1e-9) & (cyl < lower + sizes + 1e-9)
    assert bool(ok[inside].all())
    assert torch.equal(vox.coords[vox.inverse, 0].long(), points[:, 0].long())
    # the centre of each voxel falls back into the same voxel
    centres = grid.centers(vox.coords[:, 1:].long())
    assert torch.equal(grid.indices(centres), vox.coords[:, 1:].long())
    torch.testing.assert_close(
        cylindrical_coordinates(centres),
        lower.new_tensor([0.0, -math.pi, -3.0]) + (vox.coords[:, 1:] + 0.5) * sizes,
    )


def test_voxel_features_are_the_mean_of_their_points():
    grid = CylindricalGrid(**GRID)
    points = random_points(500, seed=1)
    vox = grid.voxelize(points)
    for v in range(0, len(vox.coords), 13):
        members = points[vox.inverse == v, 4]
        torch.testing.assert_close(vox.features[v, 0], members.mean())
    keys = vox.coords.long().tolist()
    assert keys == sorted(keys) and len({tuple(k) for k in keys}) == len(keys)


def test_edges_wrap_and_clamp():
    grid = CylindricalGrid(voxel_size=(1.0, 90.0, 1.0), rho_range=(0.0, 4.0), z_range=(-2.0, 2.0))
    assert grid.spatial_shape == [4, 4, 4]
    xyz = torch.tensor(
        [
            [-1.0, 0.0, 0.0],  # phi = +pi: the upper edge belongs to the last azimuth voxel
            [-1.0, -0.0, 0.0],  # phi = -pi: the first azimuth voxel
            [0.0, 0.0, 0.0],  # on the axis: rho 0, phi 0
            [100.0, 0.0, 0.0],  # beyond the radius: clamped into the last ring
            [1.0, 0.0, -9.0],  # below the height range
            [1.0, 0.0, 2.0],  # exactly at the top: the last layer
            [2.0, 0.0, 1.0],  # exactly on inner edges: rho 2 -> ring 2, z 1 -> layer 3
        ]
    )
    expected = [[1, 3, 2], [1, 0, 2], [0, 2, 2], [3, 2, 2], [1, 2, 0], [1, 2, 3], [2, 2, 3]]
    assert grid.indices(xyz).tolist() == expected


def test_identical_points_in_two_clouds_get_two_voxels():
    grid = CylindricalGrid(**GRID)
    points = torch.tensor([[0.0, 5.0, 1.0, 0.0, 1.0], [1.0, 5.0, 1.0, 0.0, 3.0]])
    vox = grid.voxelize(points)
    assert vox.coords[:, 0].tolist() == [0, 1] and vox.batch_size == 2


def test_sparse_tensor_holds_the_voxels_at_their_indices():
    grid = CylindricalGrid(voxel_size=(1.0, 30.0, 0.5), rho_range=(0.0, 16.0), z_range=(-3.0, 2.0))
    points = random_points(300, seed=2)
    vox = grid.voxelize(points)
    dense = to_sparse_tensor(vox).dense()  # (B, C, n_rho, n_phi, n_z)
    assert list(dense.shape) == [2, 1, *grid.spatial_shape]
    b, i, j, k = vox.coords.long().unbind(dim=1)
    torch.testing.assert_close(dense[b, 0, i, j, k], vox.features[:, 0])
    assert int((dense != 0).sum()) == int((vox.features[:, 0] != 0).sum())


def test_a_sparse_unet_runs_on_cylindrical_voxels():
    torch.manual_seed(0)
    net = SparseUNet(1, widths=(4, 8))
    points = random_points(400, seed=3)
    features = cylindrical_point_features(net, points, CylindricalGrid(**GRID))
    assert features.shape == (400, 4) and torch.isfinite(features).all()


def test_bad_grids_raise():
    with pytest.raises(ValueError, match="voxel_size"):
        CylindricalGrid(voxel_size=(0.1, 0.0, 0.1))
    with pytest.raises(ValueError, match="rho_range"):
        CylindricalGrid(rho_range=(5.0, 1.0))
    with pytest.raises(ValueError, match="points"):
        CylindricalGrid().voxelize(torch.zeros(4, 3))
