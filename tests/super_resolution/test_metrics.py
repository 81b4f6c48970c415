"""SR metrics against scikit-image, the Y channel, the border crop, the perceptual distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lightning_distill.models import SmallCNN
from lightning_distill.super_resolution import (
    FeatureDistance,
    SRMetrics,
    lpips_metric,
    rgb_to_y,
    sr_psnr,
    sr_ssim,
)


def _pair(seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64)
    sr = (hr + 0.05 * torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)).clamp(0, 1)
    return sr, hr


def _skimage_y(image: torch.Tensor, border: int) -> np.ndarray:
    y = rgb2ycbcr(image.permute(1, 2, 0).numpy())[..., 0] / 255.0  # MATLAB's rgb2ycbcr, Y in [16, 235]
    return y[border:-border, border:-border] if border else y


def test_rgb_to_y_matches_skimage_rgb2ycbcr():
    _, hr = _pair()
    torch.testing.assert_close(rgb_to_y(hr)[0, 0].numpy(), _skimage_y(hr[0], 0))


@pytest.mark.parametrize("border", [0, 2, 4])
def test_psnr_and_ssim_on_y_with_border_match_skimage(border):
    sr, hr = _pair()
    psnr = sr_psnr(sr, hr, border=border, reduction="none")
    ssim = sr_ssim(sr, hr, border=border, reduction="none")
    for i in range(2):
        a, b = _skimage_y(hr[i], border), _skimage_y(sr[i], border)
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)
        expected = structural_similarity(
            a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ssim[i].item() == pytest.approx(expected, abs=1e-5)


def test_rgb_psnr_matches_skimage_on_all_channels():
    sr, hr = _pair(1)
    expected = np.mean(
        [
            peak_signal_noise_ratio(
                hr[i, :, 3:-3, 3:-3].numpy(), sr[i, :, 3:-3, 3:-3].numpy(), data_range=1.0
            )
            for i in range(2)
        ]
    )
    assert sr_psnr(sr, hr, border=3, y_channel=False).item() == pytest.approx(expected, abs=1e-4)


def test_sr_metrics_use_the_scale_as_border_by_default():
    sr, hr = _pair(2)
    out = SRMetrics()(sr, hr, scale=4)
    torch.testing.assert_close(out["psnr"], sr_psnr(sr, hr, border=4))
    torch.testing.assert_close(out["ssim"], sr_ssim(sr, hr, border=4))


def test_bad_shapes_and_borders_are_rejected():
    sr, hr = _pair()
    with pytest.raises(ValueError, match="same shape"):
        sr_psnr(sr[:, :, :16], hr)
    with pytest.raises(ValueError, match="border"):
        sr_psnr(sr, hr, border=16)
    with pytest.raises(ValueError, match="11x11"):
        sr_ssim(sr[..., :12, :12], hr[..., :12, :12], border=1)


def test_lpips_without_local_weights_says_which_file_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="alexnet-.*pth.*nothing is downloaded"):
        lpips_metric("alex")
    with pytest.raises(ValueError, match="net_type"):
        lpips_metric("resnet")


def test_feature_distance_is_zero_on_identical_images_and_grows_with_noise():
    torch.manual_seed(0)
    metric = FeatureDistance(SmallCNN(width=8, depth=2), ["stem", "layer1"], name="feature distance (test)")
    _, hr = _pair()
    hr = hr.float()
    near = (hr + 0.02 * torch.randn_like(hr)).clamp(0, 1)
    far = (hr + 0.3 * torch.randn_like(hr)).clamp(0, 1)
    torch.testing.assert_close(metric(hr, hr), torch.zeros(2))
    assert (metric(near, hr) < metric(far, hr)).all()
    with pytest.raises(ValueError, match="not in the network"):
        FeatureDistance(SmallCNN(width=8, depth=2), ["layer9"])
