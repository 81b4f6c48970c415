"""Replayable random augmentations: sample parameters, store them, apply them again later.

A teacher-output cache (FKD, SRe2L's relabel step) stores the crop box and flip flag of each sample
together with the teacher's soft labels and replays them when the student trains. A
:class:`ReplayableAugmentation` therefore separates drawing parameters (from a
``torch.Generator`` or from :func:`~lightning_distill.utils.random.counter_uniforms`) from applying
them; :class:`RandomResizedCropFlip` is the crop-and-flip of ImageNet training in pure torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_distill.utils.random import counter_uniforms

__all__ = ["RandomResizedCropFlip", "ReplayableAugmentation"]


class ReplayableAugmentation(ABC):
    """A batched random augmentation that can sample its parameters or apply given ones.

    Subclasses say how many uniform numbers one sample needs (``num_uniforms``), turn them into a
    row of ``num_params`` float parameters, apply a batch of parameters to a batch of inputs, and
    describe themselves for the cache manifest (``config``).
    """

    num_params: int
    num_uniforms: int

    @abstractmethod
    def params_from_uniforms(self, uniforms: Tensor, height: int, width: int) -> Tensor:
        """Turn uniforms ``(B, num_uniforms)`` into parameters ``(B, num_params)`` (float32)."""

    @abstractmethod
    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Apply parameters ``(B, num_params)`` to ``images`` ``(B, C, H, W)``."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; a change invalidates cached teacher outputs."""

    def sample_params(
        self, batch_size: int, height: int, width: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample parameters ``(B, num_params)`` from a ``torch.Generator``."""
        uniforms = torch.rand((batch_size, self.num_uniforms), generator=generator, dtype=torch.float64)
        return self.params_from_uniforms(uniforms, height, width)

    def params_for(
        self, indices: Tensor | Sequence[int], *, seed: int, slot: int, height: int, width: int
    ) -> Tensor:
        """The parameters :class:`~lightning_distill.models.TeacherCache` gives a sample that is not cached yet, ``(B, num_params)``."""
        return self.params_from_uniforms(
            counter_uniforms(seed, slot, indices, self.num_uniforms), height, width
        )

    def __call__(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Sample parameters and apply them."""
        params = self.sample_params(images.shape[0], images.shape[-2], images.shape[-1], generator=generator)
        return self.apply(images, params.to(images.device))


class RandomResizedCropFlip(ReplayableAugmentation):
    """Random resized crop and horizontal flip, in pure torch, replayable from parameters.

    Sampling follows ``torchvision.transforms.RandomResizedCrop``: up to ten tries of an area
    fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, else a centre crop. The crop
    is resized with bilinear interpolation (``align_corners=False``, no antialiasing), so it equals
    ``F.interpolate(image[..., top:top + h, left:left + w], size, mode="bilinear")``.

    Parameters per sample (float32): ``[top, left, height, width, flip]``.

    Args:
        size: Output size, ``int`` or ``(height, width)``.
        scale: Range of the crop's area fraction, ``0 < low <= high <= 1``.
        ratio: Range of the crop's aspect ratio (width / height), ``0 < low <= high``.
        flip_p: Probability of a horizontal flip.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> aug = RandomResizedCropFlip(4)
        >>> images = torch.arange(64.0).view(1, 1, 8, 8)
        >>> params = torch.tensor([[2.0, 2.0, 4.0, 4.0, 1.0]])  # top, left, h, w, flip
        >>> aug.apply(images, params)[0, 0, 0]
        tensor([21., 20., 19., 18.])
    """

    num_params = 5
    _TRIES = 10
    num_uniforms = 4 * _TRIES + 1

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
    ):
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"`size` must be a positive int or (height, width), got {size}.")
        scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`scale` must be (low, high) with 0 < low <= high <= 1, got {scale}.")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must be (low, high) with 0 < low <= high, got {ratio}.")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"`flip_p` must be in [0, 1], got {flip_p}.")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_p = float(flip_p)

    def config(self) -> dict[str, Any]:
        return {
            "name": type(self).__name__,
            "size": list(self.size),
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip_p": self.flip_p,
        }

    def params_from_uniforms(self, uniforms: Tensor, height: int, width: int) -> Tensor:
        """Crop boxes and flip flags ``(B, 5)`` from uniforms ``(B, 41)``."""
        if uniforms.ndim != 2 or uniforms.shape[1] != self.num_uniforms:
            raise ValueError(
                f"`uniforms` must have shape (B, {self.num_uniforms}), got {tuple(uniforms.shape)}."
            )
        u = uniforms.to(torch.float64)
        tries = u[:, : 4 * self._TRIES].view(-1, self._TRIES, 4)  # (B, T, 4)
        area = height * width
        target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * tries[..., 0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
        w = torch.round(torch.sqrt(target_area * aspect))  # (B, T)
        h = torch.round(torch.sqrt(target_area / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top = torch.floor(tries[..., 2] * (height - h + 1))
        left = torch.floor(tries[..., 3] * (width - w + 1))
        first = torch.argmax(ok.to(torch.int8), dim=1)  # first valid try, (B,)
        rows = torch.arange(u.shape[0])
        box = torch.stack([top, left, h, w], dim=-1)[rows, first]  # (B, 4)
        fallback = torch.tensor(self._centre_crop(height, width), dtype=torch.float64)
        box = torch.where(ok.any(dim=1, keepdim=True), box, fallback)
        flip = (u[:, -1:] < self.flip_p).to(torch.float64)
        return torch.cat([box, flip], dim=1).to(torch.float32)

    def _centre_crop(self, height: int, width: int) -> list[float]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return [float((height - h) // 2), float((width - w) // 2), float(h), float(w)]

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Crop, resize and flip ``images`` ``(B, C, H, W)`` with ``params`` ``(B, 5)``.

        Returns:
            Shape ``(B, C, *size)``, the dtype of ``images``.

        Raises:
            ValueError: If the shapes do not match or a crop box leaves the image.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"`images` must be a float tensor (B, C, H, W), got {images.dtype} {tuple(images.shape)}."
            )
        if params.shape != (images.shape[0], self.num_params):
            raise ValueError(f"`params` must have shape ({images.shape[0]}, 5), got {tuple(params.shape)}.")
        height, width = images.shape[-2:]
        p = params.to(device=images.device, dtype=torch.float32)
        top, left, h, w, flip = p.unbind(dim=1)  # each (B,)
        if bool(((top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > height) | (left + w > width)).any()):
            raise ValueError(f"crop boxes must lie inside the {height}x{width} image, got {params.tolist()}.")
        batch, channels = images.shape[:2]
        out_h, out_w = self.size
        y0, y1, wy = self._axis(top, h, out_h)  # (B, out_h): input rows and the weight of y1
        x0, x1, wx = self._axis(left, w, out_w)  # (B, out_w)
        flipped = flip[:, None] > 0.5
        x0, x1, wx = (torch.where(flipped, t.flip(dims=[1]), t) for t in (x0, x1, wx))

        # Separable bilinear resampling: rows first, then columns.
        def pick_rows(index: Tensor) -> Tensor:  # (B, out_h) -> (B, C, out_h, W)
            return images.gather(2, index[:, None, :, None].expand(batch, channels, out_h, width))

        wy = wy[:, None, :, None].to(images.dtype)
        rows = pick_rows(y0) * (1 - wy) + pick_rows(y1) * wy  # (B, C, out_h, W)

        def pick_columns(index: Tensor) -> Tensor:  # (B, out_w) -> (B, C, out_h, out_w)
            return rows.gather(3, index[:, None, None, :].expand(batch, channels, out_h, out_w))

        wx = wx[:, None, None, :].to(images.dtype)
        return pick_columns(x0) * (1 - wx) + pick_columns(x1) * wx

    @staticmethod
    def _axis(start: Tensor, length: Tensor, out: int) -> tuple[Tensor, Tensor, Tensor]:
        """Bilinear taps resizing ``[start, start + length)`` to ``out`` pixels, as ``F.interpolate`` does.

        Returns:
            First and second input pixel (int64) and the weight of the second, each ``(B, out)``.
        """
        dst = torch.arange(out, device=start.device, dtype=torch.float32)
        src = ((dst[None, :] + 0.5) * (length[:, None] / out) - 0.5).clamp_min(0.0)
        first = src.floor()
        second = torch.minimum(first + 1, (length - 1)[:, None])
        weight = src - first
        return (start[:, None] + first).long(), (start[:, None] + second).long(), weight
