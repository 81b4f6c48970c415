"""Mixture metrics against hand-made samples: mode coverage/TV, thresholds, floors; the Metric classes equal the functions."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lightning_distill.diffusion.distances import RBFMMD, SlicedWasserstein, random_projections
from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.metrics import (
    ModeCoverage,
    ModeWeightTV,
    default_mode_threshold,
    mode_assignment,
    mode_coverage,
    mode_weight_tv,
    noise_floor,
    rbf_mmd2,
    sliced_wasserstein,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Mode metrics
# ----------------------------------------------------------------------------------------------
def test_mode_coverage_and_tv_on_hand_made_samples() -> None:
    gmm = GaussianMixture.ring(k=4, radius=4.0, std=0.25, weights=[0.4, 0.3, 0.2, 0.1])
    means = gmm.means.float()
    off = torch.zeros(1, 2)  # the centre: 16 std from every mode
    near = means[2] + torch.tensor([0.5, 0.0])  # 2 std from mode 2: within the threshold
    x = torch.cat([means[0].repeat(4, 1), means[1].repeat(3, 1), near[None], off, off])  # 10 points
    assert mode_assignment(x, gmm).tolist() == [0] * 4 + [1] * 3 + [2, 4, 4]
    assert float(mode_coverage(x, gmm)) == 0.75  # mode 3 is missing
    # min_fraction 0.5: mode 2 needs ceil(0.5 * 10 * 0.2) = 1 point (has 1), mode 1 needs 2 (has 3).
    assert float(mode_coverage(x, gmm, min_fraction=0.5)) == 0.75
    # min_fraction 1.0: modes need 4, 3, 2, 1 points: only modes 0 and 1 have enough.
    assert float(mode_coverage(x, gmm, min_fraction=1.0)) == 0.5
    # shares (0.4, 0.3, 0.1, 0.0 | off 0.2) against (0.4, 0.3, 0.2, 0.1 | 0): TV = (0.1 + 0.1 + 0.2) / 2.
    assert_close(float(mode_weight_tv(x, gmm)), 0.2)
    # A tighter threshold (1.5 std) sends the point 2 std away off-mode as well.
    assert_close(float(mode_weight_tv(x, gmm, threshold_std=1.5)), 0.3)
    assert float(mode_weight_tv(gmm.means[[0, 0, 0, 0, 1, 1, 1, 2, 2, 3]].float(), gmm)) == pytest.approx(0.0)


def test_default_threshold_keeps_the_same_mass_in_any_dimension() -> None:
    for dim in (1, 2, 8):
        gmm = GaussianMixture.blobs(dim=dim, k=1, seed=dim)
        x = gmm.sample(40000, gen(dim))
        inside = (mode_assignment(x, gmm) == 0).double().mean()
        assert_close(float(inside), 0.9973, atol=0.002, rtol=0)
    assert default_mode_threshold(1) == pytest.approx(3.0, abs=1e-3)


def test_noise_floor_is_the_metric_between_two_data_samples() -> None:
    gmm = GaussianMixture.grid(size=3)
    floor = noise_floor(sliced_wasserstein, gmm, 300, seeds=(4, 5))
    g = gen(4)
    x, y = gmm.sample(300, g), gmm.sample(300, g)
    assert floor.shape == (2,)
    assert float(floor[0]) == float(sliced_wasserstein(x, y))
    tv_floor = noise_floor(lambda a, _: mode_weight_tv(a, gmm), gmm, 300, seeds=(4,))
    assert float(tv_floor[0]) == float(mode_weight_tv(x, gmm))
    # It shrinks with the sample size, as a floor should.
    assert noise_floor(sliced_wasserstein, gmm, 3000).mean() < floor.mean()


# ----------------------------------------------------------------------------------------------
# Metric classes equal the functions (and their states merge as DDP would)
# ----------------------------------------------------------------------------------------------
def test_metric_classes_equal_the_functions_and_merge_like_ddp() -> None:
    gmm = GaussianMixture.ring(k=6)
    real = gmm.sample(400, gen(20))
    fake = GaussianMixture.ring(k=6, std=0.4).sample(300, gen(21))
    expected = {
        "swd": sliced_wasserstein(real, fake, projections=random_projections(128, 2, gen(3))),
        "mmd": rbf_mmd2(real, fake, [1.0]),
        "coverage": mode_coverage(fake, gmm, min_fraction=0.3),
        "tv": mode_weight_tv(fake, gmm),
    }

    def make():
        return {
            "swd": SlicedWasserstein(num_projections=128, seed=3),
            "mmd": RBFMMD(bandwidths=[1.0]),
            "coverage": ModeCoverage(gmm, min_fraction=0.3),
            "tv": ModeWeightTV(gmm),
        }

    def feed(metrics, real_part, fake_part):
        for name, metric in metrics.items():
            if name in ("swd", "mmd"):
                metric.update(real_part, real=True)
                metric.update(fake_part, real=False)
            else:
                metric.update(fake_part)

    whole = make()
    feed(whole, real[:250], fake[:100])
    feed(whole, real[250:], fake[100:])
    # Two "ranks" with half the data each, then a merge through the states' reduce functions.
    rank0, rank1 = make(), make()
    feed(rank0, real[:200], fake[:150])
    feed(rank1, real[200:], fake[150:])
    for name in expected:
        assert_close(whole[name].compute(), expected[name])
        rank0[name].merge_state(rank1[name])
        assert_close(rank0[name].compute(), expected[name])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="`min_fraction`"):
        mode_coverage(torch.zeros(3, 2), GaussianMixture.ring(), min_fraction=2.0)
