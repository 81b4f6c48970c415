"""LaserMix band mixing against explicit loops, camera correspondences through the mix, scan augmentations."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.lidar.augment import (
    ScanAugmentation,
    inclination,
    laser_bands,
    laser_mix,
    laser_mix_indices,
    mix_pairs,
)
from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.geometry import pair_points_with_pixels, project_points


def random_clouds(clouds: int, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched clouds ``[batch, x, y, z, intensity]`` with pitches spread over about -30..+8 degrees."""
    g = torch.Generator().manual_seed(seed)
    rho = 2 + 30 * torch.rand(clouds * points, generator=g)
    phi = 2 * math.pi * torch.rand(clouds * points, generator=g)
    pitch = torch.deg2rad(-30 + 38 * torch.rand(clouds * points, generator=g))
    xyz = torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), rho * torch.tan(pitch)], dim=1)
    batch = torch.arange(clouds).repeat_interleave(points).float()[:, None]
    cloud = torch.cat([batch, xyz, torch.rand(clouds * points, 1, generator=g)], dim=1)
    return cloud, torch.randint(0, 6, (clouds * points,), generator=g)


def band_by_loop(x: float, y: float, z: float, n: int, down: float, up: float) -> int:
    """Band of one point by scanning the intervals (up - (i + 1) w, up - i w], clamping outside."""
    pitch = math.degrees(math.atan2(z, math.hypot(x, y)))
    pitch = min(max(pitch, down + 1e-9), up)
    width = (up - down) / n
    for i in range(n):
        if up - (i + 1) * width < pitch <= up - i * width:
            return i
    raise AssertionError("no band")


def test_inclination_is_the_pitch_angle():
    xyz = torch.tensor([[1.0, 0.0, 1.0], [0.0, 3.0, -3.0], [2.0, 0.0, 0.0]])
    torch.testing.assert_close(inclination(xyz), torch.tensor([math.pi / 4, -math.pi / 4, 0.0]))


def test_laser_bands_match_an_interval_loop():
    cloud, _ = random_clouds(1, 400, seed=0)
    for n in (1, 3, 4, 6):
        expected = [band_by_loop(*p[1:4].tolist(), n, -25.0, 3.0) for p in cloud]
        assert laser_bands(cloud[:, 1:4], n, (-25.0, 3.0)).tolist() == expected


def test_laser_bands_at_the_edges_and_outside_the_range():
    # range (-45, 45) in 4 bands: edges at 22.5, 0 and -22.5 degrees; an upper edge belongs to the lower band
    xyz = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # pitch 0: the edge between bands 1 and 2 -> band 2
            [0.0, 0.0, 0.0],  # the sensor itself: pitch 0 -> band 2
            [1.0, 0.0, 5.0],  # above the range -> band 0
            [1.0, 0.0, -5.0],  # below the range -> band 3
            [1.0, 0.0, 0.2],  # 11.3 degrees -> band 1
        ]
    )
    assert laser_bands(xyz, 4, (-45.0, 45.0)).tolist() == [2, 2, 0, 3, 1]


def test_laser_mix_takes_alternate_bands_from_each_scan():
    points_a, labels_a = random_clouds(2, 300, seed=1)
    points_b, labels_b = random_clouds(2, 250, seed=2)
    labels_b = labels_b + 10  # tell the sources apart
    mixed = laser_mix(points_a, labels_a, points_b, labels_b, num_bands=(5,), pitch_range_deg=(-25.0, 3.0))
    assert mixed.num_bands.tolist() == [5, 5]
    for b in range(2):
        for out, (even_source, odd_source) in ((2 * b, ("a", "b")), (2 * b + 1, ("b", "a"))):
            expected = []
            for source, points, labels in (("a", points_a, labels_a), ("b", points_b, labels_b)):
                for row in torch.nonzero(points[:, 0] == b).squeeze(1).tolist():
                    band = band_by_loop(*points[row, 1:4].tolist(), 5, -25.0, 3.0)
                    if (even_source if band % 2 == 0 else odd_source) == source:
                        expected.append((*points[row, 1:].tolist(), int(labels[row])))
            keep = mixed.points[:, 0] == out
            got = [(*p[1:].tolist(), int(label)) for p, label in zip(mixed.points[keep], mixed.labels[keep])]
            assert sorted(got) == sorted(expected)


def test_every_point_lands_once_and_origin_gathers_it():
    points_a, labels_a = random_clouds(3, 200, seed=3)
    points_b, labels_b = random_clouds(3, 150, seed=4)
    mixed = laser_mix(points_a, labels_a, points_b, labels_b, generator=torch.Generator().manual_seed(0))
    total = len(points_a) + len(points_b)
    assert torch.equal(mixed.origin.sort().values, torch.arange(total))
    torch.testing.assert_close(mixed.points[:, 1:], torch.cat([points_a, points_b])[mixed.origin, 1:])
    assert torch.equal(mixed.labels, torch.cat([labels_a, labels_b])[mixed.origin])
    assert mixed.points[:, 0].unique().tolist() == list(range(6))
    assert set(mixed.num_bands.tolist()) <= {3, 4, 5, 6}


def test_band_draws_come_from_the_generator():
    points_a, labels_a = random_clouds(4, 100, seed=5)
    points_b, labels_b = random_clouds(4, 100, seed=6)

    def mix(seed):
        return laser_mix(
            points_a, labels_a, points_b, labels_b, generator=torch.Generator().manual_seed(seed)
        )

    first, again = mix(7), mix(7)
    assert torch.equal(first.origin, again.origin) and torch.equal(first.num_bands, again.num_bands)
    assert any(not torch.equal(mix(7).num_bands, mix(s).num_bands) for s in range(8, 20))


def test_one_band_keeps_the_scans_apart():
    points_a, labels_a = random_clouds(1, 50, seed=8)
    points_b, labels_b = random_clouds(1, 40, seed=9)
    first, second = laser_mix_indices(points_a[:, 1:4], points_b[:, 1:4], 1)
    assert first.tolist() == list(range(50)) and second.tolist() == list(range(50, 90))


def test_mixed_points_keep_their_own_pixels(tiny_datamodule):
    samples = tiny_datamodule.scenes("train")
    batch_a, batch_b = collate(samples[:2]), collate(samples[2:4])
    size = tuple(batch_a["images"].shape[-2:])
    pairs_a = pair_points_with_pixels(batch_a["points"], batch_a["K"], batch_a["T_cam_from_lidar"], size)
    pairs_b = pair_points_with_pixels(batch_b["points"], batch_b["K"], batch_b["T_cam_from_lidar"], size)
    mixed = laser_mix(
        batch_a["points"], batch_a["labels"], batch_b["points"], batch_b["labels"], num_bands=(4,)
    )
    pairs = mix_pairs(pairs_a, pairs_b, mixed.origin, num_points_a=len(batch_a["points"]), num_images_a=4)
    assert len(pairs.point) == len(pairs_a.point) + len(pairs_b.point) > 0
    # project every mixed point with the calibration of the image it is paired with
    K = torch.cat([batch_a["K"], batch_b["K"]]).flatten(0, 1)
    T = torch.cat([batch_a["T_cam_from_lidar"], batch_b["T_cam_from_lidar"]]).flatten(0, 1)
    pixel_labels = torch.cat([batch_a["pixel_labels"], batch_b["pixel_labels"]]).flatten(0, 1)
    for k in range(0, len(pairs.point), 7):
        image = int(pairs.image[k])
        uv, _, visible = project_points(mixed.points[pairs.point[k], 1:4][None], K[image], T[image], size)
        assert bool(visible[0])
        assert (round(float(uv[0, 1])), round(float(uv[0, 0]))) == (int(pairs.v[k]), int(pairs.u[k]))
    # and the pixel sees the class of the point on most pairs (occlusion and edges aside)
    agree = pixel_labels[pairs.image, pairs.v, pairs.u] == mixed.labels[pairs.point]
    assert agree.float().mean() > 0.8


def test_mix_pairs_rejects_an_origin_that_is_not_a_permutation(tiny_datamodule):
    empty = pair_points_with_pixels(
        torch.zeros(0, 5), torch.eye(3).expand(1, 1, 3, 3), torch.eye(4).expand(1, 1, 4, 4), (4, 4)
    )
    with pytest.raises(ValueError, match="permutation"):
        mix_pairs(empty, empty, torch.tensor([0, 0, 1]), num_points_a=2, num_images_a=1)


def test_scan_augmentation_is_a_per_cloud_similarity_and_keeps_rows():
    points, labels = random_clouds(3, 100, seed=10)
    aug = ScanAugmentation(translation_std=0.5)
    moved, transforms = aug(points, torch.Generator().manual_seed(0))
    assert moved.shape == points.shape and torch.equal(moved[:, [0, 4]], points[:, [0, 4]])
    for b in range(3):
        rows = points[:, 0] == b
        A, t = transforms[b, :3, :3].double(), transforms[b, :3, 3].double()
        # rotation about z, possibly flipped, times a scale in [0.95, 1.05]; z is only scaled
        scale = float(A[2, 2])
        assert 0.95 <= scale <= 1.05
        torch.testing.assert_close(A.T @ A, scale**2 * torch.eye(3, dtype=torch.float64))
        expected = points[rows, 1:4].double() @ A.T + t
        torch.testing.assert_close(moved[rows, 1:4].double(), expected, atol=1e-5, rtol=1e-5)
        # undoing the transform gives back the same points in the same rows: labels still fit
        back = (moved[rows, 1:4].double() - t) @ torch.linalg.inv(A).T
        torch.testing.assert_close(back, points[rows, 1:4].double(), atol=1e-4, rtol=1e-5)
    again, _ = aug(points, torch.Generator().manual_seed(0))
    other, _ = aug(points, torch.Generator().manual_seed(1))
    assert torch.equal(moved, again) and not torch.equal(moved, other)


def test_flips_and_rotations_leave_the_bands_alone():
    points, labels = random_clouds(2, 200, seed=11)
    aug = ScanAugmentation(rotation_range_deg=(0.0, 360.0), flip_probability=0.5, scale_range=(0.9, 1.1))
    moved, _ = aug(points, torch.Generator().manual_seed(3))
    for n in (3, 6):
        assert torch.equal(laser_bands(moved[:, 1:4], n), laser_bands(points[:, 1:4], n))


def test_jitter_is_small_gaussian_noise_per_point():
    points, _ = random_clouds(1, 4000, seed=12)
    aug = ScanAugmentation(
        rotation_range_deg=(0.0, 0.0), flip_probability=0.0, scale_range=(1.0, 1.0), jitter_std=0.02
    )
    moved, transforms = aug(points, torch.Generator().manual_seed(0))
    torch.testing.assert_close(transforms[0], torch.eye(4))
    noise = moved[:, 1:4] - points[:, 1:4]
    assert abs(float(noise.std()) - 0.02) < 0.002 and abs(float(noise.mean())) < 0.002


def test_bad_arguments_raise():
    xyz = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="num_bands"):
        laser_bands(xyz, 0)
    with pytest.raises(ValueError, match="pitch_range_deg"):
        laser_bands(xyz, 2, (3.0, -25.0))
    with pytest.raises(ValueError, match="xyz"):
        inclination(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="flip_probability"):
        ScanAugmentation(flip_probability=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        ScanAugmentation(scale_range=(0.0, 1.0))
    points, labels = random_clouds(2, 10, seed=0)
    one, one_labels = random_clouds(1, 10, seed=1)
    with pytest.raises(ValueError, match="clouds"):
        laser_mix(points, labels, one, one_labels)
    with pytest.raises(ValueError, match="num_bands"):
        laser_mix(points, labels, points, labels, num_bands=())
