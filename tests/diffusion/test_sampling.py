"""Tests for ``lightning_distill.diffusion.sampling`` with exact (point-mass) denoisers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lightning_distill.diffusion.denoisers import MLPDenoiser, tiny_unet
from lightning_distill.diffusion.sampling import (
    backward_simulation,
    few_step_sample,
    one_step_generate,
    sample,
)
from lightning_distill.diffusion.schedule import NoiseSchedule

POINTS = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [0.5, 4.0]])  # class 0, class 1, null (class 2)


class PointDenoiser(nn.Module):
    """The exact denoiser of data concentrated on one point per class: x̂₀ = point, ε̂ = (x_t − α point) / σ."""

    def __init__(self, schedule: NoiseSchedule, prediction_type: str | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.prediction_type = prediction_type or schedule.prediction_type

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        labels = torch.zeros(x.shape[0], dtype=torch.long) if class_labels is None else class_labels
        x0 = POINTS[labels]
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        alpha, sigma = self.schedule.alpha_sigma(t)
        eps = (x - alpha[:, None] * x0) / sigma[:, None]
        return self.schedule.target(x0, eps, t, self.prediction_type)


def _hand_few_step(student, abar, noise, timesteps, seed):
    """DMD2's loop written out from alphas_cumprod (epsilon students)."""
    g = torch.Generator().manual_seed(seed)
    x = noise
    for k, t in enumerate(timesteps):
        eps = student(x, torch.full((x.shape[0],), t))
        x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        if k + 1 < len(timesteps):
            nxt = timesteps[k + 1]
            x = abar[nxt].sqrt() * x0 + (1 - abar[nxt]).sqrt() * torch.randn(x0.shape, generator=g)
    return x0, x, g


@pytest.mark.parametrize(
    "schedule",
    [
        NoiseSchedule.ddpm(beta_schedule="scaled_linear", prediction_type="epsilon"),
        NoiseSchedule.ddpm(beta_schedule="linear", prediction_type="v_prediction"),
        NoiseSchedule.flow(shift=3.0),
    ],
    ids=["ddim-eps", "ddim-v", "flow-euler"],
)
def test_fifty_step_sampler_with_the_exact_denoiser_lands_on_the_point(schedule: NoiseSchedule) -> None:
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    out = sample(PointDenoiser(schedule), schedule, noise, num_steps=50)
    assert_close(out, POINTS[0].expand(16, 2), atol=1e-4, rtol=0)


def test_stochastic_ddim_is_reproducible_and_still_exact() -> None:
    schedule = NoiseSchedule.ddpm()
    noise = torch.randn(8, 2)
    a = sample(
        PointDenoiser(schedule), schedule, noise, 10, generator=torch.Generator().manual_seed(1), eta=1.0
    )
    b = sample(
        PointDenoiser(schedule), schedule, noise, 10, generator=torch.Generator().manual_seed(1), eta=1.0
    )
    assert torch.equal(a, b)
    assert_close(a, POINTS[0].expand(8, 2), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="`eta` is a DDIM option"):
        sample(PointDenoiser(NoiseSchedule.flow()), NoiseSchedule.flow(), noise, 2, eta=0.5)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_cfg_sampling_lands_on_the_guided_point(kind: str) -> None:
    # Guided exact denoisers of two points are the exact denoiser of uncond + s (cond - uncond).
    schedule = NoiseSchedule.ddpm() if kind == "vp" else NoiseSchedule.flow()
    labels = torch.tensor([0, 1, 0, 1])
    out = sample(PointDenoiser(schedule), schedule, torch.randn(4, 2), 20, labels, torch.full((1,), 2), 3.0)
    expected = POINTS[2] + 3.0 * (POINTS[labels] - POINTS[2])
    assert_close(out, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("num_steps", [1, 4])
@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_few_step_sample_with_the_exact_denoiser_is_exact(kind: str, num_steps: int) -> None:
    schedule = NoiseSchedule.ddpm() if kind == "vp" else NoiseSchedule.flow()
    timesteps = (999, 749, 499, 249)[:num_steps]
    out = few_step_sample(PointDenoiser(schedule), schedule, torch.randn(6, 2), timesteps)
    assert_close(out, POINTS[0].expand(6, 2), atol=1e-4, rtol=0)


def test_few_step_sample_renoises_each_prediction_to_the_next_timestep() -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm(beta_schedule="linear")
    student = MLPDenoiser(dim=2, hidden=16, depth=2)
    noise = torch.randn(5, 2)
    timesteps = (999, 749, 499, 249)
    with torch.no_grad():
        out = few_step_sample(student, schedule, noise, timesteps, generator=torch.Generator().manual_seed(7))
        expected, _, _ = _hand_few_step(student, schedule.scheduler.alphas_cumprod, noise, timesteps, seed=7)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_backward_simulation_reproduces_the_chain_and_produces_no_grad() -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm(beta_schedule="linear")
    student = MLPDenoiser(dim=2, hidden=16, depth=2)
    abar = schedule.scheduler.alphas_cumprod
    noise = torch.randn(5, 2)
    timesteps = (999, 749, 499, 249)
    x_t, t = backward_simulation(
        student, schedule, noise, timesteps, step=2, generator=torch.Generator().manual_seed(3)
    )
    assert not x_t.requires_grad and t.tolist() == [499] * 5
    assert all(p.grad is None for p in student.parameters())
    with torch.no_grad():
        x0, _, g = _hand_few_step(student, abar, noise, timesteps[:2], seed=3)
        expected = abar[499].sqrt() * x0 + (1 - abar[499]).sqrt() * torch.randn(x0.shape, generator=g)
    assert_close(x_t, expected, atol=1e-5, rtol=1e-5)
    # Step 0 is the noise itself at the first timestep.
    x_0, t_0 = backward_simulation(student, schedule, noise, timesteps, step=0)
    assert x_0 is noise and t_0.tolist() == [999] * 5


def test_backward_simulation_draws_every_step_from_the_generator() -> None:
    schedule = NoiseSchedule.ddpm()
    student = MLPDenoiser(dim=2, hidden=8, depth=1)
    g = torch.Generator().manual_seed(0)
    seen = {
        int(backward_simulation(student, schedule, torch.randn(2, 2), generator=g)[1][0]) for _ in range(40)
    }
    assert seen == {999, 749, 499, 249}
    with pytest.raises(ValueError, match="`step` must be"):
        backward_simulation(student, schedule, torch.randn(2, 2), step=4)
    with pytest.raises(ValueError, match="strictly decreasing"):
        backward_simulation(student, schedule, torch.randn(2, 2), (249, 999))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_one_step_generate_converts_the_student_output_and_keeps_grad(prediction_type: str) -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    student = MLPDenoiser(dim=2, hidden=16, depth=1)
    noise = torch.randn(4, 2)
    x0 = one_step_generate(student, schedule, noise, prediction_type=prediction_type)
    expected = schedule.convert(
        student(noise, torch.tensor(999)), noise, 999, source=prediction_type, target="sample"
    )
    assert_close(x0, expected)
    x0.square().sum().backward()
    assert all(p.grad is not None for p in student.parameters())
    exact = one_step_generate(
        PointDenoiser(schedule, prediction_type), schedule, noise, prediction_type=prediction_type
    )
    assert_close(exact, POINTS[0].expand(4, 2), atol=1e-4, rtol=0)


def test_text_conditioned_unet_runs_the_teacher_and_student_samplers() -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    unet = tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16).eval()
    noise, emb, null = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16), torch.zeros(1, 3, 16)
    teacher_out = sample(unet, schedule, noise, 2, emb, null, guidance_scale=2.0)
    with torch.no_grad():
        student_out = few_step_sample(
            unet, schedule, noise, (999, 499), emb, generator=torch.Generator().manual_seed(0)
        )
    assert teacher_out.shape == student_out.shape == noise.shape
    assert torch.isfinite(teacher_out).all() and torch.isfinite(student_out).all()
