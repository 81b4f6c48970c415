"""ResShift process: schedule, marginal, posterior, samplers against hand computations; features and discriminator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_distill.super_resolution.denoisers import LRConditionedUNet, upsample_to
from lightning_distill.super_resolution.resshift import (
    ResShiftSchedule,
    TimeAwareDiscriminator,
    denoiser_features,
    resshift_sqrt_etas,
    to_signed,
    trained_resshift,
)


def test_schedule_matches_the_exponential_formula_by_hand():
    # T = 15, κ = 2, min_noise_level 0.04, etas_end 0.99, p = 0.3: √η_1 = min(0.04 / 2, 0.04) = 0.02.
    s = resshift_sqrt_etas(15, 2.0, 0.04, 0.99, 0.3)
    increaser = math.exp(math.log(0.99 / 0.02) / 14)
    for i in (0, 1, 7, 14):
        expected = 0.02 * increaser ** ((i / 14) ** 0.3 * 14)
        assert float(s[i]) == pytest.approx(expected, rel=1e-12)
    assert torch.all(s[1:] > s[:-1])


def test_marginal_is_x0_plus_eta_residual_plus_scaled_noise():
    sched = ResShiftSchedule(num_steps=4, kappa=1.5)
    x0, y0, eps = torch.tensor([[[[0.2]]]]), torch.tensor([[[[-0.6]]]]), torch.tensor([[[[1.3]]]])
    t = torch.tensor([2])
    eta = float(sched.etas[2])
    expected = 0.2 + eta * (-0.6 - 0.2) + 1.5 * math.sqrt(eta) * 1.3
    assert float(sched.q_sample(x0, y0, t, eps)) == pytest.approx(expected, rel=1e-6)
    # x_T starts from y_0 and the noise recovered from x0 is the one used
    assert float(sched.prior_sample(y0, eps)) == pytest.approx(
        -0.6 + 1.5 * float(sched.sqrt_etas[-1]) * 1.3, rel=1e-6
    )
    x_t = sched.q_sample(x0, y0, t, eps)
    torch.testing.assert_close(sched.epsilon_from_x0(x_t, x0, y0, t), eps)


def test_posterior_matches_the_gaussian_product_by_hand():
    sched = ResShiftSchedule(num_steps=5, kappa=2.0)
    t = torch.tensor([3])
    eta, eta_prev = float(sched.etas[3]), float(sched.etas[2])
    alpha = eta - eta_prev
    x0, x_t = torch.tensor([[[[0.5]]]]), torch.tensor([[[[0.1]]]])
    mean, var = sched.posterior(x0, x_t, t)
    assert float(mean) == pytest.approx(eta_prev / eta * 0.1 + alpha / eta * 0.5, rel=1e-6)
    assert float(var) == pytest.approx(4.0 * eta_prev / eta * alpha, rel=1e-6)
    # index 0: the posterior collapses onto x_0
    mean0, var0 = sched.posterior(x0, x_t, torch.tensor([0]))
    assert float(mean0) == pytest.approx(0.5) and float(var0) == 0.0


class Oracle(nn.Module):
    """Predicts the true x_0 whatever the input (records the timesteps it saw)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.seen = x0, []

    def forward(self, x_t, t, lr):
        self.seen.append(int(t[0]))
        return self.x0


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampler_with_an_oracle_returns_x0_after_T_steps(sampler):
    sched = ResShiftSchedule()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    lr = torch.rand(2, 3, 4, 4) * 2 - 1
    oracle = Oracle(x0)
    out = sched.sample(
        oracle, lr, torch.randn(2, 3, 8, 8), sampler=sampler, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, x0)
    assert oracle.seen == list(range(14, -1, -1))


def test_ddim_step_with_an_oracle_stays_on_the_marginal_of_the_same_noise():
    sched = ResShiftSchedule()
    x0, y0, eps = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    t = torch.tensor([9])
    x_t = sched.q_sample(x0, y0, t, eps)
    torch.testing.assert_close(sched.ddim_step(x0, x_t, y0, t), sched.q_sample(x0, y0, t - 1, eps))


def test_one_step_sampling_is_the_first_prediction_and_other_counts_are_refused():
    sched = ResShiftSchedule(num_steps=4)
    x0 = torch.zeros(1, 1, 4, 4)
    oracle = Oracle(x0)
    sched.sample(oracle, torch.zeros(1, 1, 2, 2), torch.randn(1, 1, 4, 4), num_steps=1)
    assert oracle.seen == [3]
    with pytest.raises(ValueError, match="num_steps"):
        sched.sample(oracle, torch.zeros(1, 1, 2, 2), torch.randn(1, 1, 4, 4), num_steps=2)
    with pytest.raises(ValueError, match="sampler"):
        sched.sample(oracle, torch.zeros(1, 1, 2, 2), torch.randn(1, 1, 4, 4), sampler="euler")


def test_input_is_normalised_by_the_marginal_std():
    sched = ResShiftSchedule()
    x = torch.ones(1, 1, 1, 1)
    t = torch.tensor([5])
    assert float(sched.scale_input(x, t)) == pytest.approx(
        1 / math.sqrt(4 * float(sched.etas[5]) + 1), rel=1e-6
    )
    assert float(ResShiftSchedule(normalize_input=False).scale_input(x, t)) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_steps": 1}, "num_steps"), ({"kappa": 0.0}, "kappa"), ({"etas_end": 1.5}, "etas_end")],
)
def test_bad_schedule_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResShiftSchedule(**kwargs)


def test_features_keep_the_graph_and_the_hook_is_removed():
    model = LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    feats = denoiser_features(model, "unet.mid_block", x, torch.tensor([0, 3]), torch.rand(2, 3, 4, 4))
    assert feats.shape[:2] == (2, 16)
    feats.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not model.unet.mid_block._forward_hooks
    with pytest.raises(ValueError, match="not a submodule"):
        denoiser_features(model, "unet.nowhere", x, torch.tensor([0, 3]), torch.rand(2, 3, 4, 4))


def test_discriminator_logit_depends_on_the_timestep():
    torch.manual_seed(0)
    d = TimeAwareDiscriminator(8, num_steps=15)
    f = torch.randn(1, 8, 4, 4).expand(2, -1, -1, -1)
    logits = d(f, torch.tensor([0, 9]))
    assert logits.shape == (2,) and logits[0] != logits[1]
    with pytest.raises(ValueError, match="features"):
        d(torch.randn(2, 4, 4, 4), torch.tensor([0, 1]))


def test_trained_resshift_needs_data_or_a_checkpoint():
    with pytest.raises(ValueError, match="checkpoint"):
        trained_resshift(LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16)))
    with pytest.raises(TypeError, match="ResShiftSchedule"):
        trained_resshift(nn.Linear(1, 1), schedule="ddpm")


def test_signed_range_and_upsampled_condition():
    lr = torch.rand(1, 3, 4, 4)
    assert to_signed(lr).min() >= -1 and to_signed(lr).max() <= 1
    assert upsample_to(to_signed(lr), 8).shape == (1, 3, 8, 8)


@pytest.mark.filterwarnings(
    "ignore:.*validation PSNR"
)  # 3 steps: the teacher is flagged as broken, on purpose
def test_trained_resshift_trains_once_then_loads_from_the_cache(tmp_path):
    from lightning_distill.data.super_resolution import SuperResolutionDataModule

    data = SuperResolutionDataModule(scale=2, hr_size=8, source="digits", batch_size=4)
    sched = ResShiftSchedule(num_steps=4)

    def build():
        return LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))

    first = trained_resshift(build(), data, schedule=sched, steps=3, cache_dir=str(tmp_path))
    second = trained_resshift(build(), data, schedule=sched, steps=3, cache_dir=str(tmp_path))
    assert first.training_record["steps"] == 3 and first.training_record["num_steps"] == 4
    assert not first.training and "trained ResShift teacher" in second.distill_source
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
