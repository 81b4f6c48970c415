"""DynamicCity's HexPlane VAE: a 4D occupancy volume as six 2D feature planes, and back.

"DynamicCity: Large-Scale 4D Occupancy Generation from Dynamic Scenes" (Bian et al., arXiv
2410.18084; official code 3DTopia/DynamicCity). A sequence of semantic occupancy grids
``(T, X, Y, Z)`` is encoded into a HexPlane, six feature planes over the axis pairs
``xy, xz, yz, tx, ty, tz``; a voxel ``(t, x, y, z)`` is decoded from the six plane features at its
coordinates. The planes are then laid out in one image (the padded rollout) for a 2D DiT.

Parts, each usable alone:

* :func:`project_to_planes` — the six planes of a 4D feature volume by average pooling over the two
  axes each plane leaves out (DynamicCity learns this pooling with a small transformer, its
  Projection Module; we average and then refine each plane with a learned 2D conv head);
* :func:`expand_planes` — each plane resized to the output resolution along its two axes and shaped
  to broadcast over the other two (bilinear: the decoder's query of the planes on the voxel grid);
* :func:`rollout_planes` / :func:`unroll_planes` / :func:`rollout_mask` — the padded rollout: planes that share an axis share
  rows or columns of one ``(C, X+Z+T, Y+Z+T)`` image (``xy | xz | xt`` on top, ``zy`` and ``ty`` below
  ``xy``, ``zt`` on the diagonal; the rest is zero padding);
* :class:`HexPlaneVAE` — encoder (class embedding, 3D convs per frame, projection, per-plane heads to
  mean and log-variance) and decoder (per-plane convs, :func:`expand_planes`, sum, MLP to class
  logits); :class:`VolumeVAE` — the plain 3D-latent baseline with the same encoder and decoder
  widths (a latent volume per frame, trilinear decoding), for the compression comparison.

Example:
    >>> vae = HexPlaneVAE(num_classes=7, grid_size=(8, 8, 4), num_frames=2, latent_channels=2, width=8)
    >>> occupancy = torch.randint(0, 7, (3, 2, 8, 8, 4))
    >>> mean, logvar = vae.encode(occupancy)
    >>> mean.shape, vae.decode(mean).shape, round(vae.compression_ratio, 2)
    (torch.Size([3, 2, 8, 8]), torch.Size([3, 7, 2, 8, 8, 4]), 4.92)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PLANES",
    "HexPlaneVAE",
    "VolumeVAE",
    "expand_planes",
    "project_to_planes",
    "rollout_mask",
    "rollout_planes",
    "rollout_shape",
    "unroll_planes",
]

#: The six planes and the axes of a ``(B, C, T, X, Y, Z)`` volume each one spans.
PLANES: dict[str, tuple[int, int]] = {
    "xy": (3, 4),
    "xz": (3, 5),
    "yz": (4, 5),
    "tx": (2, 3),
    "ty": (2, 4),
    "tz": (2, 5),
}


def _check_volume(name: str, volume: Tensor) -> None:
    if volume.ndim != 6:
        raise ValueError(f"`{name}` must be a (B, C, T, X, Y, Z) feature volume, got {tuple(volume.shape)}.")


def project_to_planes(volume: Tensor) -> dict[str, Tensor]:
    """The six planes ``{name: (B, C, a, b)}`` of ``volume`` ``(B, C, T, X, Y, Z)``, each averaged over the other two axes.

    Raises:
        ValueError: ``volume`` is not 6-dimensional.
    """
    _check_volume("volume", volume)
    out = {}
    for name, axes in PLANES.items():
        others = tuple(d for d in range(2, 6) if d not in axes)
        out[name] = volume.mean(dim=others)
    return out


def expand_planes(planes: dict[str, Tensor], size: tuple[int, int, int, int]) -> list[Tensor]:
    """Each plane resized to ``size = (T, X, Y, Z)`` on its axes, ``(B, C, ...)`` broadcastable to ``(B, C, T, X, Y, Z)``.

    Bilinear, ``align_corners=False`` (a voxel reads the plane at its centre); a plane already at
    the size is returned as it is.

    Raises:
        ValueError: a missing plane or a plane that is not ``(B, C, a, b)``.
    """
    missing = set(PLANES) - set(planes)
    if missing:
        raise ValueError(f"`planes` must hold all six planes {tuple(PLANES)}; missing {sorted(missing)}.")
    out = []
    for name, axes in PLANES.items():
        plane = planes[name]
        if plane.ndim != 4:
            raise ValueError(f"Plane {name!r} must be (B, C, a, b), got {tuple(plane.shape)}.")
        target = (size[axes[0] - 2], size[axes[1] - 2])
        if tuple(plane.shape[-2:]) != target:
            plane = F.interpolate(plane, size=target, mode="bilinear", align_corners=False)
        shape = [plane.shape[0], plane.shape[1], 1, 1, 1, 1]
        shape[axes[0]], shape[axes[1]] = target
        out.append(plane.reshape(shape))
    return out


def rollout_shape(size: tuple[int, int, int, int], multiple: int = 1) -> tuple[int, int]:
    """``(H, W)`` of the padded rollout of planes over ``size = (T, X, Y, Z)``, padded up to ``multiple``."""
    t, x, y, z = size
    return math.ceil((x + z + t) / multiple) * multiple, math.ceil((y + z + t) / multiple) * multiple


def rollout_mask(size: tuple[int, int, int, int], multiple: int = 1) -> Tensor:
    """``(H, W)`` float mask of the rollout of planes over ``size = (T, X, Y, Z)``: 1 on a plane, 0 on the padding."""
    t, x, y, z = size
    mask = torch.zeros(rollout_shape(size, multiple))
    mask[:x, : y + z + t] = 1.0
    mask[x : x + z + t, :y] = 1.0
    mask[x : x + z, y + z : y + z + t] = 1.0
    return mask


def rollout_planes(planes: dict[str, Tensor], multiple: int = 1) -> Tensor:
    """The padded rollout ``(B, C, H, W)`` of six planes (see the module docstring for the layout).

    Raises:
        ValueError: a missing plane, or planes whose shared axes disagree in length.
    """
    missing = set(PLANES) - set(planes)
    if missing:
        raise ValueError(f"`planes` must hold all six planes {tuple(PLANES)}; missing {sorted(missing)}.")
    xy, xz, tz = planes["xy"], planes["xz"], planes["tz"]
    b, c, x, y = xy.shape
    z, t = xz.shape[-1], tz.shape[-2]
    expected = {"xy": (x, y), "xz": (x, z), "yz": (y, z), "tx": (t, x), "ty": (t, y), "tz": (t, z)}
    for name, shape in expected.items():
        if tuple(planes[name].shape) != (b, c, *shape):
            raise ValueError(
                f"Plane {name!r} must be {(b, c, *shape)} to match the others, got {tuple(planes[name].shape)}."
            )
    h, w = rollout_shape((t, x, y, z), multiple)
    image = xy.new_zeros(b, c, h, w)
    image[..., :x, :y] = xy
    image[..., :x, y : y + z] = xz
    image[..., :x, y + z : y + z + t] = planes["tx"].transpose(-1, -2)
    image[..., x : x + z, :y] = planes["yz"].transpose(-1, -2)
    image[..., x + z : x + z + t, :y] = planes["ty"]
    image[..., x : x + z, y + z : y + z + t] = tz.transpose(-1, -2)
    return image


def unroll_planes(image: Tensor, size: tuple[int, int, int, int]) -> dict[str, Tensor]:
    """The six planes of a rollout ``(B, C, H, W)`` of planes over ``size = (T, X, Y, Z)``; padding is ignored.

    Raises:
        ValueError: ``image`` smaller than the rollout of ``size``.
    """
    t, x, y, z = size
    if image.ndim != 4 or image.shape[-2] < x + z + t or image.shape[-1] < y + z + t:
        raise ValueError(
            f"`image` must be (B, C, >={x + z + t}, >={y + z + t}) for planes over (T, X, Y, Z) = {size}, "
            f"got {tuple(image.shape)}."
        )
    return {
        "xy": image[..., :x, :y],
        "xz": image[..., :x, y : y + z],
        "tx": image[..., :x, y + z : y + z + t].transpose(-1, -2),
        "yz": image[..., x : x + z, :y].transpose(-1, -2),
        "ty": image[..., x + z : x + z + t, :y],
        "tz": image[..., x : x + z, y + z : y + z + t].transpose(-1, -2),
    }


class _FrameEncoder(nn.Module):
    """Class embedding and 3D convs per frame: ``(B, T, X, Y, Z)`` ids -> ``(B, F, T, X/2, Y/2, Z/2)``."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, width)
        self.convs = nn.Sequential(
            nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv3d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
        )  # fmt: skip

    def forward(self, occupancy: Tensor) -> Tensor:
        b, t = occupancy.shape[:2]
        x = self.embed(occupancy.flatten(0, 1)).permute(0, 4, 1, 2, 3)  # (B·T, F, X, Y, Z)
        x = self.convs(x)
        return x.unflatten(0, (b, t)).transpose(1, 2)  # (B, F, T, X', Y', Z')


class _VoxelHead(nn.Module):
    """Per-voxel MLP on summed features: ``(B, D, T, X, Y, Z)`` -> class logits ``(B, K, T, X, Y, Z)``."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, num_classes))

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp(features.movedim(1, -1)).movedim(-1, 1)


class _OccupancyVAE(nn.Module):
    """Shared checks, the latent scale and the reparameterised forward pass of the two VAEs."""

    num_classes: int
    volume_size: tuple[int, int, int, int]
    latent_shape: tuple[int, ...]

    def __init__(self) -> None:
        super().__init__()
        #: Divides the latent mean for the DiT (set after training to the training latents' std).
        self.register_buffer("latent_scale", torch.ones(()))

    def encode(self, occupancy: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} must implement `encode` (HexPlaneVAE and VolumeVAE do)."
        )

    def decode(self, latent: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} must implement `decode` (HexPlaneVAE and VolumeVAE do)."
        )

    def encode_latent(self, occupancy: Tensor) -> Tensor:
        """The unit-scale latent the DiT sees: ``mean / latent_scale``."""
        return self.encode(occupancy)[0] / self.latent_scale

    def decode_latent(self, latent: Tensor) -> Tensor:
        """Class logits of a unit-scale latent: ``decode(latent · latent_scale)``."""
        return self.decode(latent * self.latent_scale)

    def extra_repr(self) -> str:
        # where the weights came from (set by `trained_occupancy_vae`), so that caches keyed on repr follow them
        return f"source={getattr(self, 'distill_source', None)!r}"

    def _check_occupancy(self, occupancy: Tensor) -> None:
        if occupancy.ndim != 5 or tuple(occupancy.shape[1:]) != self.volume_size:
            raise ValueError(
                f"`occupancy` must be (B, T, X, Y, Z) = (B, {', '.join(map(str, self.volume_size))}) class ids, "
                f"got {tuple(occupancy.shape)}."
            )
        if (
            occupancy.dtype != torch.long
            or int(occupancy.min()) < 0
            or int(occupancy.max()) >= self.num_classes
        ):
            raise ValueError(
                f"`occupancy` must hold int64 class ids in [0, {self.num_classes}), got dtype {occupancy.dtype} "
                f"with values in [{int(occupancy.min())}, {int(occupancy.max())}]."
            )

    def forward(
        self, occupancy: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits (B, K, T, X, Y, Z), mean, logvar)``; the decoder sees ``mean + σ ε`` (the reparameterisation)."""
        mean, logvar = self.encode(occupancy)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + (0.5 * logvar).exp() * noise), mean, logvar

    @property
    def compression_ratio(self) -> float:
        """Voxels of the input over numbers in the latent (the paper's compression ratio)."""
        return math.prod(self.volume_size) / math.prod(self.latent_shape)


class HexPlaneVAE(_OccupancyVAE):
    """The HexPlane VAE: 4D occupancy -> six latent planes (as one rolled-out image) -> class logits.

    Args:
        num_classes: occupancy classes, empty space included.
        grid_size: ``(X, Y, Z)`` voxels of one frame (each even: the encoder halves them).
        num_frames: ``T`` frames per sequence.
        latent_channels: channels ``C`` of each plane.
        width: encoder and decoder width.
        multiple: the rollout is padded to a multiple of this (the DiT's patch size).

    The latent is the rollout ``(B, C, H, W)`` of planes at half the spatial resolution and full
    temporal resolution; :attr:`latent_shape` is its unpadded size.

    Raises:
        ValueError: a non-positive or odd size.
    """

    def __init__(
        self,
        num_classes: int = 7,
        grid_size: tuple[int, int, int] = (16, 16, 8),
        num_frames: int = 4,
        latent_channels: int = 4,
        width: int = 8,
        multiple: int = 1,
    ) -> None:
        super().__init__()
        if any(int(s) < 2 or int(s) % 2 for s in grid_size) or len(grid_size) != 3:
            raise ValueError(f"`grid_size` must be three even voxel counts >= 2, got {grid_size}.")
        for name, value in (("num_classes", num_classes), ("num_frames", num_frames),
                            ("latent_channels", latent_channels), ("width", width), ("multiple", multiple)):  # fmt: skip
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        self.num_classes, self.multiple = num_classes, multiple
        self.volume_size = (num_frames, *map(int, grid_size))
        self.plane_size = (num_frames, *(int(s) // 2 for s in grid_size))
        t, x, y, z = self.plane_size
        self.latent_shape = (latent_channels, x * y + x * z + y * z + t * (x + y + z))
        self.encoder = _FrameEncoder(num_classes, width)
        self.heads = nn.ModuleDict(
            {p: nn.Conv2d(2 * width, 2 * latent_channels, 3, padding=1) for p in PLANES}
        )
        self.plane_decoders = nn.ModuleDict(
            {
                p: nn.Sequential(
                    nn.Conv2d(latent_channels, 2 * width, 3, padding=1),
                    nn.SiLU(),
                    nn.Conv2d(2 * width, 2 * width, 1),
                )  # fmt: skip
                for p in PLANES
            }
        )
        self.head = _VoxelHead(2 * width, num_classes)

    def encode(self, occupancy: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the latent, each a rollout ``(B, C, H, W)``.

        Raises:
            ValueError: ``occupancy`` not ``(B, T, X, Y, Z)`` int64 class ids of this VAE's sizes.
        """
        self._check_occupancy(occupancy)
        planes = project_to_planes(self.encoder(occupancy))
        stats = {p: self.heads[p](plane) for p, plane in planes.items()}
        mean = rollout_planes({p: s.chunk(2, dim=1)[0] for p, s in stats.items()}, self.multiple)
        logvar = rollout_planes({p: s.chunk(2, dim=1)[1] for p, s in stats.items()}, self.multiple)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latent: Tensor) -> Tensor:
        """Class logits ``(B, K, T, X, Y, Z)`` of a latent rollout ``(B, C, H, W)``."""
        planes = unroll_planes(latent, self.plane_size)
        features = {p: self.plane_decoders[p](plane) for p, plane in planes.items()}
        return self.head(sum(expand_planes(features, self.volume_size)))

    def rollout_size(self) -> tuple[int, int]:
        """``(H, W)`` of the latent rollout (padded to ``multiple``)."""
        return rollout_shape(self.plane_size, self.multiple)

    def latent_mask(self) -> Tensor:
        """``(H, W)`` mask of the latent rollout: 1 on the planes, 0 on the padding (:func:`rollout_mask`)."""
        return rollout_mask(self.plane_size, self.multiple)


class VolumeVAE(_OccupancyVAE):
    """The plain 3D-latent baseline: a latent volume per frame ``(B, C, T, x, y, z)``, decoded by trilinear upsampling.

    Same encoder and voxel head as :class:`HexPlaneVAE`; the latent volume is the encoder's features
    average-pooled to ``latent_size`` (set it to match the HexPlane's compression ratio).

    Raises:
        ValueError: a non-positive size.
    """

    def __init__(
        self,
        num_classes: int = 7,
        grid_size: tuple[int, int, int] = (16, 16, 8),
        num_frames: int = 4,
        latent_channels: int = 4,
        latent_size: tuple[int, int, int] = (4, 4, 3),
        width: int = 8,
    ) -> None:
        super().__init__()
        if len(latent_size) != 3 or any(int(s) < 1 for s in latent_size):
            raise ValueError(f"`latent_size` must be three positive voxel counts, got {latent_size}.")
        self.num_classes = num_classes
        self.volume_size = (num_frames, *map(int, grid_size))
        self.latent_size = tuple(int(s) for s in latent_size)
        self.latent_shape = (latent_channels, num_frames, *self.latent_size)
        self.encoder = _FrameEncoder(num_classes, width)
        self.to_stats = nn.Conv3d(2 * width, 2 * latent_channels, 3, padding=1)
        self.from_latent = nn.Sequential(
            nn.Conv3d(latent_channels, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.Conv3d(2 * width, 2 * width, 3, padding=1),
        )
        self.head = _VoxelHead(2 * width, num_classes)

    def encode(self, occupancy: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``(B, C, T, x, y, z)`` of the latent volume."""
        self._check_occupancy(occupancy)
        features = self.encoder(occupancy)  # (B, F, T, X', Y', Z')
        b, _, t = features.shape[:3]
        pooled = F.adaptive_avg_pool3d(features.transpose(1, 2).flatten(0, 1), self.latent_size)
        mean, logvar = self.to_stats(pooled).chunk(2, dim=1)
        unflat = lambda v: v.unflatten(0, (b, t)).transpose(1, 2)  # noqa: E731
        return unflat(mean), unflat(logvar).clamp(-30.0, 20.0)

    def decode(self, latent: Tensor) -> Tensor:
        """Class logits ``(B, K, T, X, Y, Z)`` of a latent volume ``(B, C, T, x, y, z)``."""
        b, _, t = latent.shape[:3]
        frames = self.from_latent(latent.transpose(1, 2).flatten(0, 1))
        frames = F.interpolate(frames, size=self.volume_size[1:], mode="trilinear", align_corners=False)
        return self.head(frames.unflatten(0, (b, t)).transpose(1, 2))
