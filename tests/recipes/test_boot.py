"""BOOT: data-free (no training sample is ever drawn), the bootstrap step against the teacher's DDIM step,
boundary term, gradients, UNet path."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.conditions import ConditionDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.recipes.boot import BOOT
from tests.conftest import quiet_trainer_kwargs

K = 4


def bench_recipe(**kwargs) -> BOOT:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    options = dict(
        student=MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=K),
        teacher=AnalyticTeacher(GaussianMixture.ring(k=8, num_classes=K), schedule),
        schedule=schedule,
        guidance=1.5,
        null_label=K,
        noise_seed=0,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    options.update(kwargs)
    return BOOT(**options)


def test_the_bootstrap_target_is_the_teachers_ddim_step_in_signal_space():
    """y_t + δ (x̂₀ − y_t) with δ = 1 − σ_s α_t / (α_s σ_t) is (x_s − σ_s ε) / α_s of the DDIM step t → s."""
    recipe = bench_recipe()
    gmm, schedule = recipe.teacher.gmm, recipe.schedule
    noise, y_t = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    labels = torch.arange(5) % K
    t, s = torch.full((5,), 519), torch.full((5,), 499)
    a_t, s_t = (v.double()[:, None] for v in schedule.alpha_sigma(t))
    a_s, s_s = (v.double()[:, None] for v in schedule.alpha_sigma(s))
    x_t = a_t * y_t + s_t * noise
    x0_c = gmm.posterior_mean(x_t, a_t[:, 0], s_t[:, 0], labels)
    x0_u = gmm.posterior_mean(x_t, a_t[:, 0], s_t[:, 0], None)
    x0 = 2.5 * x0_c - 1.5 * x0_u
    eps = (x_t - a_t * x0) / s_t
    x_s = a_s * x0 + s_s * eps
    delta = recipe.step_size(t, s).double()[:, None]
    torch.testing.assert_close(
        y_t + delta * (x0 - y_t), (x_s - s_s * noise) / a_s, atol=1e-6, rtol=1e-6
    )  # δ in fp32
    torch.testing.assert_close(recipe.teacher_x0(x_t, t, labels).double(), x0, atol=1e-5, rtol=1e-5)


def test_bootstrap_loss_matches_an_independent_computation():
    recipe = bench_recipe()
    labels = torch.arange(6) % K
    loss = recipe.bootstrap_term(
        torch.randn(6, 2, generator=torch.Generator().manual_seed(2)),
        labels,
        torch.Generator().manual_seed(3),
    )
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    index = torch.randint(0, 50, (6,), generator=g)
    t = (torch.arange(1, 51) * 20 - 1)[index]
    s = (t - 20).clamp(min=0)
    with torch.no_grad():
        y_t = recipe.student(noise, t, labels)
        y_s = recipe.student(noise, s, labels)
    abar = recipe.schedule.scheduler.alphas_cumprod
    a_t, s_t, a_s, s_s = abar[t].sqrt(), (1 - abar[t]).sqrt(), abar[s].sqrt(), (1 - abar[s]).sqrt()
    x0 = recipe.teacher_x0(a_t[:, None] * y_t + s_t[:, None] * noise, t, labels)
    delta = (1 - s_s * a_t / (a_s * s_t))[:, None]
    expected = (((y_s - (y_t + delta * (x0 - y_t))) / delta) ** 2).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)


def test_boundary_term_pulls_the_student_at_T_to_the_teachers_prediction_from_pure_noise():
    recipe = bench_recipe()
    noise, labels = torch.randn(4, 2), torch.arange(4)
    t = torch.full((4,), 999)
    with torch.no_grad():
        expected = ((recipe.student(noise, t, labels) - recipe.teacher_x0(noise, t, labels)) ** 2).mean()
    torch.testing.assert_close(recipe.boundary_term(noise, labels), expected)


def test_training_touches_no_data_sample(monkeypatch: pytest.MonkeyPatch):
    recipe = bench_recipe()

    def refuse(*args, **kwargs):
        raise AssertionError("BOOT drew a data sample during training")

    monkeypatch.setattr(GaussianMixture, "sample", refuse)
    seen: list[torch.Tensor] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    data = ConditionDataModule(num_classes=K, num_train=32, num_val=8, batch_size=8)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, callbacks=[Spy()]))
    trainer.fit(recipe, datamodule=data)
    assert len(seen) == 3 and all(b.dtype == torch.long and b.shape == (8,) for b in seen)  # labels only
    assert {"train/bootstrap", "train/boundary", "train/loss_student"} <= set(trainer.logged_metrics)
    with pytest.raises(ValueError, match="data-free"):
        recipe.split_batch((torch.randn(8, 2), torch.arange(8)))


def test_gradients_reach_only_the_student_and_the_teacher_is_untouched():
    torch.manual_seed(0)
    teacher = tiny_unet(
        sample_size=8, in_channels=4, block_out_channels=(8, 16), cross_attention_dim=16, norm_num_groups=4
    )
    student = copy.deepcopy(teacher)
    before = copy.deepcopy(teacher.state_dict())
    recipe = BOOT(
        student, teacher, NoiseSchedule.ddpm(), student_init="teacher", noise_seed=0, sample_shape=(4, 8, 8)
    )
    cond = torch.randn(2, 3, 16)
    terms = recipe.losses(cond, 2, torch.Generator().manual_seed(0))
    (terms["bootstrap"] + terms["boundary"]).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in recipe.student.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert recipe.sample(2, torch.Generator().manual_seed(0), cond).shape == (2, 4, 8, 8)


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ValueError, match="num_steps"):
        bench_recipe(num_steps=0)
    with pytest.raises(ValueError, match="guidance"):
        bench_recipe(guidance=-1.0)
    with pytest.raises(ValueError, match="student_init"):
        bench_recipe(student_init="teacher")
