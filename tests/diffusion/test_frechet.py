"""The Fréchet distance against scipy's sqrtm; the FCD metric reads the classifier it is given and keeps it frozen."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.testing import assert_close

from lightning_distill.diffusion.frechet import (
    FrechetClassifierDistance,
    frechet_distance,
    frechet_distance_from_features,
)
from lightning_distill.models import SmallCNN


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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


def test_frechet_classifier_distance_needs_a_network() -> None:
    with pytest.raises(TypeError, match="must be an nn.Module"):
        FrechetClassifierDistance("digits", image_size=8)
