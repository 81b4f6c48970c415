"""LiSe's pseudo-label parts: ground, clusters and their boxes, lifted image boxes, merge, sampling, aggregation, 2D detector."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.detection.boxes import bev_iou, project_boxes
from lightning_distill.detection.image_detector import ImageDetector, image_targets
from lightning_distill.detection.pseudo_labels import (
    PseudoLabeler,
    box_iou_2d,
    estimate_ground,
    fit_box,
    merge_pseudo_boxes,
)
from lightning_distill.detection.self_training import adaptive_sample, average_into, sampling_bins
from lightning_distill.losses.detection import heatmap_focal_loss

GROUND = -1.8


def ground_points(gen: torch.Generator, n: int = 3000, extent: float = 40.0) -> torch.Tensor:
    xy = (torch.rand(n, 2, generator=gen) - 0.5) * 2 * extent
    z = torch.full((n, 1), GROUND) + 0.01 * torch.randn(n, 1, generator=gen)
    return torch.cat([xy, z], 1)


def box_surface(box: list[float], gen: torch.Generator, n: int = 150) -> torch.Tensor:
    """Points on the faces of ``box`` (``[x, y, z, dx, dy, dz, yaw]``) seen from every side."""
    x, y, z, dx, dy, dz, yaw = box
    u = torch.rand(n, 3, generator=gen) - 0.5
    face = torch.randint(0, 2, (n,), generator=gen)  # side faces only (x or y), as a LiDAR sees them
    u[torch.arange(n), face] = torch.sign(u[torch.arange(n), face]) * 0.5
    local = u * torch.tensor([dx, dy, dz])
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.stack(
        [local[:, 0] * c - local[:, 1] * s + x, local[:, 0] * s + local[:, 1] * c + y, local[:, 2] + z], 1
    )


CAR = [8.0, 3.0, GROUND + 0.78, 3.9, 1.6, 1.56, 0.3]
PEDESTRIAN = [6.0, -4.0, GROUND + 0.87, 0.8, 0.6, 1.73, 0.0]
WALL = [0.0, 12.0, GROUND + 1.5, 30.0, 0.3, 3.0, 0.0]


def scene(gen: torch.Generator) -> torch.Tensor:
    xyz = torch.cat(
        [
            ground_points(gen),
            box_surface(CAR, gen),
            box_surface(PEDESTRIAN, gen, 60),
            box_surface(WALL, gen, 800),
        ]
    )
    return torch.cat([xyz, torch.zeros(len(xyz), 1)], 1)


def test_ransac_ground_recovers_a_tilted_plane():
    gen = torch.Generator().manual_seed(0)
    xyz = ground_points(gen)
    xyz[:, 2] = 0.02 * xyz[:, 0] - 0.01 * xyz[:, 1] - 1.7
    outliers = torch.rand(300, 3, generator=gen) * 5
    plane = estimate_ground(torch.cat([xyz, outliers]))
    torch.testing.assert_close(plane, torch.tensor([0.02, -0.01, -1.7]), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="xyz"):
        estimate_ground(torch.zeros(2, 3))


def test_fit_box_finds_a_rotated_rectangle():
    gen = torch.Generator().manual_seed(1)
    pts = box_surface([5.0, -2.0, 0.0, 4.0, 2.0, 1.5, 0.5], gen, 400)
    box = fit_box(pts, yaw_steps=90)
    assert abs(float(box[0]) - 5.0) < 0.05 and abs(float(box[1]) + 2.0) < 0.05
    assert abs(float(box[3]) - 4.0) < 0.1 and abs(float(box[4]) - 2.0) < 0.1
    assert abs(math.remainder(float(box[6]) - 0.5, math.pi)) < 0.03


def test_clustering_finds_hand_placed_objects_fits_their_boxes_and_drops_a_wall():
    gen = torch.Generator().manual_seed(2)
    labeler = PseudoLabeler()
    out = labeler(scene(gen), [], torch.zeros(0, 3, 3), torch.zeros(0, 4, 4), (32, 64), use_images=False)
    assert len(out["boxes"]) == 2 and (out["source"] == 0).all()
    truth = torch.tensor([CAR, PEDESTRIAN])
    iou = bev_iou(out["boxes"], truth)
    assert (iou.amax(1) > 0.7).all(), iou
    order = iou.argmax(1)
    assert out["labels"][order == 0].tolist() == [0] and out["labels"][order == 1].tolist() == [1]
    assert ((out["scores"] > 0) & (out["scores"] < 1)).all()


def test_a_partial_view_grows_away_from_the_sensor():
    gen = torch.Generator().manual_seed(3)
    near_side = box_surface(
        [10.0, 0.0, GROUND + 0.78, 0.05, 3.5, 1.56, 0.0], gen, 100
    )  # a car's side, at x = 10
    xyz = torch.cat([ground_points(gen), near_side])
    out = PseudoLabeler()(torch.cat([xyz, torch.zeros(len(xyz), 1)], 1), [], torch.zeros(0, 3, 3), torch.zeros(0, 4, 4),
                          (8, 8), use_images=False)  # fmt: skip
    (box,) = out["boxes"]
    assert float(box[0]) > 10.5  # the hidden part is behind the seen face
    assert float(box[3]) == pytest.approx(3.9, abs=1e-4) and float(box[4]) == pytest.approx(1.6, abs=1e-4)
    assert float(box[0]) == pytest.approx(10.0 + 0.8, abs=0.1)  # the seen face is the near side


def camera() -> tuple[torch.Tensor, torch.Tensor]:
    """One forward camera (OpenCV axes) 64 x 128, 90° field of view, at the LiDAR origin."""
    K = torch.tensor([[[64.0, 0.0, 63.5], [0.0, 64.0, 31.5], [0.0, 0.0, 1.0]]])
    T = torch.tensor(
        [[[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]
    )
    return K, T


def test_a_lifted_image_box_lands_on_the_object_in_its_frustum_not_the_wall_behind():
    gen = torch.Generator().manual_seed(4)
    far_car = [25.0, 2.0, GROUND + 0.78, 3.9, 1.6, 1.56, 0.0]
    other = [25.0, -8.0, GROUND + 0.78, 3.9, 1.6, 1.56, 0.0]  # outside the 2D box
    wall = [40.0, 0.0, GROUND + 1.5, 0.3, 30.0, 3.0, 0.0]
    rear = box_surface([23.05, 2.0, GROUND + 0.78, 0.02, 1.6, 1.56, 0.0], gen, 12)  # the side the sensor sees
    xyz = torch.cat([ground_points(gen), rear, box_surface(other, gen, 12), box_surface(wall, gen, 600)])
    K, T = camera()
    box2d, _ = project_boxes(torch.tensor([far_car]), K, T, (64, 128))
    detections = [{"boxes_2d": box2d[:, 0], "labels": torch.tensor([0]), "scores": torch.tensor([0.9])}]
    labeler = PseudoLabeler()
    objects, _, plane = labeler.objects(torch.cat([xyz, torch.zeros(len(xyz), 1)], 1))
    lifted = labeler.lift(objects, plane, detections, K, T, yaw=0.0)
    assert len(lifted["boxes"]) == 1 and lifted["source"].tolist() == [1] and lifted["labels"].tolist() == [0]
    centre = lifted["boxes"][0, :2]
    assert float((centre - torch.tensor(far_car[:2])).norm()) < 1.0, centre
    assert float(bev_iou(lifted["boxes"], torch.tensor([far_car]))) > 0.5
    assert 0 < float(lifted["scores"][0]) < 0.9


def test_merge_keeps_lidar_boxes_and_only_far_new_image_boxes():
    def boxes(rows, source, scores):
        return {"boxes": torch.tensor(rows), "labels": torch.zeros(len(rows), dtype=torch.long),
                "scores": torch.tensor(scores), "source": torch.full((len(rows),), source)}  # fmt: skip

    lidar = boxes(
        [[5.0, 0.0, -1.0, 4.0, 1.6, 1.5, 0.0], [20.0, 5.0, -1.0, 4.0, 1.6, 1.5, 0.0]], 0, [0.9, 0.5]
    )
    image = boxes(
        [
            [6.0, 0.0, -1.0, 4.0, 1.6, 1.5, 0.0],  # near: dropped (< 10 m)
            [20.5, 5.0, -1.0, 4.0, 1.6, 1.5, 0.0],  # duplicates a LiDAR box: dropped
            [30.0, -5.0, -1.0, 4.0, 1.6, 1.5, 0.0],  # kept
            [30.3, -5.0, -1.0, 4.0, 1.6, 1.5, 0.0],  # duplicate of the one above, lower score: dropped
        ],
        1,
        [0.8, 0.8, 0.7, 0.6],
    )
    merged = merge_pseudo_boxes(lidar, image, min_image_distance=10.0)
    assert merged["source"].tolist() == [0, 0, 1]
    torch.testing.assert_close(merged["boxes"][2], image["boxes"][2])
    assert merge_pseudo_boxes(lidar, image, min_image_distance=40.0)["source"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="min_image_distance"):
        merge_pseudo_boxes(lidar, image, min_image_distance=-1.0)


def test_lidar_boxes_take_the_class_of_the_2d_detection_they_project_onto():
    K, T = camera()
    labeler = PseudoLabeler()
    box = torch.tensor([[12.0, 0.0, -1.0, 1.76, 0.6, 1.73, 0.0]])
    lidar = {
        "boxes": box,
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.5]),
        "source": torch.tensor([0]),
    }
    box2d, _ = project_boxes(box, K, T, (64, 128))
    labeler.classify_by_image(lidar, [{"boxes_2d": box2d[:, 0], "labels": torch.tensor([2]), "scores": torch.tensor([0.9])}],
                              K, T, (64, 128))  # fmt: skip
    assert lidar["labels"].tolist() == [2]


def test_box_iou_2d_by_hand():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0], [20.0, 20.0, 21.0, 21.0]])
    torch.testing.assert_close(box_iou_2d(a, b), torch.tensor([[50 / 150, 0.0]]))


def test_adaptive_sampling_shares_the_budget_by_power():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.2, 0.1])
    bins = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])  # 8 near, 2 far
    # power 0: the candidates' own shares (4 of 5 near); power 1: equal shares
    assert adaptive_sample(scores, bins, budget=5, power=0.0).tolist() == [0, 1, 2, 3, 8]
    assert adaptive_sample(scores, bins, budget=4, power=1.0).tolist() == [0, 1, 8, 9]
    # a full bin's unused quota goes to the best remaining scores
    assert adaptive_sample(scores, bins, budget=8, power=1.0).tolist() == [0, 1, 2, 3, 4, 5, 8, 9]
    assert adaptive_sample(scores, bins, budget=0, power=1.0).numel() == 0
    with pytest.raises(ValueError, match="power"):
        adaptive_sample(scores, bins, budget=2, power=1.5)
    with pytest.raises(ValueError, match="scores"):
        adaptive_sample(scores, bins[:3], budget=2, power=0.5)


def test_sampling_bins_by_distance_and_size():
    boxes = torch.tensor(
        [
            [5.0, 0, 0, 4, 2, 1, 0],
            [5.0, 0, 0, 0.6, 0.6, 1, 0],
            [30.0, 0, 0, 4, 2, 1, 0],
            [0, 45.0, 0, 0.6, 0.6, 1, 0],
        ]
    )
    assert sampling_bins(boxes).tolist() == [0, 1, 2, 5]


def test_weak_model_aggregation_is_a_running_mean_of_weights_and_buffers():
    models = []
    for value in (1.0, 2.0, 6.0):
        m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        for t in m.state_dict().values():
            t.fill_(value) if t.is_floating_point() else t.fill_(int(value))
        models.append(m)
    aggregate = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    for count, m in enumerate(models):
        average_into(aggregate, m, count)
    state = aggregate.state_dict()
    torch.testing.assert_close(state["0.weight"], torch.full((2, 2), 3.0))
    torch.testing.assert_close(state["1.running_var"], torch.full((2,), 3.0))
    assert int(state["1.num_batches_tracked"]) == 6  # integers: the last model's
    with pytest.raises(ValueError, match="same architecture"):
        average_into(aggregate, torch.nn.Linear(2, 2), 1)


def test_image_detector_targets_loss_and_decoding():
    targets = image_targets(
        [torch.tensor([[8.0, 4.0, 15.0, 11.0]])], [torch.tensor([2])], num_classes=3, shape=(8, 16), stride=4
    )
    heat, index, codes, mask = targets
    assert (
        heat[0, 2, 2, 3] == 1.0 and int(index[0, 0]) == 2 * 16 + 3
    )  # centre (u, v) = (12, 8) px: cell (row 2, col 3) and mask.tolist()[0][:2] == [1.0, 0.0]
    torch.testing.assert_close(codes[0, 0], torch.tensor([0.0, 0.0, math.log(8.0), math.log(8.0)]))
    torch.manual_seed(0)
    det = ImageDetector(widths=(8, 8, 8), head_width=8)
    images = torch.rand(1, 3, 32, 64)
    out = det(images)
    terms = det.loss(out, [torch.tensor([[8.0, 4.0, 15.0, 11.0]])], [torch.tensor([2])])
    pred = torch.cat([out["offset"], out["size"]], 1)[0, :, 2, 3]
    torch.testing.assert_close(terms["box"], (pred - codes[0, 0]).abs().sum())
    torch.testing.assert_close(terms["heatmap"], heatmap_focal_loss(out["heatmap"], heat))
    # a planted peak decodes to its box
    planted = {
        "heatmap": torch.full((1, 3, 8, 16), -9.0),
        "offset": torch.zeros(1, 2, 8, 16),
        "size": torch.zeros(1, 2, 8, 16),
    }
    planted["heatmap"][0, 1, 3, 3] = 5.0
    planted["size"][0, :, 3, 3] = math.log(8.0)
    (found,) = det.detect(planted)
    assert found["labels"].tolist() == [1]
    torch.testing.assert_close(found["boxes_2d"], torch.tensor([[8.0, 8.0, 15.0, 15.0]]))
    with pytest.raises(ValueError, match="images"):
        det(torch.rand(3, 32, 64))


def test_bad_labeler_arguments_are_rejected():
    with pytest.raises(ValueError, match="eps"):
        PseudoLabeler(eps=0.0)
    with pytest.raises(ValueError, match="min_points"):
        PseudoLabeler(min_points=0)
    with pytest.raises(ValueError, match="points"):
        PseudoLabeler().objects(torch.zeros(5))
