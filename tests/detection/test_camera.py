"""The lift-splat camera detector: frustum geometry, LiDAR depth projection, depth supervision, loss, decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.detection.camera import (
    LiftSplatDetector,
    camera_targets,
    frustum_points,
    project_lidar_depth,
    visible_boxes,
)
from lightning_distill.detection.heads import BEVGrid
from lightning_distill.lidar.scene import camera_rig
from lightning_distill.losses.detection import depth_bin_loss

TOY = dict(
    grid=BEVGrid(0.0, -8.0, 1.0, (16, 16)),
    image_size=(16, 32),
    depth_bins=(1.0, 17.0, 8),
    z_range=(-3.0, 2.0),
    backbone_widths=(8, 16),
    backbone_depths=(1, 1),
    backbone_layer_type="basic",
    stem_width=8,
    context_channels=8,
    neck_blocks=1,
    neck_widths=(8, 16),
    neck_up=8,
    head_width=8,
)


def rig(batch: int = 1, image_size=(16, 32), cameras: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    K, T = camera_rig(cameras, image_size)
    K = torch.from_numpy(K.astype(np.float32)).expand(batch, -1, -1, -1).contiguous()
    T = torch.from_numpy(T.astype(np.float32)).expand(batch, -1, -1, -1).contiguous()
    return K, T


def test_frustum_point_on_the_optical_axis_lands_in_the_hand_computed_bev_cell():
    # an 8 x 8 image read at stride 4: feature pixel (0, 0) is centred at image pixel (1.5, 1.5) = (cx, cy)
    K, T = rig(image_size=(8, 8))
    K[..., 0, 2] = 1.5
    K[..., 1, 2] = 1.5
    depths = torch.tensor([5.0, 12.25])
    pts = frustum_points(K, T, (8, 8), (2, 2), depths)  # (1, 1, 2, 2, 2, 3)
    # the front camera sits 0.3 m ahead of and 0.3 m below the LiDAR, looking along +x
    torch.testing.assert_close(pts[0, 0, :, 0, 0], torch.tensor([[5.3, 0.0, -0.3], [12.55, 0.0, -0.3]]))
    # feature pixel (0, 1) is 4 px right of the axis: y = -4 d / f (image right = LiDAR -y)
    f = float(K[0, 0, 0, 0])
    torch.testing.assert_close(pts[0, 0, 0, 0, 1], torch.tensor([5.3, -4.0 * 5.0 / f, -0.3]))
    det = LiftSplatDetector(**{**TOY, "grid": BEVGrid(-2.0, -4.0, 0.5, (40, 16))})
    volume = torch.zeros(1, 1, 2, 2, 2, 3)
    volume[0, 0, 1, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # only the 12.25 m point of pixel (0, 0)
    bev = det.splat(volume, pts)
    cell = (math.floor((12.55 + 2.0) / 0.5), math.floor((0.0 + 4.0) / 0.5))
    assert bev.shape == (1, 3, 40, 16)
    torch.testing.assert_close(bev[0, :, cell[0], cell[1]], torch.tensor([1.0, 2.0, 3.0]))
    assert float(bev.abs().sum()) == pytest.approx(6.0)


def test_splat_sum_pools_points_of_one_cell_and_drops_points_outside():
    det = LiftSplatDetector(**TOY)
    pts = torch.tensor([[0.2, 0.1, 0.0], [0.7, 0.9, 0.0], [0.5, 0.5, 5.0], [-1.0, 0.0, 0.0]]).view(
        1, 1, 4, 1, 1, 3
    )
    volume = torch.ones(1, 1, 4, 1, 1, 2)
    bev = det.splat(volume, pts)
    assert float(bev[0, 0, 0, 8]) == 2.0 and float(bev.sum()) == 4.0  # z = 5 and x = -1 are outside


def test_project_lidar_depth_puts_the_nearest_point_at_the_principal_point():
    K, T = rig(image_size=(9, 17))  # odd sizes: pixel (8, 4) is the principal point
    points = torch.tensor([[10.3, 0.0, -0.3, 0.0], [20.3, 0.0, -0.3, 0.0], [-5.0, 0.0, 0.0, 0.0]])
    depth = project_lidar_depth(points, torch.zeros(3, dtype=torch.long), K, T, (9, 17))
    assert depth.shape == (1, 1, 1, 9, 17)
    assert float(depth[0, 0, 0, 4, 8]) == pytest.approx(
        10.0
    )  # the nearer of the two; the point behind is dropped
    assert int((depth > 0).sum()) == 1


def test_depth_targets_are_the_bin_of_the_projected_point_at_feature_resolution():
    det = LiftSplatDetector(**{**TOY, "image_size": (8, 8)})
    K, T = rig(image_size=(8, 8))
    K[..., 0, 2] = 1.5
    K[..., 1, 2] = 1.5
    points = torch.tensor([[7.8, 0.0, -0.3, 0.0]])  # depth 7.5 on the axis -> bin floor((7.5 - 1) / 2) = 3
    target = det.depth_targets(points, torch.zeros(1, dtype=torch.long), K, T, (2, 2))
    assert target.tolist() == [[[[3, -1], [-1, -1]]]]


def test_depth_bin_loss_matches_an_independent_bce():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 3, 4)
    target = torch.randint(-1, 5, (2, 1, 3, 4))
    expected, count = 0.0, 0
    for idx in zip(*torch.nonzero(target >= 0, as_tuple=True)):
        p = logits[idx[0], idx[1], :, idx[2], idx[3]].softmax(0)
        y = F.one_hot(target[idx], 5).float()
        expected += float(-(y * p.log() + (1 - y) * (1 - p).log()).sum())
        count += 1
    assert float(depth_bin_loss(logits, target)) == pytest.approx(expected / count, rel=1e-5)
    assert float(depth_bin_loss(logits, torch.full_like(target, -1))) == 0.0
    with pytest.raises(ValueError, match="target_bins"):
        depth_bin_loss(logits, target[..., :2])


def _scene_batch(seed: int = 0) -> dict:
    from lightning_distill.data.detection import collate_detection
    from lightning_distill.detection.scenes import DetectionSceneGenerator

    gen = DetectionSceneGenerator(beams=8, azimuth_steps=256, image_size=(16, 32))
    frames = [gen.generate(seed + i, num_frames=1)[0] for i in range(2)]
    samples = [
        {"points": f.points, "boxes": f.boxes, "labels": f.box_labels, "difficulty": f.difficulty,
         "visible_2d": f.visible_2d, "images": f.images, "K": f.K, "T_cam_from_lidar": f.T_cam_from_lidar}
        for f in frames
    ]  # fmt: skip
    return collate_detection(samples)


def test_forward_loss_depth_loss_and_detect_on_scene_frames_train_every_part():
    torch.manual_seed(0)
    batch = _scene_batch()
    det = LiftSplatDetector(**TOY)
    out = det(batch["images"], batch["K"], batch["T_cam_from_lidar"])
    assert out.heatmap.shape == (2, 3, 16, 16) and out.codes.shape == (2, 8, 16, 16)
    assert out.bev_low.shape == (2, 8, 16, 16) and out.bev.shape == (2, 16, 16, 16)
    assert out.depth_logits.shape == (2, 1, 8, 4, 8)
    assert float(out.bev_low.detach().abs().sum()) > 0
    boxes, labels, _ = visible_boxes(batch)
    terms = det.loss(out, boxes, labels)
    terms["depth"] = det.depth_loss(
        out, batch["points"], batch["batch_index"], batch["K"], batch["T_cam_from_lidar"]
    )
    assert all(torch.isfinite(v) and float(v) > 0 for v in terms.values())
    sum(terms.values()).backward()
    no_grad = [n for n, p in det.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    dets = det.detect(out)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 7
    targets = camera_targets(batch)
    assert all(len(t["boxes"]) == len(t["difficulty"]) for t in targets)
    for t, vis in zip(targets, batch["visible_2d"]):
        assert bool((t["difficulty"][~vis.any(1)] == -1).all())  # unseen objects are ignored boxes
        assert len(t["boxes"]) == len(vis)  # all boxes stay, so detecting an unseen one is no false positive


def test_matching_copies_the_lidar_grid_and_height_range():
    from lightning_distill.detection.detector import VoxelDetector

    lidar = VoxelDetector(
        point_range=(0.0, -8.0, -3.0, 16.0, 8.0, 1.0), voxel_size=(0.25, 0.25, 0.25), sparse_widths=(8, 8, 8),
        sparse_blocks=1, neck_blocks=1, neck_widths=(8, 8), neck_up=8, head_width=8,
    )  # fmt: skip
    cam = LiftSplatDetector.matching(lidar, **{k: v for k, v in TOY.items() if k not in ("grid", "z_range")})
    assert cam.grid == lidar.grid and cam.z_range == (-3.0, 1.0) and cam.num_classes == lidar.num_classes


def test_lidar_depth_input_is_a_fourth_image_channel_and_is_required():
    batch = _scene_batch()
    det = LiftSplatDetector(**TOY, lidar_depth_input=True)
    assert det.backbone.config.num_channels == 4
    with pytest.raises(ValueError, match="lidar_depth"):
        det(batch["images"], batch["K"], batch["T_cam_from_lidar"])
    depth = project_lidar_depth(
        batch["points"], batch["batch_index"], batch["K"], batch["T_cam_from_lidar"], (16, 32)
    )
    out = det(batch["images"], batch["K"], batch["T_cam_from_lidar"], lidar_depth=depth)
    assert out.heatmap.shape == (2, 3, 16, 16)


def test_bad_inputs_are_rejected_with_the_argument_named():
    det = LiftSplatDetector(**TOY)
    K, T = rig(batch=2)
    with pytest.raises(ValueError, match="images"):
        det(torch.zeros(2, 3, 16, 32), K, T)
    with pytest.raises(ValueError, match="image_size"):
        det(torch.zeros(2, 1, 3, 16, 16), K, T)
    with pytest.raises(ValueError, match="K"):
        det(torch.zeros(2, 1, 3, 16, 32), K[:1], T)
    with pytest.raises(ValueError, match="depth_bins"):
        LiftSplatDetector(**{**TOY, "depth_bins": (5.0, 1.0, 8)})
    with pytest.raises(ValueError, match="z_range"):
        LiftSplatDetector(**{**TOY, "z_range": (1.0, -1.0)})
    with pytest.raises(ValueError, match="visible_2d"):
        visible_boxes({"boxes": [], "labels": []})


def test_real_scale_configuration_builds_and_runs_one_forward():
    det = LiftSplatDetector.real_scale(image_size=(64, 176)).eval()
    assert det.backbone.config.hidden_sizes == [256, 512, 1024, 2048] and det.grid.size == (128, 128)
    assert det.depth_bins == (2.0, 58.0, 112) and det.feature_stride == 16
    K, T = rig(image_size=(64, 176))
    with torch.no_grad():
        out = det(torch.rand(1, 1, 3, 64, 176), K, T)
    assert out.heatmap.shape == (1, 3, 128, 128) and out.depth_logits.shape == (1, 1, 112, 4, 11)
