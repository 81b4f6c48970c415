"""Segmentation canvases: digit glyphs pasted on textured backgrounds, with per-pixel class masks.

:func:`render_canvases` is a pure function of its inputs and a ``torch.Generator``: the same glyph
pool, settings and seed give the same images and masks bit for bit. A canvas is ``(3, S, S)`` in
``[0, 1]``: a background of smooth colour noise plus stripes of random direction and frequency,
and ``glyphs_per_image`` glyphs, each drawn in its own colour with its grey level as the alpha.
A pixel belongs to a glyph's class where the alpha exceeds ``threshold``; later glyphs cover
earlier ones. Class ids: ``0`` is background, ``1 + label`` a glyph of ``label``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BACKGROUND", "render_canvases", "textured_background"]

BACKGROUND = 0
"""Class id of the background in every mask."""


def textured_background(size: int, generator: torch.Generator) -> Tensor:
    """One ``(3, size, size)`` background in ``[0.15, 0.65]``: low-frequency colour noise plus stripes."""
    coarse = torch.rand(3, 1, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    angle = float(torch.rand((), generator=generator)) * math.pi
    period = 3.0 + 6.0 * float(torch.rand((), generator=generator))
    grid = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    stripes = torch.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    tint = torch.rand(3, 1, 1, generator=generator)
    texture = 0.6 * smooth.clamp(0, 1) + 0.4 * (0.5 + 0.5 * stripes) * tint
    return 0.15 + 0.5 * texture


def render_canvases(
    glyphs: Tensor,
    glyph_labels: Tensor,
    *,
    num_images: int,
    size: int = 32,
    glyphs_per_image: int = 3,
    threshold: float = 0.5,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Render ``num_images`` canvases from a pool of glyphs.

    Args:
        glyphs: ``(G, g, g)`` grey glyphs in ``[0, 1]`` (already at the size they are pasted).
        glyph_labels: ``(G,)`` int64 class of each glyph (``>= 0``).
        num_images: how many canvases.
        size: side ``S`` of a canvas, ``>= g``.
        glyphs_per_image: glyphs pasted on each canvas (placed without overlap when there is room).
        threshold: alpha above which a pixel takes the glyph's class.
        generator: the random source (placement, glyph choice, colours, textures).

    Returns:
        ``images (N, 3, S, S)`` float32 in ``[0, 1]`` and ``masks (N, S, S)`` int64 with
        :data:`BACKGROUND` = 0 and ``1 + glyph_labels`` on glyph pixels.

    Raises:
        ValueError: a glyph pool that is not ``(G, g, g)`` with ``G`` labels, a glyph larger than
            the canvas, or ``glyphs_per_image`` < 1.

    Example:
        >>> g = torch.zeros(2, 4, 4); g[:, 1:3, 1:3] = 1.0
        >>> x, m = render_canvases(g, torch.tensor([3, 5]), num_images=2, size=8, glyphs_per_image=1,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> tuple(x.shape), sorted(set(m.unique().tolist()) - {0}) in ([4], [6], [4, 6])
        ((2, 3, 8, 8), True)
    """
    if glyphs.ndim != 3 or glyphs.shape[1] != glyphs.shape[2] or glyph_labels.shape != glyphs.shape[:1]:
        raise ValueError(
            f"`glyphs` must be (G, g, g) with `glyph_labels` (G,), got {tuple(glyphs.shape)} and "
            f"{tuple(glyph_labels.shape)}."
        )
    g = glyphs.shape[-1]
    if g > size:
        raise ValueError(
            f"`size` ({size}) must be at least the glyph size ({g}); raise `size` or shrink the glyphs."
        )
    if glyphs_per_image < 1:
        raise ValueError(f"`glyphs_per_image` must be >= 1, got {glyphs_per_image}.")
    images = torch.empty(num_images, 3, size, size)
    masks = torch.zeros(num_images, size, size, dtype=torch.long)
    for n in range(num_images):
        canvas = textured_background(size, generator)
        mask = masks[n]
        boxes: list[tuple[int, int]] = []
        for _ in range(glyphs_per_image):
            index = int(torch.randint(len(glyphs), (1,), generator=generator))
            top, left = _place(boxes, size, g, generator)
            boxes.append((top, left))
            alpha = glyphs[index]
            base = canvas[:, top : top + g, left : left + g].mean()
            # A colour that stands out from the background under it: bright on dark, dark on bright.
            shade = torch.rand(3, generator=generator) * 0.3
            colour = (0.7 + shade) if base < 0.4 else shade
            patch = canvas[:, top : top + g, left : left + g]
            canvas[:, top : top + g, left : left + g] = (1 - alpha) * patch + alpha * colour[:, None, None]
            region = mask[top : top + g, left : left + g]
            region[alpha > threshold] = 1 + int(glyph_labels[index])
        images[n] = canvas.clamp(0, 1)
    return images, masks


def _place(boxes: list[tuple[int, int]], size: int, g: int, generator: torch.Generator) -> tuple[int, int]:
    """A top-left corner whose ``g x g`` box does not overlap the earlier ones (20 tries, then any)."""
    corner = (0, 0)
    for _ in range(20):
        top, left = torch.randint(size - g + 1, (2,), generator=generator).tolist()
        corner = (top, left)
        if all(abs(top - t) >= g or abs(left - s) >= g for t, s in boxes):
            return corner
    return corner
