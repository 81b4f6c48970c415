"""Scale-distillation parts: the x0 process, one-step and DDIM samplers, stages, decoder, first-use teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.super_resolution import LRConditionedUNet
from lightning_distill.super_resolution.degradations import bicubic_downsample
from lightning_distill.super_resolution.scale_distillation import (
    RefinementDecoder,
    ddim_sr,
    one_step_sr,
    scale_stages,
    sr_denoising_batch_loss,
    sr_noise_scheduler,
    teacher_target,
    trained_sr_denoiser,
)


class Recorder(nn.Module):
    """Returns a fixed x0 and records the timesteps and LR inputs it is called with."""

    image_channels = 3

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.calls = x0, []

    def forward(self, x_t, t, lr):
        self.calls.append((x_t.clone(), t.clone(), lr.clone()))
        return self.x0.expand_as(x_t)


def test_the_process_is_ddpm_with_linear_betas_and_x0_prediction():
    scheduler = sr_noise_scheduler()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x0, eps, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0, 999])
    expected = alpha_bar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(scheduler.add_noise(x0, eps, t), expected.float())
    assert scheduler.config.prediction_type == "sample"


def test_one_step_starts_from_pure_noise_at_the_last_timestep_and_applies_the_decoder():
    x0 = torch.full((1, 3, 1, 1), 0.5)
    model, lr = Recorder(x0), torch.rand(2, 3, 4, 4)
    out = one_step_sr(model, lr, 8, sr_noise_scheduler(), torch.Generator().manual_seed(0))
    ((x_t, t, lr_in),) = model.calls
    assert x_t.shape == (2, 3, 8, 8) and t.tolist() == [999, 999]
    torch.testing.assert_close(x_t, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(lr_in, lr * 2 - 1)  # the condition enters in [-1, 1]
    torch.testing.assert_close(out, torch.full((2, 3, 8, 8), 0.75))

    class Shift(nn.Module):
        def forward(self, x, lr):
            return x - 0.5

    out = one_step_sr(Recorder(x0), lr, 8, sr_noise_scheduler(), decoder=Shift())
    torch.testing.assert_close(out, torch.full((2, 3, 8, 8), 0.5))


def test_ddim_with_a_constant_prediction_ends_at_it():
    model = Recorder(torch.full((1, 3, 1, 1), -0.2))
    out = ddim_sr(model, torch.rand(1, 3, 2, 2), 4, sr_noise_scheduler(), steps=4)
    assert [int(c[1]) for c in model.calls] == [999, 749, 499, 249]
    torch.testing.assert_close(out, torch.full((1, 3, 4, 4), 0.4))


def test_teacher_target_is_the_detached_x0_prediction():
    torch.manual_seed(0)
    teacher = LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))
    x_t, t, lr = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), torch.rand(2, 3, 4, 4)
    target = teacher_target(teacher, x_t, t, lr)
    torch.testing.assert_close(target, teacher(x_t, t, lr * 2 - 1).sample)
    assert not target.requires_grad


def test_stage_plan_and_bad_scales():
    plan = scale_stages([2, 4, 8])
    assert [(s.kind, s.student_scale, s.teacher_scale) for s in plan] == [
        ("distill", 4, 2),
        ("distill", 8, 4),
        ("decoder", 8, None),
    ]
    assert [s.kind for s in scale_stages((2, 4), decoder_stage=False)] == ["distill"]
    with pytest.raises(ValueError, match="at least one student scale"):
        scale_stages([2])
    with pytest.raises(ValueError, match="increase"):
        scale_stages([4, 2])
    with pytest.raises(ValueError, match="scales"):
        scale_stages([2, 4.0])


def test_refinement_decoder_starts_as_the_identity_and_learns():
    decoder = RefinementDecoder(3, width=8, depth=2)
    x0, lr = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(decoder(x0, lr), x0)
    loss = (decoder(x0, lr) - 1).square().mean()
    loss.backward()
    assert decoder.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="depth"):
        RefinementDecoder(3, depth=0)


def test_denoising_batch_loss_matches_an_independent_computation():
    torch.manual_seed(0)
    model = LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))
    hr = torch.rand(2, 3, 8, 8)
    loss = sr_denoising_batch_loss(model, sr_noise_scheduler(), hr, 2, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (2,), generator=gen)
    eps = torch.randn(2, 3, 8, 8, generator=gen)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float()
    x0 = hr * 2 - 1
    x_t = alpha_bar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * eps
    lr = F.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(bicubic_downsample(hr, 2), lr.clamp(0, 1), atol=1e-5, rtol=0)
    expected = F.mse_loss(model(x_t, t, bicubic_downsample(hr, 2) * 2 - 1).sample, x0)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)


def test_trained_sr_denoiser_trains_once_then_loads(tmp_path):
    def build():
        return LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))

    data = SuperResolutionDataModule(scale=2, hr_size=8, source="digits", batch_size=4, test_size=8)
    first = trained_sr_denoiser(build(), data, steps=3, cache_dir=str(tmp_path))
    again = trained_sr_denoiser(build(), data, steps=3, cache_dir=str(tmp_path))
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert "x2" in first.distill_source and not first.training
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    with pytest.raises(ValueError, match="checkpoint"):
        trained_sr_denoiser(build())
    with pytest.raises(FileNotFoundError):
        trained_sr_denoiser(build(), checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="steps"):
        trained_sr_denoiser(build(), data, steps=0, cache_dir=str(tmp_path))


def test_scale_distillation_loss_is_the_per_image_mse_with_the_target_detached():
    from lightning_distill.losses.super_resolution import scale_distillation_loss

    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 2.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    per_image = scale_distillation_loss(student, target, reduction="none")
    torch.testing.assert_close(per_image, torch.tensor([(0 + 1 + 4 + 9) / 4, 4 / 4]))
    scale_distillation_loss(student, target).backward()
    assert target.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        scale_distillation_loss(student, target[:, :, :1])
