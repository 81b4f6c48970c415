"""Per-patch HOG targets (MaskFeat, DMJD) computed by scikit-image.

:func:`hog_targets` turns images ``(B, C, H, W)`` into one HOG descriptor per ViT patch,
``(B, L, C * cells_per_patch**2 * orientations)``, in the patch order of
:meth:`transformers.ViTMAEForPreTraining.patchify` (row-major). Each channel gets its own
histograms (as DMJD's ``hog_tensor.py`` does for RGB), cells are ``patch_size / cells_per_patch``
pixels and :func:`skimage.feature.hog` normalises each cell (``cells_per_block=(1, 1)``, L2); the
official code leaves the cell histograms unnormalised, which we do not copy: skimage has no
unnormalised mode, and per-cell normalisation keeps targets of flat and textured patches on one
scale. Targets are computed on the CPU (a host round trip per batch).

Example:
    >>> import torch
    >>> hog_targets(torch.rand(2, 1, 16, 16), patch_size=4).shape
    torch.Size([2, 16, 36])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lightning_distill.utils.checks import check_int

__all__ = ["HOGFeatures", "hog_dim", "hog_targets"]


def hog_dim(num_channels: int, *, orientations: int = 9, cells_per_patch: int = 2) -> int:
    """Length of one patch's HOG descriptor."""
    return num_channels * cells_per_patch**2 * orientations


def hog_targets(
    images: Tensor, patch_size: int, *, orientations: int = 9, cells_per_patch: int = 2
) -> Tensor:
    """HOG descriptor of every patch: ``(B, C, H, W) -> (B, L, C * cells_per_patch**2 * orientations)``.

    Raises:
        ValueError: a patch size not divisible by ``cells_per_patch`` or images not divisible into patches.
    """
    from skimage.feature import hog

    check_int("patch_size", patch_size, low=1)
    check_int("orientations", orientations, low=1)
    check_int("cells_per_patch", cells_per_patch, low=1)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (B, C, H, W), got {tuple(images.shape)}.")
    b, c, h, w = images.shape
    if patch_size % cells_per_patch or h % patch_size or w % patch_size:
        raise ValueError(
            f"`patch_size` ({patch_size}) must divide the image ({h}x{w}) and be divisible by "
            f"`cells_per_patch` ({cells_per_patch})."
        )
    cell = patch_size // cells_per_patch
    gh, gw, k = h // patch_size, w // patch_size, cells_per_patch
    array = images.detach().float().cpu().numpy()
    out = np.empty((b, c, gh * k, gw * k, orientations), dtype=np.float32)
    for i in range(b):
        for j in range(c):
            cells = hog(
                array[i, j],
                orientations=orientations,
                pixels_per_cell=(cell, cell),
                cells_per_block=(1, 1),
                block_norm="L2",
                feature_vector=False,
            )  # (rows, cols, 1, 1, orientations)
            out[i, j] = cells[:, :, 0, 0, :]
    # (B, C, gh, k, gw, k, O) -> (B, gh, gw, C, k, k, O) -> (B, L, D)
    grid = out.reshape(b, c, gh, k, gw, k, orientations).transpose(0, 2, 4, 1, 3, 5, 6)
    return torch.from_numpy(np.ascontiguousarray(grid).reshape(b, gh * gw, -1)).to(images.device)


class HOGFeatures(nn.Module):
    """The HOG target extractor as a module: images ``(B, C, H, W)`` -> all patches' HOG, flattened ``(B, L * D)``.

    DMJD's "teacher" is this fixed, parameter-free map; probing its output says how good the
    regression target itself is as a representation.
    """

    def __init__(self, patch_size: int, orientations: int = 9, cells_per_patch: int = 2) -> None:
        super().__init__()
        check_int("patch_size", patch_size, low=1)
        self.patch_size = patch_size
        self.orientations = orientations
        self.cells_per_patch = cells_per_patch

    def patch_targets(self, images: Tensor) -> Tensor:
        """Per-patch targets ``(B, L, D)`` (:func:`hog_targets`)."""
        return hog_targets(
            images, self.patch_size, orientations=self.orientations, cells_per_patch=self.cells_per_patch
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.patch_targets(images).flatten(1)
