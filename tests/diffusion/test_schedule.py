"""Tests for ``lightning_distill.diffusion.schedule``: α/σ lookup, noising, parameterisation algebra."""

from __future__ import annotations

import itertools
import pickle

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from torch.testing import assert_close

from lightning_distill.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule, broadcast_to


def _data(seed: int = 0, shape: tuple[int, ...] = (5, 3, 4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _hand_target(kind: str, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    a, s = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0, "flow": eps - x0}[kind]


VP_T = torch.tensor([0, 1, 250, 500, 998])
FLOW_T = torch.tensor([0.0, 10.0, 333.3, 900.0, 1000.0])


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_alpha_sigma_equals_alphas_cumprod_lookup(beta_schedule: str) -> None:
    schedule = NoiseSchedule.ddpm(num_train_timesteps=1000, beta_schedule=beta_schedule)
    t = torch.tensor([[0, 17], [500, 999]])
    alpha, sigma = schedule.alpha_sigma(t)
    abar = schedule.scheduler.alphas_cumprod
    assert alpha.shape == t.shape and alpha.dtype == torch.float32
    assert_close(alpha, abar[t].sqrt())
    assert_close(sigma, (1 - abar[t]).sqrt())


def test_ddpm_constructor_uses_the_standard_betas_of_each_schedule() -> None:
    sd = NoiseSchedule.ddpm(beta_schedule="scaled_linear").scheduler
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert_close(sd.alphas_cumprod, reference.alphas_cumprod)
    linear = NoiseSchedule.ddpm(beta_schedule="linear").scheduler
    assert_close(linear.alphas_cumprod, DDPMScheduler(beta_schedule="linear").alphas_cumprod)
    assert sd.config.clip_sample is False and sd.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_from_diffusers_reads_alphas_cumprod_and_prediction_type(scheduler_cls: type) -> None:
    scheduler = scheduler_cls(beta_schedule="scaled_linear", prediction_type="v_prediction")
    schedule = NoiseSchedule.from_diffusers(scheduler)
    assert (schedule.kind, schedule.prediction_type, schedule.num_train_timesteps) == (
        "vp",
        "v_prediction",
        1000,
    )
    alpha, sigma = schedule.alpha_sigma(VP_T)
    assert_close(alpha**2, scheduler.alphas_cumprod[VP_T])
    assert_close(sigma**2, 1 - scheduler.alphas_cumprod[VP_T])


def test_float_timesteps_interpolate_alphas_cumprod_linearly() -> None:
    schedule = NoiseSchedule.ddpm(beta_schedule="linear")
    abar = schedule.scheduler.alphas_cumprod
    alpha_int, _ = schedule.alpha_sigma(torch.tensor([3, 700]))
    alpha_float, _ = schedule.alpha_sigma(torch.tensor([3.0, 700.0]))
    assert_close(alpha_float, alpha_int)
    alpha_mid, sigma_mid = schedule.alpha_sigma(torch.tensor([10.25]))
    expected = 0.75 * abar[10] + 0.25 * abar[11]
    assert_close(alpha_mid**2, expected.reshape(1))
    assert_close(sigma_mid**2, 1 - expected.reshape(1))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_alpha_sigma_is_t_over_T_and_agrees_with_the_scheduler_sigmas(shift: float) -> None:
    schedule = NoiseSchedule.flow(num_train_timesteps=1000, shift=shift)
    scheduler = schedule.scheduler
    alpha, sigma = schedule.alpha_sigma(scheduler.timesteps)
    assert_close(sigma, scheduler.sigmas[: len(scheduler.timesteps)])
    assert_close(alpha, 1 - sigma)
    assert schedule.kind == "flow" and schedule.prediction_type == "flow" and schedule.max_timestep == 1000


def test_alpha_sigma_accepts_numbers_and_keeps_device_and_shape() -> None:
    schedule = NoiseSchedule.ddpm()
    alpha, sigma = schedule.alpha_sigma(999)
    assert alpha.shape == () and alpha.device.type == "cpu"
    assert schedule.max_timestep == 999


def test_add_noise_equals_ddpm_scheduler_add_noise() -> None:
    schedule = NoiseSchedule.ddpm(beta_schedule="scaled_linear")
    x0, eps = _data()
    assert_close(
        schedule.add_noise(x0, eps, VP_T), schedule.scheduler.add_noise(x0, eps, VP_T), rtol=0, atol=1e-6
    )


def test_add_noise_equals_flow_scale_noise() -> None:
    schedule = NoiseSchedule.flow(shift=3.0)
    x0, eps = _data()
    t = schedule.scheduler.timesteps[[0, 10, 400, 800, 999]]
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0).scale_noise(x0, t, eps)
    assert_close(schedule.add_noise(x0, eps, t), reference)


def test_add_noise_returns_the_dtype_of_x0() -> None:
    schedule = NoiseSchedule.ddpm()
    x0, eps = _data()
    out = schedule.add_noise(x0.bfloat16(), eps.bfloat16(), VP_T)
    assert out.dtype == torch.bfloat16
    assert_close(
        out.float(),
        schedule.add_noise(x0.bfloat16().float(), eps.bfloat16().float(), VP_T),
        atol=2e-2,
        rtol=0,
    )


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_target_matches_hand_formulas(kind: str, prediction_type: str) -> None:
    schedule = NoiseSchedule.ddpm() if kind == "vp" else NoiseSchedule.flow()
    t = VP_T if kind == "vp" else FLOW_T
    x0, eps = _data(1)
    alpha, sigma = schedule.alpha_sigma(t)
    expected = _hand_target(prediction_type, x0, eps, alpha, sigma)
    assert_close(schedule.target(x0, eps, t, prediction_type), expected)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(PREDICTION_TYPES, 2)))
def test_convert_between_every_pair_matches_hand_formulas(kind: str, source: str, target: str) -> None:
    schedule = NoiseSchedule.ddpm(beta_schedule="linear") if kind == "vp" else NoiseSchedule.flow()
    # Timesteps where every conversion is defined (alpha > 0 and sigma > 0).
    t = (
        torch.tensor([1, 100, 500, 900, 990])
        if kind == "vp"
        else torch.tensor([1.0, 100.0, 500.0, 900.0, 990.0])
    )
    x0, eps = _data(2)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = alpha.reshape(-1, 1, 1, 1) * x0 + sigma.reshape(-1, 1, 1, 1) * eps
    output = _hand_target(source, x0, eps, alpha, sigma)
    converted = schedule.convert(output, x_t, t, source=source, target=target)
    assert_close(converted, _hand_target(target, x0, eps, alpha, sigma), atol=2e-4, rtol=1e-4)


def test_round_trip_x0_eps_v_flow_x0() -> None:
    schedule = NoiseSchedule.ddpm(prediction_type="v_prediction")
    x0, eps = _data(3)
    t = torch.tensor([5, 50, 500, 700, 950])
    x_t = schedule.add_noise(x0, eps, t)
    out = x0
    for source, target in [
        ("sample", "epsilon"),
        ("epsilon", "v_prediction"),
        ("v_prediction", "flow"),
        ("flow", "sample"),
    ]:
        out = schedule.convert(out, x_t, t, source=source, target=target)
    assert_close(out, x0, atol=1e-4, rtol=1e-4)
    # Defaults: the schedule's own parameterisation.
    v = schedule.target(x0, eps, t)
    assert_close(schedule.to_x0(v, x_t, t), x0, atol=1e-5, rtol=1e-5)
    assert_close(schedule.to_eps(v, x_t, t), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_to_x0_matches_diffusers_ddim_pred_original_sample(prediction_type: str) -> None:
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", prediction_type=prediction_type, clip_sample=False
    )
    scheduler.set_timesteps(10)
    schedule = NoiseSchedule.from_diffusers(scheduler)
    x_t, output = _data(4, (2, 3, 4, 4))
    for t in scheduler.timesteps[[0, 5]]:
        reference = scheduler.step(output, t, x_t).pred_original_sample
        assert_close(schedule.to_x0(output, x_t, t), reference, atol=1e-5, rtol=1e-5)


def test_snr_is_alpha_squared_over_sigma_squared() -> None:
    schedule = NoiseSchedule.ddpm()
    abar = schedule.scheduler.alphas_cumprod[VP_T]
    assert_close(schedule.snr(VP_T), abar / (1 - abar))


def test_conversions_return_float32_for_half_inputs() -> None:
    schedule = NoiseSchedule.ddpm()
    x0, eps = _data()
    assert schedule.to_x0(eps.bfloat16(), x0.bfloat16(), VP_T).dtype == torch.float32


def test_broadcast_to_reshapes_per_sample_coefficients() -> None:
    assert broadcast_to(torch.ones(4), torch.zeros(4, 2, 3)).shape == (4, 1, 1)
    assert broadcast_to(torch.tensor(2.0), torch.zeros(4, 2)).shape == ()
    with pytest.raises(ValueError, match=r"shape \(B,\) with B = 4"):
        broadcast_to(torch.ones(3), torch.zeros(4, 2))


def test_sampling_scheduler_is_a_fresh_copy() -> None:
    schedule = NoiseSchedule.ddpm()
    sampler = schedule.sampling_scheduler()
    sampler.set_timesteps(4)
    assert isinstance(sampler, DDIMScheduler)
    assert len(schedule.scheduler.timesteps) == 1000
    assert_close(sampler.alphas_cumprod, schedule.scheduler.alphas_cumprod)
    assert sampler.config.prediction_type == schedule.prediction_type
    assert sampler.timesteps.tolist() == [999, 749, 499, 249]


def test_schedule_pickles() -> None:
    schedule = NoiseSchedule.ddpm()
    schedule.alpha_sigma(torch.tensor([1]))
    clone = pickle.loads(pickle.dumps(schedule))
    assert_close(clone.alpha_sigma(VP_T), schedule.alpha_sigma(VP_T))


def test_bad_inputs_raise_with_clear_messages() -> None:
    vp, flow = NoiseSchedule.ddpm(), NoiseSchedule.flow()
    x0, eps = _data()
    with pytest.raises(ValueError, match=r"integer indices in \[0, 1000\)"):
        vp.alpha_sigma(torch.tensor([1000]))
    with pytest.raises(ValueError, match=r"\[0, 1000\]"):
        flow.alpha_sigma(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="same shape"):
        vp.add_noise(x0, eps[:2], VP_T)
    with pytest.raises(ValueError, match="Per-sample coefficients"):
        vp.add_noise(x0, eps, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="`target` must be one of"):
        vp.convert(x0, eps, VP_T, target="score")
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        NoiseSchedule.ddpm(prediction_type="flow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`beta_schedule`"):
        NoiseSchedule.ddpm(beta_schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="diffusers scheduler"):
        NoiseSchedule(object())  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match="flow schedule"):
        flow.alphas_cumprod  # noqa: B018
    with pytest.raises(TypeError, match="Timesteps must be"):
        vp.alpha_sigma("10")  # type: ignore[arg-type]
