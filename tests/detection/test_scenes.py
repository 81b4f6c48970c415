"""Labelled scenes and their DataModule: boxes around the objects' points, tracks that follow the motion,
sparsity with distance, difficulty, 2D boxes, batches in the interface's layout."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.data.detection import DetectionSceneDataModule, collate_detection
from lightning_distill.detection.boxes import points_in_boxes, project_boxes
from lightning_distill.detection.scenes import (
    CLASSES,
    POINT_CLASS_NAMES,
    DetectionSceneGenerator,
    difficulty_levels,
)
from lightning_distill.lidar.scene import StreetSceneGenerator

SENSORS = {"beams": 24, "azimuth_steps": 512, "image_size": (24, 40)}


@pytest.fixture(scope="module")
def sequence():
    """Three frames of one scene, no range noise (points lie exactly on the meshes)."""
    gen = DetectionSceneGenerator(
        range_noise=0.0, cars=(5, 8), pedestrians=(4, 6), cyclists=(2, 3), **SENSORS
    )
    return gen, gen.generate(seed=7, num_frames=3)


@pytest.fixture(scope="module")
def many_frames():
    gen = DetectionSceneGenerator(range_noise=0.0, **SENSORS)
    return [gen.generate(seed=s)[0] for s in range(4)]


def test_scenes_are_deterministic_from_the_seed():
    gen = DetectionSceneGenerator(beams=8, azimuth_steps=128, image_size=(8, 8))
    a, b, c = gen.generate(seed=3)[0], gen.generate(seed=3)[0], gen.generate(seed=4)[0]
    assert torch.equal(a.points, b.points) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.boxes, c.boxes) if a.boxes.shape == c.boxes.shape else True


def test_every_object_point_lies_in_its_own_box(many_frames):
    for frame in many_frames:
        hit = frame.point_boxes >= 0
        assert hit.any()
        assert torch.equal(points_in_boxes(frame.points[hit], frame.boxes), frame.point_boxes[hit])
        counts = torch.bincount(frame.point_boxes[hit], minlength=len(frame.boxes))
        assert torch.equal(counts, frame.num_points_in_box)


def test_the_three_classes_have_their_own_shapes_and_point_labels(many_frames):
    boxes = torch.cat([f.boxes for f in many_frames])
    labels = torch.cat([f.box_labels for f in many_frames])
    assert set(labels.tolist()) == {0, 1, 2}
    car, ped, cyc = (boxes[labels == k] for k in range(3))
    assert bool((car[:, 3] > 3.5).all()) and bool((ped[:, 3] < 1.0).all() and (ped[:, 5] > 1.4).all())
    assert bool((cyc[:, 3] > 1.5).all() and (cyc[:, 4] < 0.8).all())  # long and narrow
    for frame in many_frames:
        hit = frame.point_boxes >= 0
        names = {POINT_CLASS_NAMES[int(p)] for p in frame.labels[hit]}
        expected = {CLASSES[int(frame.box_labels[b])] for b in frame.point_boxes[hit].unique()}
        assert names == expected


def test_tracks_keep_their_ids_and_boxes_move_with_their_velocity(sequence):
    gen, frames = sequence
    ids = [set(f.track_ids.tolist()) for f in frames]
    common = sorted(ids[0] & ids[1])
    assert len(common) >= 3
    world = []
    for frame in frames[:2]:
        centres = torch.cat([frame.boxes[:, :3], torch.ones(len(frame.boxes), 1)], 1) @ frame.pose.T
        world.append({t: centres[k, :2] for k, t in enumerate(frame.track_ids.tolist())})
    moving = 0
    for track in common:
        k = frames[0].track_ids.tolist().index(track)
        velocity = frames[0].velocities[k]
        yaw = math.atan2(float(frames[0].pose[1, 0]), float(frames[0].pose[0, 0]))
        c, s = math.cos(yaw), math.sin(yaw)
        world_velocity = torch.tensor([c * velocity[0] - s * velocity[1], s * velocity[0] + c * velocity[1]])
        step = world[1][track] - world[0][track]
        torch.testing.assert_close(step, world_velocity * gen.frame_interval, atol=1e-3, rtol=0)
        moving += int(velocity.norm() > 0.5)
    assert moving >= 1


def test_objects_never_overlap_each_other(sequence):
    from lightning_distill.detection.boxes import bev_iou

    for frame in sequence[1]:
        iou = bev_iou(frame.boxes, frame.boxes)
        assert torch.equal(iou > 1e-6, torch.eye(len(iou), dtype=torch.bool))


def test_far_objects_get_fewer_points():
    gen = DetectionSceneGenerator(**SENSORS)
    distance, points = [], []
    for seed in range(6):
        frame = gen.generate(seed=seed)[0]
        cars = frame.box_labels == 0
        distance.append(frame.boxes[cars, :2].norm(dim=1))
        points.append(frame.num_points_in_box[cars].float())
    distance, points = torch.cat(distance), torch.cat(points)
    near, far = points[distance < 20], points[distance > 30]
    assert len(near) and len(far) and near.mean() > 4 * far.mean()


def test_difficulty_follows_distance_occlusion_and_points():
    level = difficulty_levels(
        torch.tensor([5.0, 5.0, 30.0, 30.0, 50.0, 5.0]),
        torch.tensor([0.0, 0.5, 0.0, 0.7, 0.0, 0.0]),
        torch.tensor([100, 100, 20, 20, 3, 0]),
    )
    assert level.tolist() == [0, 1, 1, 2, 2, -1]


def test_frames_label_difficulty_and_occlusion_consistently(many_frames):
    for frame in many_frames:
        assert bool(((frame.occlusion >= 0) & (frame.occlusion <= 1)).all())
        assert torch.equal(frame.difficulty == -1, frame.num_points_in_box < 1)
        assert bool((frame.boxes[:, :2].norm(dim=1) <= 50.0).all())


def test_2d_boxes_enclose_the_projected_box_centre():
    K = torch.tensor([[[50.0, 0.0, 49.5], [0.0, 50.0, 29.5], [0.0, 0.0, 1.0]]])
    T = torch.tensor(
        [[[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]
    )
    boxes = torch.tensor(
        [
            [10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0],  # straight ahead: u in 49.5 -+ 50 * 1/9 .. 1/11
            [-10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0],  # behind the camera
            [0.5, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0],  # around the camera: cut at the near plane, clipped
        ]
    )
    out, visible = project_boxes(boxes, K, T, (60, 100))
    assert visible[:, 0].tolist() == [True, False, True]
    torch.testing.assert_close(
        out[0, 0], torch.tensor([49.5 - 50 / 9, 29.5 - 50 / 9, 49.5 + 50 / 9, 29.5 + 50 / 9])
    )
    assert out[1, 0].tolist() == [0.0] * 4
    assert out[2, 0].tolist() == [0.0, 0.0, 99.0, 59.0]


def test_generated_2d_boxes_contain_the_pixels_of_their_points(many_frames):
    checked = 0
    for frame in many_frames:
        K, T = frame.K[0], frame.T_cam_from_lidar[0]
        cam = frame.points[:, :3] @ T[:3, :3].T + T[:3, 3]
        for b in torch.nonzero(frame.visible_2d[:, 0]).flatten().tolist():
            mine = (frame.point_boxes == b) & (cam[:, 2] > 0.5)
            uv = cam[mine, :2] / cam[mine, 2:] * K.diagonal()[:2] + K[:2, 2]
            inside = (uv[:, 0] >= frame.boxes_2d[b, 0, 0] - 1e-3) & (
                uv[:, 0] <= frame.boxes_2d[b, 0, 2] + 1e-3
            )
            in_image = (uv[:, 0] >= 0) & (uv[:, 0] <= K[0, 2] * 2)
            assert bool(inside[in_image].all())
            checked += int(in_image.sum())
    assert checked > 0


def test_pixels_of_an_object_lie_in_its_2d_box_and_carry_its_class(many_frames):
    checked = 0
    for frame in many_frames:
        boxes_of_pixels = frame.pixel_boxes[0]
        for b in range(len(frame.boxes)):
            v, u = torch.nonzero(boxes_of_pixels == b, as_tuple=True)
            assert len(u) == int(frame.visible_pixels[b, 0])
            assert bool(frame.visible_2d[b, 0]) == (len(u) > 0)
            if len(u) == 0:
                continue
            u0, v0, u1, v1 = frame.boxes_2d[b, 0].tolist()
            assert (
                u0 - 1e-3 <= u.min()
                and u.max() <= u1 + 1e-3
                and v0 - 1e-3 <= v.min()
                and v.max() <= v1 + 1e-3
            )
            assert set(frame.pixel_labels[0][boxes_of_pixels == b].tolist()) == {_point_label(frame, b)}
            checked += 1
    assert checked > 0


def _point_label(frame, b: int) -> int:
    return POINT_CLASS_NAMES.index(CLASSES[int(frame.box_labels[b])])


def test_the_plain_street_generator_is_unchanged_by_the_detection_subclass():
    # the detection generator must not alter the base class: same seed, same scene as before
    plain = StreetSceneGenerator(beams=8, azimuth_steps=128, image_size=(8, 8)).generate(seed=0)[0]
    DetectionSceneGenerator(beams=8, azimuth_steps=128, image_size=(8, 8)).generate(seed=0)
    again = StreetSceneGenerator(beams=8, azimuth_steps=128, image_size=(8, 8)).generate(seed=0)[0]
    assert torch.equal(plain.points, again.points)


def test_bad_count_range_is_rejected():
    with pytest.raises(ValueError, match="`pedestrians` must be an inclusive range"):
        DetectionSceneGenerator(pedestrians=(3, 1))


# --------------------------------------------------------------------------------- the DataModule
TINY = dict(num_scenes=3, val_scenes=1, test_scenes=1, beams=16, azimuth_steps=256, image_size=(16, 24))


def test_datamodule_serves_the_interface_batch_layout():
    dm = DetectionSceneDataModule(batch_size=2, **TINY)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape[1] == 4 and batch["points"].dtype == torch.float32
    assert batch["batch_index"].dtype == torch.long and batch["batch_index"].max() == 1
    assert len(batch["points"]) == len(batch["batch_index"]) == len(batch["point_boxes"])
    for key in ("boxes", "labels", "track_ids", "num_points_in_box", "difficulty", "velocities", "boxes_2d"):
        assert isinstance(batch[key], list) and len(batch[key]) == 2, key
    for boxes, labels in zip(batch["boxes"], batch["labels"]):
        assert boxes.shape == (len(labels), 7) and boxes.dtype == torch.float32 and labels.dtype == torch.long
    assert batch["images"].shape[:3] == (2, 1, 3) and batch["pose"].shape == (2, 4, 4)
    assert batch["pixel_boxes"].shape == batch["pixel_labels"].shape == (2, 1, 16, 24)


def test_datamodule_is_deterministic_with_disjoint_splits():
    a = DetectionSceneDataModule(**TINY)
    b = DetectionSceneDataModule(**TINY, batch_size=3)  # loader settings share the cache
    assert a.settings_key == b.settings_key
    train, val = a.frames("train"), a.frames("val")
    assert torch.equal(train[0]["points"], b.frames("train")[0]["points"])
    assert all(
        not torch.equal(val[0]["boxes"], t["boxes"])
        for t in train
        if t["boxes"].shape == val[0]["boxes"].shape
    )
    other = DetectionSceneDataModule(**{**TINY, "seed": 1})
    assert other.settings_key != a.settings_key


def test_sequence_mode_serves_whole_scenes_with_poses_and_tracks():
    dm = DetectionSceneDataModule(num_frames=3, serve="sequences", batch_size=2, **{**TINY, "num_scenes": 2})
    batch = next(iter(dm.train_dataloader()))
    assert batch["frame"].tolist() in ([0, 1, 2, 0, 1, 2],)
    assert len(set(batch["scene"][:3].tolist())) == 1 and len(batch["boxes"]) == 6
    assert not torch.equal(batch["pose"][0], batch["pose"][1])  # the ego moved


def test_collate_flattens_sequences_scene_major():
    frame = {
        "points": torch.zeros(2, 4),
        "boxes": torch.zeros(1, 7),
        "labels": torch.zeros(1, dtype=torch.long),
    }
    batch = collate_detection([[frame, frame], [frame]])
    assert batch["batch_index"].tolist() == [0, 0, 1, 1, 2, 2] and len(batch["boxes"]) == 3
    with pytest.raises(ValueError, match="`samples` is empty"):
        collate_detection([])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_scenes": 0}, "`num_scenes`"),
        ({"val_scenes": -1}, "`val_scenes`"),
        ({"serve": "clips"}, "`serve`"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectionSceneDataModule(**kwargs)


def test_datamodule_reloads_scenes_from_its_disk_cache(tmp_path, monkeypatch):
    from lightning_distill.data import detection

    kwargs = {**TINY, "num_scenes": 1, "test_scenes": 0, "cache_dir": str(tmp_path)}
    first = DetectionSceneDataModule(**kwargs).frames("train")
    monkeypatch.setattr(detection, "_MEMORY", {})
    monkeypatch.setattr(DetectionSceneDataModule, "make_scene", lambda *a: pytest.fail("regenerated"))
    again = DetectionSceneDataModule(**kwargs).frames("train")
    assert len(list(tmp_path.glob("detection_scenes_*.pt"))) == 1
    assert all(
        torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["points"], b["points"])
        for a, b in zip(first, again)
    )
