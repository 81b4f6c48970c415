"""Projection, voxelisation, pairing, region pooling and superpixels against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_distill.lidar.geometry import (
    pair_points_with_pixels,
    project_points,
    region_pool,
    scaled_segment_count,
    slic_superpixels,
    voxelize,
)
from lightning_distill.lidar.scene import camera_rig

# LiDAR (x forward, y left, z up) -> OpenCV camera (x right, y down, z forward), plus a translation
R = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T = torch.eye(4)
T[:3, :3] = R
T[:3, 3] = torch.tensor([0.1, -0.2, 0.3])
K = torch.tensor([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])


def test_projection_matches_a_hand_computed_pinhole_example():
    xyz = torch.tensor([[10.0, 1.0, 0.5], [-5.0, 0.0, 0.0], [0.6, 0.0, 0.0], [10.0, -20.0, 0.0]])
    uv, depth, mask = project_points(xyz, K, T, (80, 100), min_depth=1.0)
    # point 0 in the camera: (-1 + 0.1, -0.5 - 0.2, 10 + 0.3) = (-0.9, -0.7, 10.3)
    torch.testing.assert_close(depth[0], torch.tensor(10.3))
    torch.testing.assert_close(uv[0], torch.tensor([100 * -0.9 / 10.3 + 50, 100 * -0.7 / 10.3 + 40]))
    # behind the camera, nearer than 1 m, and far outside the image on the right
    assert mask.tolist() == [True, False, False, False]


def test_camera_rig_front_camera_is_the_opencv_rotation():
    Ks, Ts = camera_rig(2, (80, 100), horizontal_fov_deg=90.0, offset=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(Ts[0][:3, :3], R.numpy(), atol=1e-12)
    np.testing.assert_allclose(Ks[0], [[50.0, 0.0, 49.5], [0.0, 50.0, 39.5], [0.0, 0.0, 1.0]])
    # the second camera looks backwards: a point behind the car is in front of it
    uv, depth, mask = project_points(
        torch.tensor([[-10.0, 0.0, 0.0]]), torch.tensor(Ks[1]).float(), torch.tensor(Ts[1]).float(), (80, 100)
    )
    assert bool(mask[0]) and abs(float(depth[0]) - 10.0) < 1e-5


def test_pairs_index_flattened_images_and_rounded_pixels():
    points = torch.tensor([[0, 10.0, 1.0, 0.5, 0.3], [1, 10.0, 1.0, 0.5, 0.3], [1, -10.0, 0.0, 0.0, 0.1]])
    Kb = K.expand(2, 2, 3, 3).clone()
    Tb = T.expand(2, 2, 4, 4).clone()
    Tb[:, 1] = torch.eye(
        4
    )  # second camera looks along the LiDAR's x axis in camera convention: sees nothing here
    pairs = pair_points_with_pixels(points, Kb, Tb, (80, 100))
    assert pairs.point.tolist() == [0, 1]
    assert pairs.image.tolist() == [0, 2]  # b * C + c
    assert pairs.u.tolist() == [41, 41] and pairs.v.tolist() == [33, 33]


def test_voxelisation_round_trips_points_to_voxels_and_back():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(300, 3, generator=g) * 3 - 1
    batch = torch.randint(0, 3, (300, 1), generator=g).float()
    feats = torch.rand(300, 2, generator=g)
    points = torch.cat([batch, xyz, feats], dim=1)
    vox = voxelize(points, 0.5)
    cell = torch.floor(xyz / 0.5).long()
    # every point maps to the voxel holding its batch and cell
    offset = cell.amin(dim=0)
    expected = torch.cat([batch.long(), cell - offset], dim=1)
    torch.testing.assert_close(vox.coords[vox.inverse].long(), expected)
    # voxels are distinct and each pools the mean of its points
    assert len(torch.unique(vox.coords, dim=0)) == len(vox.coords)
    for v in range(len(vox.coords)):
        torch.testing.assert_close(vox.features[v], feats[vox.inverse == v].mean(dim=0))
    # the same point falls in the same voxel whatever the rest of the batch
    shifted = voxelize(torch.cat([points, torch.tensor([[0, -7.3, -7.1, -6.9, 0, 0]])]), 0.5).inverse[:300]
    assert torch.equal(vox.inverse[:, None] == vox.inverse[None], shifted[:, None] == shifted[None])


def test_voxelize_rejects_bad_input():
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(torch.zeros(2, 4), 0.0)
    with pytest.raises(ValueError, match="points"):
        voxelize(torch.zeros(2, 3), 0.1)


def test_region_pool_matches_a_python_loop():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(50, 4, generator=g)
    regions = torch.randint(0, 7, (50,), generator=g)
    pooled = region_pool(features, regions, 9)
    for r in range(9):
        rows = [features[i] for i in range(50) if int(regions[i]) == r]
        expected = torch.stack(rows).mean(dim=0) if rows else torch.zeros(4)
        torch.testing.assert_close(pooled[r], expected)
    with pytest.raises(ValueError, match="regions"):
        region_pool(features, regions + 5, 9)


def test_slic_superpixels_follow_colour_edges():
    image = torch.zeros(3, 32, 64)
    image[:, :, 32:] = 1.0  # a black and a white half
    segments = slic_superpixels(image, n_segments=scaled_segment_count((32, 64)), sigma=0.5)
    assert segments.shape == (32, 64) and segments.dtype == torch.int64 and int(segments.min()) == 0
    left, right = set(segments[:, :32].unique().tolist()), set(segments[:, 32:].unique().tolist())
    assert not left & right
    assert scaled_segment_count((224, 416)) == 150
