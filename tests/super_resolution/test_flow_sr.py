"""The rectified-flow SR process (OFTSR stage 1): start point, path, velocity, solvers, loss, teacher cache."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.losses.super_resolution import flow_velocity_l1_loss
from lightning_distill.super_resolution.denoisers import LRConditionedUNet
from lightning_distill.super_resolution.flow_sr import (
    FLOW_EPS,
    TIME_SCALE,
    bootstrap_velocity_target,
    euler_step,
    flow_interpolate,
    flow_sample,
    flow_start,
    flow_velocity,
    flow_velocity_target,
    one_step_sr,
    rk2_step,
    to_signed,
    to_unit,
    trained_flow_sr,
)


class LinearField(torch.nn.Module):
    """``v(x, t) = a·x + b`` whatever the time and the LR image: an ODE with a closed-form solution."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.seen_t: list[torch.Tensor] = []

    def forward(self, x, t, lr):
        self.seen_t.append(t)
        return self.a * x + self.b


def test_start_point_is_the_vp_perturbed_bicubic_upsample():
    lr = torch.tensor([[[[-1.0, 1.0], [0.5, 0.0]]]])
    gen = torch.Generator().manual_seed(3)
    x0 = flow_start(lr, 4, 0.6, gen)
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    up = torch.nn.functional.interpolate(lr, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(x0, 0.8 * up + 0.6 * noise)
    torch.testing.assert_close(flow_start(lr, 4, 0.0), up)


def test_interpolation_and_velocity_match_a_hand_computation():
    x0 = torch.tensor([[[[0.0, 2.0]]], [[[1.0, -1.0]]]])
    x1 = torch.tensor([[[[1.0, 0.0]]], [[[3.0, 1.0]]]])
    t = torch.tensor([0.25, 0.5])
    expected = torch.tensor([[[[0.25, 1.5]]], [[[2.0, 0.0]]]])  # t x1 + (1 - t) x0
    torch.testing.assert_close(flow_interpolate(x0, x1, t), expected)
    torch.testing.assert_close(flow_velocity_target(x0, x1), torch.tensor([[[[1.0, -2.0]]], [[[2.0, 2.0]]]]))
    torch.testing.assert_close(flow_interpolate(x0, x1, 0.0), x0)  # t = 0: the LR end
    torch.testing.assert_close(flow_interpolate(x0, x1, 1.0), x1)  # t = 1: the HR end
    # moving along the velocity for the remaining time lands on x1
    torch.testing.assert_close(flow_interpolate(x0, x1, t) + (1 - t).view(-1, 1, 1, 1) * (x1 - x0), x1)


def test_network_sees_the_time_times_999():
    field = LinearField(0.0, 1.0)
    flow_velocity(field, torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 1.0]), torch.zeros(2, 1, 1, 1))
    torch.testing.assert_close(field.seen_t[0], torch.tensor([0.5, 1.0]) * TIME_SCALE)


def test_rk2_step_matches_the_closed_form_on_a_linear_field():
    a, b, dt = 0.7, 0.3, 0.2
    x = torch.tensor([1.0, -2.0, 0.5])

    def field(y, t):
        return a * y + b

    # RK2 on dx/dt = a x + b is exact up to second order: x + dt (a x + b)(1 + a dt / 2), for any r
    expected = x + dt * (a * x + b) * (1 + a * dt / 2)
    for r in (0.5, 2 / 3, 1.0):
        torch.testing.assert_close(rk2_step(field, x, 0.0, dt, r), expected)
    torch.testing.assert_close(euler_step(field, x, 0.0, dt), x + dt * (a * x + b))
    # many small steps converge to the exact solution x(T) = (x + b/a) e^{aT} − b/a
    exact = (x + b / a) * math.exp(a * 1.0) - b / a
    y = x
    for k in range(50):
        y = rk2_step(field, y, k / 50, 1 / 50)
    torch.testing.assert_close(y, exact, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="`r`"):
        rk2_step(field, x, 0.0, dt, 0.0)


def test_flow_sample_integrates_from_eps_to_one():
    field = LinearField(0.0, 2.0)  # constant velocity 2: x(1) = x(ε) + 2 (1 − ε)
    x0 = torch.zeros(1, 1, 2, 2)
    for solver in ("euler", "rk2"):
        out = flow_sample(field, torch.zeros(1, 1, 1, 1), x0, steps=4, solver=solver)
        torch.testing.assert_close(out, torch.full_like(x0, 2 * (1 - FLOW_EPS)))
    torch.testing.assert_close(one_step_sr(field, torch.zeros(1, 1, 1, 1), x0, 0.5), x0 + 2 * (1 - FLOW_EPS))
    with pytest.raises(ValueError, match="`solver`"):
        flow_sample(field, torch.zeros(1, 1, 1, 1), x0, steps=2, solver="rk4")
    with pytest.raises(ValueError, match="`steps`"):
        flow_sample(field, torch.zeros(1, 1, 1, 1), x0, steps=0)


def test_bootstrap_target_reaches_the_teacher_rk2_point_from_x0():
    field = LinearField(0.5, 0.1)
    x0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    x_t = x0 + 0.3
    t = torch.tensor([0.2, 0.6])
    target, k1 = bootstrap_velocity_target(field, torch.zeros(2, 1, 1, 1), x0, x_t, t, 0.05, 0.5)
    x_next = x_t + 0.05 * (0.5 * x_t + 0.1) * (1 + 0.5 * 0.05 / 2)
    torch.testing.assert_close(x0 + (t + 0.05).view(-1, 1, 1, 1) * target, x_next)
    torch.testing.assert_close(k1, 0.5 * x_t + 0.1)


def test_velocity_l1_loss_matches_a_hand_computation_and_detaches_the_target():
    v = torch.tensor([[[[1.0, -1.0]]], [[[0.0, 2.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 0.0]]]], requires_grad=True)
    loss = flow_velocity_l1_loss(v, target, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([1.5, 1.0]))
    loss.sum().backward()
    assert target.grad is None and v.grad is not None
    with pytest.raises(ValueError):
        flow_velocity_l1_loss(v, target[:1])


def test_signed_and_unit_ranges_round_trip():
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(to_unit(to_signed(x)), x)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="sigma_p"):
        flow_start(torch.zeros(1, 1, 2, 2), 4, 1.5)
    with pytest.raises(ValueError, match="checkpoint"):
        trained_flow_sr(LRConditionedUNet.tiny(sample_size=8, block_out_channels=(8, 16)))
    data = SuperResolutionDataModule(scale=2, hr_size=8, source="digits", batch_size=4)
    with pytest.raises(ValueError, match="ema_decay"):
        trained_flow_sr(
            LRConditionedUNet.tiny(sample_size=8, block_out_channels=(8, 16)), data, ema_decay=1.0
        )


def test_teacher_trains_once_and_loads_from_the_cache(tmp_path):
    data = SuperResolutionDataModule(scale=2, hr_size=8, source="digits", batch_size=8)

    def build():
        return LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))

    kwargs = dict(steps=6, lr=1e-3, warmup=2, ema_decay=0.5, cache_dir=str(tmp_path))
    first = trained_flow_sr(build(), data, **kwargs)
    second = trained_flow_sr(build(), data, **kwargs)
    assert first.flow_sigma_p == 0.2 and not first.training
    assert "trained_flow_sr cache" in second.distill_source
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    assert math.isfinite(second.training_record["last_loss"])
