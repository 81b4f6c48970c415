"""Low-resolution inputs from high-resolution images: bicubic ×s and a Real-ESRGAN-style second-order chain.

:func:`bicubic_downsample` is the classic SR degradation (antialiased bicubic, what MATLAB's
``imresize`` and Pillow's ``BICUBIC`` do). :func:`realistic_degradation` follows Real-ESRGAN's
"high-order" model (Wang et al., arXiv 2107.10833): the chain blur → random resize → noise → JPEG
is applied twice with its own ranges per stage, then the image is resized to the LR size and
JPEG-compressed once more. Blur comes from kornia, JPEG from Pillow, resizing from torch
(antialiased). Every random choice is drawn from a ``torch.Generator``, so one seed gives one
degraded image, bit for bit.

Simplifications against Real-ESRGAN, said here once: the blur is a Gaussian with separate x/y
widths (no rotated, generalised or plateau kernels, no sinc filter), the noise is Gaussian or
Poisson-like (shot noise scaled by the image), grey noise is not drawn separately.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "DegradationSettings",
    "bicubic_downsample",
    "check_scale_fits",
    "jpeg_compress",
    "pair_scale",
    "realistic_degradation",
]


def pair_scale(lr: Tensor, hr: Tensor) -> int:
    """The integer SR scale of an ``(lr, hr)`` batch.

    Raises:
        ValueError: batches that are not ``(B, C, h, w)`` and ``(B, C, H, W)`` with one ``B`` and ``C``, or
            an HR size that is not the LR size times one integer.

    Example:
        >>> pair_scale(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8))
        2
    """
    if lr.ndim != 4 or hr.ndim != 4 or lr.shape[:2] != hr.shape[:2]:
        raise ValueError(
            f"Batches must be (lr (B, C, h, w), hr (B, C, H, W)) with the same B and C, got {tuple(lr.shape)} "
            f"and {tuple(hr.shape)}."
        )
    (h, w), (big_h, big_w) = lr.shape[-2:], hr.shape[-2:]
    if big_h % h or big_w % w or big_h // h != big_w // w:
        raise ValueError(
            f"The HR size {big_h}x{big_w} is not the LR size {h}x{w} times one integer scale; make `hr_size` "
            "divisible by `scale` in `data.init_args`."
        )
    return big_h // h


def check_scale_fits(hr_size: int, scale: int, *, key: str = "hr_size") -> None:
    """Raise ``ValueError`` unless ``scale`` is an int >= 1 that divides ``hr_size``.

    Example:
        >>> check_scale_fits(32, 4)
        >>> check_scale_fits(30, 4)
        Traceback (most recent call last):
        ...
        ValueError: `hr_size`=30 is not divisible by `scale`=4: the LR image would be 7.5 pixels wide; use a multiple of 4 (e.g. 32).
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"`scale` must be an int >= 1, got {scale!r}.")
    if hr_size % scale != 0:
        raise ValueError(
            f"`{key}`={hr_size} is not divisible by `scale`={scale}: the LR image would be "
            f"{hr_size / scale:g} pixels wide; use a multiple of {scale} (e.g. {(hr_size // scale + 1) * scale})."
        )


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downsampling by ``scale``, clamped to [0, 1].

    Args:
        hr: ``(B, C, H, W)`` or ``(C, H, W)`` images in [0, 1]; ``H`` and ``W`` divisible by ``scale``.
        scale: the integer downscaling factor.

    Returns:
        ``(B, C, H / scale, W / scale)`` (or without the batch dimension, as given).

    Raises:
        ValueError: a size not divisible by ``scale``.

    Example:
        >>> bicubic_downsample(torch.ones(3, 8, 8), 2).shape
        torch.Size([3, 4, 4])
    """
    single = hr.ndim == 3
    x = hr[None] if single else hr
    check_scale_fits(x.shape[-2], scale, key="hr height")
    check_scale_fits(x.shape[-1], scale, key="hr width")
    out = F.interpolate(
        x,
        size=(x.shape[-2] // scale, x.shape[-1] // scale),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    ).clamp(0, 1)
    return out[0] if single else out


def jpeg_compress(image: Tensor, quality: int) -> Tensor:
    """Encode and decode ``image`` ``(C, H, W)`` in [0, 1] as JPEG at ``quality`` with Pillow.

    Example:
        >>> jpeg_compress(torch.full((3, 8, 8), 0.5), 90).shape
        torch.Size([3, 8, 8])
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"`quality` must be in [1, 100], got {quality}.")
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    grey = array.shape[2] == 1
    pil = Image.fromarray(array[..., 0] if grey else array, mode="L" if grey else "RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L" if grey else "RGB"))
    out = torch.from_numpy(decoded.copy()).float().div(255)
    return (out[None] if grey else out.permute(2, 0, 1)).to(image.dtype)


@dataclass(frozen=True)
class DegradationSettings:
    """Ranges of one stage of the realistic chain (Real-ESRGAN's first- and second-stage defaults).

    Attributes:
        blur_sigma: range of the Gaussian blur width (pixels), drawn per axis.
        blur_kernel: odd kernel size of the blur.
        resize_range: range of the random resize factor of this stage.
        noise_sigma: range of the Gaussian noise std (in [0, 1] units).
        poisson_prob: probability of shot noise instead of Gaussian noise.
        poisson_scale: range of the shot-noise scale.
        jpeg_quality: range of the JPEG quality.
    """

    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_kernel: int = 7
    resize_range: tuple[float, float] = (0.15, 1.5)
    noise_sigma: tuple[float, float] = (1 / 255, 30 / 255)
    poisson_prob: float = 0.4
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    jpeg_quality: tuple[int, int] = (30, 95)


#: Real-ESRGAN's second stage: milder blur, resize, noise and JPEG.
SECOND_STAGE = DegradationSettings(
    blur_sigma=(0.2, 1.5),
    resize_range=(0.3, 1.2),
    noise_sigma=(1 / 255, 25 / 255),
    poisson_scale=(0.05, 2.5),
)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def _stage(x: Tensor, stage: DegradationSettings, generator: torch.Generator, min_size: int) -> Tensor:
    """One blur → resize → noise → JPEG pass on ``x`` ``(C, H, W)``."""
    sigma = torch.tensor([[_uniform(*stage.blur_sigma, generator), _uniform(*stage.blur_sigma, generator)]])
    k = stage.blur_kernel
    x = kornia.filters.gaussian_blur2d(x[None], (k, k), sigma, border_type="reflect")[0]
    factor = _uniform(*stage.resize_range, generator)
    mode = ("area", "bilinear", "bicubic")[int(torch.randint(3, (), generator=generator))]
    size = (max(min_size, round(x.shape[-2] * factor)), max(min_size, round(x.shape[-1] * factor)))
    x = _resize(x, size, mode)
    if bool(torch.rand((), generator=generator) < stage.poisson_prob):
        scale = _uniform(*stage.poisson_scale, generator)
        # Shot noise: Poisson counts of (x * 255 * 10 / scale) photons, back to [0, 1].
        photons = x.clamp(0, 1) * 2550.0 / scale
        x = torch.poisson(photons, generator=generator) * scale / 2550.0
    else:
        x = x + _uniform(*stage.noise_sigma, generator) * torch.randn(x.shape, generator=generator)
    quality = int(torch.randint(stage.jpeg_quality[0], stage.jpeg_quality[1] + 1, (), generator=generator))
    return jpeg_compress(x.clamp(0, 1), quality)


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    kwargs = {} if mode == "area" else {"align_corners": False, "antialias": True}
    return F.interpolate(x[None], size=size, mode=mode, **kwargs)[0].clamp(0, 1)


def realistic_degradation(
    hr: Tensor,
    scale: int,
    generator: torch.Generator,
    *,
    first: DegradationSettings | None = None,
    second: DegradationSettings | None = SECOND_STAGE,
    final_jpeg: tuple[int, int] = (30, 95),
) -> Tensor:
    """Real-ESRGAN-style LR image of ``hr`` ``(C, H, W)`` in [0, 1]: two degradation stages, then ×1/scale.

    Args:
        hr: one image ``(C, H, W)``, ``H`` and ``W`` divisible by ``scale``.
        scale: the SR factor; the output is ``(C, H / scale, W / scale)``.
        generator: the only source of randomness (same state, same output).
        first: the first stage's ranges (default :class:`DegradationSettings()`).
        second: the second stage's ranges; ``None`` skips it (a first-order model).
        final_jpeg: JPEG quality range after the final resize.

    Raises:
        ValueError: ``hr`` is not ``(C, H, W)`` or its size is not divisible by ``scale``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> realistic_degradation(torch.rand(3, 16, 16), 4, g).shape
        torch.Size([3, 4, 4])
    """
    if hr.ndim != 3:
        raise ValueError(f"`hr` must be one image (C, H, W), got shape {tuple(hr.shape)}.")
    check_scale_fits(hr.shape[-2], scale, key="hr height")
    check_scale_fits(hr.shape[-1], scale, key="hr width")
    out_size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    x = _stage(hr.float(), first or DegradationSettings(), generator, min_size=max(2, min(out_size)))
    if second is not None:
        x = _stage(x, second, generator, min_size=max(2, min(out_size)))
    x = _resize(x, out_size, ("area", "bilinear", "bicubic")[int(torch.randint(3, (), generator=generator))])
    quality = int(torch.randint(final_jpeg[0], final_jpeg[1] + 1, (), generator=generator))
    return jpeg_compress(x, quality)
