"""Completion data: the dense target holds every input point, determinism, downsampling, batching."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.data.lidar_generation import CompletionDataModule, collate_completion
from lightning_distill.lidar.scene import StreetSceneGenerator
from lightning_distill.lidar_generation.completion import completion_sample, crop_points, voxel_downsample

GENERATOR = StreetSceneGenerator(beams=8, azimuth_steps=128, max_range=15.0, image_size=(4, 4))


def test_accumulated_target_contains_every_input_point():
    """Each scan point lies in a voxel the target occupies: a target point within voxel_size * sqrt(3)."""
    voxel = 0.4
    pair = completion_sample(
        GENERATOR, 3, num_frames=4, crop_range=10.0, voxel_size=voxel, num_scan_points=64
    )
    nearest = torch.cdist(pair.scan.double(), pair.target.double()).min(dim=1).values
    assert float(nearest.max()) <= voxel * math.sqrt(3) + 1e-5
    # the scan voxels are a subset of the target voxels
    scan_cells = {tuple(c) for c in torch.floor(pair.scan.double() / voxel).long().tolist()}
    target_cells = {tuple(c) for c in torch.floor(pair.target.double() / voxel).long().tolist()}
    assert scan_cells <= target_cells
    # accumulation makes the target much denser than one sweep
    assert len(pair.target) > 2 * len(scan_cells)
    assert float(pair.target[:, :2].norm(dim=1).max()) <= 10.0


def test_completion_sample_is_deterministic_from_the_seed():
    a = completion_sample(GENERATOR, 5, num_frames=3, num_scan_points=32)
    b = completion_sample(GENERATOR, 5, num_frames=3, num_scan_points=32)
    c = completion_sample(GENERATOR, 6, num_frames=3, num_scan_points=32)
    torch.testing.assert_close(a.scan, b.scan)
    torch.testing.assert_close(a.target, b.target)
    assert a.target.shape != c.target.shape or not torch.equal(a.target, c.target)


def test_voxel_downsample_averages_points_per_voxel():
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [-0.1, 0.0, 0.0], [1.1, 0.0, 0.0]])
    out = voxel_downsample(pts, 0.5)
    expected = torch.tensor([[-0.1, 0.0, 0.0], [0.2, 0.2, 0.2], [1.1, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)


def test_crop_keeps_points_in_range_and_height_band():
    pts = torch.tensor([[3.0, 4.0, 0.0], [3.0, 4.1, 0.0], [1.0, 0.0, 5.0]])
    assert crop_points(pts, 5.0, (-1.0, 1.0)).tolist() == [[3.0, 4.0, 0.0]]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: voxel_downsample(torch.zeros(3, 2), 0.5), "points"),
        (lambda: voxel_downsample(torch.zeros(3, 3), 0.0), "voxel_size"),
        (lambda: completion_sample(GENERATOR, 0, num_frames=2, frame=2), "frame"),
        (lambda: completion_sample(GENERATOR, 0, num_scan_points=0), "num_scan_points"),
        (lambda: CompletionDataModule(batch_size=0), "batch_size"),
        (lambda: CompletionDataModule(voxel_size=-1.0), "voxel_size"),
    ],
)
def test_bad_input_is_rejected_with_the_argument_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_collate_pads_targets_with_a_mask():
    samples = [
        {"scan": torch.zeros(4, 3), "target": torch.ones(2, 3)},
        {"scan": torch.zeros(4, 3), "target": torch.ones(5, 3)},
    ]
    batch = collate_completion(samples)
    assert batch["scan"].shape == (2, 4, 3) and batch["target"].shape == (2, 5, 3)
    assert batch["target_mask"].sum(dim=1).tolist() == [2, 5]
    assert float(batch["target"][0, 2:].abs().sum()) == 0.0


def test_datamodule_serves_fixed_size_scans():
    dm = CompletionDataModule(
        num_train=2,
        num_val=1,
        num_test=0,
        num_frames=2,
        num_scan_points=16,
        batch_size=2,
        beams=8,
        azimuth_steps=128,
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["scan"].shape == (2, 16, 3)
    assert batch["target_mask"].dtype == torch.bool and batch["target_mask"].any(dim=1).all()
