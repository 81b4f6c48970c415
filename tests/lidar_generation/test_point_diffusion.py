"""The local point diffusion: schedule, exact DDIM with an oracle, the sparse denoiser, the cached teacher."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from lightning_distill.data.lidar_generation import CompletionDataModule
from lightning_distill.lidar_generation.point_diffusion import (
    PointDenoiser,
    PointDiffusion,
    draw_target_points,
    duplicate_scan,
    trained_point_diffusion,
)


def tiny_denoiser() -> PointDenoiser:
    torch.manual_seed(0)
    return PointDenoiser(voxel_size=0.5, widths=(8, 16), time_dim=8, hidden=16)


def test_sigma_is_sqrt_one_minus_alpha_bar_of_lidiffs_betas():
    diffusion = PointDiffusion()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=3.5e-5, beta_end=0.007, beta_schedule="linear")
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(diffusion.sigma(t), (1 - ref.alphas_cumprod[t]).sqrt())


def test_noise_is_local_and_predict_x0_inverts_it():
    diffusion = PointDiffusion()
    x0, eps, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.tensor([3, 700])
    x_t = diffusion.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t - x0, diffusion.sigma(t)[:, None, None] * eps)  # no shrinking of x0
    torch.testing.assert_close(diffusion.predict_x0(x_t, eps, t), x0)


class Oracle(nn.Module):
    """The exact noise of a known clean cloud: ε = (x_t − x0) / σ_t."""

    def __init__(self, x0: torch.Tensor, diffusion: PointDiffusion) -> None:
        super().__init__()
        self.x0, self.diffusion = x0, diffusion

    def forward(self, x_t, t, scan):
        return (x_t - self.x0) / self.diffusion.sigma(t)[:, None, None]


@pytest.mark.parametrize("steps", [1, 8, 50])
def test_ddim_with_the_exact_noise_returns_the_clean_cloud(steps):
    diffusion = PointDiffusion()
    scan = torch.randn(2, 4, 3)
    x0 = torch.randn(2, 12, 3)
    noise = torch.randn(2, 12, 3)
    out = diffusion.sample(Oracle(x0, diffusion), scan, noise, k=3, num_steps=steps)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)
    assert diffusion.timesteps(steps)[0] == 999 and diffusion.timesteps(steps)[-1] >= 0


def test_start_is_the_duplicated_scan_plus_sigma_T_noise():
    diffusion = PointDiffusion()
    scan, noise = torch.randn(1, 2, 3), torch.randn(1, 6, 3)
    torch.testing.assert_close(
        diffusion.start(scan, noise, 3), duplicate_scan(scan, 3) + diffusion.sigmas[-1] * noise
    )
    with pytest.raises(ValueError, match="noise"):
        diffusion.start(scan, torch.randn(1, 5, 3), 3)


def test_denoiser_shapes_and_gradient_reach_every_parameter():
    model = tiny_denoiser()
    x_t, scan = torch.randn(2, 20, 3) * 2, torch.randn(2, 6, 3) * 2
    out = model(x_t, torch.tensor([5, 900]), scan)
    assert out.shape == (2, 20, 3)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="scan"):
        model(x_t, torch.tensor([1, 2]), torch.randn(2, 6))


def test_draw_target_points_never_draws_padding():
    target = torch.cat([torch.zeros(1, 3, 3), torch.full((1, 2, 3), 99.0)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    assert float(draw_target_points(target, 50, mask).abs().max()) == 0.0


def test_teacher_trains_on_first_use_then_loads_from_the_cache(tmp_path):
    data = CompletionDataModule(
        num_train=2,
        num_val=0,
        num_test=0,
        num_frames=2,
        num_scan_points=8,
        batch_size=2,
        beams=8,
        azimuth_steps=128,
    )
    first = trained_point_diffusion(tiny_denoiser(), data, duplication=2, steps=3, cache_dir=str(tmp_path))
    second = trained_point_diffusion(tiny_denoiser(), data, duplication=2, steps=3, cache_dir=str(tmp_path))
    assert not first.training and "cache" in second.distill_source
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    with pytest.raises(ValueError, match="steps"):
        trained_point_diffusion(tiny_denoiser(), data, steps=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint"):
        trained_point_diffusion(tiny_denoiser())


def test_the_real_scale_denoiser_runs_the_same_code_path():
    """LiDiff's scale: 5 cm voxels, a 4-level MinkUNet-style spconv UNet (32..256 channels)."""
    torch.manual_seed(0)
    model = PointDenoiser()
    assert model.unet.widths == [32, 64, 128, 256] and model.voxel_size == 0.05
    scan = torch.rand(1, 12, 3) * 2
    out = PointDiffusion().one_step(model, scan, torch.randn(1, 60, 3), k=5)
    assert out.shape == (1, 60, 3) and torch.isfinite(out).all()
