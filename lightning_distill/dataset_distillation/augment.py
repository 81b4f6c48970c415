"""Differentiable siamese augmentation (DSA) in pure torch.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation" (arXiv 2102.08259).
Matching methods compare real and synthetic images after augmenting both; the augmentation must
be *differentiable* with respect to the synthetic images (the loss is backpropagated through it)
and *siamese*: the same random parameters are applied to the real and the synthetic batch, so the
two are compared under the same transformation.

The operations and their ranges follow ``DiffAugment``/``ParamDiffAug`` of the official code
(VICO-UoE/DatasetCondensation ``utils.py``):

=============  ================================================================  ===========
op             transformation (per image; ``u ~ U[0, 1)``)                        default
=============  ================================================================  ===========
``color``      brightness ``x + (u - 0.5) b``, then saturation                    b 1, s 2, c 0.5
               ``(x - mean_C x) (s u) + mean_C x``, then contrast
               ``(x - mean_CHW x) (u + c) + mean_CHW x``
``crop``       translation by up to ``round(0.125 H)`` pixels, zero fill           0.125
``cutout``     a zeroed square of side ``round(0.5 H)`` at a random centre         0.5
``flip``       horizontal flip with probability 0.5 (leave it out for digits)     0.5
``scale``      independent x/y scaling by a factor in ``[1/1.2, 1.2]``             1.2
``rotate``     rotation by up to ±15 degrees (bilinear, zero padding)             15
=============  ================================================================  ===========

As in the official ``aug_mode='S'``, each call picks *one* op of the strategy at random
(``mode="single"``); ``mode="all"`` applies them all in order. With ``siamese=True`` one set of
parameters is drawn per call and shared by every image of any batch it is applied to (the
official Siamese mode); with ``siamese=False`` every image gets its own (evaluation-time
augmentation), and the op is still one per call.

Randomness comes only from the ``torch.Generator`` given to :meth:`SiameseAugment.sample`, never
from the global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentParams", "SiameseAugment", "DSA_OPS"]

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""The operations a strategy string may name, joined by ``_``."""

_PRIMITIVES = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


@dataclass(frozen=True)
class AugmentParams:
    """The random parameters of one augmentation call.

    Attributes:
        ops: the primitive operations, applied in order (``"brightness"``, ``"saturation"``,
            ``"contrast"``, ``"crop"``, ``"cutout"``, ``"flip"``, ``"scale"``, ``"rotate"``).
        values: per-op tensors of shape ``(N,)`` or ``(N, 2)``, ``N`` = 1 (shared by every image,
            siamese) or the batch size. Brightness offsets, saturation/contrast factors, ``(u_h,
            u_w)`` fractions for crop and cutout, flip indicators (0/1), ``(s_x, s_y)`` scale
            factors, rotation angles in radians.
    """

    ops: tuple[str, ...]
    values: dict[str, Tensor]

    @property
    def size(self) -> int:
        """``N``: 1 when the parameters are shared, else the batch size they were drawn for."""
        return next(iter(self.values.values())).shape[0] if self.values else 1


class SiameseAugment:
    """Differentiable augmentation with explicit, shareable random parameters (DSA).

    Args:
        strategy: ops joined by ``_`` (from :data:`DSA_OPS`), e.g. the official
            ``"color_crop_cutout_flip_scale_rotate"``; ``"none"`` or ``""`` for no augmentation.
            Digits should not be flipped: ``"color_crop_cutout_scale_rotate"`` (the default).
        mode: ``"single"`` (one random op per call, the official default) or ``"all"``.
        siamese: draw one set of parameters per call, shared by every image.
        brightness: brightness range ``b``.
        saturation: saturation factor range ``s``.
        contrast: contrast offset ``c``.
        crop: largest translation as a fraction of the image side.
        cutout: side of the cut-out square as a fraction of the image side.
        flip: flip probability.
        scale: largest scale factor ``r`` (factors in ``[1/r, r]``).
        rotate: largest rotation in degrees.

    Raises:
        ValueError: an unknown op or mode, or a range outside its domain.

    Example:
        >>> aug = SiameseAugment("crop_scale")
        >>> real, syn = torch.randn(64, 1, 8, 8), torch.randn(10, 1, 8, 8, requires_grad=True)
        >>> params = aug.sample(real, torch.Generator().manual_seed(0))
        >>> out_real, out_syn = aug(real, params), aug(syn, params)  # the same transformation
        >>> out_syn.shape, params.size, out_syn.requires_grad
        (torch.Size([10, 1, 8, 8]), 1, True)
    """

    def __init__(
        self,
        strategy: str = "color_crop_cutout_scale_rotate",
        *,
        mode: Literal["single", "all"] = "single",
        siamese: bool = True,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
        crop: float = 0.125,
        cutout: float = 0.5,
        flip: float = 0.5,
        scale: float = 1.2,
        rotate: float = 15.0,
    ) -> None:
        if not isinstance(strategy, str):
            raise TypeError(
                f"`strategy` must be a string such as 'color_crop_cutout', got {type(strategy).__name__}."
            )
        ops = () if strategy.lower() in ("", "none") else tuple(strategy.split("_"))
        unknown = [op for op in ops if op not in DSA_OPS]
        if unknown:
            raise ValueError(
                f"`strategy`={strategy!r} names unknown ops {unknown}; the ops are {list(DSA_OPS)}."
            )
        if mode not in ("single", "all"):
            raise ValueError(f"`mode` must be 'single' or 'all', got {mode!r}.")
        if scale < 1.0:
            raise ValueError(f"`scale` must be >= 1 (factors in [1/scale, scale]), got {scale}.")
        for name, value in (("crop", crop), ("cutout", cutout), ("flip", flip)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        for name, value in (
            ("brightness", brightness),
            ("saturation", saturation),
            ("contrast", contrast),
            ("rotate", rotate),
        ):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        self.strategy = "_".join(ops) if ops else "none"
        self.ops = ops
        self.mode = mode
        self.siamese = siamese
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.crop, self.cutout, self.flip, self.scale, self.rotate = crop, cutout, flip, scale, rotate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r}, mode={self.mode!r}, siamese={self.siamese})"

    # ------------------------------------------------------------------ sampling
    def sample(self, batch: Tensor | int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters of one call.

        Args:
            batch: the batch ``(B, C, H, W)`` (or its size ``B``) the parameters are for; with
                ``siamese=True`` they have size 1 and fit any batch.
            generator: CPU generator; ``None`` uses the global random state.

        Returns:
            The parameters, on the CPU (moved to the images' device when applied).

        Raises:
            ValueError: a batch size < 1.
        """
        size = batch.shape[0] if isinstance(batch, Tensor) else int(batch)
        if size < 1:
            raise ValueError(f"`batch` must hold at least one image, got size {size}.")
        if not self.ops:
            return AugmentParams((), {})
        if self.mode == "single":
            choice = int(torch.randint(len(self.ops), (1,), generator=generator))
            chosen: tuple[str, ...] = (self.ops[choice],)
        else:
            chosen = self.ops
        n = 1 if self.siamese else size
        primitives = tuple(p for op in chosen for p in _PRIMITIVES[op])
        values = {p: self._draw(p, n, generator) for p in primitives}
        return AugmentParams(primitives, values)

    def _draw(self, op: str, n: int, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(n, generator=generator)
        if op == "brightness":
            return (u - 0.5) * self.brightness
        if op == "saturation":
            return u * self.saturation
        if op == "contrast":
            return u + self.contrast
        if op == "flip":
            return (u < self.flip).float()
        if op == "rotate":
            return (u - 0.5) * 2.0 * math.radians(self.rotate)
        if op == "scale":
            v = torch.stack([u, torch.rand(n, generator=generator)], dim=1)
            return v * (self.scale - 1.0 / self.scale) + 1.0 / self.scale
        # crop and cutout: fractions, turned into whole pixels once the image size is known
        return torch.stack([u, torch.rand(n, generator=generator)], dim=1)

    # ------------------------------------------------------------------ applying
    def __call__(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply ``params`` to the images ``x`` ``(B, C, H, W)``; differentiable w.r.t. ``x``.

        Raises:
            ValueError: ``x`` is not 4-D, or the parameters were drawn for another batch size.
        """
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"`x` must be images (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}.")
        if params.size not in (1, x.shape[0]):
            raise ValueError(
                f"The parameters were drawn for a batch of {params.size} images, got {x.shape[0]}; "
                "draw them with `siamese=True` to share them between batches of different sizes."
            )
        for op in params.ops:
            value = params.values[op].to(x.device)
            x = getattr(self, f"_{op}")(x, value)
        return x.contiguous()

    @staticmethod
    def _per_image(value: Tensor, x: Tensor) -> Tensor:
        return value.to(x.dtype).reshape(-1, 1, 1, 1)

    def _brightness(self, x: Tensor, v: Tensor) -> Tensor:
        return x + self._per_image(v, x)

    def _saturation(self, x: Tensor, v: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * self._per_image(v, x) + mean

    def _contrast(self, x: Tensor, v: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * self._per_image(v, x) + mean

    def _flip(self, x: Tensor, v: Tensor) -> Tensor:
        return torch.where(self._per_image(v, x) > 0.5, x.flip(3), x)

    def _crop(self, x: Tensor, v: Tensor) -> Tensor:
        b, _, h, w = x.shape
        shift_h, shift_w = int(h * self.crop + 0.5), int(w * self.crop + 0.5)
        dh = (v[:, 0] * (2 * shift_h + 1)).floor().long() - shift_h  # integers in [-shift, shift]
        dw = (v[:, 1] * (2 * shift_w + 1)).floor().long() - shift_w
        dh, dw = dh.expand(b), dw.expand(b)
        # Output pixel (i, j) reads input (i + dh, j + dw); outside the image it reads the zero border.
        rows = (torch.arange(h, device=x.device)[None, :] + dh[:, None] + 1).clamp(0, h + 1)  # (B, H)
        cols = (torch.arange(w, device=x.device)[None, :] + dw[:, None] + 1).clamp(0, w + 1)  # (B, W)
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H + 2, W + 2, C)
        batch = torch.arange(b, device=x.device)[:, None, None]
        return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _cutout(self, x: Tensor, v: Tensor) -> Tensor:
        b, _, h, w = x.shape
        size_h, size_w = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
        centre_h = (v[:, 0] * (h + 1 - size_h % 2)).floor().long()
        centre_w = (v[:, 1] * (w + 1 - size_w % 2)).floor().long()
        top, left = (centre_h - size_h // 2)[:, None], (centre_w - size_w // 2)[:, None]
        rows = torch.arange(h, device=x.device)[None, :]
        cols = torch.arange(w, device=x.device)[None, :]
        in_rows = (rows >= top) & (rows < top + size_h)  # (N, H)
        in_cols = (cols >= left) & (cols < left + size_w)  # (N, W)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (N, H, W)
        return x * keep[:, None].to(x.dtype)

    def _affine(self, x: Tensor, theta: Tensor) -> Tensor:
        theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _scale(self, x: Tensor, v: Tensor) -> Tensor:
        zeros = torch.zeros_like(v[:, 0])
        theta = torch.stack(
            [torch.stack([v[:, 0], zeros, zeros], 1), torch.stack([zeros, v[:, 1], zeros], 1)], dim=1
        )
        return self._affine(x, theta)

    def _rotate(self, x: Tensor, v: Tensor) -> Tensor:
        cos, sin, zeros = torch.cos(v), torch.sin(v), torch.zeros_like(v)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], dim=1)
        return self._affine(x, theta)
