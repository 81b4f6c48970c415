"""Semi-supervised LiDAR segmentation parts: a labelled/unlabelled split, its data module, a point
segmenter (sparse backbone + point-wise classifier) and confidence-filtered pseudo-labels.

* :func:`labelled_split`: which scenes keep their labels (a fraction, at least one), reproducible
  from a seed; the others are *unlabelled*: their labels are replaced by the ignore index, so no
  loss can read them by mistake.
* :class:`SemiSupervisedLidarDataModule`: :class:`~lightning_distill.lidar.data.SyntheticLidarDataModule`
  whose training loader yields ``{"labelled": batch, "unlabelled": batch}`` (LaserMix's
  ``MultiSourceSampler`` with a 1:1 source ratio), or only ``{"labelled": batch}`` for the
  supervised-only baseline. Either way an epoch is ``ceil(unlabelled scans / batch size)`` batches:
  the labelled scans are cycled, so runs with and without unlabelled data see the same number of
  labelled batches per epoch; the last incomplete unlabelled batch is dropped, so the two batches
  hold the same number of clouds. Validation and test are the fully labelled val/test splits.
* :class:`PointSegmenter`: voxelise (cubic or cylindrical), sparse backbone, linear head;
  returns per-point features and logits.
* :func:`confident_pseudo_labels`: arg-max of the softmax, ignore index below a confidence threshold
  (LaserMix: 0.9).

Example:
    >>> labelled, unlabelled = labelled_split(100, 0.05, seed=0)
    >>> len(labelled), len(unlabelled), sorted(labelled.tolist() + unlabelled.tolist()) == list(range(100))
    (5, 95, True)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader
from lightning_distill.lidar.cylindrical import CylindricalGrid, cylindrical_point_features
from lightning_distill.lidar.data import SyntheticLidarDataModule, collate
from lightning_distill.lidar.networks import sparse_point_features
from lightning_distill.lidar.scene import IGNORE_INDEX

__all__ = [
    "PointSegmenter",
    "SemiSupervisedLidarDataModule",
    "confident_pseudo_labels",
    "labelled_split",
    "mask_labels",
]
_SPLIT_ARGUMENTS = ("labelled_fraction", "split_seed", "use_unlabelled")


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


class SemiSupervisedLidarDataModule(SyntheticLidarDataModule):
    """Synthetic street scenes with only a fraction of the training scenes labelled.

    Takes every argument of :class:`~lightning_distill.lidar.data.SyntheticLidarDataModule`, plus:

    Args:
        labelled_fraction: fraction of training scenes that keep their labels (LaserMix's
            1% / 10% / 20% / 50% splits); at least one scene.
        split_seed: which scenes are labelled (fixed across training seeds by default).
        use_unlabelled: serve the unlabelled scans too; ``False`` gives the supervised-only baseline.
        **kwargs: the arguments of ``SyntheticLidarDataModule``.

    Raises:
        ValueError: ``labelled_fraction`` outside (0, 1], or a split that leaves no unlabelled scene
            while ``use_unlabelled`` is true.
    """

    def __init__(
        self,
        labelled_fraction: float = 0.05,
        split_seed: int = 0,
        use_unlabelled: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < labelled_fraction <= 1:
            raise ValueError(
                f"`labelled_fraction` must be in (0, 1], got {labelled_fraction}; set "
                "`data.init_args.labelled_fraction`."
            )
        self.labelled_fraction = labelled_fraction
        self.split_seed = split_seed
        self.use_unlabelled = use_unlabelled
        labelled, unlabelled = labelled_split(self.hparams.num_scenes, labelled_fraction, seed=split_seed)
        if use_unlabelled and len(unlabelled) == 0:
            raise ValueError(
                f"`labelled_fraction`={labelled_fraction} labels every one of the {self.hparams.num_scenes} scenes; "
                "lower it or set `data.init_args.use_unlabelled=false`."
            )
        self.labelled_scenes, self.unlabelled_scenes = labelled.tolist(), unlabelled.tolist()

    @property
    def settings_key(self) -> str:
        """Hash of the scene settings; the split arguments leave the scenes (and their cache) alone."""
        split = {k: self.hparams.pop(k) for k in _SPLIT_ARGUMENTS if k in self.hparams}
        try:
            return super().settings_key
        finally:
            self.hparams.update(split)

    def labelled_samples(self) -> list[dict[str, Tensor]]:
        """Training samples of the labelled scenes (all their frames), labels intact."""
        keep = set(self.labelled_scenes)
        return [s for s in self.scenes("train") if int(s["scene"]) in keep]

    def unlabelled_samples(self) -> list[dict[str, Tensor]]:
        """Training samples of the other scenes, labels replaced by the ignore index."""
        keep = set(self.unlabelled_scenes)
        return [mask_labels(s) for s in self.scenes("train") if int(s["scene"]) in keep]

    def train_dataloader(self) -> dict[str, DataLoader]:
        labelled, unlabelled = self.labelled_samples(), self.unlabelled_samples()
        # one epoch = one pass over the unlabelled scans (full batches: LaserMix pairs labelled and
        # unlabelled clouds one to one), whether they are served or not
        batch_size = self.hparams.batch_size
        batches = max(1, max(len(unlabelled), len(labelled)) // batch_size)
        # orders are functions of (run seed, data seed, epoch), positions are saved in checkpoints
        seed = int(torch.initial_seed()) ^ int(self.hparams.seed)
        loaders = {
            "labelled": ResumableDataLoader(
                labelled,
                batch_size=batch_size,
                sampler=_CyclingSampler(len(labelled), batches * batch_size, seed=seed),
                collate_fn=collate,
                num_workers=self.hparams.num_workers,
            )
        }
        if self.use_unlabelled:
            loaders["unlabelled"] = ResumableDataLoader(
                unlabelled,
                batch_size=batch_size,
                sampler=EpochShuffleSampler(len(unlabelled), seed=seed + 1, yield_epoch=False),
                drop_last=len(unlabelled) >= batch_size,
                collate_fn=collate,
                num_workers=self.hparams.num_workers,
            )
        return loaders


class _CyclingSampler(Sampler):
    """``num_samples`` indices of ``range(length)``: fresh permutations back to back, a function of
    ``(seed, epoch)`` (Lightning calls :meth:`set_epoch`)."""

    def __init__(self, length: int, num_samples: int, seed: int = 0) -> None:
        self.length, self.num_samples, self.seed, self.epoch = length, num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF)
        rounds = math.ceil(self.num_samples / self.length)
        order = torch.cat([torch.randperm(self.length, generator=gen) for _ in range(rounds)])
        yield from order[: self.num_samples].tolist()


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
