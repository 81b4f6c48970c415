"""A CenterPoint-style voxel detector on spconv: voxels -> sparse 3D backbone -> BEV -> 2D neck -> heatmap head.

:class:`VoxelDetector` follows CenterPoint-VoxelNet (Yin et al., arXiv 2006.11275):

1. Points ``[x, y, z, intensity]`` in ``point_range`` are quantised into ``voxel_size`` voxels
   (:func:`voxelize_points`; per voxel the mean input features and the point count).
2. A sparse 3D backbone (spconv): submanifold 3x3x3 blocks at each level, a stride-2
   ``SparseConv3d`` between levels (kernel 2, so a coarse voxel is exactly ``floor(fine / 2)`` of
   its children), ``bias=False`` + BatchNorm (spconv's CPU path refuses a bias in eval mode).
3. The last level made dense, height folded into channels: a BEV map ``(B, C·Z, X, Y)``.
4. A SECOND-FPN-like 2D neck: a block at stride 1, a block at stride 2, both brought back to stride 1
   and concatenated.
5. :class:`~lightning_distill.detection.heads.CenterHead`: class heatmaps and box codes.

The real-scale configuration (:meth:`VoxelDetector.real_scale`) has CenterPoint-VoxelNet's nuScenes
geometry and widths (0.075 m voxels, sparse widths 16-32-64-128, neck 128/256 with 256 up-sampled
channels, head 64); the toy configuration used by the recipes is the same code with larger voxels,
a smaller range and ``width_multiplier`` < 1. A student is the same class with a smaller
``width_multiplier``: it voxelises exactly as its teacher, so their voxel features sit on the same
coordinates (what :class:`DetectorOutput` exposes for feature distillation).

The training loss (:meth:`VoxelDetector.loss`) is CenterPoint's: the heatmap focal loss and the
code-weighted L1 at centres, returned as two named terms (CenterPoint weighs them 1 and 0.25).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_distill.detection.heads import (
    BEVGrid,
    CenterHead,
    build_targets,
    decode_detections,
    gather_codes,
)
from lightning_distill.lidar.spconv_cpu import import_spconv, sparse_in_fp32
from lightning_distill.losses.detection import box_regression_l1, heatmap_focal_loss

__all__ = ["DetectorOutput", "DetectorVoxels", "VoxelDetector", "batch_targets", "voxelize_points"]


class DetectorVoxels(NamedTuple):
    """Voxels of a batch on a fixed grid.

    Attributes:
        coords: ``(V, 4)`` int32 ``[batch, ix, iy, iz]``, sorted, contiguous (spconv's layout).
        features: ``(V, 4)`` mean per voxel of ``[x offset, y offset, z offset in the voxel, intensity]``
            (offsets in voxel units, in ``[0, 1)``) plus the absolute height; see :func:`voxelize_points`.
        num_points: ``(V,)`` float points per voxel (PointDistiller's saliency).
        spatial_shape: ``[X, Y, Z]`` voxels.
        batch_size: clouds in the batch.
    """

    coords: Tensor
    features: Tensor
    num_points: Tensor
    spatial_shape: list[int]
    batch_size: int


class DetectorOutput(NamedTuple):
    """What :meth:`VoxelDetector.forward` returns.

    Attributes:
        heatmap: ``(B, K, X, Y)`` class logits on the BEV grid.
        codes: ``(B, 8, X, Y)`` box codes.
        voxel_coords: per sparse level ``(V_l, 4)`` int32 ``[batch, ix, iy, iz]`` (level 0: the input voxels).
        voxel_features: per sparse level ``(V_l, C_l)`` features (the backbone's outputs at that level).
        num_points: per sparse level ``(V_l,)`` points that fell in each voxel.
        bev_low: ``(B, C·Z, X, Y)`` the low-level BEV map (the last sparse level made dense, height folded
            into channels), what BEV feature distillation (UniDistill's "low-level" features) reads.
        bev: ``(B, C_neck, X, Y)`` the neck's output, the head's input (the high-level BEV features).
    """

    heatmap: Tensor
    codes: Tensor
    voxel_coords: list[Tensor]
    voxel_features: list[Tensor]
    num_points: list[Tensor]
    bev_low: Tensor | None = None
    bev: Tensor | None = None


def voxelize_points(
    points: Tensor,
    batch_index: Tensor,
    *,
    point_range: Sequence[float],
    voxel_size: Sequence[float],
    spatial_shape: Sequence[int],
    batch_size: int,
) -> DetectorVoxels:
    """Quantise batched points into a fixed voxel grid starting at ``point_range[:3]``.

    Points outside ``point_range`` are dropped. Input features per voxel (means over its points):
    the point's position inside the voxel (``[0, 1)`` per axis), its height scaled to ``[0, 1]`` over
    the range, and its intensity (5 channels).

    Args:
        points: ``(N, 4)`` ``[x, y, z, intensity]``.
        batch_index: ``(N,)`` int64 cloud of each point.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres.
        voxel_size: ``(vx, vy, vz)`` metres.
        spatial_shape: ``[X, Y, Z]`` voxels of the grid.
        batch_size: clouds in the batch.

    Raises:
        ValueError: ``points`` not ``(N, >=4)`` or ``batch_index`` of another length.
    """
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"`points` must be (N, 4) [x, y, z, intensity], got {tuple(points.shape)}.")
    if batch_index.shape != (points.shape[0],):
        raise ValueError(
            f"`batch_index` must be (N,) = ({points.shape[0]},), got {tuple(batch_index.shape)}."
        )
    lo = points.new_tensor(point_range[:3])
    hi = points.new_tensor(point_range[3:])
    size = points.new_tensor(voxel_size)
    xyz = points[:, :3]
    inside = ((xyz >= lo) & (xyz < hi)).all(dim=1)
    xyz, intensity, batch = xyz[inside], points[inside, 3:4], batch_index[inside].long()
    scaled = (xyz - lo) / size
    grid = scaled.floor().long()
    shape = torch.tensor(list(spatial_shape), device=points.device)
    grid = torch.minimum(grid, shape - 1)
    key = ((batch * shape[0] + grid[:, 0]) * shape[1] + grid[:, 1]) * shape[2] + grid[:, 2]
    unique, inverse = torch.unique(key, return_inverse=True)
    height = (xyz[:, 2:3] - lo[2]) / (hi[2] - lo[2])
    per_point = torch.cat([scaled - grid, height, intensity], dim=1)
    sums = per_point.new_zeros(len(unique), per_point.shape[1]).index_add_(0, inverse, per_point)
    counts = per_point.new_zeros(len(unique)).index_add_(0, inverse, per_point.new_ones(len(inverse)))
    x_, y_, z_ = int(shape[0]), int(shape[1]), int(shape[2])
    coords = torch.stack(
        [unique // (x_ * y_ * z_), unique // (y_ * z_) % x_, unique // z_ % y_, unique % z_], dim=1
    )
    return DetectorVoxels(coords.int().contiguous(), sums / counts[:, None], counts, [x_, y_, z_], batch_size)


def _scaled(widths: Sequence[int], multiplier: float) -> list[int]:
    return [max(1, int(round(w * multiplier))) for w in widths]


class VoxelDetector(nn.Module):
    """CenterPoint-style voxel detector (see the module docstring).

    Args:
        num_classes: heatmap classes (3: car, pedestrian, cyclist).
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres.
        voxel_size: ``(vx, vy, vz)`` metres (``vx == vy``).
        sparse_widths: channels per sparse level, finest first; ``len - 1`` stride-2 downsamplings.
        sparse_blocks: submanifold conv blocks per level.
        neck_blocks: 3x3 conv layers in each of the two neck blocks (CenterPoint: 5).
        neck_widths: channels of the stride-1 and stride-2 neck blocks (CenterPoint: 128, 256).
        neck_up: channels each neck block is brought to before concatenation (CenterPoint: 256).
        head_width: CenterHead width (CenterPoint: 64).
        width_multiplier: scales every width above (a student: 0.5).
        max_objects: objects per sample in the targets.
        min_radius: smallest Gaussian radius in BEV cells (CenterPoint: 2).
        code_weights: L1 weight per box-code entry (8 values; CenterPoint: ones).
        top_k, score_threshold: decoding settings.
        code_bias_init: initial bias of the 8 box-code outputs (``None``: zeros, as CenterPoint). At toy
            scale (a few hundred steps) starting the code at the data's mean (offset 0.5, ``z``, log
            sizes, yaw 0) spares the optimiser the walk from 0 to ``log 4`` that a full schedule makes.

    Raises:
        ValueError: malformed range, voxel size or widths.
    """

    def __init__(
        self,
        num_classes: int = 3,
        point_range: Sequence[float] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
        voxel_size: Sequence[float] = (0.075, 0.075, 0.2),
        sparse_widths: Sequence[int] = (16, 32, 64, 128),
        sparse_blocks: int = 2,
        neck_blocks: int = 5,
        neck_widths: Sequence[int] = (128, 256),
        neck_up: int = 256,
        head_width: int = 64,
        width_multiplier: float = 1.0,
        max_objects: int = 500,
        min_radius: int = 2,
        code_weights: Sequence[float] | None = None,
        top_k: int = 500,
        score_threshold: float = 0.1,
        code_bias_init: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(point_range) != 6 or any(point_range[i + 3] <= point_range[i] for i in range(3)):
            raise ValueError(
                f"`point_range` must be (x_min, y_min, z_min, x_max, y_max, z_max), got {point_range}."
            )
        if len(voxel_size) != 3 or min(voxel_size) <= 0 or voxel_size[0] != voxel_size[1]:
            raise ValueError(f"`voxel_size` must be (v, v, vz) with positive sizes, got {voxel_size}.")
        if not sparse_widths or len(neck_widths) != 2 or width_multiplier <= 0 or num_classes < 1:
            raise ValueError(
                "`sparse_widths` must be non-empty, `neck_widths` two values, `width_multiplier` > 0 and "
                f"`num_classes` >= 1; got {sparse_widths}, {neck_widths}, {width_multiplier}, {num_classes}."
            )
        if sparse_blocks < 1 or neck_blocks < 1:
            raise ValueError(
                f"`sparse_blocks` and `neck_blocks` must be >= 1, got {sparse_blocks}, {neck_blocks}."
            )
        spconv = import_spconv()
        self.num_classes = num_classes
        self.point_range = [float(v) for v in point_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.stride = 2 ** (len(sparse_widths) - 1)
        # the grid, padded to a multiple of the total stride so every downsampling halves it exactly
        self.spatial_shape = [
            self.stride
            * math.ceil((self.point_range[i + 3] - self.point_range[i]) / self.voxel_size[i] / self.stride)
            for i in range(3)
        ]
        self.grid = BEVGrid(
            self.point_range[0],
            self.point_range[1],
            self.voxel_size[0] * self.stride,
            (self.spatial_shape[0] // self.stride, self.spatial_shape[1] // self.stride),
        )
        self.max_objects, self.min_radius = max_objects, min_radius
        self.code_weights = list(code_weights) if code_weights is not None else [1.0] * 8
        self.top_k, self.score_threshold = top_k, score_threshold
        widths = _scaled(sparse_widths, width_multiplier)
        self.sparse_widths = widths

        def subm(cin: int, cout: int, level: int) -> list[nn.Module]:
            return [
                spconv.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=f"subm{level}"),
                nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01),
                nn.ReLU(inplace=True),
            ]

        self.levels = nn.ModuleList()
        for level, w in enumerate(widths):
            if level == 0:
                layers = subm(5, w, 0)
            else:
                layers = [
                    spconv.SparseConv3d(
                        widths[level - 1], w, 2, stride=2, bias=False, indice_key=f"down{level}"
                    ),
                    nn.BatchNorm1d(w, eps=1e-3, momentum=0.01),
                    nn.ReLU(inplace=True),
                ]
            for _ in range(sparse_blocks if level else sparse_blocks - 1):
                layers += subm(w, w, level)
            self.levels.append(spconv.SparseSequential(*layers))
        bev_channels = widths[-1] * (self.spatial_shape[2] // self.stride)
        n1, n2 = _scaled(neck_widths, width_multiplier)
        up = _scaled([neck_up], width_multiplier)[0]

        def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]  # fmt: skip

        self.block1 = nn.Sequential(
            *conv(bev_channels, n1), *[m for _ in range(neck_blocks - 1) for m in conv(n1, n1)]
        )
        self.block2 = nn.Sequential(
            *conv(n1, n2, 2), *[m for _ in range(neck_blocks - 1) for m in conv(n2, n2)]
        )
        self.up1 = nn.Sequential(nn.Conv2d(n1, up, 1, bias=False), nn.BatchNorm2d(up, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))  # fmt: skip
        self.up2 = nn.Sequential(nn.ConvTranspose2d(n2, up, 2, stride=2, bias=False), nn.BatchNorm2d(up, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))  # fmt: skip
        self.head = CenterHead(
            2 * up, num_classes, _scaled([head_width], width_multiplier)[0], code_bias_init=code_bias_init
        )

    @classmethod
    def real_scale(cls, num_classes: int = 3, **overrides: Any) -> VoxelDetector:
        """CenterPoint-VoxelNet's nuScenes configuration (0.075 m voxels over ±54 m, full widths)."""
        return cls(num_classes=num_classes, **overrides)

    # ------------------------------------------------------------------ forward
    def voxelize(self, points: Tensor, batch_index: Tensor, batch_size: int | None = None) -> DetectorVoxels:
        """Step 1: the batch's voxels on this detector's grid (see :func:`voxelize_points`)."""
        if batch_size is None:
            batch_size = int(batch_index.max()) + 1 if len(batch_index) else 1
        return voxelize_points(
            points.float(), batch_index, point_range=self.point_range, voxel_size=self.voxel_size,
            spatial_shape=self.spatial_shape, batch_size=batch_size,
        )  # fmt: skip

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int | None = None) -> DetectorOutput:
        """Points ``(N, 4)`` with their cloud index ``(N,)`` -> heatmap, box codes and per-level voxel features."""
        spconv = import_spconv()
        voxels = self.voxelize(points, batch_index, batch_size)
        x = spconv.SparseConvTensor(voxels.features, voxels.coords, voxels.spatial_shape, voxels.batch_size)
        coords, features, counts = [], [], []
        count = voxels.num_points
        for level, block in enumerate(self.levels):
            x = sparse_in_fp32(block, x)  # spconv has no bf16 kernels
            if level:
                count = _pool_counts(coords[-1], count, x.indices)
            coords.append(x.indices)
            features.append(x.features)
            counts.append(count)
        dense = x.dense()  # (B, C, X, Y, Z)
        b, c, nx, ny, nz = dense.shape
        bev = dense.permute(0, 1, 4, 2, 3).reshape(b, c * nz, nx, ny)
        f1 = self.block1(bev)
        f2 = self.block2(f1)
        neck = torch.cat([self.up1(f1), self.up2(f2)], dim=1)
        out = self.head(neck)
        return DetectorOutput(out["heatmap"], out["codes"], coords, features, counts, bev, neck)

    # ------------------------------------------------------------- training
    def loss(
        self, output: DetectorOutput, boxes: Sequence[Tensor], labels: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """CenterPoint's loss terms: ``{"heatmap": focal loss, "box": code-weighted L1 at centres}``."""
        targets = build_targets(
            self.grid, boxes, labels, num_classes=self.num_classes, max_objects=self.max_objects,
            min_radius=self.min_radius,
        )  # fmt: skip
        pred = gather_codes(output.codes, targets.indices)
        return {
            "heatmap": heatmap_focal_loss(output.heatmap, targets.heatmap),
            "box": box_regression_l1(pred, targets.codes, targets.mask, code_weights=self.code_weights),
        }

    @torch.no_grad()
    def detect(self, output: DetectorOutput, nms: Any = None) -> list[dict[str, Tensor]]:
        """Per-sample ``{"boxes", "scores", "labels"}`` from an output (peak NMS; box NMS when ``nms`` is given)."""
        return decode_detections(
            self.grid, {"heatmap": output.heatmap, "codes": output.codes}, top_k=self.top_k,
            score_threshold=self.score_threshold, nms=nms,
        )  # fmt: skip


def _pool_counts(fine: Tensor, counts: Tensor, coarse: Tensor) -> Tensor:
    """Points per coarse voxel: the sum over its children (a coarse voxel is ``floor(fine / 2)``)."""
    parent = fine.long().clone()
    parent[:, 1:] //= 2
    scale = torch.maximum(parent.amax(0), coarse.long().amax(0)) + 1

    def key(c: Tensor) -> Tensor:
        c = c.long()
        return ((c[:, 0] * scale[1] + c[:, 1]) * scale[2] + c[:, 2]) * scale[3] + c[:, 3]

    coarse_key = key(coarse)
    order = torch.argsort(coarse_key)
    pos = torch.searchsorted(coarse_key[order], key(parent)).clamp(max=len(order) - 1)
    return counts.new_zeros(len(coarse)).index_add_(0, order[pos], counts)


def batch_targets(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
    """The metric's targets of a detection batch: per sample ``{"boxes", "labels"}`` (+ ``"difficulty"`` when given)."""
    targets = []
    for i, (boxes, labels) in enumerate(zip(batch["boxes"], batch["labels"])):
        target = {"boxes": boxes, "labels": labels}
        if "difficulty" in batch:
            target["difficulty"] = batch["difficulty"][i]
        targets.append(target)
    return targets
