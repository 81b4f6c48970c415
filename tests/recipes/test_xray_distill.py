"""X-Ray distillation recipe: the KD losses against independent computations, the teacher on object-complete
frames, what learns, label KD, baselines, errors, a fit that leaves the teacher unchanged."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.detection import DetectionSceneDataModule
from lightning_distill.detection.detector import VoxelDetector
from lightning_distill.detection.heads import build_targets
from lightning_distill.losses.detection import heatmap_distillation_loss, masked_feature_loss
from lightning_distill.recipes.xray_distill import XRayDistill
from tests.conftest import quiet_trainer_kwargs
from tests.detection.test_detector import TOY, fake_batch


def make_recipe(quiet: bool = True, student_width: float = 1.0, **kwargs) -> XRayDistill:
    torch.manual_seed(0)
    teacher = VoxelDetector(**TOY)
    student = VoxelDetector(**TOY, width_multiplier=student_width)
    recipe = XRayDistill(student, teacher, **kwargs)
    if quiet:  # outside a Trainer
        recipe.log = lambda *a, **k: None
    return recipe


def xray_batch(seed: int = 0) -> dict:
    """A hand-built batch whose object-complete version has twice the object points of the raw one."""
    raw = fake_batch(seed, points_per_box=60)
    dense = fake_batch(seed, points_per_box=120)
    return {**raw, "complete_points": dense["points"], "complete_batch_index": dense["batch_index"]}


# ------------------------------------------------------------------ losses (hand-sized, independent)
def test_heatmap_distillation_loss_matches_a_cell_by_cell_computation():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen) * 3
    fg = torch.rand(2, 4, 5, generator=gen)
    num, den = 0.0, 0.0
    for b in range(2):
        for x in range(4):
            for y in range(5):
                pt = [min(max(torch.sigmoid(t[b, k, x, y]).item(), 1e-4), 1 - 1e-4) for k in range(3)]
                ps = [min(max(torch.sigmoid(s[b, k, x, y]).item(), 1e-4), 1 - 1e-4) for k in range(3)]
                m = (max(pt) > 0.3) * max(pt) * fg[b, x, y].item()
                num += m * sum((a - c) ** 2 for a, c in zip(ps, pt))
                den += m
    got = heatmap_distillation_loss(s, t, fg, score_threshold=0.3)
    torch.testing.assert_close(got, torch.tensor(num / (den + 1e-6)), rtol=1e-5, atol=1e-7)
    # the hard mask: all cells weigh 1
    hard = heatmap_distillation_loss(s, t, soft_mask=False)
    expected = (
        (torch.sigmoid(s).clamp(1e-4, 1 - 1e-4) - torch.sigmoid(t).clamp(1e-4, 1 - 1e-4)) ** 2
    ).sum() / 40
    torch.testing.assert_close(hard, expected, rtol=1e-5, atol=1e-7)


def test_masked_feature_loss_is_the_cell_weighted_channel_mean_squared_error():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    t = torch.zeros(1, 2, 1, 2)
    w = torch.tensor([[[0.5, 2.0]]])
    # cell 0: (1 + 9) / 2 = 5, cell 1: (4 + 0) / 2 = 2 -> (0.5 * 5 + 2 * 2) / 2.5
    torch.testing.assert_close(masked_feature_loss(s, t, w), torch.tensor(6.5 / 2.5))


def test_kd_losses_reject_mismatched_shapes_naming_the_argument():
    with pytest.raises(ValueError, match="teacher_logits"):
        heatmap_distillation_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="foreground"):
        heatmap_distillation_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="adapter"):
        masked_feature_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="weights"):
        masked_feature_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(4, 4))


# ------------------------------------------------------------------ the recipe
def test_teacher_sees_the_object_complete_points_and_student_the_raw_ones():
    recipe = make_recipe()
    batch = xray_batch()
    seen = {}
    for name in ("teacher", "student"):
        module = getattr(recipe, name)
        module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: args[0]}))
    recipe.training_step(batch, 0)
    assert seen["teacher"] is batch["complete_points"] and seen["student"] is batch["points"]


def test_kd_terms_equal_an_independent_computation_from_the_two_outputs():
    recipe = make_recipe(label_score_threshold=None)
    batch = xray_batch()
    with torch.no_grad():
        t_out = recipe.teacher(batch["complete_points"], batch["complete_batch_index"], 2)
    recipe.train()
    s_out = recipe.student(batch["points"], batch["batch_index"], 2)
    terms = recipe.head_terms(s_out, t_out, batch)
    grid = recipe.student.grid
    tg = build_targets(grid, batch["boxes"], batch["labels"], num_classes=3)
    fg = tg.heatmap.max(dim=1).values
    p_s, p_t = (
        torch.sigmoid(s_out.heatmap).clamp(1e-4, 1 - 1e-4),
        torch.sigmoid(t_out.heatmap).clamp(1e-4, 1 - 1e-4),
    )
    m = p_t.max(dim=1).values * fg
    torch.testing.assert_close(terms["kd_heatmap"], ((p_s - p_t) ** 2 * m[:, None]).sum() / (m.sum() + 1e-6))
    # box codes read cell by cell at the ground-truth centres
    ny, err, n = grid.size[1], 0.0, 0
    for b in range(2):
        for j in range(int(tg.mask[b].sum())):
            ix, iy = int(tg.indices[b, j]) // ny, int(tg.indices[b, j]) % ny
            err = err + (s_out.codes[b, :, ix, iy] - t_out.codes[b, :, ix, iy]).abs().sum()
            n += 1
    torch.testing.assert_close(terms["kd_box"], err / n)
    feat = ((s_out.bev - t_out.bev) ** 2).mean(dim=1)
    torch.testing.assert_close(terms["kd_feature"], (feat * fg).sum() / fg.sum())


def test_gradients_reach_the_student_and_adapter_never_the_teacher():
    recipe = make_recipe(student_width=0.5)
    out = recipe.training_step(xray_batch(), 0)
    assert set(out) == {"loss", "heatmap", "box", "kd_heatmap", "kd_box", "kd_feature"}
    assert all(float(out[k]) > 0 for k in ("kd_heatmap", "kd_box", "kd_feature"))
    out["loss"].backward()
    assert isinstance(recipe.feature_adapter, torch.nn.Conv2d)
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.feature_adapter.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())
    trainable = {id(p) for p in recipe.trainable_parameters()}
    assert not trainable & {id(p) for p in recipe.teacher.parameters()}


def test_confident_teacher_boxes_join_the_ground_truth_targets():
    recipe = make_recipe(label_score_threshold=0.6)
    batch = xray_batch()
    confident = torch.tensor([[3.0, 4.0, -1.0, 4.0, 1.8, 1.5, 0.2]])
    recipe.teacher.detect = lambda out, nms=None: [
        {"boxes": torch.cat([confident, confident + 5]), "scores": torch.tensor([0.9, 0.3]),
         "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 7), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip
    boxes, labels = recipe.label_targets(object(), batch)
    assert torch.equal(boxes[0], torch.cat([confident, batch["boxes"][0]])) and labels[0][0] == 0
    assert torch.equal(boxes[1], batch["boxes"][1]) and len(labels[1]) == len(batch["labels"][1])
    assert len(batch["boxes"][0]) == 3  # the batch itself is not modified
    assert recipe.label_targets(None, batch)[0] == list(batch["boxes"])


def test_student_alone_skips_the_teacher_and_needs_no_complete_frames():
    recipe = make_recipe(distillation="none")
    recipe.teacher.forward = lambda *a, **k: pytest.fail("the teacher ran")
    assert set(recipe.training_step(fake_batch(), 0)) == {"loss", "heatmap", "box"}


def test_bad_arguments_and_missing_complete_frames_are_rejected():
    with pytest.raises(ValueError, match="distillation"):
        make_recipe(distillation="sparsekd")
    with pytest.raises(ValueError, match="label_score_threshold"):
        make_recipe(label_score_threshold=1.5)
    with pytest.raises(ValueError, match="heatmap_score_threshold"):
        make_recipe(heatmap_score_threshold=-0.1)
    with pytest.raises(ValueError, match="student"):
        XRayDistill(torch.nn.Linear(2, 2), VoxelDetector(**TOY))
    with pytest.raises(ValueError, match="object_complete: add"):
        make_recipe().training_step(fake_batch(), 0)
    other = XRayDistill(VoxelDetector(**{**TOY, "voxel_size": (0.5, 0.5, 0.5)}), VoxelDetector(**TOY))
    other.log = lambda *a, **k: None
    with pytest.raises(ValueError, match="same `point_range`"):
        other.training_step(xray_batch(), 0)


def test_real_scale_geometry_with_a_narrower_student_runs_a_training_step():
    torch.manual_seed(0)
    teacher = VoxelDetector.real_scale(width_multiplier=0.25, neck_blocks=1)
    student = VoxelDetector.real_scale(width_multiplier=0.125, neck_blocks=1)
    recipe = XRayDistill(student, teacher)
    recipe.log = lambda *a, **k: None
    batch = xray_batch()
    out = recipe.training_step(batch, 0)
    out["loss"].backward()
    assert recipe.student.grid.size == (180, 180) and torch.isfinite(out["loss"])
    assert all(p.grad is None for p in recipe.teacher.parameters())


@pytest.fixture(scope="module")
def tiny_data():
    return DetectionSceneDataModule(
        num_scenes=2,
        val_scenes=1,
        test_scenes=1,
        num_frames=2,
        beams=8,
        azimuth_steps=256,
        image_size=(8, 16),
        batch_size=2,
        object_complete="add",
    )


def test_fit_keeps_the_teacher_unchanged_and_logs_student_and_teacher_ap(tiny_data):
    recipe = make_recipe(quiet=False)
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    student_before = recipe.student.head.heatmap[-1].weight.detach().clone()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=1))
    trainer.fit(recipe, datamodule=tiny_data)
    for k, v in recipe.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not recipe.teacher.training
    assert not torch.equal(recipe.student.head.heatmap[-1].weight, student_before)
    logged = trainer.callback_metrics
    assert "val/ap_bev_loose/mean" in logged and "val/teacher_ap_bev_loose/mean" in logged
    assert "train/kd_heatmap" in logged and "diag/label_kd_boxes" in logged
