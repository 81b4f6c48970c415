"""Tests for ``lightning_distill.diffusion.export``: save → load → the same samples, with our sampler and diffusers'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchLCMScheduler, LCMScheduler, UNet2DConditionModel, UNet2DModel
from torch.testing import assert_close

from lightning_distill.diffusion.denoisers import MLPDenoiser, tiny_unet
from lightning_distill.diffusion.export import load_student, sample_from_pretrained, save_student
from lightning_distill.diffusion.sampling import few_step_sample
from lightning_distill.diffusion.schedule import NoiseSchedule

TIMESTEPS = (999, 749, 499, 249)


def _diffusers_loop(path: Path, scheduler_cls, noise, timesteps, seed, cond=None):
    """Sampling with diffusers alone, as the export module docstring tells a user to."""
    model_cls = UNet2DConditionModel if cond is not None else UNet2DModel
    unet = model_cls.from_pretrained(path, subfolder="unet").eval()
    scheduler = scheduler_cls.from_pretrained(path, subfolder="scheduler")
    scheduler.set_timesteps(timesteps=list(timesteps))
    g = torch.Generator().manual_seed(seed)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t, cond).sample if cond is not None else unet(x, t).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_vp_student_round_trips_and_diffusers_lcm_samples_it_identically(
    tmp_path: Path, prediction_type: str
) -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm(prediction_type=prediction_type)
    student = tiny_unet(sample_size=8, in_channels=1).eval()
    noise = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = few_step_sample(
            student, schedule, noise, TIMESTEPS, generator=torch.Generator().manual_seed(3)
        )
    save_student(tmp_path, student, schedule, TIMESTEPS)
    meta = json.loads((tmp_path / "distillation.json").read_text())
    assert meta["timesteps"] == list(TIMESTEPS) and meta["prediction_type"] == prediction_type
    loaded = load_student(tmp_path)
    assert loaded.timesteps == TIMESTEPS and loaded.schedule.prediction_type == prediction_type
    assert_close(loaded.schedule.alpha_sigma(torch.arange(1000)), schedule.alpha_sigma(torch.arange(1000)))
    got = sample_from_pretrained(tmp_path, noise, generator=torch.Generator().manual_seed(3))
    assert_close(got, expected, atol=1e-6, rtol=1e-6)
    diffusers_samples = _diffusers_loop(tmp_path, LCMScheduler, noise, TIMESTEPS, seed=3)
    assert_close(diffusers_samples, expected, atol=1e-5, rtol=1e-5)


def test_text_conditioned_one_step_student_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    student = tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16).eval()
    noise, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    with torch.no_grad():
        expected = few_step_sample(student, schedule, noise, (999,), emb)
    save_student(tmp_path / "student", student, schedule, (999,))
    assert_close(sample_from_pretrained(tmp_path / "student", noise, emb), expected, atol=1e-6, rtol=1e-6)
    assert_close(
        _diffusers_loop(tmp_path / "student", LCMScheduler, noise, (999,), 0, emb),
        expected,
        atol=1e-5,
        rtol=1e-5,
    )


def test_flow_student_round_trips_with_flow_match_lcm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.flow(shift=3.0)
    student = tiny_unet(sample_size=8, in_channels=1).eval()
    noise = torch.randn(2, 1, 8, 8)
    timesteps = (1000.0, 750.0, 500.0)
    with torch.no_grad():
        expected = few_step_sample(
            student, schedule, noise, timesteps, generator=torch.Generator().manual_seed(1)
        )
    save_student(tmp_path, student, schedule, timesteps)
    assert_close(
        sample_from_pretrained(tmp_path, noise, generator=torch.Generator().manual_seed(1)), expected
    )
    diffusers_samples = _diffusers_loop(tmp_path, FlowMatchLCMScheduler, noise, timesteps, seed=1)
    assert_close(diffusers_samples, expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_what_diffusers_cannot_load_or_step(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Lightning checkpoint is the artifact"):
        save_student(tmp_path, MLPDenoiser(), NoiseSchedule.ddpm(), TIMESTEPS)
    with pytest.raises(ValueError, match="must predict the velocity"):
        save_student(tmp_path, tiny_unet(), NoiseSchedule.flow(), (1000.0,), prediction_type="sample")
    with pytest.raises(ValueError, match="strictly decreasing"):
        save_student(tmp_path, tiny_unet(), NoiseSchedule.ddpm(), (249, 999))
    with pytest.raises(FileNotFoundError, match="distillation.json"):
        load_student(tmp_path / "missing")
