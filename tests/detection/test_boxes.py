"""Box geometry: corners, rotated BEV IoU against a plain-Python polygon clipper, 3D IoU, NMS, points in boxes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.detection.boxes import (
    bev_iou,
    bev_overlap,
    boxes_to_corners_3d,
    boxes_to_corners_bev,
    iou_3d,
    limit_yaw,
    nms_bev,
    points_in_boxes,
)


def _box(x, y, z, dx, dy, dz, yaw):
    return [float(v) for v in (x, y, z, dx, dy, dz, yaw)]


# ------------------------------------------------------------- plain-Python reference (Sutherland–Hodgman)
def _polygon(box):
    x, y, _, dx, dy, _, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for u, v in ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2)):
        out.append((x + c * u - s * v, y + s * u + c * v))
    return out


def _clip(subject, clipper):
    """Sutherland–Hodgman: ``subject`` clipped by the convex counter-clockwise ``clipper``."""
    output = list(subject)
    for i in range(len(clipper)):
        a, b = clipper[i], clipper[(i + 1) % len(clipper)]

        def inside(p, a=a, b=b):
            return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0

        def crossing(p, q, a=a, b=b):
            d1 = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
            d2 = (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])
            t = d1 / (d1 - d2)
            return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))

        points, output = output, []
        for j in range(len(points)):
            p, q = points[j - 1], points[j]
            if inside(q):
                if not inside(p):
                    output.append(crossing(p, q))
                output.append(q)
            elif inside(p):
                output.append(crossing(p, q))
        if not output:
            return []
    return output


def _area(polygon):
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(polygon, polygon[1:] + polygon[:1])))


def _reference_iou(a, b):
    inter = _area(_clip(_polygon(a), _polygon(b)))
    return inter / (a[3] * a[4] + b[3] * b[4] - inter)


# ------------------------------------------------------------------------------------------ tests
def test_corners_are_counter_clockwise_from_front_left_and_follow_yaw():
    corners = boxes_to_corners_bev(torch.tensor([_box(1, 2, 0, 4, 2, 1, math.pi / 2)]))[0]
    expected = torch.tensor([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]])
    torch.testing.assert_close(corners, expected, atol=1e-6, rtol=0)
    c3 = boxes_to_corners_3d(torch.tensor([_box(0, 0, 1, 2, 2, 4, 0)]))[0]
    assert c3[:4, 2].tolist() == [-1.0] * 4 and c3[4:, 2].tolist() == [3.0] * 4


def test_bev_iou_hand_cases():
    a = torch.tensor([_box(0, 0, 0, 2, 2, 1, 0)])
    b = torch.tensor(
        [
            _box(0, 0, 0, 2, 2, 1, 0),  # identical
            _box(1, 0, 0, 2, 2, 1, 0),  # half overlap: 2 / (4 + 4 - 2)
            _box(5, 0, 0, 2, 2, 1, 0),  # disjoint
            _box(0, 0, 0, 2, 2, 1, math.pi / 4),  # a square and its 45-degree turn: octagon 8(sqrt2 - 1)
            _box(0, 0, 0, 1, 1, 1, 0.3),  # contained: 1 / 4
            _box(2, 0, 0, 2, 2, 1, 0),  # touching along an edge
        ]
    )
    octagon = 8 * (math.sqrt(2) - 1)
    expected = torch.tensor([[1.0, 1 / 3, 0.0, octagon / (8 - octagon), 0.25, 0.0]])
    torch.testing.assert_close(bev_iou(a, b), expected, atol=1e-6, rtol=0)


def test_bev_iou_matches_polygon_clipping_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    n = 40
    centres = torch.rand(n, 2, generator=g) * 6 - 3
    sizes = torch.rand(n, 3, generator=g) * 3 + 0.3
    yaws = torch.rand(n, 1, generator=g) * 2 * math.pi - math.pi
    boxes = torch.cat([centres, torch.zeros(n, 1), sizes, yaws], dim=1)
    ours = bev_iou(boxes, boxes)
    ref = torch.tensor([[_reference_iou(a, b) for b in boxes.tolist()] for a in boxes.tolist()])
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=0)
    assert bool(((ours > 0) & (ours < 1)).sum() > n)  # many partial overlaps were checked


def test_bev_iou_is_symmetric_and_invariant_to_a_half_turn():
    a = torch.tensor([_box(0.3, -0.2, 0, 4, 1.8, 1.5, 0.4)])
    b = torch.tensor([_box(1.0, 0.5, 0, 4, 1.8, 1.5, -0.2)])
    flipped = b.clone()
    flipped[0, 6] += math.pi
    torch.testing.assert_close(bev_iou(a, b), bev_iou(b, a).T)
    torch.testing.assert_close(bev_iou(a, b), bev_iou(a, flipped), atol=1e-6, rtol=0)


def test_iou_3d_is_bev_overlap_times_height_overlap_over_union():
    a = torch.tensor([_box(0, 0, 0, 2, 2, 2, 0)])
    b = torch.tensor([_box(1, 0, 1, 2, 2, 2, 0)])  # BEV overlap 2, height overlap 1 -> 2 / (8 + 8 - 2)
    torch.testing.assert_close(iou_3d(a, b), torch.tensor([[2 / 14]]))
    torch.testing.assert_close(bev_overlap(a, b), torch.tensor([[2.0]]))
    above = torch.tensor([_box(0, 0, 5, 2, 2, 2, 0)])
    assert iou_3d(a, above).item() == 0.0 and bev_iou(a, above).item() == 1.0


def test_empty_inputs_give_empty_results():
    boxes = torch.tensor([_box(0, 0, 0, 1, 1, 1, 0)])
    assert bev_iou(boxes, torch.zeros(0, 7)).shape == (1, 0)
    assert nms_bev(torch.zeros(0, 7), torch.zeros(0), 0.5).tolist() == []
    assert points_in_boxes(torch.zeros(3, 3), torch.zeros(0, 7)).tolist() == [-1, -1, -1]


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = torch.tensor(
        [
            _box(0, 0, 0, 4, 2, 1.5, 0.0),
            _box(0.2, 0, 0, 4, 2, 1.5, 0.05),  # overlaps box 0 (IoU ~0.9), lower score
            _box(10, 0, 0, 4, 2, 1.5, 0.0),
            _box(0, 0.1, 0, 4, 2, 1.5, 0.0),  # overlaps box 0, higher score than box 0
        ]
    )
    scores = torch.tensor([0.8, 0.7, 0.6, 0.9])
    assert nms_bev(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms_bev(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    assert nms_bev(boxes, scores, 0.5, max_boxes=1).tolist() == [3]
    per_class = nms_bev(boxes, scores, 0.5, labels=torch.tensor([0, 0, 0, 1]))
    assert per_class.tolist() == [3, 0, 2]


def test_points_in_boxes_follows_the_rotation_and_takes_the_first_box():
    boxes = torch.tensor([_box(0, 0, 0, 4, 1, 2, math.pi / 2), _box(0, 0, 0, 0.5, 0.5, 0.5, 0)])
    points = torch.tensor(
        [
            [0.0, 1.9, 0.0],  # along the turned length: inside box 0
            [1.9, 0.0, 0.0],  # across it: outside
            [0.0, 0.0, 0.1],  # inside both: box 0
            [0.0, 1.0, 1.1],  # above the box
        ]
    )
    assert points_in_boxes(points, boxes).tolist() == [0, -1, 0, -1]
    assert points_in_boxes(points, boxes.flip(0)).tolist() == [1, -1, 0, -1]


def test_limit_yaw_wraps_into_minus_pi_to_pi():
    yaws = torch.tensor([0.0, 3 * math.pi, -3 * math.pi / 2, 7.0], dtype=torch.float64)
    wrapped = limit_yaw(yaws)
    assert bool(((wrapped >= -math.pi) & (wrapped < math.pi)).all())
    torch.testing.assert_close(torch.sin(wrapped), torch.sin(yaws))
    torch.testing.assert_close(torch.cos(wrapped), torch.cos(yaws))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bev_iou(torch.zeros(2, 6), torch.zeros(1, 7)), "`a` must be an \\(M, 7\\)"),
        (lambda: bev_iou(torch.zeros(2, 7, dtype=torch.long), torch.zeros(1, 7)), "floating-point"),
        (lambda: iou_3d(torch.zeros(1, 7), -torch.ones(1, 7)), "negative size"),
        (lambda: nms_bev(torch.zeros(2, 7), torch.zeros(3), 0.5), "`scores` must be \\(2,\\)"),
        (lambda: nms_bev(torch.zeros(2, 7), torch.zeros(2), 1.5), "`iou_threshold`"),
        (lambda: points_in_boxes(torch.zeros(4, 2), torch.zeros(1, 7)), "`points_xyz`"),
    ],
)
def test_bad_input_is_rejected_with_the_argument_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
