"""Object-complete frames: points go back inside their boxes, the rest stays, determinism, identity, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.data.detection import DetectionSceneDataModule, collate_detection
from lightning_distill.detection.boxes import points_in_boxes
from lightning_distill.detection.object_complete import (
    from_box_frame,
    object_complete_sequence,
    to_box_frame,
    voxel_dedup,
)


@pytest.fixture(scope="module")
def sequence():
    data = DetectionSceneDataModule(
        num_scenes=1,
        val_scenes=0,
        test_scenes=0,
        num_frames=3,
        beams=8,
        azimuth_steps=256,
        image_size=(8, 16),
    )
    return data.sequences("train")[0]


def _nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each row of ``a`` to the nearest row of ``b`` (xyz + intensity)."""
    return torch.cdist(a.double(), b.double()).min(dim=1).values


def test_every_pasted_point_lies_inside_its_own_box_and_objects_gain_points(sequence):
    out = object_complete_sequence(sequence)
    gained = 0
    for raw, frame in zip(sequence, out):
        objects = frame["point_boxes"] >= 0
        assert objects.any()
        inside = points_in_boxes(frame["points"][objects, :3], frame["boxes"])
        assert torch.equal(inside, frame["point_boxes"][objects])
        raw_counts = torch.bincount(points_in_boxes(raw["points"][:, :3], raw["boxes"]).clamp(min=-1) + 1,
                                    minlength=len(raw["boxes"]) + 1)[1:]  # fmt: skip
        assert (frame["num_points_in_box"] >= raw_counts).all()
        gained += int((frame["num_points_in_box"] - raw_counts).sum())
    assert gained > 0  # a 3-frame sequence fills its boxes with other frames' points


def test_points_of_the_street_and_other_objects_are_not_moved(sequence):
    # one object is left untracked (as if unlabelled): its points and the street's stay exactly as they were
    frames = [dict(f) for f in sequence]
    untracked = int(frames[0]["track_ids"][0])
    for f in frames:
        keep = f["track_ids"] != untracked
        f["boxes"], f["track_ids"] = f["boxes"][keep], f["track_ids"][keep]
    for raw, frame in zip(frames, object_complete_sequence(frames)):
        outside = points_in_boxes(raw["points"][:, :3], raw["boxes"]) < 0
        n = int(outside.sum())
        assert torch.equal(frame["points"][:n], raw["points"][outside])
        assert torch.equal(frame["point_labels"][:n], raw["point_labels"][outside])
        assert (frame["point_boxes"][:n] == -1).all() and (frame["point_boxes"][n:] >= 0).all()


def test_aggregation_is_deterministic(sequence):
    a, b = object_complete_sequence(sequence), object_complete_sequence(sequence)
    for fa, fb in zip(a, b):
        assert torch.equal(fa["points"], fb["points"]) and torch.equal(fa["point_labels"], fb["point_labels"])


def test_a_single_frame_sequence_is_the_identity_up_to_point_order(sequence):
    raw = sequence[0]
    (out,) = object_complete_sequence([raw])
    assert out["points"].shape == raw["points"].shape
    assert float(_nearest(out["points"], raw["points"]).max()) < 1e-5
    assert float(_nearest(raw["points"], out["points"]).max()) < 1e-5
    assert torch.equal(out["point_labels"].sort().values, raw["point_labels"].sort().values)
    assert torch.equal(out["boxes"], raw["boxes"]) and out["images"] is raw["images"]


def test_a_moving_rotated_object_gets_the_other_frames_points_at_the_right_place():
    # frame 1: the object moved 2 m along x and turned by 90 degrees; each frame saw one point of it
    box0 = torch.tensor([10.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.0])
    box1 = torch.tensor([12.0, 5.0, 0.0, 4.0, 2.0, 1.5, math.pi / 2])
    p0 = torch.tensor([[11.5, 5.5, 0.2, 0.3]])  # box coordinates (1.5, 0.5, 0.2)
    p1 = torch.tensor([[12.5, 4.0, -0.3, 0.9]])  # box coordinates (-1.0, -0.5, -0.3)
    street = torch.tensor([[0.0, 0.0, -1.7, 0.1]])
    frames = [
        {"points": torch.cat([p0, street]), "boxes": box0[None], "track_ids": torch.tensor([3])},
        {"points": torch.cat([street, p1]), "boxes": box1[None], "track_ids": torch.tensor([3])},
    ]
    out = object_complete_sequence(frames)
    # by hand: box coordinates rotated by the frame's yaw and moved to its centre
    expected0 = torch.tensor([[0.0, 0.0, -1.7, 0.1], [11.5, 5.5, 0.2, 0.3], [9.0, 4.5, -0.3, 0.9]])
    expected1 = torch.tensor([[0.0, 0.0, -1.7, 0.1], [11.5, 6.5, 0.2, 0.3], [12.5, 4.0, -0.3, 0.9]])
    torch.testing.assert_close(out[0]["points"], expected0)
    torch.testing.assert_close(out[1]["points"], expected1)


def test_box_frame_round_trip_and_voxel_dedup_keeps_the_first_point_per_cell():
    gen = torch.Generator().manual_seed(0)
    points, box = torch.randn(50, 4, generator=gen), torch.tensor([1.0, -2.0, 0.5, 4.0, 2.0, 1.5, 0.7])
    torch.testing.assert_close(from_box_frame(to_box_frame(points, box), box), points)
    cloud = torch.tensor([[0.01, 0.0, 0.0], [0.5, 0.5, 0.5], [0.02, 0.03, 0.04], [0.51, 0.1, 0.0]])
    assert voxel_dedup(cloud, 0.25).tolist() == [0, 1, 3]
    dense = object_complete_sequence(
        [
            {
                "points": cloud,
                "boxes": torch.tensor([[0.25, 0.25, 0.25, 1.0, 1.0, 1.0, 0.0]]),
                "track_ids": torch.tensor([0]),
            }
        ]
        * 2,
        voxel_size=0.25,
    )
    assert len(dense[0]["points"]) == 3


def test_bad_sequences_are_rejected_with_the_reason():
    box = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    good = {"points": torch.zeros(2, 4), "boxes": box, "track_ids": torch.tensor([0])}
    with pytest.raises(ValueError, match="empty"):
        object_complete_sequence([])
    with pytest.raises(ValueError, match="track_ids"):
        object_complete_sequence([{"points": torch.zeros(2, 4), "boxes": box}])
    with pytest.raises(ValueError, match="twice"):
        object_complete_sequence([{**good, "boxes": box.repeat(2, 1), "track_ids": torch.tensor([4, 4])}])
    with pytest.raises(ValueError, match="points"):
        object_complete_sequence([{**good, "points": torch.zeros(2, 2)}])
    with pytest.raises(ValueError, match="M, 7"):
        object_complete_sequence([{**good, "boxes": torch.zeros(1, 6)}])
    with pytest.raises(ValueError, match="voxel_size"):
        object_complete_sequence([good], voxel_size=0.0)


def test_data_module_serves_object_complete_frames_beside_or_instead_of_the_raw_ones(sequence):
    settings = dict(num_scenes=1, val_scenes=0, test_scenes=0, num_frames=3, beams=8, azimuth_steps=256,
                    image_size=(8, 16), batch_size=3)  # fmt: skip
    raw = DetectionSceneDataModule(**settings)
    add = DetectionSceneDataModule(**settings, object_complete="add")
    replace = DetectionSceneDataModule(**settings, object_complete="replace")
    assert raw.settings_key == DetectionSceneDataModule(**settings, object_complete_voxel=0.1).settings_key
    assert len({raw.settings_key, add.settings_key, replace.settings_key}) == 3
    batch = collate_detection(add.frames("train"))  # what the loaders batch
    complete = object_complete_sequence(sequence)
    assert torch.equal(batch["points"], torch.cat([f["points"] for f in sequence]))
    assert torch.equal(batch["complete_points"], torch.cat([f["points"] for f in complete]))
    assert batch["complete_batch_index"].tolist() == sum(
        ([b] * len(f["points"]) for b, f in enumerate(complete)), []
    )
    assert torch.equal(replace.frames("train")[1]["points"], complete[1]["points"])
    with pytest.raises(ValueError, match="object_complete"):
        DetectionSceneDataModule(**settings, object_complete="yes")
