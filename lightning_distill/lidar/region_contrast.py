"""Parts of CALICO's region-level contrast (Sun et al., ICLR 2024, arXiv 2306.00349), no Lightning.

Both CALICO recipes (:class:`~lightning_distill.recipes.calico.CALICOPRC`, stage 1, and
:class:`~lightning_distill.recipes.calico.CALICORAD`, stage 2) compose these:

* :func:`check_region_contrast`: the argument checks both stages share.
* :func:`paper_view_augmentation`: the paper's random rigid view (rotation +-90 deg, scaling
  0.9-1.1, flips); :func:`step_generator`: the CPU generator of a step's views and samples, a
  function of the run seed and the step (so a resumed run draws what an uninterrupted one would).
* :func:`sample_region_points`: up to ``N`` semantic-rich and ``M`` semantic-less points (or BEV
  cells) per scan (CALICO: ``N = M = 1024``); :func:`cell_regions`: the occupied BEV cells and
  their region.
* :func:`symmetric_contrast`: a contrastive loss, averaged over both directions when asked
  (the official ``ClipLoss``); :func:`match_accuracy`: how often an anchor's nearest key is its own.

The losses themselves (PLRC, RAPC, RAD) are pure functions in
:mod:`lightning_distill.losses.contrastive`; the semantic pooling is
:class:`~lightning_distill.lidar.regions.RegionPartition`.

Example:
    >>> import torch
    >>> regions = torch.tensor([0, 0, 1, -1, -1, 2])
    >>> scans = torch.tensor([0, 0, 0, 0, 1, 1])
    >>> sample_region_points(regions, scans, num_rich=1, num_less=1, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_distill.lidar.augment import ScanAugmentation
from lightning_distill.lidar.bev import BEVGrid, bev_cells

__all__ = [
    "cell_regions",
    "check_region_contrast",
    "match_accuracy",
    "paper_view_augmentation",
    "sample_region_points",
    "step_generator",
    "symmetric_contrast",
]


def check_region_contrast(
    backbone: nn.Module,
    role: str,
    *,
    temperature: float,
    num_rich: int,
    num_less: int,
    voxel_size: float,
    input_features: str,
) -> None:
    """The argument checks of both CALICO stages.

    Raises:
        ValueError: a non-positive ``temperature`` or ``voxel_size``, ``num_rich`` < 1,
            ``num_less`` < 0, or an unknown ``input_features``.
        TypeError: a ``backbone`` without an int ``out_channels``.
    """
    for name, value in (("temperature", temperature), ("voxel_size", voxel_size)):
        if value <= 0:
            raise ValueError(f"`{name}` must be > 0, got {value}; set `model.init_args.{name}`.")
    if num_rich < 1 or num_less < 0:
        raise ValueError(
            f"`num_rich` must be >= 1 and `num_less` >= 0, got {num_rich} and {num_less}; "
            "set `model.init_args.num_rich` / `num_less`."
        )
    if input_features not in ("ones", "intensity"):
        raise ValueError(
            f"`input_features` must be 'ones' or 'intensity', got {input_features!r}; "
            "set `model.init_args.input_features`."
        )
    if not isinstance(getattr(backbone, "out_channels", None), int):
        raise TypeError(f"The {role} ({type(backbone).__name__}) needs an int `out_channels` attribute.")


def paper_view_augmentation() -> ScanAugmentation:
    """CALICO's view: rotation in [-90, 90] deg, flips with probability 0.5, scaling in [0.9, 1.1], no jitter."""
    return ScanAugmentation(
        rotation_range_deg=(-90.0, 90.0), flip_probability=0.5, scale_range=(0.9, 1.1), jitter_std=0.0
    )


def step_generator(step: int) -> torch.Generator:
    """A generator from the run seed and the step, so a resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed((torch.initial_seed() * 1_000_003 + step) % (2**63))


def symmetric_contrast(
    loss: Callable[..., Tensor],
    anchors: Tensor,
    keys: Tensor,
    regions: Tensor,
    *,
    temperature: float,
    symmetric: bool,
) -> Tensor:
    """``loss(anchors, keys)``, or ``(loss(anchors, keys) + loss(keys, anchors)) / 2`` when ``symmetric``."""
    value = loss(anchors, keys, regions, temperature=temperature)
    if symmetric:
        value = 0.5 * (value + loss(keys, anchors, regions, temperature=temperature))
    return value


def match_accuracy(anchors: Tensor, keys: Tensor) -> Tensor:
    """Fraction of anchors ``(P, D)`` whose most similar key ``(P, D)`` is their own row."""
    target = torch.arange(len(anchors), device=anchors.device)
    return ((anchors @ keys.T).argmax(dim=1) == target).float().mean()


def cell_regions(points: Tensor, regions: Tensor, grid: BEVGrid) -> tuple[Tensor, Tensor]:
    """Occupied BEV cells ``(M,)`` and their region (the largest id of their points; -1 if none) ``(M,)``.

    Args:
        points: ``(N, 4 + F)`` batched points.
        regions: ``(N,)`` region id per point, -1 for semantic-less.
        grid: the BEV grid (cells are flattened ``b * H * W + row * W + col``).
    """
    cells, inside = bev_cells(points, grid)
    cells, regions = cells[inside], regions[inside]
    occupied, inverse = torch.unique(cells, return_inverse=True)
    cell_region = torch.full((len(occupied),), -1, dtype=torch.long, device=points.device)
    return occupied, cell_region.scatter_reduce(0, inverse, regions, reduce="amax", include_self=True)


def sample_region_points(
    regions: Tensor,
    batch: Tensor,
    *,
    num_rich: int = 1024,
    num_less: int = 1024,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of up to ``num_rich`` semantic-rich and ``num_less`` semantic-less points of every scan.

    Drawn without replacement; a scan with fewer points of a kind gives all of them.

    Args:
        regions: ``(N,)`` region ids, ``-1`` for semantic-less.
        batch: ``(N,)`` scan of every point.
        num_rich: semantic-rich points per scan.
        num_less: semantic-less points per scan.
        generator: CPU generator of the draws.

    Returns:
        ``(P,)`` int64 indices, scan after scan, rich before less within a scan.

    Raises:
        ValueError: mismatched shapes or a negative count.
    """
    if regions.shape != batch.shape or regions.ndim != 1:
        raise ValueError(
            f"`regions` and `batch` must be (N,), got {tuple(regions.shape)} and {tuple(batch.shape)}."
        )
    if num_rich < 0 or num_less < 0:
        raise ValueError(f"`num_rich` and `num_less` must be >= 0, got {num_rich} and {num_less}.")
    picks = []
    for b in torch.unique(batch).tolist():
        in_scan = batch == b
        for mask, count in ((in_scan & (regions >= 0), num_rich), (in_scan & (regions < 0), num_less)):
            rows = torch.nonzero(mask).squeeze(1)
            order = torch.randperm(len(rows), generator=generator).to(rows.device)
            picks.append(rows[order[:count]])
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long, device=regions.device)
