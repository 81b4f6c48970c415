"""Super-resolution toolkit: degradations (bicubic and Real-ESRGAN-style), fidelity and perceptual metrics.

See ``README.md`` in this folder for what each part does and where the SR networks, data and
pictures live.
"""

from lightning_distill.super_resolution.degradations import (
    DegradationSettings,
    bicubic_downsample,
    check_scale_fits,
    jpeg_compress,
    pair_scale,
    realistic_degradation,
)
from lightning_distill.super_resolution.denoisers import LRConditionedUNet, upsample_to
from lightning_distill.super_resolution.metrics import (
    FeatureDistance,
    SRMetrics,
    lpips_metric,
    rgb_to_y,
    sr_psnr,
    sr_ssim,
)

__all__ = [
    "DegradationSettings",
    "FeatureDistance",
    "LRConditionedUNet",
    "SRMetrics",
    "bicubic_downsample",
    "check_scale_fits",
    "jpeg_compress",
    "lpips_metric",
    "pair_scale",
    "realistic_degradation",
    "rgb_to_y",
    "sr_psnr",
    "sr_ssim",
    "upsample_to",
]
