"""Parallel-beam CT in torch: a differentiable projector, its adjoint, filtered back-projection, phantoms.

Conventions follow scikit-image's ``radon``/``iradon`` (the reference the tests compare with):
an ``N x N`` image, ``N`` detector bins of one pixel, rotation about pixel ``(N // 2, N // 2)``,
angles in degrees. Our sinograms are ``(B, C, V, N)`` (views x detectors); scikit-image's are
``(N, V)``. The image is assumed zero outside its inscribed circle (``circle=True``).

* :func:`radon_forward` rotates the image by every angle with one bilinear ``grid_sample`` and sums
  the rows (rotate-and-sum); it is linear and differentiable.
* :func:`radon_backward` is its exact adjoint ``Aᵀ`` (the vector-Jacobian product of the linear map).
* :func:`filtered_back_projection` is FBP with the Ram-Lak ramp: filter each view, apply ``Aᵀ``,
  scale by ``π / (2 V)``.
* :func:`shepp_logan` and :func:`random_ellipses` make phantoms in ``[0, 1]``, deterministic from a seed.

Example:
    >>> x = shepp_logan(32)[None, None]
    >>> sino = radon_forward(x, view_angles(18))
    >>> tuple(sino.shape)
    (1, 1, 18, 32)
    >>> tuple(filtered_back_projection(sino, view_angles(18)).shape)
    (1, 1, 32, 32)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.utils.checks import check_int, check_tensor

__all__ = [
    "circle_mask",
    "filtered_back_projection",
    "radon_backward",
    "radon_forward",
    "ramp_filter",
    "random_ellipses",
    "shepp_logan",
    "skimage_fbp",
    "view_angles",
]


def view_angles(views: int, *, arc: float = 180.0) -> Tensor:
    """``views`` equally spaced angles in degrees over ``[0, arc)`` ``(V,)``, as sparse-view CT samples them.

    Raises:
        ValueError: ``views`` < 1.
    """
    check_int("views", views, low=1)
    return torch.arange(views, dtype=torch.float64) * (arc / views)


def _check_image(image: Tensor) -> Tensor:
    image = check_tensor("image", image, exact_ndim=4)
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"`image` must be square (B, C, N, N), got {tuple(image.shape)}.")
    return image


def _check_angles(angles: Tensor) -> Tensor:
    angles = torch.as_tensor(angles)
    if angles.ndim != 1 or angles.numel() == 0:
        raise ValueError(
            f"`angles` must be a non-empty 1-D tensor of degrees, got shape {tuple(angles.shape)}."
        )
    return angles


def _rotation_grid(angles: Tensor, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sampling grid ``(1, V * N, N, 2)``: output pixel ``p`` reads the image at ``R(θ)(p − c) + c``."""
    theta = torch.deg2rad(angles.to(torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # pixel centres in grid_sample's normalised coordinates (align_corners=False)
    coords = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    centre = (2 * (size // 2) + 1) / size - 1  # scikit-image rotates about pixel N // 2
    y, x = torch.meshgrid(coords - centre, coords - centre, indexing="ij")  # (N, N)
    xs = cos[:, None, None] * x + sin[:, None, None] * y + centre
    ys = -sin[:, None, None] * x + cos[:, None, None] * y + centre
    grid = torch.stack([xs, ys], dim=-1).reshape(1, len(angles) * size, size, 2)
    return grid.to(device=device, dtype=dtype)


def radon_forward(image: Tensor, angles: Tensor) -> Tensor:
    """Parallel-beam projections ``(B, C, V, N)`` of ``image`` ``(B, C, N, N)`` at ``angles`` (degrees) ``(V,)``.

    Rotate-and-sum with bilinear interpolation: view ``v`` is the column sum of the image rotated
    by ``angles[v]`` (scikit-image's ``radon(..., circle=True)`` transposed). Linear in ``image``.

    Raises:
        ValueError: a non-square or non-4-D image, or empty angles.
    """
    image = _check_image(image)
    angles = _check_angles(angles)
    b, c, n, _ = image.shape
    grid = _rotation_grid(angles, n, image.device, image.dtype).expand(b, -1, -1, -1)
    rotated = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated.reshape(b, c, len(angles), n, n).sum(dim=-2)


def radon_backward(sinogram: Tensor, angles: Tensor) -> Tensor:
    """The exact adjoint ``Aᵀ`` of :func:`radon_forward`: ``(B, C, V, N)`` -> ``(B, C, N, N)``.

    Computed as the vector-Jacobian product of the (linear) projector, so ``<A x, y> = <x, Aᵀ y>``
    holds to rounding; differentiable in ``sinogram``.

    Raises:
        ValueError: a sinogram that is not ``(B, C, V, N)`` with ``V = len(angles)``.
    """
    sinogram = check_tensor("sinogram", sinogram, exact_ndim=4)
    angles = _check_angles(angles)
    if sinogram.shape[2] != len(angles):
        raise ValueError(
            f"`sinogram` has {sinogram.shape[2]} views (dim 2 of {tuple(sinogram.shape)}) but {len(angles)} angles."
        )
    b, c, _, n = sinogram.shape
    with torch.enable_grad():
        probe = torch.zeros(b, c, n, n, dtype=sinogram.dtype, device=sinogram.device, requires_grad=True)
        projected = radon_forward(probe, angles)
        (adjoint,) = torch.autograd.grad(
            projected, probe, grad_outputs=sinogram, create_graph=sinogram.requires_grad
        )
    return adjoint


def ramp_filter(size: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Ram-Lak filter ``(P,)`` for projections of ``size`` bins, zero-padded to ``P`` (a power of 2 >= 2·size, >= 64).

    Built from the band-limited spatial ramp (Kak & Slaney, eq. 61: ``h(0) = 1/4``,
    ``h(n) = −1/(π n)²`` for odd ``n``, 0 for even), as scikit-image's ``iradon`` does.
    """
    check_int("size", size, low=1)
    padded = max(64, 2 ** math.ceil(math.log2(2 * size)))
    n = torch.cat([torch.arange(1, padded // 2 + 1, 2), torch.arange(padded // 2 - 1, 0, -2)]).to(
        torch.float64
    )
    h = torch.zeros(padded, dtype=torch.float64)
    h[0] = 0.25
    h[1::2] = -1 / (math.pi * n) ** 2
    return (2 * torch.fft.fft(h).real).to(dtype)


def filtered_back_projection(sinogram: Tensor, angles: Tensor, *, circle: bool = True) -> Tensor:
    """FBP reconstruction ``(B, C, N, N)`` from ``sinogram`` ``(B, C, V, N)`` at ``angles`` (degrees).

    Ram-Lak filtering along the detector axis (zero-padded FFT), the adjoint projector, the factor
    ``π / (2 V)``; with ``circle`` the pixels outside the inscribed circle are zeroed, as in
    scikit-image's ``iradon(..., circle=True)``. Differentiable in ``sinogram``.
    """
    sinogram = check_tensor("sinogram", sinogram, exact_ndim=4)
    n = sinogram.shape[-1]
    filt = ramp_filter(n, dtype=sinogram.dtype).to(sinogram.device)
    spectrum = torch.fft.fft(sinogram, n=len(filt), dim=-1) * filt
    filtered = torch.fft.ifft(spectrum, dim=-1).real[..., :n]
    image = radon_backward(filtered, angles) * (math.pi / (2 * sinogram.shape[2]))
    if circle:
        image = image * circle_mask(n, device=image.device, dtype=image.dtype)
    return image


def circle_mask(
    size: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(N, N)`` 1 inside the circle inscribed in the image (radius ``N // 2`` about pixel ``N // 2``), 0 outside."""
    r = torch.arange(size, device=device, dtype=torch.float64) - size // 2
    inside = r[:, None] ** 2 + r[None, :] ** 2 <= (size // 2) ** 2
    return inside.to(dtype)


def skimage_fbp(sinogram: Tensor, angles: Tensor) -> Tensor:
    """scikit-image's ``iradon`` (Ram-Lak, linear interpolation, ``circle=True``) on our layout; the reference baseline.

    ``sinogram`` ``(B, C, V, N)`` -> ``(B, C, N, N)`` float32 (on the CPU, one slice at a time).
    """
    from skimage.transform import iradon

    sinogram = check_tensor("sinogram", sinogram, exact_ndim=4)
    theta = torch.as_tensor(angles, dtype=torch.float64).cpu().numpy()
    arr = sinogram.detach().cpu().double().numpy()
    out = [
        [iradon(arr[i, j].T, theta=theta, filter_name="ramp", circle=True) for j in range(arr.shape[1])]
        for i in range(arr.shape[0])
    ]
    return torch.as_tensor(np.asarray(out), dtype=torch.float32)


def shepp_logan(size: int) -> Tensor:
    """The modified Shepp–Logan head phantom ``(N, N)`` in ``[0, 1]`` (scikit-image's, area-resized), zero outside the circle."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    check_int("size", size, low=8)
    image = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True, order=1)
    out = torch.as_tensor(image, dtype=torch.float32).clamp(0, 1)
    return out * circle_mask(size)


def random_ellipses(
    size: int,
    seed: int,
    *,
    num_ellipses: tuple[int, int] = (4, 10),
    supersample: int = 2,
) -> Tensor:
    """A random-ellipse phantom ``(N, N)`` in ``[0, 1]``, a pure function of ``seed``.

    A body ellipse of intensity 0.4-0.6 inside the reconstruction circle, then
    ``num_ellipses`` inner ellipses (random centre, axes, rotation, intensity change ±0.1-0.5)
    added, clipped to ``[0, 1]``; rasterised at ``supersample``² points per pixel and averaged.

    Raises:
        ValueError: ``size`` < 8, a bad ``num_ellipses`` range or ``supersample`` < 1.
    """
    check_int("size", size, low=8)
    check_int("supersample", supersample, low=1)
    low, high = num_ellipses
    if not 0 <= low <= high:
        raise ValueError(f"`num_ellipses` must be (low, high) with 0 <= low <= high, got {num_ellipses}.")
    g = torch.Generator().manual_seed(int(seed))

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=g, dtype=torch.float64))

    m = size * supersample
    coords = (torch.arange(m, dtype=torch.float64) + 0.5) / m * 2 - 1  # [-1, 1]
    y, x = torch.meshgrid(-coords, coords, indexing="ij")

    def ellipse(cx: float, cy: float, a: float, b: float, phi: float) -> Tensor:
        c, s = math.cos(phi), math.sin(phi)
        xr, yr = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
        return ((xr / a) ** 2 + (yr / b) ** 2 <= 1).to(torch.float64)

    body_a, body_b = u(0.6, 0.85), u(0.55, 0.8)
    image = u(0.4, 0.6) * ellipse(u(-0.05, 0.05), u(-0.05, 0.05), body_a, body_b, u(0, math.pi))
    count = low + int(torch.randint(high - low + 1, (), generator=g))
    for _ in range(count):
        radius, angle = u(0, 0.6), u(0, 2 * math.pi)
        cx, cy = radius * body_a * math.cos(angle), radius * body_b * math.sin(angle)
        sign = 1.0 if u(0, 1) < 0.6 else -1.0
        image = image + sign * u(0.1, 0.5) * ellipse(cx, cy, u(0.03, 0.3), u(0.03, 0.3), u(0, math.pi))
    image = image.clamp(0, 1).reshape(size, supersample, size, supersample).mean(dim=(1, 3))
    return image.to(torch.float32) * circle_mask(size)
