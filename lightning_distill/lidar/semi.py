"""Semi-supervised LiDAR segmentation parts: a labelled/unlabelled split, a point segmenter (sparse
backbone + point-wise classifier), confidence-filtered pseudo-labels and LaserMix's optimizer.

* :func:`labelled_split`: which scenes keep their labels (a fraction, at least one), reproducible
  from a seed; the others are *unlabelled*: their labels are replaced by the ignore index, so no
  loss can read them by mistake.
* The data module serving the split is
  :class:`~lightning_distill.data.lidar.SemiSupervisedLidarDataModule`.
* :class:`PointSegmenter`: voxelise (cubic or cylindrical), sparse backbone, linear head;
  returns per-point features and logits.
* :func:`confident_pseudo_labels`: arg-max of the softmax, ignore index below a confidence threshold
  (LaserMix: 0.9).
* :func:`lasermix_sgd`: the official LaserMix optimizer (the LaserMix++ recipe's default).

Example:
    >>> labelled, unlabelled = labelled_split(100, 0.05, seed=0)
    >>> len(labelled), len(unlabelled), sorted(labelled.tolist() + unlabelled.tolist()) == list(range(100))
    (5, 95, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.lidar.cylindrical import CylindricalGrid, cylindrical_point_features
from lightning_distill.lidar.networks import sparse_point_features
from lightning_distill.lidar.scene import IGNORE_INDEX

__all__ = [
    "PointSegmenter",
    "confident_pseudo_labels",
    "labelled_split",
    "lasermix_sgd",
    "mask_labels",
]


def labelled_split(num_scenes: int, fraction: float, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices of the labelled and unlabelled scenes: ``max(1, round(fraction * num_scenes))`` labelled.

    Args:
        num_scenes: scenes to split, >= 1.
        fraction: labelled fraction in (0, 1].
        seed: the draw (a permutation from ``torch.Generator().manual_seed(seed)``).

    Returns:
        Sorted int64 ``labelled`` and ``unlabelled`` indices; together ``range(num_scenes)``.

    Raises:
        ValueError: ``num_scenes`` < 1 or ``fraction`` outside (0, 1].
    """
    if num_scenes < 1:
        raise ValueError(f"`num_scenes` must be >= 1, got {num_scenes}.")
    if not 0 < fraction <= 1:
        raise ValueError(
            f"`fraction` must be in (0, 1], got {fraction}; set `data.init_args.labelled_fraction`."
        )
    count = min(num_scenes, max(1, round(fraction * num_scenes)))
    order = torch.randperm(num_scenes, generator=torch.Generator().manual_seed(seed))
    return order[:count].sort().values, order[count:].sort().values


def mask_labels(sample: dict[str, Tensor], ignore_index: int = IGNORE_INDEX) -> dict[str, Tensor]:
    """A shallow copy of a scene sample with every point and pixel label set to ``ignore_index``."""
    out = dict(sample)
    out["labels"] = torch.full_like(sample["labels"], ignore_index)
    if "pixel_labels" in sample:
        out["pixel_labels"] = torch.full_like(sample["pixel_labels"], ignore_index)
    return out


class PointSegmenter(nn.Module):
    """Sparse 3D backbone + point-wise linear classifier: batched points -> per-point features and logits.

    Args:
        backbone: ``SparseConvTensor -> SparseConvTensor`` with an int ``out_channels``
            (:class:`~lightning_distill.lidar.networks.SparseUNet`).
        num_classes: ``K``.
        voxel_size: cubic voxel edge in metres (used when ``grid`` is ``None``).
        grid: a :class:`~lightning_distill.lidar.cylindrical.CylindricalGrid` for cylindrical voxels.
        input_features: ``"ones"`` or ``"intensity"`` per point.

    Raises:
        TypeError: a backbone without an int ``out_channels``.
        ValueError: ``num_classes`` < 1, ``voxel_size`` <= 0 or an unknown ``input_features``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        voxel_size: float = 0.05,
        grid: CylindricalGrid | None = None,
        input_features: Literal["ones", "intensity"] = "ones",
    ) -> None:
        super().__init__()
        if not isinstance(getattr(backbone, "out_channels", None), int):
            raise TypeError(
                f"The backbone ({type(backbone).__name__}) needs an int `out_channels` attribute."
            )
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        if voxel_size <= 0:
            raise ValueError(f"`voxel_size` must be > 0, got {voxel_size}; set `model.init_args.voxel_size`.")
        if input_features not in ("ones", "intensity"):
            raise ValueError(f"`input_features` must be 'ones' or 'intensity', got {input_features!r}.")
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels, num_classes)
        self.voxel_size = voxel_size
        self.grid = grid
        self.input_features = input_features
        self.out_channels = backbone.out_channels
        self.num_classes = num_classes

    def point_features(self, points: Tensor) -> Tensor:
        """``(N, C)`` backbone features of batched points ``(N, 4 + F)``."""
        if self.grid is not None:
            return cylindrical_point_features(
                self.backbone, points, self.grid, input_features=self.input_features
            )
        return sparse_point_features(
            self.backbone, points, voxel_size=self.voxel_size, input_features=self.input_features
        )

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Batched points ``(N, 4 + F)`` -> features ``(N, C)`` and class logits ``(N, K)``."""
        features = self.point_features(points)
        return features, self.head(features)


def confident_pseudo_labels(
    logits: Tensor, threshold: float = 0.9, *, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Pseudo-labels: the arg-max class where its softmax probability reaches ``threshold``.

    Args:
        logits: ``(N, K)`` teacher logits.
        threshold: confidence below which a point gets ``ignore_index`` (LaserMix: 0.9).
        ignore_index: label of rejected points.

    Returns:
        ``labels`` ``(N,)`` int64 and ``confidence`` ``(N,)`` (the maximum probability).

    Raises:
        ValueError: ``logits`` not 2-D or ``threshold`` outside [0, 1].

    Example:
        >>> labels, conf = confident_pseudo_labels(torch.tensor([[4.0, 0.0], [0.2, 0.0]]), 0.9)
        >>> labels.tolist()
        [0, -1]
    """
    if logits.ndim != 2:
        raise ValueError(f"`logits` must be (N, K), got {tuple(logits.shape)}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"`threshold` must be in [0, 1], got {threshold}; set `model.init_args.pseudo_threshold`."
        )
    confidence, labels = F.softmax(logits.float(), dim=1).max(dim=1)
    return labels.masked_fill(confidence < threshold, ignore_index), confidence


def lasermix_sgd(params: Iterable[Any]) -> torch.optim.SGD:
    """The official LaserMix optimizer: SGD, lr 0.24, Nesterov momentum 0.9, weight decay 1e-4.

    From ldkong1205/LaserMix ``configs/lasermix/lasermix_minku18_semi_semantickitti_10.py``
    (``optim_wrapper``; MinkUNet, 4 clouds per GPU). The official schedule (linear warm-up over
    125 iterations, then cosine to 1e-5 over 25k) is ``lr_scheduler``'s job.
    """
    return torch.optim.SGD(params, lr=0.24, momentum=0.9, weight_decay=1e-4, nesterov=True)
