"""The four radiance-field families PVD converts between, in pure torch, behind one interface.

Every field maps a point ``x (N, 3)`` (world coordinates inside its ``aabb``) to an intermediate feature
``features(x) (N, 1 + geo_dim)``: channel 0 is the density pre-activation, clamped to ``density_clip``
(PVD: ``[−2, 7]``), the other ``geo_dim`` channels (15) feed the colour head. The colour head is the
same small MLP in every family (torch-ngp's): ``sigmoid(MLP([SH_4(d), geo]))`` with ``SH_4`` the 16
real spherical harmonics of degree < 4 of the view direction. So the feature of any two fields with
the same ``geo_dim`` has one shape, and PVD's stage-1 loss compares them point by point.

* :class:`MLPField`: NeRF's positional encoding (``num_freqs`` octaves) and an MLP (``depth`` x
  ``width``, a skip connection), then a 2-layer density net: PVD's ``mlp`` model.
* :class:`VoxelGridField`: a dense grid of ``1 + geo_dim`` channels, trilinear (DVGO-like; PVD's
  ``tensors`` model is a Plenoxels grid of SH coefficients, see the recipe README).
* :class:`TensorVMField`: TensoRF's vector-matrix factorisation (three plane x line pairs, ranks 16 for
  density and 48 for appearance, a linear basis to ``geo_dim``): PVD's ``vm`` model; all its feature
  channels are clamped, as the official code does.
* :class:`HashGridField`: Instant-NGP's multi-resolution hash encoding (trilinear corners hashed into a
  table per level; levels coarse enough are indexed densely) and a 2-layer density net: PVD's ``hash``.

``density(x)`` is the clamped pre-activation, ``color(x, d)`` RGB in ``(0, 1)``; ``forward(x, d)``
returns ``(density_pre, rgb, features)`` from one evaluation. :meth:`RadianceField.activate_density`
maps the pre-activation to ``σ = exp(p) − exp(clip_min)``: the clamp floor means empty space (torch-ngp
skips such cells with its occupancy grid; we render every sample and shift instead).

The defaults are the paper-scale settings (PVD / torch-ngp / TensoRF / Plenoxels resolutions); the
recipe configs use toy ones that train on a CPU in a minute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.utils.checks import check_int, check_option

__all__ = [
    "HashEncoding",
    "HashGridField",
    "MLPField",
    "RadianceField",
    "TensorVMField",
    "VoxelGridField",
    "frequency_encoding",
    "sh_encoding",
]

_PRIMES = (1, 2_654_435_761, 805_459_861)


def frequency_encoding(x: Tensor, num_freqs: int) -> Tensor:
    """NeRF's positional encoding ``[x, sin(2^k x), cos(2^k x)]_{k < num_freqs}`` ``(N, 3 + 6·num_freqs)``."""
    scales = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)
    angles = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def sh_encoding(d: Tensor) -> Tensor:
    """The 16 real spherical harmonics of degree 0-3 of unit directions ``d (N, 3)`` (Instant-NGP's order)."""
    x, y, z = d.unbind(-1)
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ],
        dim=-1,
    )


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int, bias: bool) -> nn.Sequential:
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    parts: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(dims, dims[1:])):
        parts.append(nn.Linear(a, b, bias=bias))
        if k < layers - 1:
            parts.append(nn.ReLU())
    return nn.Sequential(*parts)


class RadianceField(nn.Module):
    """The shared interface and colour head; subclasses implement :meth:`encode` (the raw feature).

    Args:
        aabb: the box ``(x0, y0, z0, x1, y1, z1)`` the field lives in.
        geo_dim: feature channels besides density (15 in PVD / torch-ngp).
        color_layers, color_hidden: the colour MLP (3 x 64).
        density_clip: the clamp of the density pre-activation ``[−2, 7]`` (PVD's ``sigma_clip_min/max``).
    """

    family: str = ""

    def __init__(
        self,
        aabb: Sequence[float] = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),
        geo_dim: int = 15,
        color_layers: int = 3,
        color_hidden: int = 64,
        density_clip: Sequence[float] = (-2.0, 7.0),
    ) -> None:
        super().__init__()
        box = torch.as_tensor([float(v) for v in aabb])
        check_option(box.numel() == 6 and bool((box[3:] > box[:3]).all()), "aabb", aabb,
                     "(x0, y0, z0, x1, y1, z1) with x1 > x0, y1 > y0, z1 > z0")  # fmt: skip
        check_int("geo_dim", geo_dim, low=1)
        check_int("color_layers", color_layers, low=1)
        clip = tuple(float(v) for v in density_clip)
        check_option(
            len(clip) == 2 and clip[0] < clip[1], "density_clip", density_clip, "(low, high) with low < high"
        )
        self.register_buffer("aabb", box)
        self.geo_dim, self.density_clip = geo_dim, clip
        self.color_net = _mlp(16 + geo_dim, color_hidden, 3, color_layers, bias=True)

    def extra_repr(self) -> str:
        """The settings that shape the parameters (part of a cached teacher's key)."""
        shapes = ", ".join(f"{name}={tuple(p.shape)}" for name, p in self.named_parameters(recurse=False))
        return f"geo_dim={self.geo_dim}, density_clip={self.density_clip}" + (f", {shapes}" if shapes else "")

    @property
    def feature_dim(self) -> int:
        """Channels of :meth:`features`: ``1 + geo_dim``."""
        return 1 + self.geo_dim

    def normalize(self, x: Tensor) -> Tensor:
        """World points to ``[−1, 1]^3`` over the box."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return 2.0 * (x - lo) / (hi - lo) - 1.0

    def encode(self, x: Tensor) -> Tensor:
        """The raw feature ``(N, 1 + geo_dim)`` of points in ``[−1, 1]^3`` (before the clamp)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `encode` (each field family does).")

    def clamp_features(self, raw: Tensor) -> Tensor:
        """Clamp the density channel to ``density_clip`` (the official ``h[..., 0] = clamp(...)``)."""
        return torch.cat([raw[..., :1].clamp(*self.density_clip), raw[..., 1:]], dim=-1)

    def features(self, x: Tensor) -> Tensor:
        """PVD's intermediate feature ``(N, 1 + geo_dim)``: clamped density pre-activation, then ``geo_dim`` channels."""
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"`x` must be points (N, 3), got shape {tuple(x.shape)}.")
        return self.clamp_features(self.encode(self.normalize(x)))

    def density(self, x: Tensor) -> Tensor:
        """The clamped density pre-activation ``(N,)`` (what PVD's stage 2 matches; ``σ = activate_density``)."""
        return self.features(x)[..., 0]

    def color_from_features(self, features: Tensor, d: Tensor) -> Tensor:
        """RGB ``(N, 3)`` in ``(0, 1)`` from the feature and unit view directions ``d (N, 3)``."""
        return torch.sigmoid(self.color_net(torch.cat([sh_encoding(d), features[..., 1:]], dim=-1)))

    def color(self, x: Tensor, d: Tensor) -> Tensor:
        """RGB ``(N, 3)`` at points ``x`` seen along ``d``."""
        return self.color_from_features(self.features(x), d)

    def activate_density(self, pre: Tensor) -> Tensor:
        """``σ = exp(p) − exp(clip_min)``: zero at the clamp floor (empty space), ``exp`` gradients."""
        return torch.exp(pre) - math.exp(self.density_clip[0])

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(density_pre (N,), rgb (N, 3), features (N, 1 + geo_dim))`` from one evaluation."""
        feats = self.features(x)
        return feats[..., 0], self.color_from_features(feats, d), feats


class MLPField(RadianceField):
    """NeRF: positional encoding, ``depth`` layers of ``width`` (input concatenated after layer ``skip``).

    The MLP ends in ``encoding_dim`` channels that a 2-layer density net (``sigma_hidden``, no bias) maps
    to the feature, as PVD's ``mlp`` model (``--PE 10 --nerf_layer_num 8 --nerf_layer_wide 256 --skip 3``).
    """

    family = "mlp"

    def __init__(self, num_freqs: int = 10, depth: int = 8, width: int = 256, skip: int | None = 3,
                 encoding_dim: int = 28, sigma_hidden: int = 64, **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
        check_int("num_freqs", num_freqs, low=0)
        check_int("depth", depth, low=2)
        check_int("skip", skip, low=0, high=depth - 2, optional=True)
        self.num_freqs, self.skip = num_freqs, skip
        in_dim = 3 + 6 * num_freqs
        layers = [nn.Linear(in_dim, width)]
        for k in range(depth - 2):
            layers.append(nn.Linear(width + (in_dim if k == skip else 0), width))
        layers.append(nn.Linear(width, encoding_dim))
        self.layers = nn.ModuleList(layers)
        self.sigma_net = _mlp(encoding_dim, sigma_hidden, self.feature_dim, 2, bias=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_freqs={self.num_freqs}, skip={self.skip}"

    def encode(self, x: Tensor) -> Tensor:
        pe = frequency_encoding(x, self.num_freqs)
        h = pe
        for k, layer in enumerate(self.layers):
            if k >= 1 and k - 1 == self.skip:
                h = torch.cat([h, pe], dim=-1)
            h = layer(h)
            if k < len(self.layers) - 1:
                h = F.relu(h)
        return self.sigma_net(h)


class VoxelGridField(RadianceField):
    """A dense ``resolution^3`` grid of ``1 + geo_dim`` channels sampled trilinearly (Plenoxels/DVGO-like)."""

    family = "voxel"

    def __init__(self, resolution: int | Sequence[int] = 128, init_scale: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        res = [resolution] * 3 if isinstance(resolution, int) else list(resolution)
        check_option(len(res) == 3 and all(isinstance(r, int) and r >= 2 for r in res), "resolution", resolution,
                     "an int >= 2 or three of them")  # fmt: skip
        self.grid = nn.Parameter(init_scale * torch.randn(1, self.feature_dim, res[2], res[1], res[0]))

    def encode(self, x: Tensor) -> Tensor:
        out = F.grid_sample(self.grid, x.view(1, -1, 1, 1, 3), align_corners=True, padding_mode="border")
        return out.view(self.feature_dim, -1).t()


class TensorVMField(RadianceField):
    """TensoRF VM: ``Σ_r M_r(plane) v_r(line)`` over the three plane/line pairs for density and appearance.

    Density is the sum over the ``3 · sigma_rank`` products; appearance is a bias-free linear basis of the
    ``3 · color_rank`` products to ``geo_dim`` channels (PVD's ``vm``: ranks 16/48, resolution 300).
    The whole feature is clamped to ``density_clip`` (the official code clamps both parts).
    """

    family = "vm"
    _PLANES = ((0, 1), (0, 2), (1, 2))
    _LINES = (2, 1, 0)

    def __init__(self, resolution: int = 300, sigma_rank: int = 16, color_rank: int = 48, init_scale: float = 0.1,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
        check_int("resolution", resolution, low=2)
        check_int("sigma_rank", sigma_rank, low=1)
        check_int("color_rank", color_rank, low=1)
        self.sigma_planes = nn.Parameter(init_scale * torch.randn(3, sigma_rank, resolution, resolution))
        self.sigma_lines = nn.Parameter(init_scale * torch.randn(3, sigma_rank, resolution, 1))
        self.color_planes = nn.Parameter(init_scale * torch.randn(3, color_rank, resolution, resolution))
        self.color_lines = nn.Parameter(init_scale * torch.randn(3, color_rank, resolution, 1))
        self.basis = nn.Linear(3 * color_rank, self.geo_dim, bias=False)

    def _products(self, planes: Tensor, lines: Tensor, x: Tensor) -> Tensor:
        plane_xy = torch.stack([x[:, list(p)] for p in self._PLANES])[:, :, None, :]  # (3, N, 1, 2)
        line_y = torch.stack([x[:, i] for i in self._LINES])
        line_xy = torch.stack([torch.zeros_like(line_y), line_y], dim=-1)[:, :, None, :]
        plane = F.grid_sample(planes, plane_xy, align_corners=True)  # (3, R, N, 1)
        line = F.grid_sample(lines, line_xy, align_corners=True)
        return (plane * line).squeeze(-1)  # (3, R, N)

    def encode(self, x: Tensor) -> Tensor:
        sigma = self._products(self.sigma_planes, self.sigma_lines, x).sum(dim=(0, 1))
        color = self.basis(self._products(self.color_planes, self.color_lines, x).flatten(0, 1).t())
        return torch.cat([sigma[:, None], color], dim=-1)

    def clamp_features(self, raw: Tensor) -> Tensor:
        return raw.clamp(*self.density_clip)


class HashEncoding(nn.Module):
    """Instant-NGP's multi-resolution hash encoding in pure torch: ``(N, 3)`` in ``[−1, 1]`` -> ``(N, L·F)``.

    Level ``l`` has resolution ``floor(base · b^l)`` with ``b`` spanning ``base_resolution`` to
    ``max_resolution``; a point interpolates the ``F`` features of its 8 grid corners trilinearly. A level
    whose ``(res + 1)^3`` corners fit the table is indexed densely, else corners are hashed
    ``(x·1 ⊕ y·2654435761 ⊕ z·805459861) mod 2^log2_table_size``. Features start uniform in ``±1e-4``.
    """

    def __init__(self, num_levels: int = 16, features_per_level: int = 2, log2_table_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048) -> None:  # fmt: skip
        super().__init__()
        check_int("num_levels", num_levels, low=1)
        check_int("features_per_level", features_per_level, low=1)
        check_int("log2_table_size", log2_table_size, low=4, high=24)
        check_int("base_resolution", base_resolution, low=1)
        check_int("max_resolution", max_resolution, low=base_resolution)
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(num_levels - 1, 1))
        self.resolutions = [
            int(math.floor(base_resolution * growth**level + 1e-6)) for level in range(num_levels)
        ]
        self.table_size = 2**log2_table_size
        self.output_dim = num_levels * features_per_level
        self.tables = nn.Parameter(
            torch.empty(num_levels, self.table_size, features_per_level).uniform_(-1e-4, 1e-4)
        )
        corners = torch.tensor([[(c >> k) & 1 for k in range(3)] for c in range(8)])
        self.register_buffer("corners", corners, persistent=False)

    def extra_repr(self) -> str:
        return f"resolutions={self.resolutions}, table_size={self.table_size}, output_dim={self.output_dim}"

    def forward(self, x: Tensor) -> Tensor:
        unit = ((x + 1) / 2).clamp(0, 1)
        out = []
        for level, res in enumerate(self.resolutions):
            pos = unit * res
            base = pos.floor().long().clamp(max=res - 1)
            frac = pos - base
            corner = base[:, None, :] + self.corners  # (N, 8, 3)
            if (res + 1) ** 3 <= self.table_size:
                index = corner[..., 0] + (res + 1) * (corner[..., 1] + (res + 1) * corner[..., 2])
            else:
                index = (
                    (corner[..., 0] * _PRIMES[0])
                    ^ (corner[..., 1] * _PRIMES[1])
                    ^ (corner[..., 2] * _PRIMES[2])
                )
                index = index % self.table_size
            weight = torch.where(self.corners.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(
                -1
            )  # (N, 8)
            out.append((self.tables[level][index] * weight[..., None]).sum(1))
        return torch.cat(out, dim=-1)


class HashGridField(RadianceField):
    """Instant-NGP: :class:`HashEncoding` then a 2-layer density net (PVD's ``hash``: 14 levels up to 2048)."""

    family = "hash"

    def __init__(self, num_levels: int = 14, features_per_level: int = 2, log2_table_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048, sigma_hidden: int = 64,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.encoding = HashEncoding(
            num_levels, features_per_level, log2_table_size, base_resolution, max_resolution
        )
        self.sigma_net = _mlp(self.encoding.output_dim, sigma_hidden, self.feature_dim, 2, bias=False)

    def encode(self, x: Tensor) -> Tensor:
        return self.sigma_net(self.encoding(x))
