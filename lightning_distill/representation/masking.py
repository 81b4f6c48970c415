"""Patch masks for masked image modelling: random, block-wise, and two disjoint views.

A mask is a float tensor ``(B, L)`` over the ``L`` patches of each image, ``1`` = masked
(hidden from the encoder, to be predicted) and ``0`` = visible, the convention of MAE and of
:class:`transformers.ViTMAEForPreTraining`. Every row has the same number of visible patches,
``num_visible(L, mask_ratio) = int(L * (1 - mask_ratio))`` (MAE's rounding), so visible tokens
stack into a dense ``(B, V, D)`` tensor. Randomness comes from the ``torch.Generator`` passed in.

* :func:`random_masks` — MAE: each patch masked uniformly at random.
* :func:`block_masks` — SimMIM/DMJD block-wise masking: square groups of ``block x block``
  patches are masked or kept together.
* :func:`disjoint_masks` — DMJD: two views of the same image whose *visible* sets are disjoint
  (the second view's visible patches are drawn from the first view's masked ones), so the two
  views together see up to twice as many patches per image for the same encoder cost.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> first, second = disjoint_masks(2, 16, 0.75, generator=g)
    >>> int((1 - first).sum(1)[0]), bool(((1 - first) * (1 - second)).sum() == 0)
    (4, True)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_distill.utils.checks import check_int

__all__ = [
    "block_masks",
    "disjoint_masks",
    "grid_side",
    "num_visible",
    "random_masks",
    "visible_tokens",
]


def _check_ratio(mask_ratio: float) -> None:
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(
            f"`mask_ratio` must be in [0, 1), got {mask_ratio}; set `model.init_args.mask_ratio`."
        )


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per image: ``int(num_patches * (1 - mask_ratio))``, at least 1.

    Example:
        >>> num_visible(196, 0.75), num_visible(64, 0.6)
        (49, 25)
    """
    check_int("num_patches", num_patches, low=1)
    _check_ratio(mask_ratio)
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def grid_side(num_patches: int) -> int:
    """Side of the square patch grid; ``ValueError`` unless ``num_patches`` is a square."""
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(f"`num_patches` must be a square number (a square patch grid), got {num_patches}.")
    return side


def _mask_from_order(order: Tensor, visible: int) -> Tensor:
    """``(B, L)`` mask that keeps the first ``visible`` indices of each row of ``order``."""
    mask = torch.ones(order.shape, device=order.device)
    mask.scatter_(1, order[:, :visible], 0.0)
    return mask


def random_masks(
    batch: int, num_patches: int, mask_ratio: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """MAE masks: ``num_visible`` patches per row chosen uniformly at random. Shape ``(batch, num_patches)``."""
    check_int("batch", batch, low=1)
    visible = num_visible(num_patches, mask_ratio)
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    return _mask_from_order(order, visible)


def _expand_groups(group_mask: Tensor, side: int, block: int) -> Tensor:
    """``(B, G)`` mask over ``block x block`` groups -> ``(B, side * side)`` mask over patches."""
    b = group_mask.shape[0]
    g = side // block
    grid = group_mask.view(b, g, 1, g, 1).expand(b, g, block, g, block)
    return grid.reshape(b, side * side).contiguous()


def block_masks(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    *,
    block: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Block-wise masks: square groups of ``block x block`` patches masked together (DMJD, SimMIM).

    ``int(G * (1 - mask_ratio))`` of the ``G = (side / block) ** 2`` groups stay visible.

    Raises:
        ValueError: a non-square ``num_patches`` or a grid side not divisible by ``block``.
    """
    check_int("batch", batch, low=1)
    check_int("block", block, low=1)
    side = grid_side(num_patches)
    if side % block:
        raise ValueError(
            f"`block` ({block}) must divide the patch grid side ({side}); use another image or patch size."
        )
    groups = (side // block) ** 2
    visible = num_visible(groups, mask_ratio)
    order = torch.rand(batch, groups, generator=generator).argsort(dim=1)
    return _expand_groups(_mask_from_order(order, visible), side, block)


def disjoint_masks(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    *,
    kind: Literal["random", "block"] = "random",
    block: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Two masks per image with disjoint visible sets and the same visible count (DMJD).

    The first mask is a :func:`random_masks` / :func:`block_masks` mask; the second view keeps as
    many patches (groups), drawn at random among the first view's masked ones. With
    ``mask_ratio >= 0.5`` this is always possible (the official code's ``pred_ratio = 1``).

    Returns:
        ``(first, second)``, each ``(batch, num_patches)``.

    Raises:
        ValueError: ``mask_ratio < 0.5`` (the visible sets cannot be disjoint) or a bad ``kind``.
    """
    if kind not in ("random", "block"):
        raise ValueError(
            f"`kind` must be 'random' or 'block', got {kind!r}; set `model.init_args.mask_kind`."
        )
    _check_ratio(mask_ratio)
    if mask_ratio < 0.5:
        raise ValueError(
            f"`mask_ratio` must be >= 0.5 for two views with disjoint visible patches, got {mask_ratio}; "
            "set `model.init_args.mask_ratio`."
        )
    check_int("batch", batch, low=1)
    if kind == "block":
        side = grid_side(num_patches)
        if side % block:
            raise ValueError(
                f"`block` ({block}) must divide the patch grid side ({side}); use another image or patch size."
            )
        units = (side // block) ** 2
    else:
        units = num_patches
    visible = num_visible(units, mask_ratio)
    order = torch.rand(batch, units, generator=generator).argsort(dim=1)
    first = _mask_from_order(order, visible)
    # the second view's visible units: a random choice among the first view's masked ones
    hidden = order[:, visible:]
    pick = torch.rand(hidden.shape, generator=generator).argsort(dim=1)[:, :visible]
    second = torch.ones(batch, units)
    second.scatter_(1, hidden.gather(1, pick), 0.0)
    if kind == "block":
        side = grid_side(num_patches)
        return _expand_groups(first, side, block), _expand_groups(second, side, block)
    return first, second


def visible_tokens(tokens: Tensor, mask: Tensor) -> Tensor:
    """The visible rows of ``tokens`` ``(B, L, D)`` in patch order: ``(B, V, D)``.

    Raises:
        ValueError: shapes that do not match, or rows with different visible counts.
    """
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"`tokens` must be (B, L, D) and `mask` (B, L), got {tuple(tokens.shape)} and {tuple(mask.shape)}."
        )
    keep = mask == 0
    counts = keep.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"every mask row must keep the same number of patches, got {counts.tolist()}.")
    return tokens[keep].view(tokens.shape[0], int(counts[0]), tokens.shape[-1])
