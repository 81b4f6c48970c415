"""PVD recipe: the three stages' terms, the schedule, what learns, the teacher untouched, bad input."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.multiview import MultiViewDataModule
from lightning_distill.losses.radiance import pvd_regression_loss
from lightning_distill.radiance.fields import HashGridField, MLPField, TensorVMField, VoxelGridField
from lightning_distill.radiance.rendering import render_rays
from lightning_distill.radiance.training import trained_field
from lightning_distill.recipes.pvd import PVD
from tests.conftest import quiet_trainer_kwargs


def fields(geo_dim: int = 15):
    torch.manual_seed(0)
    teacher = HashGridField(num_levels=2, log2_table_size=6, base_resolution=2, max_resolution=6)
    student = TensorVMField(resolution=6, sigma_rank=2, color_rank=2, geo_dim=geo_dim)
    return student, teacher.eval()


def data(**kwargs) -> MultiViewDataModule:
    return MultiViewDataModule(
        **(dict(image_size=8, num_views=5, num_test=1, rays_per_batch=16, steps_per_epoch=2) | kwargs)
    )


def batch(n: int = 8):
    g = torch.Generator().manual_seed(2)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3
    return (
        origins,
        torch.nn.functional.normalize(-origins + 0.1 * torch.randn(n, 3, generator=g), dim=-1),
        torch.rand(n, 3),
    )


def test_regression_losses_against_independent_computations():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(pvd_regression_loss(a, b), torch.linalg.norm(a - b))  # official default
    torch.testing.assert_close(pvd_regression_loss(a, b, "mse"), ((a - b) ** 2).mean())
    torch.testing.assert_close(pvd_regression_loss(a, b, "norm_l1"), (a - b).abs().sum())
    with pytest.raises(ValueError, match="same shape"):
        pvd_regression_loss(a, b[:, :2])
    with pytest.raises(ValueError, match="loss_type"):
        pvd_regression_loss(a, b, "l3")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_has_the_official_terms_on_shared_samples(stage, monkeypatch):
    student, teacher = fields()
    recipe = PVD(student, teacher, num_samples=4, random_rays=False)
    recipe.stage = stage
    logged = {}
    monkeypatch.setattr(recipe, "log_losses", lambda terms: logged.update(terms) or terms)
    torch.manual_seed(5)
    recipe.training_step(batch(), 0)
    assert (
        set(logged)
        == {1: {"feature"}, 2: {"feature", "density", "color"}, 3: {"feature", "density", "color", "rgb"}}[
            stage
        ]
    )
    torch.manual_seed(5)
    samples = recipe.sample(*batch()[:2])
    s = render_rays(student, samples, density=student.activate_density)
    t = render_rays(teacher, samples, density=teacher.activate_density)
    torch.testing.assert_close(logged["feature"], torch.linalg.norm(s["features"] - t["features"]))
    if stage >= 2:
        torch.testing.assert_close(logged["density"], torch.linalg.norm(s["density_pre"] - t["density_pre"]))
        torch.testing.assert_close(logged["color"], torch.linalg.norm(s["colors"] - t["colors"]))
    if stage == 3:
        torch.testing.assert_close(logged["rgb"], torch.linalg.norm(s["rgb"] - t["rgb"]))


def test_a_projection_maps_the_student_feature_when_the_widths_differ():
    student, teacher = fields(geo_dim=7)
    recipe = PVD(student, teacher, num_samples=2)
    assert isinstance(recipe.projection, torch.nn.Linear) and recipe.projection.in_features == 8
    assert any(p is recipe.projection.weight for p in recipe.trainable_parameters())
    assert isinstance(PVD(*fields(), num_samples=2).projection, torch.nn.Identity)


class _Grads(L.Callback):
    def __init__(self):
        self.student, self.teacher, self.stages = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.student.append(
            any(p.grad is not None and p.grad.abs().sum() > 0 for p in pl_module.student.parameters())
        )
        self.teacher.append(any(p.grad is not None for p in pl_module.teacher.parameters()))
        self.stages.append(pl_module.stage)


def test_fit_runs_the_stages_updates_only_the_student_and_leaves_the_teacher(tmp_path):
    student, teacher = fields()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = [p.clone() for p in student.parameters()]
    recipe = PVD(student, teacher, stage_steps=[1, 2], num_samples=4, num_pictures=1)
    grads = _Grads()
    trainer = L.Trainer(max_steps=4, callbacks=[grads], **quiet_trainer_kwargs(default_root_dir=tmp_path))
    dm = data()
    trainer.fit(recipe, datamodule=dm)
    assert grads.stages == [1, 2, 3, 3] and all(grads.student) and not any(grads.teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert not any(p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(
        recipe.loss_weights["feature"], 0.002 * 0.995**4
    )  # the official decay per step
    metrics = trainer.validate(recipe, datamodule=dm, verbose=False)[0]
    assert {"val/psnr", "val/ssim"} <= set(metrics)  # the teacher's were logged at the first validation


def test_bad_input_is_rejected_with_the_argument_named():
    student, teacher = fields()
    with pytest.raises(ValueError, match="teacher"):
        PVD(student, torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="stage_steps"):
        PVD(student, teacher, stage_steps=[5, 2])
    with pytest.raises(ValueError, match="loss_type"):
        PVD(student, teacher, loss_type="l3")
    with pytest.raises(ValueError, match="origins"):
        PVD(student, teacher).training_step((torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 3)), 0)


def test_trained_field_trains_once_then_loads_and_needs_data_or_checkpoint(tmp_path):
    dm = data()
    field = trained_field(VoxelGridField(resolution=4), dm, steps=3, rays_per_batch=8, num_samples=4,
                          cache_dir=str(tmp_path))  # fmt: skip
    assert "first use" in field.distill_source and not field.training
    again = trained_field(VoxelGridField(resolution=4), dm, steps=3, rays_per_batch=8, num_samples=4,
                          cache_dir=str(tmp_path))  # fmt: skip
    assert torch.equal(field.grid, again.grid)
    path = tmp_path / "mine.pt"
    torch.save(field.state_dict(), path)
    loaded = trained_field(VoxelGridField(resolution=4), checkpoint=str(path))
    assert torch.equal(loaded.grid, field.grid) and "checkpoint" in loaded.distill_source
    with pytest.raises(ValueError, match="checkpoint"):
        trained_field(VoxelGridField(resolution=4))


def test_without_stage_steps_every_term_runs_for_any_pair(monkeypatch):
    torch.manual_seed(0)
    student = MLPField(num_freqs=2, depth=3, width=8, skip=0, encoding_dim=4, sigma_hidden=8)
    recipe = PVD(student, VoxelGridField(resolution=4).eval(), num_samples=2, stage_steps=None)
    assert recipe.stage == 3 and recipe.configure_callbacks() == []
    monkeypatch.setattr(recipe, "log_losses", lambda terms: terms)
    terms = recipe.training_step(batch(4), 0)
    assert set(terms) == {"feature", "density", "color", "rgb"} and all(
        torch.isfinite(v) for v in terms.values()
    )


def test_the_validation_picture_has_a_row_per_model_and_a_column_per_view():
    from lightning_distill.radiance.training import views_picture

    views = {name: torch.rand(3, 3, 8, 10) for name in ("student", "teacher", "ground truth")}
    picture = views_picture(views, gap=2)
    assert picture.shape == (3 * 8 + 2 * 2, 3 * 10 + 2 * 2, 3) and picture.dtype.name == "uint8"
    with pytest.raises(ValueError, match="rows"):
        views_picture({"a": torch.rand(1, 3, 4, 4), "b": torch.rand(1, 3, 5, 4)})
