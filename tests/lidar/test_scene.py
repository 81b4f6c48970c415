"""Scene generator: deterministic from the seed; LiDAR and camera labels agree; data layout; scan reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_distill.lidar.batches import collate, read_scan
from lightning_distill.lidar.geometry import project_points
from lightning_distill.lidar.scene import CLASS_NAMES, StreetSceneGenerator

GEN = dict(beams=8, azimuth_steps=256, image_size=(48, 96), num_cameras=2)


def test_generator_is_deterministic_from_the_seed():
    a = StreetSceneGenerator(**GEN).generate(seed=3, num_frames=2)
    b = StreetSceneGenerator(**GEN).generate(seed=3, num_frames=2)
    c = StreetSceneGenerator(**GEN).generate(seed=4)
    for fa, fb in zip(a, b):
        for name in ("points", "labels", "images", "pixel_labels", "pose"):
            assert torch.equal(getattr(fa, name), getattr(fb, name)), name
    assert not torch.equal(a[0].images, c[0].images)
    # ego motion: the second frame is further along x in the world
    assert float(a[1].pose[0, 3] - a[0].pose[0, 3]) > 1.0


def test_lidar_sees_every_class_and_road_is_below_the_sensor():
    frames = [StreetSceneGenerator(**GEN).generate(seed=s)[0] for s in range(3)]
    labels = torch.cat([f.labels for f in frames])
    assert set(labels.unique().tolist()) == set(range(len(CLASS_NAMES)))
    road = frames[0].points[frames[0].labels == 0]
    torch.testing.assert_close(road[:, 2].median(), torch.tensor(-1.8), atol=0.05, rtol=0)
    assert float(frames[0].points[:, 3].min()) >= 0 and float(frames[0].points[:, 3].max()) <= 1


def test_pixel_label_at_a_point_projection_equals_the_point_label():
    frame = StreetSceneGenerator(**GEN).generate(seed=1)[0]
    agree, total = 0, 0
    for c in range(2):
        uv, _, mask = project_points(frame.points[:, :3], frame.K[c], frame.T_cam_from_lidar[c], (48, 96))
        u, v = uv[mask, 0].round().long(), uv[mask, 1].round().long()
        agree += int((frame.pixel_labels[c, v, u] == frame.labels[mask]).sum())
        total += int(mask.sum())
    assert total > 200
    assert agree / total > 0.85, agree / total


def test_road_and_sidewalk_differ_in_colour_not_in_reflectivity():
    frame = StreetSceneGenerator(**GEN).generate(seed=2)[0]
    image, labels = frame.images[0], frame.pixel_labels[0]
    road, walk = image[:, labels == 0].mean(dim=1), image[:, labels == 1].mean(dim=1)
    assert float((walk - road).mean()) > 0.2
    pi, pl = frame.points[:, 3], frame.labels
    assert abs(float(pi[pl == 0].mean() - pi[pl == 1].mean())) < 0.05


def test_collate_adds_the_batch_index(tiny_datamodule):
    samples = tiny_datamodule.scenes("train")[:2]
    batch = collate(samples)
    n0 = len(samples[0]["points"])
    assert batch["points"].shape == (n0 + len(samples[1]["points"]), 5)
    assert batch["points"][:n0, 0].eq(0).all() and batch["points"][n0:, 0].eq(1).all()
    torch.testing.assert_close(batch["points"][:n0, 1:], samples[0]["points"])
    assert batch["images"].shape == (2, 2, 3, 32, 64) and batch["superpixels"].shape == (2, 2, 32, 64)
    assert batch["K"].shape == (2, 2, 3, 3) and batch["T_cam_from_lidar"].shape == (2, 2, 4, 4)


def test_datamodule_caches_on_disk(tmp_path):
    from lightning_distill.data.lidar import _MEMORY, SyntheticLidarDataModule

    kwargs = dict(
        num_scenes=1,
        val_scenes=0,
        test_scenes=0,
        beams=4,
        azimuth_steps=64,
        image_size=(16, 32),
        num_cameras=1,
        cache_dir=str(tmp_path),
        seed=123,
    )
    first = SyntheticLidarDataModule(**kwargs)
    first.setup()
    files = list(tmp_path.glob("synthetic_lidar_*.pt"))
    assert len(files) == 1 and first.settings_key in files[0].name
    _MEMORY.pop(first.settings_key)
    second = SyntheticLidarDataModule(**kwargs)
    assert torch.equal(second.scenes("train")[0]["points"], first.scenes("train")[0]["points"])
    assert SyntheticLidarDataModule(**{**kwargs, "beams": 5}).settings_key != first.settings_key


@pytest.mark.parametrize("suffix", [".bin", ".pcd", ".ply"])
def test_read_scan_gives_xyz_intensity(tmp_path, suffix):
    import open3d as o3d

    scan = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    path = tmp_path / f"scan{suffix}"
    if suffix == ".bin":
        scan.tofile(path)
    else:
        cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(scan[:, :3]))
        cloud.point["intensity"] = o3d.core.Tensor(scan[:, 3:4])
        o3d.t.io.write_point_cloud(str(path), cloud)
    out = read_scan(path)
    assert out.shape == (50, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.from_numpy(scan))


def test_read_scan_rejects_unknown_formats(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_text("0 0 0")
    with pytest.raises(ValueError, match=r"\.bin"):
        read_scan(path)
