"""PointDistiller recipe: the local-structure term, graphs in teacher space, what learns, baselines, errors, a fit."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

import lightning_distill.recipes.pointdistiller as pointdistiller_module
from lightning_distill.data.detection import DetectionSceneDataModule
from lightning_distill.detection.detector import VoxelDetector
from lightning_distill.models.detection import trained_detector
from lightning_distill.recipes.pointdistiller import PointDistiller
from tests.conftest import quiet_trainer_kwargs
from tests.detection.test_detector import TOY, fake_batch


def make_recipe(quiet: bool = True, **kwargs) -> PointDistiller:
    torch.manual_seed(0)
    teacher = VoxelDetector(**TOY)
    student = VoxelDetector(**TOY, width_multiplier=0.5)
    kwargs = {"num_voxels": 64, "num_neighbours": 8, **kwargs}
    recipe = PointDistiller(student, teacher, **kwargs)
    if quiet:  # outside a Trainer
        recipe.log = lambda *a, **k: None
    return recipe


def test_kd_term_is_the_reweighted_graph_loss_computed_independently():
    recipe = make_recipe()
    batch = fake_batch()
    with torch.no_grad():
        t_out = recipe.teacher(batch["points"], batch["batch_index"], 2)
    recipe.train()
    s_out = recipe.student(batch["points"], batch["batch_index"], 2)
    t, s = t_out.voxel_features[0], s_out.voxel_features[0]
    counts = t_out.num_points[0].clamp(max=32)
    centres = counts.topk(64).indices
    # neighbours: full sort of teacher-space squared distances
    dist = ((t[centres, None, :] - t[None, :, :]) ** 2).sum(-1)
    nbrs = dist.argsort(dim=1)[:, :8]

    def edges(f):  # (N, 2C, K): [neighbour, centre]
        return (
            torch.stack([torch.cat([f[nbrs[n, k]], f[centres[n]]]) for n in range(64) for k in range(8)])
            .view(64, 8, -1)
            .transpose(1, 2)
        )

    g_t, g_s = recipe.teacher_adapter(edges(t)), recipe.student_adapter(edges(s))
    w = torch.softmax(counts[centres] / 0.01, 0) * 64
    expected = 2 * (w[:, None, None] * (g_t - g_s) ** 2).mean()
    got = recipe.local_structure_term(t, s, centres, counts)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_neighbour_sets_come_from_teacher_features_only(monkeypatch):
    recipe = make_recipe()
    seen = []
    real = pointdistiller_module.graph_features
    monkeypatch.setattr(
        pointdistiller_module, "graph_features", lambda f, c, n: seen.append(n.clone()) or real(f, c, n)
    )
    gen = torch.Generator().manual_seed(0)
    t, s = torch.randn(200, 8, generator=gen), torch.randn(200, 4, generator=gen)
    centres, counts = torch.arange(20), torch.ones(200)
    recipe.local_structure_term(t, s, centres, counts)
    recipe.local_structure_term(t, s[torch.randperm(200, generator=gen)], centres, counts)
    assert len(seen) == 4 and all(torch.equal(seen[0], n) for n in seen)
    recipe.local_structure_term(t + torch.randn(200, 8, generator=gen), s, centres, counts)
    assert not torch.equal(seen[-1], seen[0])


def test_gradients_reach_the_student_and_both_adapters_never_the_teacher():
    recipe = make_recipe()
    out = recipe.training_step(fake_batch(), 0)
    assert set(out) == {"loss", "heatmap", "box", "kd"} and float(out["kd"]) > 0
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.student_adapter.parameters())
    assert all(p.grad is not None for p in recipe.teacher_adapter.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())
    trainable = {id(p) for p in recipe.trainable_parameters()}
    assert not trainable & {id(p) for p in recipe.teacher.parameters()}
    assert {id(p) for p in recipe.teacher_adapter.parameters()} <= trainable


def test_baselines_imitation_is_mse_on_the_salient_voxels_and_none_skips_the_teacher():
    recipe = make_recipe(distillation="imitation")
    batch = fake_batch()
    out = recipe.training_step(batch, 0)
    assert isinstance(recipe.student_adapter, torch.nn.Linear) and not hasattr(recipe, "teacher_adapter")
    assert float(out["kd"]) > 0
    alone = make_recipe(distillation="none")
    alone.teacher.forward = lambda *a, **k: pytest.fail("the teacher ran")
    assert set(alone.training_step(batch, 0)) == {"loss", "heatmap", "box"}


def test_bad_arguments_and_mismatched_voxelisation_are_rejected():
    with pytest.raises(ValueError, match="distillation"):
        make_recipe(distillation="fitnets")
    with pytest.raises(ValueError, match="num_voxels"):
        make_recipe(num_voxels=0)
    with pytest.raises(ValueError, match="temperature"):
        make_recipe(temperature=0.0)
    with pytest.raises(ValueError, match="voxel_level"):
        make_recipe(voxel_level=3)
    with pytest.raises(ValueError, match="student"):
        PointDistiller(torch.nn.Linear(2, 2), VoxelDetector(**TOY))
    other = PointDistiller(VoxelDetector(**{**TOY, "voxel_size": (0.5, 0.5, 0.5)}), VoxelDetector(**TOY))
    other.log = lambda *a, **k: None
    with pytest.raises(ValueError, match="same `point_range` and `voxel_size`"):
        other.training_step(fake_batch(), 0)


@pytest.fixture(scope="module")
def tiny_data():
    return DetectionSceneDataModule(
        num_scenes=4,
        val_scenes=2,
        test_scenes=1,
        beams=8,
        azimuth_steps=256,
        image_size=(8, 16),
        batch_size=2,
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
    assert "train/kd" in logged and "diag/kd_voxels" in logged


def test_trained_detector_caches_its_weights(tiny_data, tmp_path):
    torch.manual_seed(0)
    first = trained_detector(VoxelDetector(**TOY), tiny_data, epochs=1, cache_dir=str(tmp_path))
    second = trained_detector(VoxelDetector(**TOY), tiny_data, epochs=1, cache_dir=str(tmp_path))
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    assert "cached at" in second.distill_source and not second.training
    with pytest.raises(ValueError, match="checkpoint"):
        trained_detector(VoxelDetector(**TOY))
