"""Tests for the timestep samplers in ``lightning_distill.diffusion.timesteps``."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lightning_distill.diffusion.timesteps import (
    evenly_spaced_timesteps,
    shifted_timesteps,
    subinterval_timesteps,
    uniform_timesteps,
)


def test_uniform_fractions_follow_int_conversion_and_cover_the_half_open_interval() -> None:
    g = torch.Generator().manual_seed(0)
    t = uniform_timesteps(20000, 0.02, 0.981, num_train_timesteps=1000, generator=g)
    assert t.dtype == torch.int64 and t.shape == (20000,)
    assert int(t.min()) == 20 and int(t.max()) == 980  # SwiftBrush: randint(20, 981)
    counts = torch.bincount(t - 20, minlength=961).float()
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.4


def test_uniform_indices_and_generator_reproducibility() -> None:
    a = uniform_timesteps(50, 20, 981, generator=torch.Generator().manual_seed(3))
    b = uniform_timesteps(50, 20, 981, generator=torch.Generator().manual_seed(3))
    reference = torch.randint(20, 981, (50,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a, reference)


def test_subinterval_phases_partition_the_range() -> None:
    g = torch.Generator().manual_seed(1)
    bounds = (1.0, 0.6, 0.25, 0.0)
    ranges = []
    for phase in range(3):
        t = subinterval_timesteps(4000, bounds, phase, num_train_timesteps=1000, generator=g)
        ranges.append((int(t.min()), int(t.max())))
    assert ranges == [(600, 999), (250, 599), (0, 249)]
    with pytest.raises(ValueError, match="`phase` must be"):
        subinterval_timesteps(1, bounds, 3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        subinterval_timesteps(1, (0, 500, 1000), 0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_shifted_timesteps_follow_the_sd3_formula(shift: float) -> None:
    t = shifted_timesteps(64, shift, num_train_timesteps=1000, generator=torch.Generator().manual_seed(5))
    u = torch.rand(64, generator=torch.Generator().manual_seed(5))
    assert_close(t, 1000 * shift * u / (1 + (shift - 1) * u))
    assert t.dtype == torch.float32


def test_evenly_spaced_timesteps_are_dmd2s() -> None:
    assert evenly_spaced_timesteps(4) == (999, 749, 499, 249)
    assert evenly_spaced_timesteps(1) == (999,)
    assert evenly_spaced_timesteps(3) == (999, 666, 333)
    assert len(evenly_spaced_timesteps(1000)) == 1000
    # DMD2: list(range(denoising_timestep - 1, 0, -(denoising_timestep // num_denoising_step)))
    for k in (1, 2, 4, 8):
        assert evenly_spaced_timesteps(k) == tuple(range(999, 0, -(1000 // k)))


def test_bad_bounds_raise() -> None:
    with pytest.raises(ValueError, match="`low` must be below `high`"):
        uniform_timesteps(1, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"fraction of T must be in \[0, 1\]"):
        uniform_timesteps(1, 0.0, 1.5)
    with pytest.raises(TypeError, match="`high` must be an int"):
        uniform_timesteps(1, 0, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`shift` must be"):
        shifted_timesteps(1, 0.0)
    with pytest.raises(ValueError, match="`num_steps`"):
        evenly_spaced_timesteps(0)
