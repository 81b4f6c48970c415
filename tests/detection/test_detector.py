"""The voxel detector and its CenterPoint head: targets, box code, losses, decoding, PointDistiller's graph parts."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.detection.detector import VoxelDetector, _pool_counts, voxelize_points
from lightning_distill.detection.heads import (
    BEVGrid,
    build_targets,
    decode_codes,
    decode_detections,
    encode_boxes,
    gaussian_radius,
)
from lightning_distill.detection.local_graph import (
    GraphAdapter,
    graph_features,
    knn_in_feature_space,
    salient_voxels,
)
from lightning_distill.losses.detection import (
    box_regression_l1,
    heatmap_focal_loss,
    local_structure_loss,
    saliency_weights,
)

TOY = dict(
    point_range=(-24.0, -16.0, -3.0, 24.0, 16.0, 1.0),
    voxel_size=(0.25, 0.25, 0.25),
    sparse_widths=(8, 16, 16),
    sparse_blocks=1,
    neck_blocks=1,
    neck_widths=(16, 16),
    neck_up=8,
    head_width=8,
)
SIZES = {0: (4.2, 1.8, 1.5), 1: (0.6, 0.6, 1.7), 2: (1.8, 0.6, 1.6)}


def fake_batch(
    seed: int = 0, batch_size: int = 2, boxes_per_scene: int = 3, points_per_box: int = 200
) -> dict:
    """Hand-built scenes: a few boxes with points on their faces, over a flat ground."""
    gen = torch.Generator().manual_seed(seed)
    points, boxes, labels = [], [], []
    for _ in range(batch_size):
        scene_boxes, scene_labels, scene_points = [], [], []
        for _ in range(boxes_per_scene):
            c = int(torch.randint(0, 3, (1,), generator=gen))
            dx, dy, dz = SIZES[c]
            x, y = (
                float(torch.rand(1, generator=gen)) * 30 - 15,
                float(torch.rand(1, generator=gen)) * 20 - 10,
            )
            yaw = float(torch.rand(1, generator=gen)) * 2 * math.pi - math.pi
            z = -1.8 + dz / 2
            u = torch.rand(points_per_box, 3, generator=gen) - 0.5
            face = torch.randint(0, 3, (points_per_box,), generator=gen)
            rows = torch.arange(points_per_box)
            u[rows, face] = torch.sign(u[rows, face]) * 0.5
            local = u * torch.tensor([dx, dy, dz])
            cs, sn = math.cos(yaw), math.sin(yaw)
            xy = torch.stack(
                [local[:, 0] * cs - local[:, 1] * sn + x, local[:, 0] * sn + local[:, 1] * cs + y], 1
            )
            scene_points.append(torch.cat([xy, local[:, 2:] + z, torch.full((points_per_box, 1), 0.7)], 1))
            scene_boxes.append([x, y, z, dx, dy, dz, yaw])
            scene_labels.append(c)
        ground = torch.rand(300, 2, generator=gen) * torch.tensor([40.0, 30.0]) - torch.tensor([20.0, 15.0])
        scene_points.append(torch.cat([ground, torch.full((300, 1), -1.8), torch.full((300, 1), 0.2)], 1))
        points.append(torch.cat(scene_points))
        boxes.append(torch.tensor(scene_boxes))
        labels.append(torch.tensor(scene_labels))
    return {
        "points": torch.cat(points),
        "batch_index": torch.cat([torch.full((len(p),), i) for i, p in enumerate(points)]),
        "boxes": boxes,
        "labels": labels,
    }


# ----------------------------------------------------------------- the head
def test_gaussian_radius_is_centerpoints_formula_on_a_hand_worked_box():
    # 10 x 10 cells at overlap 0.1: the three roots are 14.26, 26.32 and (-4 + sqrt(160)) / 2 = 4.325
    r = gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), 0.1)
    torch.testing.assert_close(r, torch.tensor([(-4 + math.sqrt(160)) / 2]))


def test_heatmap_target_peaks_at_the_box_centre_with_the_gaussian_radius():
    grid = BEVGrid(0.0, 0.0, 0.5, (40, 40))
    box = torch.tensor([[10.2, 7.3, -1.0, 5.0, 5.0, 1.5, 0.4]])  # 10 x 10 cells: radius floor(4.325) = 4
    t = build_targets(grid, [box], [torch.tensor([2])], num_classes=3, max_objects=4)
    heat = t.heatmap[0, 2]
    assert float(heat.max()) == 1.0 and float(heat[20, 14]) == 1.0  # floor(10.2 / 0.5), floor(7.3 / 0.5)
    assert t.heatmap[0, :2].abs().sum() == 0  # other classes empty
    sigma = (2 * 4 + 1) / 6
    torch.testing.assert_close(
        heat[24, 14], torch.tensor(math.exp(-16 / (2 * sigma**2)))
    )  # edge of the radius
    assert float(heat[25, 14]) == 0.0 and float(heat[20, 19]) == 0.0  # outside
    assert t.indices[0, 0] == 20 * 40 + 14 and t.mask[0].tolist() == [1, 0, 0, 0]


def test_small_boxes_get_the_minimum_radius_and_off_grid_boxes_are_left_out():
    grid = BEVGrid(0.0, 0.0, 1.0, (10, 10))
    boxes = torch.tensor([[5.5, 5.5, 0, 0.6, 0.6, 1.7, 0.0], [50.0, 5.0, 0, 4, 2, 1.5, 0.0]])
    t = build_targets(grid, [boxes], [torch.tensor([1, 0])], num_classes=3, max_objects=4, min_radius=2)
    heat = t.heatmap[0, 1]
    assert float(heat[7, 5]) > 0 and float(heat[8, 5]) == 0  # radius 2 around (5, 5)
    assert t.mask[0].sum() == 1 and t.heatmap[0, 0].sum() == 0


def test_box_code_round_trips_through_encode_and_decode():
    grid = BEVGrid(-10.0, -8.0, 0.8, (25, 20))
    gen = torch.Generator().manual_seed(0)
    boxes = torch.cat(
        [
            torch.rand(50, 2, generator=gen) * torch.tensor([19.0, 15.0]) - torch.tensor([9.5, 7.5]),
            torch.rand(50, 1, generator=gen) - 1.5,
            torch.rand(50, 3, generator=gen) * 4 + 0.3,
            (torch.rand(50, 1, generator=gen) * 2 - 1) * (math.pi - 1e-3),
        ],
        dim=1,
    )
    cells, codes, inside = encode_boxes(grid, boxes)
    assert inside.all()
    decoded = decode_codes(grid, codes, cells[:, 0] * grid.size[1] + cells[:, 1])
    torch.testing.assert_close(decoded, boxes, atol=1e-4, rtol=1e-4)


def test_decoding_finds_the_encoded_boxes_from_perfect_maps():
    grid = BEVGrid(0.0, 0.0, 1.0, (16, 16))
    boxes = torch.tensor([[3.4, 4.6, -1.0, 4.0, 2.0, 1.5, 0.3], [11.2, 12.9, -0.9, 0.6, 0.6, 1.7, -2.0]])
    labels = torch.tensor([0, 1])
    t = build_targets(grid, [boxes], [labels], num_classes=3, max_objects=4)
    code_map = torch.zeros(1, 8, 16, 16)
    flat = code_map.flatten(2)
    flat[0, :, t.indices[0, :2]] = t.codes[0, :2].T
    logits = torch.logit(t.heatmap.clamp(1e-4, 1 - 1e-4))
    det = decode_detections(
        grid, {"heatmap": logits, "codes": flat.view(1, 8, 16, 16)}, top_k=10, score_threshold=0.5
    )[0]
    order = det["labels"].argsort()
    torch.testing.assert_close(det["boxes"][order], boxes, atol=1e-4, rtol=1e-4)
    assert det["labels"][order].tolist() == [0, 1]


def test_build_targets_rejects_malformed_boxes_and_labels():
    grid = BEVGrid(0.0, 0.0, 1.0, (8, 8))
    with pytest.raises(ValueError, match=r"\(M, 7\)"):
        build_targets(grid, [torch.zeros(2, 6)], [torch.zeros(2, dtype=torch.long)], num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        build_targets(grid, [torch.zeros(1, 7)], [torch.tensor([3])], num_classes=3)


# ----------------------------------------------------------------- the losses
def test_heatmap_focal_loss_matches_a_loop_over_cells():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 3, 3, generator=gen)
    target = torch.rand(1, 2, 3, 3, generator=gen) * 0.9
    target[0, 0, 1, 1] = target[0, 1, 0, 2] = 1.0
    total = 0.0
    for value, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = min(max(1 / (1 + math.exp(-value)), 1e-4), 1 - 1e-4)
        total += (1 - p) ** 2 * math.log(p) if y == 1 else (1 - y) ** 4 * p**2 * math.log(1 - p)
    torch.testing.assert_close(heatmap_focal_loss(logits, target), torch.tensor(-total / 2))


def test_box_regression_l1_weighs_codes_and_ignores_padding():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    value = box_regression_l1(pred, target, torch.tensor([[1.0, 0.0]]), code_weights=[1.0, 0.5])
    torch.testing.assert_close(value, torch.tensor(1.0 + 0.5 * 2.0))
    with pytest.raises(ValueError, match="code_weights"):
        box_regression_l1(pred, target, torch.ones(1, 2), code_weights=[1.0])


def test_local_structure_loss_is_twice_the_weighted_mean_square():
    gen = torch.Generator().manual_seed(2)
    g_t, g_s = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    w = torch.tensor([0.5, 2.0, 0.5])
    expected = 2 * sum(float(w[n]) * float(((g_t[n] - g_s[n]) ** 2).sum()) for n in range(3)) / g_t.numel()
    torch.testing.assert_close(local_structure_loss(g_t, g_s, w), torch.tensor(expected))
    with pytest.raises(ValueError, match="weights"):
        local_structure_loss(g_t, g_s, torch.ones(2))


def test_saliency_weights_follow_the_point_counts_at_temperature_001():
    w = saliency_weights(torch.tensor([32.0, 32.0, 31.0, 5.0]))
    assert float(w.sum()) == pytest.approx(4.0)
    torch.testing.assert_close(w[:2], torch.tensor([2.0, 2.0]), atol=1e-3, rtol=0)  # the top ties share N
    assert float(w[2]) < 1e-20 and float(w[3]) == 0.0


# --------------------------------------------------------------- graph parts
def test_knn_graph_is_built_in_feature_space_and_includes_the_centre():
    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.2], [0.0, 0.3]])
    nbrs = knn_in_feature_space(feats, torch.tensor([0, 2]), k=3, chunk=1)
    assert sorted(nbrs[0].tolist()) == [0, 1, 4] and set(nbrs[1].tolist()) >= {2, 3}
    edges = graph_features(feats, torch.tensor([0, 2]), nbrs)
    assert edges.shape == (2, 4, 3)
    torch.testing.assert_close(edges[0, 2:], feats[0].unsqueeze(1).expand(2, 3))  # the centre on every edge
    torch.testing.assert_close(edges[0, :2].T, feats[nbrs[0]])


def test_salient_voxels_take_the_most_points_and_adapters_check_their_input():
    assert salient_voxels(torch.tensor([1.0, 9.0, 3.0, 7.0]), 2).tolist() == [1, 3]
    assert len(salient_voxels(torch.tensor([1.0, 2.0]), 10)) == 2
    adapter = GraphAdapter(4, 3)
    assert adapter(torch.randn(5, 8, 6)).shape == (5, 3, 6)
    with pytest.raises(ValueError, match=r"\(N, 8, K\)"):
        adapter(torch.randn(5, 4, 6))


# ------------------------------------------------------------------ the detector
def test_voxelization_drops_points_outside_the_range_and_counts_points():
    points = torch.tensor(
        [[0.1, 0.1, 0.1, 1.0], [0.2, 0.2, 0.2, 3.0], [0.6, 0.1, 0.1, 0.0], [9.0, 0.0, 0.0, 0.0]]
    )
    v = voxelize_points(points, torch.zeros(4, dtype=torch.long), point_range=(0, 0, 0, 2, 2, 2),
                        voxel_size=(0.5, 0.5, 0.5), spatial_shape=(4, 4, 4), batch_size=1)  # fmt: skip
    assert v.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert v.num_points.tolist() == [2.0, 1.0]
    torch.testing.assert_close(v.features[0, 4], torch.tensor(2.0))  # mean intensity
    with pytest.raises(ValueError, match="batch_index"):
        voxelize_points(points, torch.zeros(3), point_range=(0, 0, 0, 2, 2, 2), voxel_size=(0.5,) * 3,
                        spatial_shape=(4, 4, 4), batch_size=1)  # fmt: skip


def test_point_counts_pool_exactly_into_the_coarser_voxels():
    fine = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0], [1, 0, 0, 1]], dtype=torch.int32)
    coarse = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.int32)
    assert _pool_counts(fine, torch.tensor([1.0, 2.0, 4.0, 8.0]), coarse).tolist() == [3.0, 4.0, 8.0]


def test_detector_runs_learns_and_exposes_shared_voxel_features():
    torch.manual_seed(0)
    teacher, student = VoxelDetector(**TOY), VoxelDetector(**TOY, width_multiplier=0.5)
    batch = fake_batch()
    out_t = teacher(batch["points"], batch["batch_index"], 2)
    out_s = student(batch["points"], batch["batch_index"], 2)
    assert out_t.heatmap.shape == (2, 3, *teacher.grid.size) and out_t.codes.shape == (
        2,
        8,
        *teacher.grid.size,
    )
    for level in range(3):  # same voxelisation at every level, narrower features
        assert torch.equal(out_t.voxel_coords[level], out_s.voxel_coords[level])
        assert out_s.voxel_features[level].shape[1] * 2 == out_t.voxel_features[level].shape[1]
        assert float(out_t.num_points[level].sum()) == float(out_t.num_points[0].sum())
    terms = student.loss(out_s, batch["boxes"], batch["labels"])
    (terms["heatmap"] + 0.25 * terms["box"]).backward()
    assert all(p.grad is not None for p in student.parameters())
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        out = student(batch["points"], batch["batch_index"], 2)
        loss = sum(student.loss(out, batch["boxes"], batch["labels"]).values())
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first
    student.eval()
    detections = student.detect(student(batch["points"], batch["batch_index"], 2))
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 7


def test_detector_rejects_bad_configurations_and_inputs():
    with pytest.raises(ValueError, match="point_range"):
        VoxelDetector(point_range=(0, 0, 0, -1, 1, 1))
    with pytest.raises(ValueError, match="voxel_size"):
        VoxelDetector(voxel_size=(0.1, 0.2, 0.2))
    det = VoxelDetector(**TOY)
    with pytest.raises(ValueError, match="points"):
        det(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long))


def test_real_scale_configuration_builds_and_runs_one_forward():
    det = VoxelDetector.real_scale().eval()
    assert (
        det.voxel_size[0] == 0.075 and det.sparse_widths == [16, 32, 64, 128] and det.grid.size == (180, 180)
    )
    points = fake_batch(batch_size=1, boxes_per_scene=2, points_per_box=100)
    with torch.no_grad():
        out = det(points["points"], points["batch_index"], 1)
    assert out.heatmap.shape == (1, 3, 180, 180)


def test_head_biases_survive_the_first_use_reinitialisation():
    from lightning_distill.models.first_use_cache import reinitialize

    code = [0.5, 0.5, -1.0, 0.65, 0.02, 0.48, 0.0, 1.0]
    det = VoxelDetector(**TOY, code_bias_init=code)
    reinitialize(det)  # what cached_training does before training a teacher
    torch.testing.assert_close(det.head.codes[-1].bias.detach(), torch.tensor(code))
    torch.testing.assert_close(det.head.heatmap[-1].bias.detach(), torch.full((3,), -2.19))
    with pytest.raises(ValueError, match="code_bias_init"):
        VoxelDetector(**TOY, code_bias_init=[0.0] * 7)
