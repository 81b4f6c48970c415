"""SLAM: the sub-path step against an independent computation, boundary, EMA target, gradients, UNet path, resume."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule
from lightning_distill.diffusion.consistency import GuidanceConditioned
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.losses.consistency import pseudo_huber_loss
from lightning_distill.recipes.slam import SLAM
from tests.conftest import quiet_trainer_kwargs

K = 4


def bench_recipe(**kwargs) -> SLAM:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    options = dict(
        student=MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=K),
        teacher=AnalyticTeacher(GaussianMixture.ring(k=8, num_classes=K), schedule),
        schedule=schedule,
        student_init="random",
        embedding_dim=16,
        guidance=2.0,
        noise_seed=0,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    options.update(kwargs)
    return SLAM(**options)


def _unet(time_cond_proj_dim=None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def test_consistency_loss_matches_an_independent_computation_of_the_official_step():
    recipe = bench_recipe()
    with torch.no_grad():  # a non-trivial target network
        for p in recipe.target_student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gmm, schedule = recipe.teacher.gmm, recipe.schedule
    x0 = gmm.sample(6, torch.Generator().manual_seed(1)).float()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = recipe.consistency_loss(x0, y, torch.Generator().manual_seed(7))

    # the same draws, in the same order: grid index, noise, gamma
    g = torch.Generator().manual_seed(7)
    grid = torch.arange(1, 51) * 20 - 1
    index = torch.randint(0, 50, (6,), generator=g)
    start = grid[index]
    end = (start - 20).clamp(min=0)
    noise = torch.randn(6, 2, generator=g)
    gamma = torch.rand(6, generator=g)
    abar = schedule.scheduler.alphas_cumprod.double()
    a_s, s_s = abar[start].sqrt()[:, None], (1 - abar[start]).sqrt()[:, None]
    a_e, s_e = abar[end].sqrt()[:, None], (1 - abar[end]).sqrt()[:, None]
    z = a_s * x0.double() + s_s * noise.double()
    x0_c = gmm.posterior_mean(z, a_s[:, 0], s_s[:, 0], y)
    x0_u = gmm.posterior_mean(z, a_s[:, 0], s_s[:, 0], None)
    x0_g = 3 * x0_c - 2 * x0_u  # (1 + w) c - w u, w = 2
    eps_g = (z - a_s * x0_g) / s_s
    x_prev = a_e * x0_g + s_e * eps_g

    def scalings(t):
        scaled = t.double()[:, None] * 10
        return 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25).sqrt()

    with torch.no_grad():
        eps_t = recipe.target_student(x_prev.float(), end, y, guidance=torch.zeros(6)).double()
    cs, co = scalings(end)
    target = cs * x_prev + co * (x_prev - s_e * eps_t) / a_e
    r = a_s / a_e
    z_g = gamma.double()[:, None] * z + (1 - gamma.double()[:, None]) * x_prev * r
    eps_s = recipe.student(z_g.float(), start, y, guidance=10 * (1 - gamma)).double()
    sigma_g = gamma.double()[:, None] * s_s + (1 - gamma.double()[:, None]) * s_e * r  # the noise of z_g
    cs, co = scalings(start)
    prediction = cs * z_g + co * (z_g - sigma_g * eps_s) / a_s
    expected = ((prediction - target) ** 2 + 1e-6).sqrt().mean() - 1e-3
    torch.testing.assert_close(loss.double(), expected, atol=2e-4, rtol=2e-3)


def test_at_gamma_one_the_student_reads_the_usual_noise_level_and_at_zero_the_solved_point():
    recipe = bench_recipe()
    t_start, t_end = torch.tensor([519, 19]), torch.tensor([499, 0])
    z, x_prev, eps = torch.randn(2, 2), torch.randn(2, 2), torch.randn(2, 2)
    ones, zeros = torch.ones(2), torch.zeros(2)
    z1 = recipe.interpolate(z, x_prev, t_start, t_end, ones)
    torch.testing.assert_close(z1, z)
    torch.testing.assert_close(
        recipe.student_x0(eps, z1, t_start, t_end, ones), recipe.schedule.to_x0(eps, z, t_start)
    )
    z0 = recipe.interpolate(z, x_prev, t_start, t_end, zeros)
    torch.testing.assert_close(
        recipe.student_x0(eps, z0, t_start, t_end, zeros),
        recipe.schedule.to_x0(eps, x_prev, t_end),
        atol=1e-5,
        rtol=1e-5,
    )


def test_the_consistency_function_is_the_identity_at_t_zero():
    recipe = bench_recipe()
    x = torch.randn(5, 2)
    torch.testing.assert_close(
        recipe.consistency_function(x, torch.zeros(5, dtype=torch.long), torch.arange(5) % K), x
    )


def test_gradients_reach_only_the_student_and_its_slot_never_the_target_network():
    recipe = bench_recipe()
    recipe.student.projection.weight.data.normal_()  # a live slot, so its projection gets a gradient
    x0 = recipe.teacher.gmm.sample(8, torch.Generator().manual_seed(0)).float()
    recipe.consistency_loss(x0, torch.arange(8) % K, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in recipe.target_student.parameters())
    assert {id(p) for p in recipe.configure_optimizers().param_groups[0]["params"]} == {
        id(p) for p in recipe.student.parameters()
    }


class _Record(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(trainer.callback_metrics["train/consistency"]))


def _fit(recipe, steps, tmp_path, ckpt=None, record=None):
    L.seed_everything(0)
    data = GMMDataModule(
        "ring", num_classes=K, options={"k": 8}, conditional=True, num_train=40, num_val=8, batch_size=8
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / f"run{steps}", save_last=True, every_n_train_steps=3)
    callbacks = [c for c in (record, checkpoint) if c is not None]
    trainer = L.Trainer(
        **quiet_trainer_kwargs(
            max_steps=steps, limit_val_batches=0, enable_checkpointing=True, callbacks=callbacks
        )
    )
    trainer.fit(recipe, datamodule=data, ckpt_path=ckpt)
    return trainer


def test_the_target_network_is_the_ema_of_the_student_with_decay_095(tmp_path: Path):
    recipe = bench_recipe()
    student0 = copy.deepcopy(recipe.student.state_dict())
    trainer = _fit(recipe, 1, tmp_path)
    student1 = recipe.student.state_dict()
    for key, value in recipe.target_student.state_dict().items():
        torch.testing.assert_close(value, 0.95 * student0[key] + 0.05 * student1[key])
    assert "train/consistency" in trainer.logged_metrics and "train/loss_student" in trainer.logged_metrics


def test_resume_matches_an_uninterrupted_run(tmp_path: Path):
    whole, first, second = _Record(), _Record(), _Record()
    _fit(bench_recipe(), 8, tmp_path, record=whole)
    _fit(bench_recipe(), 3, tmp_path, record=first)
    _fit(bench_recipe(), 8, tmp_path, ckpt=str(tmp_path / "run3" / "last.ckpt"), record=second)
    torch.testing.assert_close(torch.tensor(first.values + second.values), torch.tensor(whole.values))


@pytest.mark.parametrize("time_cond_proj_dim", [None, 32])
def test_unet2dcondition_student_starts_as_the_teacher_trains_and_leaves_the_teacher_untouched(
    time_cond_proj_dim,
):
    torch.manual_seed(0)
    teacher = _unet(time_cond_proj_dim)
    student = _unet(time_cond_proj_dim)
    recipe = SLAM(
        student,
        teacher,
        NoiseSchedule.ddpm(),
        guidance=0.0,
        embedding_dim=16,
        noise_seed=0,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    assert isinstance(recipe.student, GuidanceConditioned) and recipe.student.native == (
        time_cond_proj_dim is not None
    )
    before_teacher = copy.deepcopy(teacher.state_dict())
    before_student = copy.deepcopy(recipe.student.model.state_dict())
    torch.testing.assert_close(before_student, before_teacher)
    x0, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    recipe.consistency_loss(x0, cond, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in recipe.student.parameters())
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())
    assert recipe.sample(2, torch.Generator().manual_seed(0), cond).shape == (2, 4, 8, 8)


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ValueError, match="loss_type"):
        bench_recipe(loss_type="l1")
    with pytest.raises(ValueError, match="num_inference_steps"):
        bench_recipe(num_inference_steps=0)
    with pytest.raises(ValueError, match="student_init"):
        bench_recipe(student_init="teacher")  # the analytic teacher has no weights
    with pytest.raises(ValueError, match="schedule"):
        bench_recipe(
            schedule=NoiseSchedule.flow(),
            teacher=AnalyticTeacher(GaussianMixture.ring(k=8, num_classes=K), NoiseSchedule.flow()),
        )


def test_without_the_sub_path_the_loss_is_latent_consistency_distillation():
    lcm = bench_recipe(sub_path=False)
    x0 = lcm.teacher.gmm.sample(6, torch.Generator().manual_seed(1)).float()
    y = torch.arange(6) % K
    loss = lcm.consistency_loss(x0, y, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    index = torch.randint(0, 50, (6,), generator=g)
    start = (torch.arange(1, 51) * 20 - 1)[index]
    end = (start - 20).clamp(min=0)
    z = lcm.schedule.add_noise(x0, torch.randn(6, 2, generator=g), start)
    x_prev = lcm.teacher_step(z, start, end, y)
    expected = pseudo_huber_loss(lcm.consistency_function(z, start, y), lcm.target(x_prev, end, y), c=1e-3)
    torch.testing.assert_close(loss, expected)


class _PointMassTeacher(torch.nn.Module):
    """The exact ε-predictor of data concentrated at one point ``x0``: ``ε̂(x, t) = (x − α_t x0) / σ_t``."""

    def __init__(self, x0: torch.Tensor, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.register_buffer("x0", x0)
        self.schedule = schedule

    def forward(self, sample, timestep, class_labels=None):
        alpha, sigma = self.schedule.alpha_sigma(timestep)
        return (sample - alpha[:, None] * self.x0) / sigma[:, None]


@pytest.mark.parametrize("t_start", [999, 519, 39])
def test_a_perfect_noise_prediction_gives_the_data_back_at_every_gamma(t_start):
    """Closed form: for point-mass data the teacher's DDIM step is exact, ``x̂_{t_n} = α_n x0 + σ_n ε`` with the
    noise ``ε`` of ``z``, so ``z_γ = α_{n+k} x0 + (γ σ_{n+k} + (1 − γ) σ_n α_{n+k}/α_n) ε``: a student that predicts
    that ``ε`` must get ``x0`` back for every γ (the official quadrature σ_γ does not, except at γ = 0 and 1)."""
    schedule = NoiseSchedule.ddpm()
    x0 = torch.tensor([[1.5, -0.5]]).repeat(5, 1)
    recipe = bench_recipe(teacher=_PointMassTeacher(x0[:1], schedule), schedule=schedule)
    start = torch.full((5,), t_start)
    end = start - 20
    eps = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    gamma = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    z = schedule.add_noise(x0, eps, start)
    x_prev = recipe.teacher_step(z, start, end, None)
    z_gamma = recipe.interpolate(z, x_prev, start, end, gamma)
    torch.testing.assert_close(recipe.student_x0(eps, z_gamma, start, end, gamma), x0, atol=1e-4, rtol=1e-4)
    official = bench_recipe(sub_path_noise="quadrature")
    error = (official.student_x0(eps, z_gamma, start, end, gamma) - x0).norm(dim=1)
    assert error[[0, 4]].max() < 1e-4 and error[1:4].min() > 1e-3  # wrong strictly inside the sub-path


def test_the_teachers_own_noise_prediction_gives_its_x0_back_at_every_gamma():
    """The exact guided teacher of the ring: ``z`` and ``x̂_{t_n}`` share the teacher's ``(x̂₀, ε̂)`` at ``z``, so
    the student reading ``ε̂`` at ``z_γ`` must give the teacher's ``x̂₀`` for every γ (a consistent σ_γ)."""
    recipe = bench_recipe()
    schedule = recipe.schedule
    x0 = recipe.teacher.gmm.sample(6, torch.Generator().manual_seed(2)).float()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    start = torch.tensor([999, 979, 759, 499, 259, 39])
    end = start - 20
    z = schedule.add_noise(x0, torch.randn(6, 2, generator=torch.Generator().manual_seed(3)), start)
    x_prev = recipe.teacher_step(z, start, end, y)
    with torch.no_grad():  # the guided ε̂ of the solver step, (1 + w) ε_c − w ε_∅ with w = 2
        eps_hat = 3 * recipe.teacher(z, start, y) - 2 * recipe.teacher(z, start, recipe.null_condition(y))
    x0_hat = schedule.to_x0(eps_hat, z, start)
    for value in (0.1, 0.5, 0.9):
        gamma = torch.full((6,), value)
        z_gamma = recipe.interpolate(z, x_prev, start, end, gamma)
        torch.testing.assert_close(
            recipe.student_x0(eps_hat, z_gamma, start, end, gamma), x0_hat, atol=2e-3, rtol=1e-3
        )
