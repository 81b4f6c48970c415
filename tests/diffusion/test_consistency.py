"""Consistency machinery: the guided solver step against closed forms, grids, boundary conditions, the w slot, sampling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.consistency import (
    GuidanceConditioned,
    consistency_output,
    consistency_sample,
    consistency_scalings,
    draw_timestep_pairs,
    guidance_scale_embedding,
    lcm_timesteps,
    skipping_timesteps,
    solver_step,
)
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture


def _gaussian(mu: float = 1.5, std: float = 0.7) -> GaussianMixture:
    return GaussianMixture([[mu, -mu]], stds=std)


def _ode_closed_form(x_t, mu, std, a_from, s_from, a_to, s_to):
    """The probability-flow ODE of one Gaussian maps standardised coordinates to themselves."""
    var_from = (a_from * std) ** 2 + s_from**2
    var_to = (a_to * std) ** 2 + s_to**2
    return a_to * mu + (x_t - a_from * mu) * math.sqrt(var_to / var_from)


def test_ddim_step_is_alpha_x0_plus_sigma_eps_of_the_exact_posterior_with_guidance():
    schedule = NoiseSchedule.ddpm(beta_schedule="linear")
    gmm = GaussianMixture.ring(k=4, num_classes=2)
    teacher = AnalyticTeacher(gmm, schedule)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g) * 2
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    t_from, t_to, w = torch.full((6,), 600), torch.full((6,), 580), 3.0
    out = solver_step(teacher, schedule, x, t_from, t_to, labels, torch.full((6,), 2), w)
    a, s = (v.double()[:, None] for v in schedule.alpha_sigma(t_from))
    a2, s2 = (v.double()[:, None] for v in schedule.alpha_sigma(t_to))
    xd = x.double()
    x0_c = gmm.posterior_mean(xd, a[:, 0], s[:, 0], labels)
    x0_u = gmm.posterior_mean(xd, a[:, 0], s[:, 0], None)
    x0 = (1 + w) * x0_c - w * x0_u
    eps = (xd - a * x0) / s
    torch.testing.assert_close(out.double(), a2 * x0 + s2 * eps, atol=1e-4, rtol=1e-4)


def test_ddim_step_equals_diffusers_ddim_scheduler_step():
    schedule = NoiseSchedule.ddpm()
    teacher = AnalyticTeacher(GaussianMixture.ring(k=8), schedule)
    scheduler = DDIMScheduler.from_config(
        schedule.scheduler.config, timestep_spacing="leading", set_alpha_to_one=False
    )
    scheduler.set_timesteps(50)  # step ratio 20: t -> t - 20
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)) * 3
    t = 519
    expected = scheduler.step(teacher(x, torch.tensor(t)), t, x).prev_sample
    out = solver_step(teacher, schedule, x, torch.full((5,), t), torch.full((5,), t - 20))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _solve_gaussian(solver: str, step: int) -> float:
    """Max error of ``solver`` from t = 800 to t = 100 in steps of ``step`` against the closed form."""
    mu, std = 1.5, 0.7
    schedule = NoiseSchedule.ddpm(beta_schedule="linear")
    teacher = AnalyticTeacher(_gaussian(mu, std), schedule)
    x_start = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x_start
    grid = list(range(800, 99, -step))
    for t_from, t_to in zip(grid[:-1], grid[1:]):
        x = solver_step(teacher, schedule, x, torch.full((4,), t_from), torch.full((4,), t_to), solver=solver)
    (a0,), (s0,) = (v.tolist() for v in schedule.alpha_sigma(torch.tensor([800])))
    (a1,), (s1,) = (v.tolist() for v in schedule.alpha_sigma(torch.tensor([100])))
    means = torch.tensor([mu, -mu], dtype=torch.float64)
    expected = torch.stack(
        [_ode_closed_form(x_start[:, d], means[d], std, a0, s0, a1, s1) for d in range(2)], 1
    )
    return float((x - expected).abs().max())


@pytest.mark.parametrize("solver, order", [("ddim", 1), ("heun", 2)])
def test_solver_steps_converge_to_the_closed_form_ode_solution_of_a_gaussian_at_their_order(solver, order):
    coarse, fine = _solve_gaussian(solver, 20), _solve_gaussian(solver, 10)
    assert fine < 0.03
    assert 0.8 * 2**order < coarse / fine < 1.25 * 2**order


def test_skipping_grid_and_pairs_follow_lcm():
    grid = skipping_timesteps(1000, 50)
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1] == 999
    index, start, end = draw_timestep_pairs(512, grid, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(start, grid[index])
    torch.testing.assert_close(end, (start - 20).clamp(min=0))  # LCM: start - T // N, clipped
    _, start2, end2 = draw_timestep_pairs(512, grid, skip=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(end2, (start2 - 60).clamp(min=0))
    with pytest.raises(ValueError, match="skip"):
        draw_timestep_pairs(2, grid, skip=0)
    with pytest.raises(ValueError, match="num_solver_steps"):
        skipping_timesteps(10, 20)


def test_consistency_function_is_the_identity_at_the_boundary():
    c_skip, c_out = consistency_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[2] < 1e-6 and abs(c_out[2] - 1) < 1e-6
    # independent: LCM's formula with t / 0.1
    scaled = 19 / 0.1
    assert abs(c_skip[1].item() - 0.25 / (scaled**2 + 0.25)) < 1e-9
    x_t, x0 = torch.randn(3, 2), torch.randn(3, 2)
    torch.testing.assert_close(consistency_output(x_t, x0, torch.zeros(3, dtype=torch.long)), x_t)
    torch.testing.assert_close(
        consistency_output(x_t, x0, torch.tensor([0, 999, 999]))[1:], x0[1:], atol=1e-5, rtol=0
    )


def test_consistency_sample_equals_diffusers_lcm_scheduler():
    schedule = NoiseSchedule.ddpm()
    model = MLPDenoiser(dim=2, hidden=16, depth=1)
    steps = lcm_timesteps(schedule, 4)
    assert steps == [999, 759, 499, 259]
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))

    def f(x, t):
        return consistency_output(x, schedule.to_x0(model(x, t), x, t), t)

    with torch.no_grad():
        ours = consistency_sample(f, schedule, noise, steps, generator=torch.Generator().manual_seed(5))
        scheduler = LCMScheduler.from_config(schedule.scheduler.config, timestep_spacing="leading")
        scheduler.set_timesteps(4)
        x, gen = noise, torch.Generator().manual_seed(5)
        for t in scheduler.timesteps:
            x, denoised = scheduler.step(model(x, t), t, x, generator=gen, return_dict=False)
    torch.testing.assert_close(ours, denoised, atol=1e-5, rtol=1e-5)


def test_guidance_scale_embedding_matches_lcm_formula():
    emb = guidance_scale_embedding(torch.tensor([0.0, 7.0]), dim=8)
    half = 4
    freqs = [math.exp(-math.log(10000.0) * k / (half - 1)) for k in range(half)]
    expected = [math.sin(7000.0 * f) for f in freqs] + [math.cos(7000.0 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_guidance_slot_starts_as_the_wrapped_model_learns_and_leaves_no_hooks():
    base = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3)
    student = GuidanceConditioned(base, embedding_dim=16)
    x, t, y = torch.randn(4, 2), torch.tensor([1, 300, 600, 999]), torch.tensor([0, 1, 2, 3])
    w = torch.tensor([0.0, 1.0, 4.0, 8.0])
    torch.testing.assert_close(student(x, t, y, guidance=w), base(x, t, y))
    student(x, t, y, guidance=w).square().sum().backward()
    assert student.projection.weight.grad.abs().sum() > 0
    assert not base.time_mlp._forward_hooks
    with torch.no_grad():
        student.projection.weight.normal_()
    copy_ = copy.deepcopy(student)
    torch.testing.assert_close(copy_(x, t, y, guidance=w), student(x, t, y, guidance=w))
    assert not torch.allclose(student(x, t, y, guidance=w), student(x, t, y, guidance=w + 1))


def test_unet_with_time_cond_proj_dim_takes_w_natively_and_a_plain_unet_through_its_time_embedding():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    native = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        time_cond_proj_dim=32,
    )
    wrapped = GuidanceConditioned(native)
    assert wrapped.native and wrapped.projection is None
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 3, 16)
    a = wrapped(x, t, c, guidance=torch.tensor([1.0, 1.0]))
    b = wrapped(x, t, c, guidance=torch.tensor([6.0, 6.0]))
    assert not torch.allclose(a, b)
    plain = GuidanceConditioned(
        tiny_unet(
            sample_size=8,
            in_channels=4,
            block_out_channels=(8, 16),
            cross_attention_dim=16,
            norm_num_groups=4,
        ),
        embedding_dim=16,
    )
    assert plain.embed_into == "time_embedding"
    assert plain(x, t, c, guidance=2.0).shape == x.shape
    with pytest.raises(ValueError, match="embed_into"):
        GuidanceConditioned(torch.nn.Linear(2, 2))
