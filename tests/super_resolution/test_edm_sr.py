"""EDM SR process (CTMSR): scalings, boundary identity, grids, interpolation, annealing, sampler, teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.models.classifiers import SmallCNN
from lightning_distill.super_resolution.denoisers import LRConditionedUNet
from lightning_distill.super_resolution.edm_sr import (
    EDMSRProcess,
    annealed_num_steps,
    annealed_step_stages,
    karras_grid,
    perceptual_distance,
    trained_edm_sr_teacher,
)
from lightning_distill.super_resolution.metrics import FeatureDistance

SIGMAS = [0.0, 0.05, 1 / 3, 0.5, 1.0, 2.5]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_edm_scalings_follow_karras_formulas_with_the_boundary_shift(sigma):
    process = EDMSRProcess(sigma_min=0.0, sigma_data=0.5, preconditioning="edm")
    c_skip, c_out, c_in, c_noise = (float(c) for c in process.scalings(torch.tensor([sigma])))
    sd = 0.5
    assert c_skip == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-6)
    assert c_out == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-6, abs=1e-7)
    assert c_in == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-6)
    assert c_noise == pytest.approx(math.log(sigma + 0.002) / 4, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_ctmsr_scalings_follow_the_official_edmunet(sigma):
    process = EDMSRProcess()  # official: sigma_data 0.5, sigma / 0.1, c_in = 1
    c_skip, c_out, c_in, c_noise = (float(c) for c in process.scalings(torch.tensor([sigma])))
    s = sigma / 0.1
    assert c_skip == pytest.approx(0.25 / (s**2 + 0.25), rel=1e-6)
    assert c_out == pytest.approx(s / math.sqrt(s**2 + 0.25), rel=1e-6, abs=1e-7)
    assert c_in == 1.0
    assert c_noise == pytest.approx(math.log(sigma + 0.002) / 4, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("preconditioning", ["ctmsr", "edm"])
@pytest.mark.parametrize("sigma_min", [0.0, 0.002])
def test_consistency_function_is_the_identity_at_the_smallest_sigma(preconditioning, sigma_min):
    process = EDMSRProcess(sigma_min=sigma_min, preconditioning=preconditioning)
    torch.manual_seed(0)
    network = LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))
    x, lr = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    out = process.denoise(network, x, torch.full((2,), sigma_min), lr)
    torch.testing.assert_close(out, x)
    assert not torch.allclose(process.denoise(network, x, torch.full((2,), 0.5), lr), x)


def test_karras_grid_matches_the_formula_and_the_official_linear_case():
    torch.testing.assert_close(karras_grid(3, 0.0, 1.0, 1.0), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    expected = [(0.002 ** (1 / 7) + i / 4 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7 for i in range(5)]
    torch.testing.assert_close(karras_grid(4, 0.002, 80.0, 7.0), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    sigmas, alphas = EDMSRProcess().grid(4)
    torch.testing.assert_close(sigmas, alphas)  # sigma 0..1 and rho 1 for both: the same line


def test_interpolation_ends_at_hr_and_at_noisy_upsampled_lr_and_has_the_stated_marginal():
    process = EDMSRProcess()
    sigmas, alphas = process.grid(4)
    hr, lr_up = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    noise = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(process.interpolate(hr, lr_up, sigmas[:1], alphas[:1], noise), hr)
    torch.testing.assert_close(process.interpolate(hr, lr_up, sigmas[-1:], alphas[-1:], noise), lr_up + noise)
    # marginal at i = 1: mean HR + α (up(LR) − HR), std σ, per pixel
    n = 20000
    gen = torch.Generator().manual_seed(0)
    samples = process.interpolate(
        hr.expand(n, -1, -1, -1),
        lr_up.expand(n, -1, -1, -1),
        sigmas[1].expand(n),
        alphas[1].expand(n),
        torch.randn(n, 3, 4, 4, generator=gen),
    )
    torch.testing.assert_close(samples.mean(0), (hr + 0.25 * (lr_up - hr))[0], atol=0.01, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((3, 4, 4), 0.25), atol=0.01, rtol=0)


def _official_decrease_linear(step: int, total: int, s0: int, s1: int) -> int:
    phase = math.floor(total / (s0 - s1 + 1))
    return max(s0 - math.floor(step / phase), s1) + 1  # grid points, as the official code returns


@pytest.mark.parametrize("total", [10, 100, 999])
def test_annealed_steps_match_the_official_schedule_and_the_stage_spec(total):
    stages = annealed_step_stages(total, 4, 3)
    for step in range(0, total + 20):
        n = annealed_num_steps(step, total, 4, 3)
        assert n + 1 == _official_decrease_linear(step, total, 4, 3)
        assert stages["values"][sum(b <= step for b in stages["boundaries"])] == n
    assert annealed_num_steps(0, 100, 2, 6) == 2 and annealed_num_steps(99, 100, 2, 6) == 6


class _Oracle(nn.Module):
    """A network whose preconditioned denoiser returns ``hr`` exactly (inverts the scalings)."""

    def __init__(self, process: EDMSRProcess, hr: torch.Tensor) -> None:
        super().__init__()
        self.process, self.hr = process, hr

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise) - 0.002
        c_skip, c_out, c_in, _ = self.process.scalings(sigma)
        x = x_in / c_in.view(-1, 1, 1, 1)
        return (self.hr - c_skip.view(-1, 1, 1, 1) * x) / c_out.view(-1, 1, 1, 1)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("steps", [1, 4])
def test_sampler_returns_the_clean_image_for_a_perfect_denoiser(steps, stochastic):
    process = EDMSRProcess()
    hr = torch.rand(2, 3, 8, 8) * 2 - 1
    out = process.sample(
        _Oracle(process, hr), torch.rand(2, 3, 4, 4), 2, steps, torch.Generator().manual_seed(0), stochastic
    )
    torch.testing.assert_close(out, hr, atol=1e-4, rtol=1e-4)


def test_deterministic_step_keeps_the_noise_direction():
    # one DDIM step with D = HR moves x_i to the grid point i − 1 with the same ε
    process = EDMSRProcess()
    sigmas, alphas = process.grid(2)
    hr, lr_up, eps = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    x2 = process.interpolate(hr, lr_up, sigmas[2:], alphas[2:], eps)
    eps_hat = (x2 - hr - alphas[2] * (lr_up - hr)) / sigmas[2]
    torch.testing.assert_close(eps_hat, eps)


def test_perceptual_distance_of_a_feature_distance_equals_the_metric_and_is_differentiable():
    torch.manual_seed(0)
    metric = FeatureDistance(SmallCNN(width=8, depth=2), ["stem", "layer1"])
    a, b = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16)
    d = perceptual_distance(metric, a, b)
    torch.testing.assert_close(d.detach(), metric(a.detach(), b))
    d.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())


def test_process_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sigma_max"):
        EDMSRProcess(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="preconditioning"):
        EDMSRProcess(preconditioning="vp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_rho"):
        EDMSRProcess(noise_rho=0.0)
    with pytest.raises(ValueError, match="one noise level per image"):
        EDMSRProcess().interpolate(
            *(torch.zeros(2, 1, 2, 2),) * 2, torch.zeros(3), torch.zeros(2), torch.zeros(2, 1, 2, 2)
        )


@pytest.mark.filterwarnings("ignore:The (cached )?teacher")  # two steps: flagged as broken, on purpose
def test_teacher_trains_once_then_loads_from_the_cache(tmp_path):
    data = SuperResolutionDataModule(scale=2, hr_size=8, source="digits", batch_size=4)

    def build():
        return LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))

    first = trained_edm_sr_teacher(build(), data, steps=2, lr=1e-3, cache_dir=str(tmp_path))
    assert isinstance(first.edm_sr_process, EDMSRProcess) and not first.training
    assert "cache" in first.distill_source
    second = trained_edm_sr_teacher(build(), data, steps=2, lr=1e-3, cache_dir=str(tmp_path))
    for p, q in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(p, q)
    path = tmp_path / "weights.pt"
    torch.save(first.state_dict(), path)
    third = trained_edm_sr_teacher(build(), checkpoint=str(path))
    assert "checkpoint" in third.distill_source
    with pytest.raises(ValueError, match="checkpoint"):
        trained_edm_sr_teacher(build())
