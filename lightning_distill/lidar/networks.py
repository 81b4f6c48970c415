"""Networks for LiDAR distillation: a sparse 3D UNet (spconv), a small 2D image backbone and heads.

* :class:`SparseUNet`: a MinkUNet-style encoder-decoder on spconv. Submanifold 3x3x3 convolutions
  at each level, stride-2 ``SparseConv3d`` down, ``SparseInverseConv3d`` up (sharing the
  ``indice_key`` of its down convolution, so it restores exactly the finer voxels), skip
  concatenation; ``bias=False`` and BatchNorm everywhere (spconv's CPU path refuses a bias in eval
  mode). SLidR uses MinkowskiEngine's Res16UNet34C at real scale; at toy scale ``widths`` are small.
* :class:`SmallImageBackbone`: a few strided convolutions, ``(B, 3, H, W) -> (B, C, H/s, W/s)``.
  Used frozen (random initialisation) as the toy teacher; at scale pass any module with the same
  contract (``out_channels`` and a feature map) through ``class_path``, e.g. a DINO ViT wrapper.
* :class:`ImageHead`: SLidR's trainable 2D head (a 1x1 convolution, then bilinear upsampling to
  the image size).
* :class:`PointHead`: a point-wise linear (or two-layer) head on per-point features.

Example:
    >>> import torch
    >>> from lightning_distill.lidar.geometry import voxelize, to_sparse_tensor
    >>> points = torch.cat([torch.zeros(200, 1), torch.rand(200, 3) * 4, torch.ones(200, 1)], dim=1)
    >>> net = SparseUNet(in_channels=1, widths=(8, 16))
    >>> vox = voxelize(points, voxel_size=0.5)
    >>> net(to_sparse_tensor(vox)).features.shape == (len(vox.coords), net.out_channels)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.lidar.spconv_cpu import import_spconv, sparse_in_fp32

__all__ = [
    "ImageHead",
    "PointHead",
    "SmallImageBackbone",
    "SparseUNet",
    "point_inputs",
    "sparse_point_features",
]


class SparseUNet(nn.Module):
    """MinkUNet-style sparse 3D UNet on spconv; keeps the input voxels.

    Args:
        in_channels: features per voxel (1 for SLidR's constant input, or intensity).
        widths: channels per level, finest first; ``len(widths) - 1`` stride-2 downsamplings.
        blocks: submanifold conv blocks per level and direction.
        momentum: BatchNorm momentum (SLidR: 0.05).

    ``forward`` takes an spconv ``SparseConvTensor`` and returns one with the same indices and
    ``out_channels = widths[0]`` features.

    Raises:
        ValueError: empty ``widths``, a non-positive width, or ``blocks`` < 1.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: int = 1,
        momentum: float = 0.05,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"`widths` must be a non-empty list of positive ints, got {widths}.")
        if in_channels < 1 or blocks < 1:
            raise ValueError(f"`in_channels` and `blocks` must be >= 1, got {in_channels} and {blocks}.")
        spconv = import_spconv()
        self.in_channels = in_channels
        self.widths = widths
        self.out_channels = widths[0]

        def subm(cin: int, cout: int, level: int) -> list[nn.Module]:
            return [
                spconv.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=f"subm{level}"),
                nn.BatchNorm1d(cout, momentum=momentum),
                nn.ReLU(inplace=True),
            ]

        def stack(cin: int, cout: int, level: int) -> Any:
            layers = subm(cin, cout, level)
            for _ in range(blocks - 1):
                layers += subm(cout, cout, level)
            return spconv.SparseSequential(*layers)

        self.stem = stack(in_channels, widths[0], 0)
        self.down = nn.ModuleList()
        self.encoders = nn.ModuleList()
        for level in range(1, len(widths)):
            self.down.append(
                spconv.SparseSequential(
                    spconv.SparseConv3d(
                        widths[level - 1], widths[level], 2, stride=2, bias=False, indice_key=f"down{level}"
                    ),
                    nn.BatchNorm1d(widths[level], momentum=momentum),
                    nn.ReLU(inplace=True),
                )
            )
            self.encoders.append(stack(widths[level], widths[level], level))
        self.up = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(widths) - 1, 0, -1):
            self.up.append(
                spconv.SparseSequential(
                    spconv.SparseInverseConv3d(
                        widths[level], widths[level - 1], 2, bias=False, indice_key=f"down{level}"
                    ),
                    nn.BatchNorm1d(widths[level - 1], momentum=momentum),
                    nn.ReLU(inplace=True),
                )
            )
            self.decoders.append(stack(2 * widths[level - 1], widths[level - 1], level - 1))

    def forward(self, x: Any) -> Any:
        """``SparseConvTensor`` ``(V, in_channels)`` -> ``SparseConvTensor`` ``(V, out_channels)``.

        Raises:
            ValueError: the input's feature width differs from ``in_channels``.
        """
        if x.features.shape[1] != self.in_channels:
            raise ValueError(
                f"SparseUNet was built with `in_channels`={self.in_channels}, got features of width "
                f"{x.features.shape[1]}; set `in_channels` to match the point features."
            )
        return sparse_in_fp32(self._forward, x)

    def _forward(self, x: Any) -> Any:
        x = self.stem(x)
        skips = []
        for down, encoder in zip(self.down, self.encoders):
            skips.append(x)
            x = encoder(down(x))
        for up, decoder, skip in zip(self.up, self.decoders, reversed(skips)):
            x = up(x)
            x = x.replace_feature(torch.cat([x.features, skip.features], dim=1))
            x = decoder(x)
        return x


class SmallImageBackbone(nn.Module):
    """A small strided CNN ``(B, 3, H, W) -> (B, C, H / stride, W / stride)``.

    Args:
        in_channels: image channels.
        widths: channels of each stage; every stage halves the resolution.
        normalize_input: subtract 0.5 from the [0, 1] input first.

    Attributes:
        out_channels: ``widths[-1]``.
        stride: ``2 ** len(widths)``.

    Raises:
        ValueError: empty or non-positive ``widths``.
    """

    def __init__(
        self, in_channels: int = 3, widths: Sequence[int] = (32, 64), normalize_input: bool = True
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"`widths` must be a non-empty list of positive ints, got {widths}.")
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1),
            ]
            layers.append(nn.ReLU(inplace=True))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.stride = 2 ** len(widths)
        self.normalize_input = normalize_input

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_channels, ceil(H / stride), ceil(W / stride))``."""
        return self.layers(images - 0.5 if self.normalize_input else images)


class ImageHead(nn.Module):
    """SLidR's trainable 2D head: 1x1 convolution to ``out_channels``, bilinear upsampling to the image size.

    Args:
        in_channels: channels of the backbone's feature map.
        out_channels: feature size of the distillation space (SLidR: 64).

    Raises:
        ValueError: non-positive channel counts.
    """

    def __init__(self, in_channels: int, out_channels: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got in={in_channels}, out={out_channels}.")
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, features: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, C_in, h, w)`` -> ``(B, out_channels, H, W)`` with ``(H, W) = image_size``."""
        return F.interpolate(self.proj(features), size=image_size, mode="bilinear", align_corners=True)


class PointHead(nn.Module):
    """Point-wise head: ``(N, C_in) -> (N, C_out)``, linear or with one hidden layer.

    Args:
        in_channels: input features per point.
        out_channels: outputs per point (a feature size or a number of classes).
        hidden: width of an optional hidden layer (BatchNorm + ReLU); 0 for a linear head.

    Raises:
        ValueError: non-positive sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 0) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or hidden < 0:
            raise ValueError(
                f"sizes must be positive, got in={in_channels}, out={out_channels}, hidden={hidden}."
            )
        if hidden:
            self.net = nn.Sequential(
                nn.Linear(in_channels, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, out_channels),
            )
        else:
            self.net = nn.Linear(in_channels, out_channels)

    def forward(self, features: Tensor) -> Tensor:
        """``(N, in_channels)`` -> ``(N, out_channels)``."""
        return self.net(features)


def point_inputs(points: Tensor, input_features: str) -> Tensor:
    """Per-point input features of the 3D network: ``"ones"`` (SLidR's default) or ``"intensity"``.

    Args:
        points: ``(N, 4 + F)`` batched points ``[batch, x, y, z, intensity, ...]``.
        input_features: ``"ones"`` or ``"intensity"``.

    Returns:
        ``(N, 1)`` float features.

    Raises:
        ValueError: another ``input_features`` value, or ``"intensity"`` without an intensity column.
    """
    if input_features == "ones":
        return points.new_ones(len(points), 1)
    if input_features == "intensity":
        if points.shape[1] < 5:
            raise ValueError(f"`input_features`='intensity' needs points (N, 5+), got {tuple(points.shape)}.")
        return points[:, 4:5]
    raise ValueError(f"`input_features` must be 'ones' or 'intensity', got {input_features!r}.")


def sparse_point_features(
    backbone: nn.Module, points: Tensor, *, voxel_size: float, input_features: str = "ones"
) -> Tensor:
    """Run a sparse 3D backbone on batched points and return per-point features ``(N, C)``.

    Points are voxelised (:func:`~lightning_distill.lidar.geometry.voxelize`, mean-pooled inputs),
    the backbone maps the voxels, and every point takes its voxel's features.
    """
    from lightning_distill.lidar.geometry import to_sparse_tensor, voxelize

    voxels = voxelize(points, voxel_size, features=point_inputs(points, input_features))
    return backbone(to_sparse_tensor(voxels)).features[voxels.inverse]
