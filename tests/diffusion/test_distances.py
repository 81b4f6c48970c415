"""Point-set distances against independent computations: SWD (replicated sorting, the Gaussian value), MMD (naive)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lightning_distill.diffusion.distances import (
    SlicedWasserstein,
    random_projections,
    rbf_mmd2,
    sliced_wasserstein,
)
from lightning_distill.diffusion.gmm import GaussianMixture


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


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="`y` must have D = 2"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="at least 2 points"):
        rbf_mmd2(torch.zeros(1, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="`bandwidths` must be > 0"):
        rbf_mmd2(torch.zeros(3, 2), torch.zeros(3, 2), [-1.0])
    with pytest.raises(RuntimeError, match="both real=True and real=False"):
        SlicedWasserstein().compute()
