"""UniDistill: keypoints, Gaussian box mask, bilinear BEV sampling, the three losses, and the recipe both ways."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.detection.bev_distill import (
    box_keypoints,
    gaussian_box_mask,
    padded_keypoints,
    sample_bev,
)
from lightning_distill.detection.camera import LiftSplatDetector
from lightning_distill.detection.detector import VoxelDetector
from lightning_distill.detection.heads import BEVGrid
from lightning_distill.losses.detection import (
    unidistill_feature_loss,
    unidistill_relation_loss,
    unidistill_response_loss,
)
from lightning_distill.recipes.unidistill import UniDistill

LIDAR = dict(
    point_range=(0.0, -8.0, -3.0, 16.0, 8.0, 1.0),
    voxel_size=(0.25, 0.25, 0.25),
    sparse_widths=(8, 8, 8),
    sparse_blocks=1,
    neck_blocks=1,
    neck_widths=(8, 16),
    neck_up=8,
    head_width=8,
)
CAMERA = dict(
    image_size=(16, 32),
    depth_bins=(1.0, 17.0, 8),
    backbone_widths=(8, 16),
    backbone_depths=(1, 1),
    backbone_layer_type="basic",
    stem_width=8,
    context_channels=6,
    neck_blocks=1,
    neck_widths=(8, 16),
    neck_up=8,
    head_width=8,
)


def test_keypoints_are_corners_centre_and_edge_midpoints_inside_their_boxes():
    torch.manual_seed(0)
    boxes = torch.cat([torch.rand(20, 2) * 20, torch.zeros(20, 1), 0.5 + torch.rand(20, 3) * 4,
                       (torch.rand(20, 1) - 0.5) * 2 * math.pi], dim=1)  # fmt: skip
    kp = box_keypoints(boxes)
    assert kp.shape == (20, 9, 2)
    # in each box's own frame every keypoint lies within the half extents
    d = kp - boxes[:, None, :2]
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    local_x, local_y = cos * d[..., 0] + sin * d[..., 1], -sin * d[..., 0] + cos * d[..., 1]
    assert bool(
        (local_x.abs() <= boxes[:, 3:4] / 2 + 1e-4).all()
        and (local_y.abs() <= boxes[:, 4:5] / 2 + 1e-4).all()
    )
    torch.testing.assert_close(kp[:, 4], boxes[:, :2])  # the centre
    # an axis-aligned 4 x 2 box at the origin, by hand
    one = box_keypoints(torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]]))[0]
    expected = [[2, 1], [-2, 1], [-2, -1], [2, -1], [0, 0], [0, 1], [-2, 0], [0, -1], [2, 0]]
    torch.testing.assert_close(one, torch.tensor(expected, dtype=torch.float32))


def test_gaussian_box_mask_peaks_at_one_on_each_centre_cell():
    grid = BEVGrid(0.0, 0.0, 0.5, (40, 40))
    boxes = torch.tensor([[5.2, 7.7, 0.0, 4.0, 2.0, 1.5, 0.3], [14.9, 3.1, 0.0, 0.6, 0.6, 1.7, 0.0]])
    mask = gaussian_box_mask(grid, [boxes])
    assert mask.shape == (1, 40, 40)
    for x, y in boxes[:, :2].tolist():
        assert float(mask[0, int(x / 0.5), int(y / 0.5)]) == 1.0
    assert int((mask == 1).sum()) == 2 and float(mask.min()) == 0.0
    # the 0.6 m pedestrian's radius at overlap 0.7 is 0 cells: only its centre cell is marked
    assert float(mask[0, 28:32, 4:8].sum()) == 1.0
    # the car's mask spreads around its centre (radius > 0) and falls off
    assert 0 < float(mask[0, 11, 15]) < 1
    assert gaussian_box_mask(grid, [torch.zeros(0, 7)]).sum() == 0


def test_sample_bev_is_bilinear_between_cell_centres():
    grid = BEVGrid(-2.0, 1.0, 0.5, (6, 5))
    ix, iy = torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij")
    features = torch.stack([10 * ix + iy, -ix]).unsqueeze(0)  # (1, 2, 6, 5)
    centre = lambda i, j: [-2.0 + (i + 0.5) * 0.5, 1.0 + (j + 0.5) * 0.5]  # noqa: E731
    mid = [(a + b) / 2 for a, b in zip(centre(2, 3), centre(3, 4))]
    points = torch.tensor([[[centre(2, 3), mid, [-10.0, -10.0]]]])  # (1, 1, 3, 2)
    out = sample_bev(features, grid, points)
    torch.testing.assert_close(out[0, 0], torch.tensor([[23.0, -2.0], [28.5, -2.5], [0.0, 0.0]]))


def test_feature_and_relation_losses_match_a_loop_over_boxes():
    torch.manual_seed(0)
    t, s = torch.randn(2, 3, 9, 5), torch.randn(2, 3, 9, 5)
    s_narrow = torch.randn(2, 3, 9, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    feat, rel, count = 0.0, 0.0, 0
    for b in range(2):
        for m in range(3):
            if mask[b, m]:
                feat += float((t[b, m] - s[b, m]).abs().mean())
                ct = torch.nn.functional.cosine_similarity(t[b, m][:, None], t[b, m][None], dim=-1, eps=1e-12)
                cs = torch.nn.functional.cosine_similarity(
                    s_narrow[b, m][:, None], s_narrow[b, m][None], dim=-1
                )
                rel += float((ct - cs).abs().mean())
                count += 1
    assert float(unidistill_feature_loss(t, s, mask)) == pytest.approx(feat / count, rel=1e-5)
    assert float(unidistill_relation_loss(t, s_narrow, mask)) == pytest.approx(rel / count, abs=1e-3)
    with pytest.raises(ValueError, match="mask"):
        unidistill_feature_loss(t, s, mask[:, :2])
    with pytest.raises(ValueError, match="student_points"):
        unidistill_feature_loss(t, s_narrow, mask)


def test_response_loss_matches_an_independent_masked_l1():
    torch.manual_seed(0)
    zt, zs = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    ct, cs = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4, 5)
    g = torch.rand(2, 4, 5)
    ht = torch.sigmoid(zt / 2.0).max(dim=1).values
    hs = torch.sigmoid(zs).max(dim=1).values
    expected_cls = float((g * (ht - hs).abs()).sum() / g.sum())
    expected_reg = float((g * (ct - cs).abs().mean(1)).sum() / g.sum())
    cls, reg = unidistill_response_loss(zt, zs, ct, cs, g, teacher_temperature=2.0)
    assert float(cls) == pytest.approx(expected_cls, rel=1e-5) and float(reg) == pytest.approx(
        expected_reg, rel=1e-5
    )
    with pytest.raises(ValueError, match="box_mask"):
        unidistill_response_loss(zt, zs, ct, cs, g[:, :3])
    with pytest.raises(ValueError, match="teacher_temperature"):
        unidistill_response_loss(zt, zs, ct, cs, g, teacher_temperature=0.0)


def scene_batch(num: int = 2) -> dict:
    from lightning_distill.data.detection import collate_detection
    from lightning_distill.detection.scenes import DetectionSceneGenerator

    gen = DetectionSceneGenerator(
        beams=8, azimuth_steps=256, image_size=(16, 32), max_range=20.0, cars=(4, 6)
    )
    keys = {"points": "points", "boxes": "boxes", "box_labels": "labels", "difficulty": "difficulty",
            "visible_2d": "visible_2d", "images": "images", "K": "K", "T_cam_from_lidar": "T_cam_from_lidar"}  # fmt: skip
    frames = [gen.generate(i, num_frames=1)[0] for i in range(num)]
    return collate_detection([{out: getattr(f, name) for name, out in keys.items()} for f in frames])


def pair(direction: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    lidar = VoxelDetector(**LIDAR)
    camera = LiftSplatDetector.matching(lidar, **CAMERA)
    if direction == "lidar_to_camera":
        return camera, lidar.eval()
    return VoxelDetector(**LIDAR, width_multiplier=0.5), camera.eval()


@pytest.mark.parametrize("direction", ["lidar_to_camera", "camera_to_lidar"])
def test_gradients_reach_the_student_and_adapter_never_the_teacher(direction):
    student, teacher = pair(direction)
    module = UniDistill(student, teacher)
    assert isinstance(module.feature_adapter, torch.nn.Conv2d)  # channel counts differ in both directions
    batch = scene_batch()
    terms = module.training_step(batch, 0)
    assert set(terms) >= {"heatmap", "box", "feature", "relation", "response_cls", "response_reg"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert float(terms["feature"]) > 0 and float(terms["relation"]) > 0 and float(terms["response_reg"]) > 0
    terms["loss"].backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert (
        module.feature_adapter.weight.grad is not None and module.feature_adapter.weight.grad.abs().sum() > 0
    )
    grads = [p.grad for p in module.student.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= 0.9 * len(grads)


def test_distillation_terms_reach_the_student_alone():
    student, teacher = pair("lidar_to_camera")
    module = UniDistill(student, teacher, loss_weights={"heatmap": 0.0, "box": 0.0})
    terms = module.training_step(scene_batch(), 0)
    terms["loss"].backward()
    assert student.depth_net.weight.grad.abs().sum() > 0  # through the splat, from the feature term
    assert student.head.codes[-1].weight.grad.abs().sum() > 0  # the response term


def test_teacher_unchanged_by_training_and_student_alone_has_no_distillation_terms():
    from lightning_distill.data.detection import DetectionSceneDataModule

    student, teacher = pair("lidar_to_camera")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = UniDistill(student, teacher, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    optimizer = module.configure_optimizers()
    assert not {id(p) for p in teacher.parameters()} & {
        id(p) for g in optimizer.param_groups for p in g["params"]
    }
    batch = scene_batch()
    module.train()
    for _ in range(2):
        optimizer.zero_grad()
        module.training_step(batch, 0)["loss"].backward()
        optimizer.step()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    alone = UniDistill(*pair("lidar_to_camera"), distillation="none", loss_weights={"depth": 3.0})
    assert set(alone.training_step(batch, 0)) == {"loss", "heatmap", "box", "depth"}
    assert DetectionSceneDataModule  # the data module the configs use


def test_first_losses_are_pinned():
    student, teacher = pair("lidar_to_camera")
    terms = UniDistill(student, teacher).training_step(scene_batch(), 0)
    got = {k: round(float(v), 3) for k, v in terms.items() if k != "loss"}
    assert got == pytest.approx(PINNED, abs=2e-3), got


# the first step of the tiny LiDAR -> camera pair on two generated frames (seed 0)
PINNED = {
    "heatmap": 3.864,
    "box": 5.774,
    "feature": 0.105,
    "relation": 0.366,
    "response_cls": 0.062,
    "response_reg": 0.059,
}


def test_bad_arguments_are_rejected_with_the_argument_named():
    student, teacher = pair("lidar_to_camera")
    with pytest.raises(ValueError, match="distillation"):
        UniDistill(student, teacher, distillation="fitnet")
    with pytest.raises(ValueError, match="temperature"):
        UniDistill(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="mask_min_overlap"):
        UniDistill(student, teacher, mask_min_overlap=1.5)
    other = LiftSplatDetector(grid=BEVGrid(0.0, -8.0, 0.5, (32, 32)), **CAMERA)
    with pytest.raises(ValueError, match="student"):
        UniDistill(other, teacher)
    with pytest.raises(ValueError, match="loss_weights"):
        UniDistill(student, teacher, loss_weights={"kd": 1.0})


def test_evaluation_ignores_objects_no_camera_sees_and_pictures_render():
    from lightning_distill.detection.visualize import CameraDetectionPictures, render_camera_detections

    student, teacher = pair("lidar_to_camera")
    module = UniDistill(student, teacher)
    batch = scene_batch()
    targets = module._targets(batch)
    for t, vis in zip(targets, batch["visible_2d"]):
        assert bool((t["difficulty"][~vis.any(1)] == -1).all())
    maps = module.bev_features(batch)
    assert maps["teacher"].shape == maps["student"].shape
    g = module.grid
    pic = render_camera_detections(
        batch["images"][0, 0], batch["K"][0, 0], batch["T_cam_from_lidar"][0, 0], batch["boxes"][0],
        module.predict_boxes(batch)[0]["boxes"], bev_maps={k: v[0] for k, v in maps.items()},
        bev_extent=(g.x_min, g.x_min + g.size[0] * g.cell_size, g.y_min, g.y_min + g.size[1] * g.cell_size),
        size=(450, 150),
    )  # fmt: skip
    assert pic.shape == (150, 450, 3) and pic.std() > 0
    assert CameraDetectionPictures(every_n_epochs=2).every_n_epochs == 2
    with pytest.raises(ValueError, match="every_n_epochs"):
        CameraDetectionPictures(every_n_epochs=0)


def test_keypoint_padding_marks_real_boxes():
    points, mask = padded_keypoints([torch.tensor([[1.0, 2.0, 0.0, 2.0, 1.0, 1.0, 0.0]]), torch.zeros(0, 7)])
    assert points.shape == (2, 1, 9, 2) and mask.tolist() == [[1.0], [0.0]]
