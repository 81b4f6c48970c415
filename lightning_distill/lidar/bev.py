"""Bird's-eye-view (BEV) grids: points to cells, scatter and gather, a pillar BEV backbone, a BEV probe.

* :class:`BEVGrid`: a 2D grid over ``(x, y)``; maps are ``(B, C, H, W)`` with rows along y and
  columns along x (OpenPCDet's ``PointPillarScatter`` layout), cell ``(row, col) = (iy, ix)``.
* :func:`bev_cells`, :func:`scatter_to_bev`, :func:`gather_from_bev`: the flat cell of every point,
  per-cell mean/max/sum of point values, and per-point lookup of a map.
* :class:`PillarEncoder` and :class:`BEVBackbone`: a PointPillars-style encoder (a shared linear
  layer on decorated point features, max over each pillar) followed by a small two-scale 2D CNN
  (SECOND-style blocks, upsampled and concatenated), ``points -> (B, C, H, W)``.
* :func:`bev_cell_labels` and :func:`bev_linear_probe`: majority label per occupied cell and a
  linear probe on BEV features scored by cell mIoU.

Example:
    >>> import torch
    >>> grid = BEVGrid(x_range=(0.0, 4.0), y_range=(0.0, 2.0), cell_size=1.0)
    >>> points = torch.tensor([[0, 0.5, 0.5, 0.0], [0, 0.7, 0.2, 0.0], [0, 3.5, 1.5, 0.0], [1, 9.0, 0.0, 0.0]])
    >>> cells, inside = bev_cells(points, grid)
    >>> cells.tolist(), inside.tolist()  # (batch * H + row) * W + col; the last point is outside
    ([0, 0, 7, 17], [True, True, True, False])
    >>> scatter_to_bev(torch.tensor([[1.0], [3.0], [5.0]]), cells[inside], 2, grid)[0, 0].tolist()
    [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BEVBackbone",
    "BEVGrid",
    "PillarEncoder",
    "bev_cell_labels",
    "bev_cells",
    "bev_linear_probe",
    "gather_from_bev",
    "scatter_to_bev",
]


class BEVGrid:
    """A regular grid over ``(x, y)``: ``W = (x_max - x_min) / cell`` columns, ``H`` rows along y.

    Args:
        x_range: ``(x_min, x_max)`` metres.
        y_range: ``(y_min, y_max)`` metres.
        cell_size: edge of a cell (a pillar), metres.

    Raises:
        ValueError: an empty range or a non-positive ``cell_size``.
    """

    def __init__(
        self,
        x_range: Sequence[float] = (-32.0, 32.0),
        y_range: Sequence[float] = (-24.0, 24.0),
        cell_size: float = 0.8,
    ) -> None:
        if cell_size <= 0:
            raise ValueError(f"`cell_size` must be > 0, got {cell_size}.")
        for name, (low, high) in (("x_range", x_range), ("y_range", y_range)):
            if not low < high:
                raise ValueError(f"`{name}` must be (low, high) with low < high, got {(low, high)}.")
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.y_range = (float(y_range[0]), float(y_range[1]))
        self.cell_size = float(cell_size)
        self.width = int(round((self.x_range[1] - self.x_range[0]) / self.cell_size))
        self.height = int(round((self.y_range[1] - self.y_range[0]) / self.cell_size))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.height, self.width

    def __repr__(self) -> str:
        return f"BEVGrid(x_range={self.x_range}, y_range={self.y_range}, cell_size={self.cell_size})"


def bev_cells(points: Tensor, grid: BEVGrid) -> tuple[Tensor, Tensor]:
    """Flat cell index ``(b * H + row) * W + col`` of every point, and whether it falls inside the grid.

    Args:
        points: ``(N, 4 + F)`` ``[batch, x, y, z, ...]``.
        grid: the grid.

    Returns:
        ``(N,)`` int64 cell indices (meaningful where inside) and ``(N,)`` bool inside mask.

    Raises:
        ValueError: ``points`` not ``(N, >= 4)``.
    """
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"`points` must be (N, 4 + F) [batch, x, y, z, ...], got {tuple(points.shape)}.")
    col = torch.floor((points[:, 1] - grid.x_range[0]) / grid.cell_size).long()
    row = torch.floor((points[:, 2] - grid.y_range[0]) / grid.cell_size).long()
    inside = (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
    cells = (points[:, 0].long() * grid.height + row) * grid.width + col
    return cells, inside


def scatter_to_bev(
    values: Tensor,
    cells: Tensor,
    batch_size: int,
    grid: BEVGrid,
    reduce: Literal["mean", "max", "sum"] = "mean",
) -> Tensor:
    """Per-cell mean, max or sum of point values; empty cells are 0.

    Args:
        values: ``(N, C)`` per-point values.
        cells: ``(N,)`` flat cells from :func:`bev_cells` (inside the grid only).
        batch_size: ``B``.
        grid: the grid.
        reduce: ``"mean"``, ``"max"`` or ``"sum"``.

    Returns:
        ``(B, C, H, W)``.

    Raises:
        ValueError: mismatched lengths, a cell out of range or an unknown ``reduce``.
    """
    if values.ndim != 2 or cells.shape != values.shape[:1]:
        raise ValueError(
            f"`values` must be (N, C) and `cells` (N,), got {tuple(values.shape)} and {tuple(cells.shape)}."
        )
    if reduce not in ("mean", "max", "sum"):
        raise ValueError(f"`reduce` must be 'mean', 'max' or 'sum', got {reduce!r}.")
    size = batch_size * grid.height * grid.width
    if len(cells) and (int(cells.min()) < 0 or int(cells.max()) >= size):
        raise ValueError(f"`cells` must lie in [0, {size}); drop the points outside the grid first.")
    out = values.new_zeros(size, values.shape[1])
    index = cells[:, None].expand_as(values)
    op = "amax" if reduce == "max" else reduce
    out = out.scatter_reduce(0, index, values, reduce=op, include_self=False)
    return out.view(batch_size, grid.height, grid.width, -1).permute(0, 3, 1, 2).contiguous()


def gather_from_bev(bev: Tensor, cells: Tensor) -> Tensor:
    """Features of the given flat cells ``(M, C)`` from maps ``(B, C, H, W)``.

    Raises:
        ValueError: ``bev`` is not 4-D.
    """
    if bev.ndim != 4:
        raise ValueError(f"`bev` must be (B, C, H, W), got {tuple(bev.shape)}.")
    return bev.permute(0, 2, 3, 1).reshape(-1, bev.shape[1])[cells]


class PillarEncoder(nn.Module):
    """PointPillars' pillar feature net: decorate points, a shared linear layer + BN + ReLU, max per pillar.

    Each point gets ``[x, y, z, extra..., x - x_c, y - y_c, z - z_mean]`` where ``(x_c, y_c)`` is
    its cell centre and ``z_mean`` the mean height of its pillar (PointPillars' ``x_p, y_p`` and
    ``x_c, y_c, z_c`` offsets, simplified).

    Args:
        grid: the BEV grid.
        extra_features: point columns after ``z`` to use (1 for intensity, 0 for none).
        out_channels: features per pillar.

    Raises:
        ValueError: a negative ``extra_features`` or non-positive ``out_channels``.
    """

    def __init__(self, grid: BEVGrid, extra_features: int = 1, out_channels: int = 32) -> None:
        super().__init__()
        if extra_features < 0 or out_channels < 1:
            raise ValueError(
                f"`extra_features` must be >= 0 and `out_channels` >= 1, got {extra_features} and {out_channels}."
            )
        self.grid = grid
        self.extra_features = extra_features
        self.out_channels = out_channels
        self.linear = nn.Linear(6 + extra_features, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, points: Tensor, batch_size: int | None = None) -> Tensor:
        """``(N, 4 + F)`` batched points -> ``(B, out_channels, H, W)``; points outside the grid are dropped.

        Raises:
            ValueError: fewer point columns than ``4 + extra_features``.
        """
        if points.shape[1] < 4 + self.extra_features:
            raise ValueError(
                f"PillarEncoder uses {self.extra_features} extra point feature(s); points have only "
                f"{points.shape[1] - 4}. Set `extra_features` to match."
            )
        if batch_size is None:
            batch_size = int(points[:, 0].max()) + 1 if len(points) else 1
        cells, inside = bev_cells(points, self.grid)
        points, cells = points[inside], cells[inside]
        g = self.grid
        col = cells % g.width
        row = (cells // g.width) % g.height
        centre_x = g.x_range[0] + (col.to(points.dtype) + 0.5) * g.cell_size
        centre_y = g.y_range[0] + (row.to(points.dtype) + 0.5) * g.cell_size
        z = points[:, 3:4]
        z_mean = gather_from_bev(scatter_to_bev(z, cells, batch_size, g), cells)
        decorated = torch.cat(
            [
                points[:, 1:4],
                points[:, 4 : 4 + self.extra_features],
                (points[:, 1] - centre_x)[:, None],
                (points[:, 2] - centre_y)[:, None],
                z - z_mean,
            ],
            dim=1,
        )
        features = F.relu(self.norm(self.linear(decorated)))
        return scatter_to_bev(features, cells, batch_size, g, reduce="max")


def _block(cin: int, cout: int, stride: int, layers: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for k in range(layers):
        modules += [
            nn.Conv2d(
                cin if k == 0 else cout, cout, 3, stride=stride if k == 0 else 1, padding=1, bias=False
            ),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*modules)


class BEVBackbone(nn.Module):
    """Points -> BEV features: :class:`PillarEncoder` + a two-scale 2D CNN at the grid's resolution.

    Stage 1 keeps the resolution (``widths[0]``), stage 2 halves it (``widths[1]``); stage 2 is
    upsampled back, concatenated with stage 1 and mixed by a 1x1 convolution to ``out_channels``
    (PointPillars' SECOND + FPN neck in miniature).

    Args:
        x_range: grid extent along x, metres.
        y_range: grid extent along y, metres.
        cell_size: pillar edge, metres.
        extra_features: point columns after ``z`` used as input (1: intensity).
        pillar_channels: pillar features.
        widths: channels of the two stages.
        layers: convolutions per stage.
        out_channels: output features per cell.

    Raises:
        ValueError: ``widths`` not of length 2, or non-positive sizes.
    """

    def __init__(
        self,
        x_range: Sequence[float] = (-32.0, 32.0),
        y_range: Sequence[float] = (-24.0, 24.0),
        cell_size: float = 0.8,
        extra_features: int = 1,
        pillar_channels: int = 32,
        widths: Sequence[int] = (32, 64),
        layers: int = 2,
        out_channels: int = 64,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 2 or min(widths) < 1 or layers < 1 or out_channels < 1:
            raise ValueError(
                f"`widths` must be two positive ints and `layers`, `out_channels` >= 1, got {widths}, {layers}, "
                f"{out_channels}."
            )
        self.grid = BEVGrid(x_range, y_range, cell_size)
        self.pillars = PillarEncoder(self.grid, extra_features, pillar_channels)
        self.stage1 = _block(pillar_channels, widths[0], 1, layers)
        self.stage2 = _block(widths[0], widths[1], 2, layers)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(widths[1], widths[0], 2, stride=2, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.mix = nn.Conv2d(2 * widths[0], out_channels, 1)
        self.out_channels = out_channels

    def forward(self, points: Tensor, batch_size: int | None = None) -> Tensor:
        """``(N, 4 + F)`` batched points -> ``(B, out_channels, H, W)``."""
        x1 = self.stage1(self.pillars(points, batch_size))
        x2 = self.up(self.stage2(x1))
        x2 = x2[..., : x1.shape[-2], : x1.shape[-1]]  # odd sizes: crop the upsampled map
        if x2.shape[-2:] != x1.shape[-2:]:
            x2 = F.pad(x2, (0, x1.shape[-1] - x2.shape[-1], 0, x1.shape[-2] - x2.shape[-2]))
        return self.mix(torch.cat([x1, x2], dim=1))


def bev_cell_labels(
    points: Tensor, labels: Tensor, grid: BEVGrid, num_classes: int, *, ignore_index: int = -1
) -> tuple[Tensor, Tensor]:
    """The occupied cells of a batch and the majority label of the points in each.

    Ties go to the smaller class id; points labelled ``ignore_index`` and points outside the grid
    are left out, and a cell with only such points is not returned.

    Args:
        points: ``(N, 4 + F)`` batched points.
        labels: ``(N,)`` class per point.
        grid: the grid.
        num_classes: ``K``.
        ignore_index: label to leave out.

    Returns:
        Flat cells ``(M,)`` (sorted) and their labels ``(M,)``.

    Raises:
        ValueError: ``labels`` not ``(N,)``.
    """
    if labels.shape != points.shape[:1]:
        raise ValueError(f"`labels` must be ({len(points)},), got {tuple(labels.shape)}.")
    cells, inside = bev_cells(points, grid)
    keep = inside & (labels != ignore_index)
    cells, labels = cells[keep], labels[keep].long()
    occupied, inverse = torch.unique(cells, return_inverse=True)
    counts = torch.zeros(len(occupied), num_classes, dtype=torch.long, device=cells.device)
    counts.index_put_((inverse, labels), torch.ones_like(labels), accumulate=True)
    return occupied, counts.argmax(dim=1)


@torch.no_grad()
def _cell_features(
    features_of: Callable[[Tensor], Tensor], loader: Iterable, grid: BEVGrid, num_classes: int
) -> tuple[Tensor, Tensor]:
    feats, labels = [], []
    for batch in loader:
        cells, target = bev_cell_labels(batch["points"], batch["labels"], grid, num_classes)
        feats.append(gather_from_bev(features_of(batch["points"]), cells))
        labels.append(target)
    return torch.cat(feats), torch.cat(labels)


def bev_linear_probe(
    features_of: Callable[[Tensor], Tensor],
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    grid: BEVGrid,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
):
    """Linear probe of BEV features for per-cell segmentation (majority label of each occupied cell).

    The same protocol as :func:`~lightning_distill.lidar.evaluate.linear_probe`, on cells instead
    of points: features standardised with the training statistics, a linear layer trained
    full-batch with Adam and cross-entropy, mIoU over the test cells.

    Args:
        features_of: batched points ``(N, 4 + F)`` -> BEV maps ``(B, C, H, W)`` on ``grid`` (the
            caller puts its model in eval mode).
        train_loader: labelled training batches (``points``, ``labels``).
        test_loader: test batches.
        grid: the grid of the maps.
        num_classes: ``K``.
        steps: optimisation steps.
        lr: Adam learning rate.
        seed: initialisation of the linear layer.

    Returns:
        :class:`~lightning_distill.lidar.evaluate.SegmentationResult` over test cells.

    Raises:
        ValueError: ``steps`` < 1.
    """
    from lightning_distill.lidar.evaluate import segmentation_metrics

    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}.")
    x_train, y_train = _cell_features(features_of, train_loader, grid, num_classes)
    x_test, y_test = _cell_features(features_of, test_loader, grid, num_classes)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        preds = head(x_test).argmax(dim=1)
    return segmentation_metrics(preds, y_test, num_classes)
