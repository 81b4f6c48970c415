"""SR degradations: reproducible from seeds, the right sizes, bad sizes rejected."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.super_resolution import (
    bicubic_downsample,
    check_scale_fits,
    jpeg_compress,
    realistic_degradation,
)


def _hr(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_realistic_degradation_is_reproducible_from_the_generator_seed(scale):
    a = realistic_degradation(_hr(), scale, torch.Generator().manual_seed(7))
    b = realistic_degradation(_hr(), scale, torch.Generator().manual_seed(7))
    c = realistic_degradation(_hr(), scale, torch.Generator().manual_seed(8))
    assert a.shape == (3, 32 // scale, 32 // scale)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_bicubic_downsample_matches_antialiased_interpolation_and_keeps_constants():
    hr = _hr()[None]
    expected = F.interpolate(hr, size=(8, 8), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    torch.testing.assert_close(bicubic_downsample(hr, 4), expected)
    torch.testing.assert_close(
        bicubic_downsample(torch.full((3, 16, 16), 0.3), 2), torch.full((3, 8, 8), 0.3)
    )


def test_sizes_not_divisible_by_the_scale_are_rejected():
    with pytest.raises(ValueError, match="not divisible by `scale`=4"):
        bicubic_downsample(torch.rand(1, 3, 30, 30), 4)
    with pytest.raises(ValueError, match="not divisible"):
        realistic_degradation(torch.rand(3, 18, 18), 4, torch.Generator())
    with pytest.raises(ValueError, match="`scale` must be an int"):
        check_scale_fits(32, 0)


def test_jpeg_roundtrip_is_close_at_high_quality_and_lossy_at_low_quality():
    image = F.interpolate(_hr()[None], size=(32, 32))[0]
    smooth = F.avg_pool2d(image[None], 5, 1, 2)[0]
    high, low = jpeg_compress(smooth, 95), jpeg_compress(smooth, 5)
    assert (high - smooth).abs().mean() < (low - smooth).abs().mean()
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(smooth, 0)
