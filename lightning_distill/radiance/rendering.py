"""Differentiable volume rendering in torch: rays from cameras, ray-box clipping, sampling, compositing.

The renderer of the radiance-field recipes (PVD's four field families share it):

1. :func:`camera_rays`: one ray per pixel centre from ``K`` and ``c2w`` (OpenCV axes, unit directions).
2. :func:`ray_aabb`: the slab method, the entry and exit distances ``near``/``far`` of each ray in the box.
3. :func:`stratified_samples`: ``S`` equal bins between ``near`` and ``far``, one point per bin (its
   centre, or uniform in the bin when ``perturb``), and the bin widths ``δ``.
4. :func:`volume_weights`: ``α_i = 1 − exp(−σ_i δ_i)``, ``T_i = Π_{j<i} (1 − α_j)``, ``w_i = T_i α_i``.
   With the bin widths as ``δ`` a constant density gives the closed form ``T_i = exp(−σ (e_i − near))``
   (``e_i`` the bin's left edge) and an opacity ``Σ w = 1 − exp(−σ (far − near))``.
5. :func:`composite`: ``rgb = Σ w c + (1 − Σ w) · background``, expected depth, opacity.

:func:`render_rays` runs them for a field (``field(x, d) -> (density pre-activation, rgb, features)``,
see :mod:`lightning_distill.radiance.fields`) and :func:`render_image` renders whole views in chunks.
Rays that miss the box get the background.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_distill.utils.checks import check_int

__all__ = [
    "camera_rays",
    "composite",
    "random_rays",
    "ray_aabb",
    "render_image",
    "render_rays",
    "sample_points",
    "stratified_samples",
    "volume_weights",
]


def camera_rays(K: Tensor, c2w: Tensor, image_size: tuple[int, int] | int) -> tuple[Tensor, Tensor]:
    """Origins and unit directions ``(V, H, W, 3)`` of the rays through every pixel centre.

    Args:
        K: ``(V, 3, 3)`` intrinsics; c2w: ``(V, 4, 4)`` camera-to-world (OpenCV: x right, y down, z forward).
        image_size: ``(H, W)`` or ``H`` for square images.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (
        K.ndim != 3
        or K.shape[-2:] != (3, 3)
        or c2w.ndim != 3
        or c2w.shape[-2:] != (4, 4)
        or len(K) != len(c2w)
    ):
        raise ValueError(
            f"`K` must be (V, 3, 3) and `c2w` (V, 4, 4), got {tuple(K.shape)} and {tuple(c2w.shape)}."
        )
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).to(K)  # (H, W, 3)
    cam = torch.einsum("vij,hwj->vhwi", torch.linalg.inv(K), pixels)
    directions = torch.nn.functional.normalize(torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], cam), dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins.contiguous(), directions


def ray_aabb(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances ``(R,)`` of rays ``(R, 3)`` in the box ``aabb = (x0, y0, z0, x1, y1, z1)``.

    The slab method: per axis the ray is inside between ``(lo − o)/d`` and ``(hi − o)/d``; ``near`` is the
    largest entry (at least 0: the segment starts at the origin), ``far`` the smallest exit. Returns
    ``(near, far, hit)`` with ``hit = far > near``; a ray that misses gets ``near = far``.
    """
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[:3].to(origins) - origins) / safe
    t1 = (aabb[3:].to(origins) - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    return near, torch.where(hit, far, near), hit


def stratified_samples(
    near: Tensor,
    far: Tensor,
    num_samples: int,
    *,
    perturb: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``S`` points per ray in equal bins of ``[near, far]``: ``(t (R, S), δ (R, S), left edges (R, S))``.

    The point is the bin centre, or uniform in the bin when ``perturb`` (NeRF's stratified sampling).
    """
    check_int("num_samples", num_samples, low=1)
    u = torch.arange(num_samples, dtype=near.dtype, device=near.device) / num_samples
    width = ((far - near) / num_samples)[:, None]
    left = near[:, None] + u * (far - near)[:, None]
    if perturb:
        jitter = torch.rand(left.shape, generator=generator, dtype=left.dtype).to(left.device)
    else:
        jitter = torch.full_like(left, 0.5)
    return left + jitter * width, width.expand_as(left), left


def volume_weights(sigma: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Compositing weights ``w = T α`` and transmittance ``T`` ``(R, S)`` from densities ``σ >= 0`` and widths ``δ``.

    ``T_i = exp(−Σ_{j<i} σ_j δ_j)`` is computed as an exclusive cumulative sum in log space (no product
    of many factors), ``α_i = 1 − exp(−σ_i δ_i)``.
    """
    if sigma.shape != deltas.shape:
        raise ValueError(
            f"`sigma` {tuple(sigma.shape)} and `deltas` {tuple(deltas.shape)} must have one shape."
        )
    optical = sigma * deltas
    before = torch.cumsum(optical, dim=-1) - optical
    transmittance = torch.exp(-before)
    alpha = 1.0 - torch.exp(-optical)
    return transmittance * alpha, transmittance


def composite(weights: Tensor, rgb: Tensor, t: Tensor, background: float | Tensor = 1.0) -> dict[str, Tensor]:
    """``rgb (R, 3)`` over the background, expected ``depth (R,)`` and ``opacity (R,)`` from weights ``(R, S)``."""
    opacity = weights.sum(dim=-1)
    color = (weights[..., None] * rgb).sum(dim=-2) + (1.0 - opacity[..., None]) * background
    depth = (weights * t).sum(dim=-1)
    return {"rgb": color, "depth": depth, "opacity": opacity}


def random_rays(
    origins: Tensor, aabb: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Rays from random points on the sphere through ``origins`` (its radius per ray) towards random points of the box.

    PVD's default distils on rays of random poses around the object rather than the training views'
    rays: this keeps the radius of each given origin, draws a new direction for it, and aims at a
    point drawn uniformly in the middle half of the box.
    """
    n = origins.shape[0]
    radius = origins.norm(dim=-1, keepdim=True)
    eye = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator).to(origins), dim=-1) * radius
    lo, hi = aabb[:3].to(origins), aabb[3:].to(origins)
    centre, half = (lo + hi) / 2, (hi - lo) / 4
    target = centre + (2 * torch.rand(n, 3, generator=generator).to(origins) - 1) * half
    return eye, torch.nn.functional.normalize(target - eye, dim=-1)


def sample_points(
    origins: Tensor,
    directions: Tensor,
    aabb: Tensor,
    num_samples: int,
    *,
    perturb: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The sample points ``x (R, S, 3)``, their view directions ``d``, distances ``t`` and widths ``δ``, and ``hit``."""
    near, far, hit = ray_aabb(origins, directions, aabb)
    t, deltas, _ = stratified_samples(near, far, num_samples, perturb=perturb, generator=generator)
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]
    lo, hi = aabb[:3].to(points), aabb[3:].to(points)
    points = torch.minimum(torch.maximum(points, lo), hi)  # rounding can step a hair outside
    return {"x": points, "d": directions[:, None, :].expand_as(points), "t": t, "deltas": deltas, "hit": hit}


def render_rays(
    field: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
    samples: dict[str, Tensor],
    *,
    density: Callable[[Tensor], Tensor],
    background: float = 1.0,
) -> dict[str, Tensor]:
    """Render sampled rays (from :func:`sample_points`) through ``field``.

    Returns ``rgb``, ``depth``, ``opacity`` ``(R, ...)`` and the per-sample ``density_pre`` ``(R, S)``,
    ``colors`` ``(R, S, 3)`` and ``features`` ``(R, S, F)`` (what PVD distils), ``weights`` ``(R, S)``.

    Args:
        density: maps the pre-activation to ``σ >= 0`` (the field's ``activate_density``).
    """
    rays, steps = samples["t"].shape
    pre, colors, features = field(samples["x"].reshape(-1, 3), samples["d"].reshape(-1, 3))
    pre, colors = pre.reshape(rays, steps), colors.reshape(rays, steps, 3)
    sigma = density(pre) * samples["hit"][:, None]
    weights, _ = volume_weights(sigma, samples["deltas"])
    out = composite(weights, colors, samples["t"], background)
    out.update(density_pre=pre, colors=colors, features=features.reshape(rays, steps, -1), weights=weights)
    return out


@torch.no_grad()
def render_image(
    field: torch.nn.Module,
    origins: Tensor,
    directions: Tensor,
    aabb: Tensor,
    num_samples: int,
    *,
    background: float = 1.0,
    chunk: int = 4096,
) -> Tensor:
    """Render rays of any leading shape ``(..., 3)`` without gradient in chunks; returns RGB ``(..., 3)``."""
    shape = origins.shape[:-1]
    flat_o, flat_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    out = []
    for start in range(0, flat_o.shape[0], chunk):
        samples = sample_points(
            flat_o[start : start + chunk], flat_d[start : start + chunk], aabb, num_samples
        )
        out.append(render_rays(field, samples, density=field.activate_density, background=background)["rgb"])
    return torch.cat(out).reshape(*shape, 3)
