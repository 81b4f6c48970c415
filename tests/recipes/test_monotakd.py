"""MonoTAKD recipe: the BEV imitation and residual losses, the official detach bug, what learns, errors, a fit."""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import pytest
import torch

from lightning_distill.data.detection import DetectionSceneDataModule
from lightning_distill.detection.camera import LiftSplatDetector
from lightning_distill.detection.detector import VoxelDetector
from lightning_distill.lidar.scene import camera_rig
from lightning_distill.losses.detection import (
    bev_imitation_loss,
    minmax_normalize,
    takd_residual_loss,
    takd_residual_target,
)
from lightning_distill.recipes.monotakd import MonoTAKD, camera_view_batch, points_in_camera
from tests.conftest import quiet_trainer_kwargs
from tests.detection.test_detector import TOY, fake_batch

IMAGE = (32, 64)
# teacher bev_low: 16 channels x (16 height voxels / stride 4) = 64 = the camera detectors' context channels
CAMERA = dict(
    image_size=IMAGE,
    depth_bins=(1.0, 25.0, 12),
    backbone_widths=(8, 16),
    backbone_depths=(1, 1),
    backbone_layer_type="basic",
    stem_width=8,
    context_channels=64,
    neck_blocks=1,
    neck_widths=(8, 16),
    neck_up=8,
    head_width=8,
)


def camera_batch(seed: int = 0) -> dict:
    """``fake_batch`` with a front camera: random images, the generator's rig, every object seen."""
    batch = fake_batch(seed)
    b = len(batch["boxes"])
    K, T = (torch.from_numpy(m.astype(np.float32)) for m in camera_rig(1, IMAGE))
    batch["images"] = torch.rand(b, 1, 3, *IMAGE, generator=torch.Generator().manual_seed(seed))
    batch["K"], batch["T_cam_from_lidar"] = K.expand(b, -1, -1, -1).clone(), T.expand(b, -1, -1, -1).clone()
    batch["visible_2d"] = [torch.ones(len(bx), 1, dtype=torch.bool) for bx in batch["boxes"]]
    batch["difficulty"] = [torch.zeros(len(bx), dtype=torch.long) for bx in batch["boxes"]]
    return batch


def make_recipe(quiet: bool = True, student_kw: dict | None = None, **kwargs) -> MonoTAKD:
    torch.manual_seed(0)
    teacher = VoxelDetector(**TOY)
    assistant = LiftSplatDetector.matching(teacher, **CAMERA, lidar_depth_input=True)
    student = LiftSplatDetector.matching(teacher, **{**CAMERA, **(student_kw or {})})
    recipe = MonoTAKD(student, teacher, assistant, **{"residual_width": 8, **kwargs})
    if quiet:  # outside a Trainer
        recipe.log = lambda *a, **k: None
    return recipe


# ------------------------------------------------------------------ the losses
def test_residual_target_keeps_only_entries_at_or_above_threshold_times_the_max():
    teacher = torch.tensor([[[[4.0, 2.0], [0.0, 9.0]]], [[[1.0, 1.0], [6.0, 3.0]]]])  # (2, 1, 2, 2)
    assistant = torch.tensor([[[[1.0, 2.0], [5.0, 1.0]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    # |T - TA| = [[3, 0], [5, 8]], [[0, 1], [6, 3]]; max over the whole batch 8 -> keep >= 4.8
    expected = torch.tensor([[[[0.0, 0.0], [5.0, 8.0]]], [[[0.0, 0.0], [6.0, 0.0]]]])
    torch.testing.assert_close(takd_residual_target(teacher, assistant), expected)
    keep_all = takd_residual_target(teacher, assistant, threshold=0.0)
    torch.testing.assert_close(keep_all, (teacher - assistant).abs())


def test_imitation_and_residual_losses_match_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    s, ta, t, r = (torch.randn(2, 3, 4, 5, generator=gen) for _ in range(4))

    def norm(x):  # the official normalize_, without the detach
        y = x - x.min()
        return y / y.max()

    torch.testing.assert_close(minmax_normalize(s), norm(s))
    torch.testing.assert_close(bev_imitation_loss(s, ta), ((norm(s) - norm(ta)) ** 2).mean())
    torch.testing.assert_close(bev_imitation_loss(s, ta, normalize=False), ((s - ta) ** 2).mean())
    diff = (t - norm(ta)).abs()
    target = diff * (diff >= 0.6 * diff.max())
    torch.testing.assert_close(takd_residual_loss(r, t, ta), ((r - target) ** 2).mean())


def test_every_takd_term_has_a_nonzero_gradient_and_the_official_detach_would_have_none():
    gen = torch.Generator().manual_seed(1)
    student_bev = torch.randn(2, 4, 6, 6, generator=gen, requires_grad=True)
    residual = torch.rand(2, 4, 6, 6, generator=gen, requires_grad=True)
    assistant, teacher = torch.randn(2, 4, 6, 6, generator=gen), torch.randn(2, 4, 6, 6, generator=gen) * 3
    (grad_ipk,) = torch.autograd.grad(bev_imitation_loss(student_bev, assistant), student_bev)
    (grad_lpk,) = torch.autograd.grad(takd_residual_loss(residual, teacher, assistant), residual)
    assert grad_ipk.abs().sum() > 0 and grad_lpk.abs().sum() > 0
    # what cmkd_TAKD.py's normalize_ does: normalise a detached copy -> the first term trains nothing
    official = minmax_normalize(student_bev.detach()).requires_grad_(False)
    official_loss = ((official - minmax_normalize(assistant)) ** 2).mean()
    assert not official_loss.requires_grad


def test_losses_reject_mismatched_maps_and_thresholds():
    with pytest.raises(ValueError, match="same shape"):
        bev_imitation_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match="threshold"):
        takd_residual_target(torch.zeros(1, 2), torch.zeros(1, 2), threshold=1.5)
    with pytest.raises(ValueError, match="same shape"):
        takd_residual_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))


# ------------------------------------------------------------------ the recipe
def test_gradients_reach_the_student_and_its_residual_branch_never_teacher_or_assistant():
    recipe = make_recipe()
    batch = camera_batch()
    out = recipe.training_step(batch, 0)
    assert set(out) == {"loss", "heatmap", "box", "ipk", "lpk"} and all(
        float(out[k].detach()) > 0 for k in out
    )
    view = camera_view_batch(batch, 0)
    t_bev = recipe.teacher_bev(batch, view)
    a_bev = recipe.assistant_output(batch, view).bev_low
    for term in ("heatmap", "box", "ipk", "lpk"):  # each term alone reaches the student's lifting
        recipe.zero_grad(set_to_none=True)
        output, residual = recipe.student_forward(view)
        if term == "ipk":
            value = recipe.intra_modal_loss(output.bev_low, a_bev)
        elif term == "lpk":
            value = recipe.spatial_cue_loss(residual, t_bev, a_bev)
        else:
            value = recipe.student.loss(output, view["boxes"], view["labels"])[term]
        value.backward()
        grad = recipe.student.depth_net.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0, term
        if term == "lpk":
            for p in recipe.residual_branch.parameters():
                assert p.grad is not None and float(p.grad.abs().sum()) > 0
    recipe.zero_grad(set_to_none=True)
    recipe.training_step(batch, 0)["loss"].backward()
    assert all(p.grad is None for t in recipe.teachers for p in t.parameters())
    trainable = {id(p) for p in recipe.trainable_parameters()}
    assert not trainable & {id(p) for t in recipe.teachers for p in t.parameters()}
    assert {id(p) for p in recipe.residual_branch.parameters()} <= trainable


def test_fused_student_reads_its_own_bev_and_runs_the_head_on_bev_plus_residual():
    recipe = make_recipe()
    recipe.eval()
    view = camera_view_batch(camera_batch(), 0)
    fused, residual = recipe.student_forward(view)
    plain = recipe.student(view["images"], view["K"], view["T_cam_from_lidar"])
    torch.testing.assert_close(fused.bev_low, plain.bev_low)  # F_S itself, before the fusion
    assert residual.shape == plain.bev_low.shape and float(residual.detach().min()) >= 0
    head = recipe.student.head
    f1 = recipe.student.block1(plain.bev_low + residual)
    bev = torch.cat([recipe.student.up1(f1), recipe.student.up2(recipe.student.block2(f1))], dim=1)
    torch.testing.assert_close(fused.heatmap, head(bev)["heatmap"])


def test_teacher_sees_only_points_in_the_camera_view():
    batch = camera_batch()
    keep = points_in_camera(
        batch["points"], batch["batch_index"], batch["K"][:, 0], batch["T_cam_from_lidar"][:, 0], IMAGE
    )
    assert 0 < int(keep.sum()) < len(keep)
    assert float(batch["points"][keep, 0].min()) > 0  # the front camera looks along +x
    assert float(batch["points"][~keep, 0].max()) > 0 and float(batch["points"][~keep, 0].min()) < 0


def test_baselines_direct_imitates_the_teacher_and_none_runs_neither_frozen_model():
    direct = make_recipe(distillation="direct")
    direct.assistant.forward = lambda *a, **k: pytest.fail("the assistant ran")
    out = direct.training_step(camera_batch(), 0)
    assert set(out) == {"loss", "heatmap", "box", "direct"} and float(out["direct"]) > 0
    assert direct.residual_branch is None
    alone = make_recipe(distillation="none")
    alone.lidar_teacher.forward = lambda *a, **k: pytest.fail("the teacher ran")
    alone.assistant.forward = lambda *a, **k: pytest.fail("the assistant ran")
    assert set(alone.training_step(camera_batch(), 0)) == {"loss", "heatmap", "box"}


def test_cached_frozen_outputs_equal_fresh_ones_and_spare_the_second_pass():
    recipe = make_recipe(cache_frozen_outputs=True)
    batch = camera_batch()
    batch["scene"], batch["frame"] = torch.tensor([0, 1]), torch.tensor([0, 0])
    view = camera_view_batch(batch, 0)
    fresh = (recipe.teacher_bev(batch, view), recipe.assistant_output(batch, view).bev_low)
    first = recipe.frozen_bevs(batch, view)
    recipe.lidar_teacher.forward = lambda *a, **k: pytest.fail("the teacher ran again")
    recipe.assistant.forward = lambda *a, **k: pytest.fail("the assistant ran again")
    second = recipe.frozen_bevs(batch, view)
    for f, a, b in zip(fresh, first, second):
        torch.testing.assert_close(a, f)
        torch.testing.assert_close(b, f)


def test_bad_arguments_are_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="distillation"):
        make_recipe(distillation="cmkd")
    with pytest.raises(ValueError, match="threshold"):
        make_recipe(threshold=1.5)
    with pytest.raises(ValueError, match="bev_low` channels"):
        make_recipe(student_kw={"context_channels": 32})
    teacher = VoxelDetector(**TOY)
    other = LiftSplatDetector(**{**CAMERA, "grid": (0.0, 0.0, 1.0, (8, 8))})
    with pytest.raises(ValueError, match="one BEV grid"):
        MonoTAKD(other, teacher, LiftSplatDetector.matching(teacher, **CAMERA))
    with pytest.raises(ValueError, match="camera"):
        make_recipe(camera=1).training_step(camera_batch(), 0)


def test_the_student_can_be_a_bottleneck_resnet_as_at_real_scale():
    recipe = make_recipe(student_kw={"backbone_layer_type": "bottleneck", "backbone_widths": (16, 32)})
    assert type(recipe.student.backbone).__name__ == "ResNetModel"
    assert float(recipe.training_step(camera_batch(), 0)["loss"].detach()) > 0


@pytest.fixture(scope="module")
def tiny_data():
    return DetectionSceneDataModule(
        num_scenes=2, val_scenes=1, test_scenes=1, beams=8, azimuth_steps=256, image_size=IMAGE, batch_size=2
    )


def test_fit_leaves_teacher_and_assistant_unchanged_and_logs_all_three_aps(tiny_data):
    recipe = make_recipe(quiet=False)
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in recipe.teachers]
    branch_before = recipe.residual_branch.out[-2].weight.detach().clone()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=1))
    trainer.fit(recipe, datamodule=tiny_data)
    for model, state in zip(recipe.teachers, before):
        assert not model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    assert not torch.equal(recipe.residual_branch.out[-2].weight, branch_before)
    logged = trainer.callback_metrics
    for key in ("val/ap_bev_loose/mean", "val/teacher_ap_bev_loose/mean", "val/assistant_ap_bev_loose/mean"):
        assert key in logged, key
    assert "train/ipk" in logged and "train/lpk" in logged
