"""Bench metrics against independent computations: SWD, MMD, mode coverage/TV, floors, Fréchet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.testing import assert_close

from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.metrics import (
    RBFMMD,
    FrechetClassifierDistance,
    ModeCoverage,
    ModeWeightTV,
    SlicedWasserstein,
    default_mode_threshold,
    digits_classifier,
    frechet_distance,
    frechet_distance_from_features,
    mode_assignment,
    mode_coverage,
    mode_weight_tv,
    noise_floor,
    random_projections,
    rbf_mmd2,
    sliced_wasserstein,
)
from lightning_distill.models import SmallCNN


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Sliced Wasserstein
# ----------------------------------------------------------------------------------------------
def test_swd_of_identical_sets_is_zero_and_of_a_shift_is_exact() -> None:
    x = torch.randn(400, 3, generator=gen(0), dtype=torch.float64)
    assert float(sliced_wasserstein(x, x)) == 0.0
    assert float(sliced_wasserstein(x, x[torch.randperm(400, generator=gen(1))])) == 0.0  # order-free
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    theta = random_projections(64, 3, gen(2))
    # Projections of a shifted copy are shifted by theta . m, so each W2^2 is (theta . m)^2.
    expected = (theta @ shift).square().mean().sqrt()
    assert_close(sliced_wasserstein(x, x + shift, projections=theta), expected)


def test_swd_of_shifted_gaussians_matches_the_analytic_value() -> None:
    # 1-D: SWD is W2, and W2(N(0,1), N(m,1)) = |m|.
    a = torch.randn(20000, 1, generator=gen(3))
    b = torch.randn(20000, 1, generator=gen(4)) + 1.5
    assert_close(float(sliced_wasserstein(a, b)), 1.5, atol=0.03, rtol=0)
    # 2-D with evenly spaced directions: the mean of (theta . m)^2 is exactly |m|^2 / 2.
    angles = torch.arange(64, dtype=torch.float64) * math.pi / 64
    theta = torch.stack([angles.cos(), angles.sin()], dim=1)
    a = torch.randn(8000, 2, generator=gen(5))
    b = torch.randn(8000, 2, generator=gen(6)) + torch.tensor([3.0, 4.0])
    assert_close(float(sliced_wasserstein(a, b, projections=theta)), 5.0 / math.sqrt(2), atol=0.04, rtol=0)
    # Random directions are uniform on the sphere: E[theta theta^T] = I / D.
    theta = random_projections(4000, 4, gen(7))
    assert_close(theta.T @ theta / 4000, torch.eye(4, dtype=torch.float64) / 4, atol=0.015, rtol=0)
    assert_close(theta.norm(dim=1), torch.ones(4000, dtype=torch.float64))


def naive_w2_squared(a: np.ndarray, b: np.ndarray) -> float:
    """W2^2 of 1-D empirical measures by replicating both to a common size (lcm) and sorting."""
    n, m = len(a), len(b)
    size = n * m // math.gcd(n, m)
    ra, rb = np.sort(np.repeat(a, size // n)), np.sort(np.repeat(b, size // m))
    return float(np.mean((ra - rb) ** 2))


@pytest.mark.parametrize(("n", "m"), [(7, 7), (3, 4), (12, 5), (1, 6)])
def test_swd_with_unequal_sizes_matches_replicated_sorting(n: int, m: int) -> None:
    x = torch.randn(n, 2, generator=gen(n), dtype=torch.float64)
    y = torch.randn(m, 2, generator=gen(100 + m), dtype=torch.float64) + 0.3
    theta = random_projections(5, 2, gen(7))
    px, py = (x @ theta.T).numpy(), (y @ theta.T).numpy()
    expected = math.sqrt(np.mean([naive_w2_squared(px[:, j], py[:, j]) for j in range(5)]))
    assert_close(float(sliced_wasserstein(x, y, projections=theta)), expected)


# ----------------------------------------------------------------------------------------------
# MMD
# ----------------------------------------------------------------------------------------------
def naive_mmd2(x: np.ndarray, y: np.ndarray, hs: list[float]) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * k(x, y).mean()
    )


def test_mmd_matches_a_naive_unbiased_estimator() -> None:
    x = torch.randn(30, 3, generator=gen(8), dtype=torch.float64)
    y = torch.randn(45, 3, generator=gen(9), dtype=torch.float64) * 1.3 + 0.2
    assert_close(float(rbf_mmd2(x, y, [0.5, 1.0, 2.0])), naive_mmd2(x.numpy(), y.numpy(), [0.5, 1.0, 2.0]))
    pooled = torch.cat([x, y])
    median = float(torch.pdist(pooled).median())
    assert_close(float(rbf_mmd2(x, y)), naive_mmd2(x.numpy(), y.numpy(), [median]))


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    gmm = GaussianMixture.ring()
    a, b = gmm.sample(1500, gen(10)), gmm.sample(1500, gen(11))
    shifted = GaussianMixture.ring(radius=3.5).sample(1500, gen(12))
    same, different = float(rbf_mmd2(a, b)), float(rbf_mmd2(a, shifted))
    assert abs(same) < 2e-3
    assert different > 20 * abs(same)


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


# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------
def scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_formula_matches_scipy_sqrtm() -> None:
    g = gen(30)
    for dim in (1, 4, 16):
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        b = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        s1, s2 = a @ a.T + 0.1 * torch.eye(dim), b @ b.T / dim
        mu1, mu2 = (
            torch.randn(dim, generator=g, dtype=torch.float64),
            torch.randn(dim, generator=g, dtype=torch.float64),
        )
        expected = scipy_frechet(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
        assert_close(float(frechet_distance(mu1, s1, mu2, s2)), expected, atol=1e-8, rtol=1e-8)
    f1 = torch.randn(200, 6, generator=g)
    f2 = torch.randn(150, 6, generator=g) * 2 + 1
    n1, n2 = f1.double().numpy(), f2.double().numpy()
    expected = scipy_frechet(n1.mean(0), np.cov(n1, rowvar=False), n2.mean(0), np.cov(n2, rowvar=False))
    assert_close(float(frechet_distance_from_features(f1, f2)), expected, atol=1e-8, rtol=1e-8)


def test_frechet_classifier_distance_uses_forward_features_and_stays_frozen() -> None:
    torch.manual_seed(0)
    net = SmallCNN(width=4, depth=1)
    metric = FrechetClassifierDistance(net, image_size=8)
    real = torch.randn(40, 1, 8, 8, generator=gen(31))
    fake = torch.randn(30, 1, 8, 8, generator=gen(32)) * 0.5 + 0.3
    metric.update(real[:25], real=True)
    metric.update(real[25:], real=True)
    metric.update(fake, real=False)
    with torch.no_grad():
        expected = frechet_distance_from_features(net.forward_features(real), net.forward_features(fake))
    assert_close(metric.compute(), expected)
    metric.train()
    assert not metric.features.training and not any(p.requires_grad for p in metric.features.parameters())


def test_digits_classifier_is_trained_and_cached(tmp_path) -> None:
    model = digits_classifier(size=8, width=8, depth=1, epochs=1, cache_dir=str(tmp_path))
    assert "val acc" in model.distill_source
    again = digits_classifier(size=8, width=8, depth=1, epochs=1, cache_dir=str(tmp_path))
    assert_close(again.head.weight, model.head.weight)
    metric = FrechetClassifierDistance(model, image_size=8)
    assert metric.num_features == 8


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="`y` must have D = 2"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="at least 2 points"):
        rbf_mmd2(torch.zeros(1, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="`bandwidths` must be > 0"):
        rbf_mmd2(torch.zeros(3, 2), torch.zeros(3, 2), [-1.0])
    with pytest.raises(ValueError, match="`min_fraction`"):
        mode_coverage(torch.zeros(3, 2), GaussianMixture.ring(), min_fraction=2.0)
    with pytest.raises(RuntimeError, match="both real=True and real=False"):
        SlicedWasserstein().compute()
