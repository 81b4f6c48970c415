"""CenterPoint's BEV head: Gaussian heatmap targets, the box code, the head module and decoding.

The BEV grid (:class:`BEVGrid`) is ``(X, Y)`` cells of ``cell_size`` metres from ``(x_min, y_min)``:
maps are ``(B, C, X, Y)``, indexed ``[ix, iy]`` (x first, as the voxel coordinates).

The box code of an object at cell ``(ix, iy)`` (CenterPoint without velocity, ``C = 8``):
``[x / s - x_min / s - ix, y / s - y_min / s - iy, z, log dx, log dy, log dz, sin yaw, cos yaw]``.

Example:
    >>> grid = BEVGrid(x_min=0.0, y_min=0.0, cell_size=1.0, size=(8, 8))
    >>> boxes = torch.tensor([[3.3, 4.6, -1.0, 4.0, 2.0, 1.5, 0.3]])
    >>> t = build_targets(grid, [boxes], [torch.tensor([0])], num_classes=3, max_objects=4)
    >>> t.heatmap.shape, float(t.heatmap[0, 0, 3, 4]), t.indices[0, 0].item() == 3 * 8 + 4
    (torch.Size([1, 3, 8, 8]), 1.0, True)
    >>> torch.allclose(decode_codes(grid, t.codes[0, :1], t.indices[0, :1]), boxes, atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CODE_SIZE",
    "BEVGrid",
    "CenterHead",
    "HeadTargets",
    "build_targets",
    "decode_codes",
    "decode_detections",
    "draw_gaussian",
    "encode_boxes",
    "gather_codes",
    "gaussian_radius",
    "peak_nms",
]

#: Entries of the box code: offset (2), z, log size (3), sin and cos of the yaw.
CODE_SIZE = 8


class BEVGrid(NamedTuple):
    """The BEV map's geometry: origin ``(x_min, y_min)`` in metres, ``cell_size`` metres, ``size = (X, Y)``."""

    x_min: float
    y_min: float
    cell_size: float
    size: tuple[int, int]


class HeadTargets(NamedTuple):
    """Training targets of a CenterPoint head for a batch.

    Attributes:
        heatmap: ``(B, K, X, Y)`` Gaussian class heatmaps (1 at each centre cell).
        indices: ``(B, M)`` flat index ``ix * Y + iy`` of each object's centre cell (0 for padding).
        codes: ``(B, M, 8)`` box codes.
        mask: ``(B, M)`` 1 for a real object, 0 for padding.
    """

    heatmap: Tensor
    indices: Tensor
    codes: Tensor
    mask: Tensor


def gaussian_radius(length: Tensor, width: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CenterNet's Gaussian radius (in cells) for boxes of ``length x width`` cells.

    The largest corner displacement ``r`` that keeps IoU >= ``min_overlap`` with the box, the smallest
    of the three cases of CenterNet (both corners inside, both outside, one of each), each the root
    of a quadratic ``a r² + b r + c = 0``. CenterPoint uses ``min_overlap`` 0.1.
    """
    h, w = length.float(), width.float()
    o = min_overlap
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_gaussian(heatmap: Tensor, center: tuple[int, int], radius: int) -> None:
    """Max-merge ``exp(-(dx² + dy²) / (2σ²))``, ``σ = (2r + 1) / 6``, around ``center`` into ``(X, Y)`` ``heatmap``."""
    sigma = (2 * radius + 1) / 6.0
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    cx, cy = center
    nx, ny = heatmap.shape
    x0, x1 = max(0, cx - radius), min(nx, cx + radius + 1)
    y0, y1 = max(0, cy - radius), min(ny, cy + radius + 1)
    if x0 >= x1 or y0 >= y1:
        return
    patch = g[x0 - cx + radius : x1 - cx + radius, y0 - cy + radius : y1 - cy + radius]
    heatmap[x0:x1, y0:y1] = torch.maximum(heatmap[x0:x1, y0:y1], patch.to(heatmap))


def encode_boxes(grid: BEVGrid, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre cells and box codes of ``(M, 7)`` boxes.

    Returns:
        ``cells`` ``(M, 2)`` int64 ``(ix, iy)``, ``codes`` ``(M, 8)`` and ``inside`` ``(M,)`` bool (centre on the grid).
    """
    gx = (boxes[:, 0] - grid.x_min) / grid.cell_size
    gy = (boxes[:, 1] - grid.y_min) / grid.cell_size
    cells = torch.stack([gx.floor(), gy.floor()], dim=1).long()
    inside = (
        (cells[:, 0] >= 0) & (cells[:, 0] < grid.size[0]) & (cells[:, 1] >= 0) & (cells[:, 1] < grid.size[1])
    )
    codes = torch.cat(
        [
            (gx - cells[:, 0]).unsqueeze(1),
            (gy - cells[:, 1]).unsqueeze(1),
            boxes[:, 2:3],
            boxes[:, 3:6].clamp(min=1e-3).log(),
            torch.sin(boxes[:, 6:7]),
            torch.cos(boxes[:, 6:7]),
        ],
        dim=1,
    )
    return cells, codes, inside


def decode_codes(grid: BEVGrid, codes: Tensor, indices: Tensor) -> Tensor:
    """Boxes ``(M, 7)`` from box codes ``(M, 8)`` at flat cell indices ``(M,)`` (inverse of :func:`encode_boxes`)."""
    ny = grid.size[1]
    ix, iy = (indices // ny).float(), (indices % ny).float()
    x = (ix + codes[:, 0]) * grid.cell_size + grid.x_min
    y = (iy + codes[:, 1]) * grid.cell_size + grid.y_min
    size = codes[:, 3:6].clamp(max=6.0).exp()
    yaw = torch.atan2(codes[:, 6], codes[:, 7])
    return torch.cat([x[:, None], y[:, None], codes[:, 2:3], size, yaw[:, None]], dim=1)


def build_targets(
    grid: BEVGrid,
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    num_classes: int,
    max_objects: int = 500,
    min_overlap: float = 0.1,
    min_radius: int = 2,
) -> HeadTargets:
    """CenterPoint's targets for a batch: Gaussian heatmaps (radius from each box's BEV size), centre
    indices, box codes and the padding mask. Boxes whose centre is off the grid are left out.

    Args:
        boxes: per sample ``(M_i, 7)`` boxes.
        labels: per sample ``(M_i,)`` class indices in ``[0, num_classes)``.
        max_objects: objects kept per sample (CenterPoint: 500).
        min_overlap, min_radius: Gaussian radius settings (CenterPoint: 0.1 and 2 cells).

    Raises:
        ValueError: mismatched lists, a box tensor that is not ``(M, 7)`` or a label out of range.
    """
    if len(boxes) != len(labels):
        raise ValueError(
            f"`boxes` and `labels` must have one entry per sample, got {len(boxes)} and {len(labels)}."
        )
    nx, ny = grid.size
    b = len(boxes)
    heatmap = torch.zeros(b, num_classes, nx, ny)
    indices = torch.zeros(b, max_objects, dtype=torch.long)
    codes = torch.zeros(b, max_objects, CODE_SIZE)
    mask = torch.zeros(b, max_objects)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        if bx.ndim != 2 or bx.shape[1] != 7 or lb.shape != (bx.shape[0],):
            raise ValueError(
                f"sample {i}: boxes must be (M, 7) with labels (M,), got {tuple(bx.shape)} and {tuple(lb.shape)}."
            )
        if len(lb) and (int(lb.min()) < 0 or int(lb.max()) >= num_classes):
            raise ValueError(f"sample {i}: labels must lie in [0, {num_classes}), got {lb.tolist()}.")
        bx = bx.detach().float().cpu()
        cells, code, inside = encode_boxes(grid, bx)
        keep = torch.nonzero(inside).flatten()[:max_objects]
        radius = gaussian_radius(bx[keep, 3] / grid.cell_size, bx[keep, 4] / grid.cell_size, min_overlap)
        radius = radius.floor().long().clamp(min=min_radius)
        for j, k in enumerate(keep.tolist()):
            cx, cy = int(cells[k, 0]), int(cells[k, 1])
            draw_gaussian(heatmap[i, int(lb[k])], (cx, cy), int(radius[j]))
            indices[i, j] = cx * ny + cy
            codes[i, j] = code[k]
            mask[i, j] = 1.0
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    return HeadTargets(heatmap.to(device), indices.to(device), codes.to(device), mask.to(device))


class _BiasedConv(nn.Conv2d):
    """A 1x1 convolution whose bias starts at fixed values, also after ``reset_parameters()`` (first-use training
    re-initialises every module that has one)."""

    def __init__(self, cin: int, cout: int, bias_init: Sequence[float]) -> None:
        self.bias_init = [float(v) for v in bias_init]
        super().__init__(cin, cout, 1)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.bias.copy_(torch.tensor(self.bias_init))


class CenterHead(nn.Module):
    """CenterPoint's head: a shared 3x3 conv, then per output a 3x3 conv + 1x1 conv.

    Outputs ``{"heatmap": (B, K, X, Y) logits, "codes": (B, 8, X, Y)}`` (codes: offset, z, log size, sin, cos).
    The heatmap bias starts at -2.19 (prior probability 0.1), as in CenterNet; the code bias at 0.

    Args:
        in_channels: BEV feature channels.
        num_classes: heatmap classes ``K``.
        width: channels of the shared and per-output convolutions (CenterPoint: 64).
        code_bias_init: initial bias of the 8 box-code outputs (``None``: zeros, as CenterPoint).

    Raises:
        ValueError: non-positive sizes or a ``code_bias_init`` that is not 8 values.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        code_bias_init: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or width < 1:
            raise ValueError(
                f"sizes must be >= 1, got in={in_channels}, classes={num_classes}, width={width}."
            )
        if code_bias_init is not None and len(code_bias_init) != CODE_SIZE:
            raise ValueError(
                f"`code_bias_init` must hold {CODE_SIZE} values (the box code), got {list(code_bias_init)}."
            )

        def branch(out: int, bias: Sequence[float]) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                _BiasedConv(width, out, bias),
            )

        self.shared = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.heatmap = branch(num_classes, [-2.19] * num_classes)
        self.codes = branch(CODE_SIZE, [0.0] * CODE_SIZE if code_bias_init is None else code_bias_init)

    def forward(self, bev: Tensor) -> dict[str, Tensor]:
        """``(B, C, X, Y)`` BEV features -> heatmap logits and box-code maps."""
        x = self.shared(bev)
        return {"heatmap": self.heatmap(x), "codes": self.codes(x)}


def gather_codes(code_map: Tensor, indices: Tensor) -> Tensor:
    """Box codes ``(B, M, 8)`` read from ``(B, 8, X, Y)`` maps at flat cell ``indices`` ``(B, M)``."""
    flat = code_map.flatten(2)  # (B, 8, X*Y)
    return flat.gather(2, indices.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)


def peak_nms(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep only the local maxima of ``(B, K, X, Y)`` scores in a ``kernel`` window (CenterNet's max-pool NMS)."""
    pooled = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    return heat * (pooled == heat).to(heat.dtype)


def decode_detections(
    grid: BEVGrid,
    outputs: dict[str, Tensor],
    *,
    top_k: int = 500,
    score_threshold: float = 0.1,
    nms: object | None = None,
    nms_iou_threshold: float = 0.2,
) -> list[dict[str, Tensor]]:
    """Per-sample detections ``{"boxes": (D, 7), "scores": (D,), "labels": (D,)}`` from head outputs.

    Peaks of the sigmoid heatmaps (max-pool NMS), the ``top_k`` over classes and cells, scores above
    ``score_threshold``; then, when ``nms`` is given (a function ``(boxes, scores, iou_threshold) ->
    keep indices``, e.g. the toolkit's rotated BEV NMS), a per-class box NMS at ``nms_iou_threshold``
    (CenterPoint: top 500 before NMS, 0.1 score threshold, IoU 0.2).
    """
    heat = peak_nms(torch.sigmoid(outputs["heatmap"].float()))
    b, k, nx, ny = heat.shape
    scores, flat = heat.flatten(1).topk(min(top_k, k * nx * ny), dim=1)
    labels, cells = flat // (nx * ny), flat % (nx * ny)
    codes = gather_codes(outputs["codes"].float(), cells)
    detections = []
    for i in range(b):
        keep = scores[i] > score_threshold
        boxes = decode_codes(grid, codes[i][keep], cells[i][keep])
        s, lab = scores[i][keep], labels[i][keep]
        if nms is not None and len(s):
            kept = [idx[torch.as_tensor(nms(boxes[idx], s[idx], nms_iou_threshold), dtype=torch.long)]
                    for c in lab.unique() for idx in [torch.nonzero(lab == c).flatten()]]  # fmt: skip
            sel = torch.cat(kept)
            boxes, s, lab = boxes[sel], s[sel], lab[sel]
        detections.append({"boxes": boxes, "scores": s, "labels": lab})
    return detections
