"""Tests for ``lightning_distill.losses.distribution_matching`` against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.distribution_matching import (
    denoising_loss,
    dmd_gradient,
    gan_discriminator_loss,
    gan_generator_loss,
    pseudo_target_loss,
    vsd_gradient,
)


def _tensors(seed: int, n: int = 3, shape: tuple[int, ...] = (4, 2, 3, 3)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_dmd_gradient_matches_a_per_sample_loop() -> None:
    fake, real, x0 = _tensors(0)
    g = dmd_gradient(fake, real, x0)
    for b in range(x0.shape[0]):
        normaliser = (
            sum(abs(a - r) for a, r in zip(x0[b].flatten().tolist(), real[b].flatten().tolist()))
            / x0[b].numel()
        )
        assert_close(g[b], (fake[b] - real[b]) / normaliser)
    assert_close(dmd_gradient(fake, real, x0, normalise=False), fake - real)


def test_dmd_gradient_equals_the_official_expression() -> None:
    # DMD2 sd_guidance.py: p_real = x - x_real; p_fake = x - x_fake; grad = (p_real - p_fake) / |p_real|.mean(...)
    fake, real, x0 = _tensors(1)
    p_real, p_fake = x0 - real, x0 - fake
    official = (p_real - p_fake) / p_real.abs().mean(dim=[1, 2, 3], keepdim=True)
    assert_close(dmd_gradient(fake, real, x0), official)


def test_dmd_gradient_is_zero_when_fake_equals_real_and_scales_inversely_with_the_normaliser() -> None:
    fake, real, x0 = _tensors(2)
    assert torch.count_nonzero(dmd_gradient(real.clone(), real, x0)) == 0
    g = dmd_gradient(fake, real, x0)
    g_far = dmd_gradient(
        fake, real, real + 4.0 * (x0 - real)
    )  # 4x the teacher's error: a quarter of the step
    assert_close(g_far, g / 4.0)
    assert_close(
        dmd_gradient(fake, real, x0, eps=1.0),
        (fake - real) / ((x0 - real).abs().mean((1, 2, 3), keepdim=True) + 1),
    )


def test_dmd_gradient_nan_guard_gives_zero_not_nan_or_inf() -> None:
    fake, real, x0 = _tensors(3)
    x0[1] = real[1]  # sample 1 equals the teacher's estimate: 0/0 where fake == real, x/0 elsewhere
    fake[1, 0] = real[1, 0]
    g = dmd_gradient(fake, real, x0)
    assert torch.isfinite(g).all()
    assert torch.count_nonzero(g[1]) == 0
    assert_close(g[[0, 2, 3]], dmd_gradient(fake[[0, 2, 3]], real[[0, 2, 3]], x0[[0, 2, 3]]))
    assert dmd_gradient(fake, real, x0).requires_grad is False


def test_pseudo_target_loss_gradient_is_g_via_an_independent_expression() -> None:
    x, g, _ = _tensors(4)
    x.requires_grad_(True)
    # Independent: autograd of 1/2 ||x - sg(x - g)||^2 summed over everything.
    reference = 0.5 * ((x - (x - g).detach()) ** 2).sum()
    (grad_reference,) = torch.autograd.grad(reference, x)
    assert_close(grad_reference, g)
    (grad_mean,) = torch.autograd.grad(pseudo_target_loss(x, g), x)
    assert_close(grad_mean * x.numel(), g)
    (grad_sum,) = torch.autograd.grad(pseudo_target_loss(x, g, reduction="sum"), x)
    assert_close(grad_sum * x[0].numel(), g)


def test_pseudo_target_loss_values_and_the_official_form() -> None:
    x, g, _ = _tensors(5)
    official = 0.5 * F.mse_loss(x.float(), (x - g).detach().float(), reduction="mean")
    assert_close(pseudo_target_loss(x, g), official)
    assert_close(pseudo_target_loss(x, g, reduction="none"), 0.5 * g.square().mean(dim=(1, 2, 3)))
    assert_close(pseudo_target_loss(x, g, reduction="sum"), 0.5 * g.square().mean(dim=(1, 2, 3)).sum())


def test_pseudo_target_loss_is_fp32_for_bf16_inputs_and_the_gradient_reaches_x() -> None:
    x, g, _ = _tensors(6)
    x16 = x.bfloat16().requires_grad_(True)
    loss = pseudo_target_loss(x16, g.bfloat16())
    assert loss.dtype == torch.float32
    loss.backward()
    assert x16.grad is not None and x16.grad.dtype == torch.bfloat16


def test_vsd_gradient_is_sigma_squared_times_eps_difference_and_matches_dmd_with_sigma_over_alpha() -> None:
    schedule = NoiseSchedule.ddpm()
    eps_real, eps_fake, x_t = _tensors(7)
    t = torch.tensor([20, 300, 600, 980])
    alpha, sigma = schedule.alpha_sigma(t)
    w = sigma**2
    assert_close(vsd_gradient(eps_real, eps_fake, w), w[:, None, None, None] * (eps_real - eps_fake))
    # In x0 space the same direction: with w = sigma / alpha it is the unnormalised DMD gradient.
    x0_real, x0_fake = schedule.to_x0(eps_real, x_t, t), schedule.to_x0(eps_fake, x_t, t)
    assert_close(
        vsd_gradient(eps_real, eps_fake, sigma / alpha),
        dmd_gradient(x0_fake, x0_real, x_t, normalise=False),
        atol=1e-4,
        rtol=1e-4,
    )
    nan = eps_real.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert torch.isfinite(vsd_gradient(nan, eps_fake, 1.0)).all()
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        vsd_gradient(eps_real, eps_fake, torch.ones(3))


def test_denoising_loss_weighting_and_reductions() -> None:
    pred, target, _ = _tensors(8)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert_close(denoising_loss(pred, target, reduction="none"), per_sample)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5])
    assert_close(denoising_loss(pred, target, weighting=w), (w * per_sample).mean())
    # SwiftBrush's LoRA loss: mse(alpha * pred, alpha * target) is weighting alpha^2.
    alpha = torch.tensor([0.9, 0.5, 0.2, 0.1])
    swiftbrush = F.mse_loss(alpha[:, None, None, None] * pred, alpha[:, None, None, None] * target)
    assert_close(denoising_loss(pred, target, weighting=alpha**2), swiftbrush)
    target.requires_grad_(True)
    denoising_loss(pred.requires_grad_(True), target).backward()
    assert target.grad is None and pred.grad is not None


def test_gan_losses_match_log_sigmoid_formulas() -> None:
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([0.3, -2.0])
    sig = torch.sigmoid
    assert_close(gan_generator_loss(fake), -torch.log(sig(fake)).mean())
    expected = -torch.log(sig(real)).mean() - torch.log(1 - sig(fake)).mean()
    assert_close(gan_discriminator_loss(real, fake), expected)
    assert_close(gan_generator_loss(fake[:, None]), gan_generator_loss(fake))  # (B, 1) logits
    assert_close(
        gan_discriminator_loss(real[:2], fake, reduction="none"),
        -torch.log(sig(real[:2])) - torch.log(1 - sig(fake)),
    )
    assert math.isclose(
        gan_generator_loss(torch.zeros(4), reduction="sum").item(), 4 * math.log(2), rel_tol=1e-6
    )
    with pytest.raises(ValueError, match="same batch size"):
        gan_discriminator_loss(real, fake, reduction="none")


def test_shape_and_type_errors() -> None:
    a, b, c = _tensors(9)
    with pytest.raises(ValueError, match="same shape"):
        dmd_gradient(a, b[:2], c)
    with pytest.raises(ValueError, match="same shape"):
        pseudo_target_loss(a, b[:, :1])
    with pytest.raises(ValueError, match="`reduction`"):
        pseudo_target_loss(a, b, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        gan_generator_loss(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`eps`"):
        dmd_gradient(a, b, c, eps=-1.0)
