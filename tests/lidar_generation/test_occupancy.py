"""4D occupancy: voxelisation by majority label, sequences deterministic and moving with the ego, the IoU metric."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.lidar.scene import StreetSceneGenerator
from lightning_distill.lidar_generation.occupancy import (
    OccupancyGrid,
    OccupancyIoU,
    class_frequency_distance,
    occupancy_sequence,
    voxelise,
)

GRID = OccupancyGrid(size=(8, 8, 4), voxel_size=(2.0, 2.0, 1.0), z_min=-2.0)


def test_voxel_takes_the_majority_label_plus_one_and_points_outside_are_dropped():
    points = torch.tensor(
        [[0.5, 0.5, -1.5], [0.6, 0.4, -1.6], [0.7, 0.5, -1.4], [-7.9, 7.9, 1.9], [9.0, 0, 0]]
    )
    labels = torch.tensor([3, 3, 1, 0, 2])
    occupancy = voxelise(points, labels, GRID)
    assert occupancy.shape == (8, 8, 4) and occupancy.dtype == torch.long
    assert occupancy[4, 4, 0] == 4  # label 3 twice against label 1 once
    assert occupancy[0, 7, 3] == 1  # label 0 -> class 1, at the grid's far corner
    assert int((occupancy > 0).sum()) == 2  # the point at x = 9 m is outside the 16 m box


def test_ignored_points_leave_voxels_empty_and_ties_go_to_the_lower_class():
    points = torch.tensor([[0.5, 0.5, -1.5], [0.5, 0.5, -1.5], [2.5, 0.5, -1.5]])
    occupancy = voxelise(points, torch.tensor([2, 1, -1]), GRID)
    assert occupancy[4, 4, 0] == 2 and occupancy[5, 4, 0] == 0


def test_voxelise_rejects_bad_shapes():
    with pytest.raises(ValueError, match="points"):
        voxelise(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), GRID)
    with pytest.raises(ValueError, match="labels"):
        voxelise(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), GRID)
    with pytest.raises(ValueError, match="voxel_size"):
        OccupancyGrid(voxel_size=(1.0, 0.0, 1.0))


def test_sequence_is_deterministic_and_the_scene_slides_backwards_as_the_ego_drives():
    generator = StreetSceneGenerator(beams=12, azimuth_steps=128, image_size=(2, 2))
    grid = OccupancyGrid(size=(16, 16, 8), voxel_size=(2.0, 2.0, 0.5))
    a = occupancy_sequence(generator, 3, 3, grid)
    assert a.shape == (3, 16, 16, 8) and torch.equal(a, occupancy_sequence(generator, 3, 3, grid))
    assert (a > 0).float().mean() > 0.02
    # the ego moves 4 m (2 voxels) forward per frame: frame 1 shifted 2 voxels forward matches frame 0 best
    overlap = [((a[0, 2 + s : 14 + s] > 0) & (a[1, 2:14] > 0)).sum() for s in (-2, 0, 2)]
    assert overlap[2] > overlap[1] and overlap[2] > overlap[0]
    with pytest.raises(ValueError, match="num_frames"):
        occupancy_sequence(generator, 3, 0, grid)


def test_occupancy_iou_matches_counting_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3])
    pred = torch.tensor([0, 1, 1, 0, 2, 2, 0, 0])
    metric = OccupancyIoU(4)
    metric.update(pred[:4], target[:4])
    metric.update(pred[4:], target[4:])
    out = metric.compute()
    # occupied: target {2,3,4,5,7}, pred {1,2,4,5}: intersection 3, union 6
    torch.testing.assert_close(out["iou"], torch.tensor(0.5))
    # class 1: tp 1, union {1,2,3} = 3; class 2: 2 / 2; class 3: 0 / 1
    torch.testing.assert_close(out["miou"], torch.tensor((1 / 3 + 1.0 + 0.0) / 3))


def test_class_frequency_distance_is_total_variation():
    a, b = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 2])
    torch.testing.assert_close(class_frequency_distance(a, b, 3), torch.tensor(0.5))
    assert float(class_frequency_distance(a, a, 3)) == 0.0
