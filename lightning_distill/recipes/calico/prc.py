"""CALICO: self-supervised camera-LiDAR contrastive pre-training for BEV perception (Sun et al., ICLR 2024,
arXiv 2306.00349), in two stages, two recipes.

Stage 1, point-region contrast (:class:`CALICOPRC`), on LiDAR alone:

1. Semantic pooling: ground removal, DBSCAN (eps 0.75 m, 5 points) and object-like filtering split
   each scan into regions (semantic-rich points) and semantic-less points.
2. Two random rigid views of the batch (rotation, flips, scaling); the sparse 3D backbone and a
   linear head give L2-normalised features of every point in each view.
3. Sample ``N`` semantic-rich and ``M`` semantic-less points per scan (paper: 1024 and 1024).
4. ``L_PRC = alpha * L_PLRC + (1 - alpha) * L_RAPC``: PLRC pulls a point towards every point of
   its region in the other view (region level); RAPC pulls it towards itself in the other view
   and pushes it from points of other regions (scene level).

Stage 2, region-aware distillation (:class:`CALICORAD`): the frozen stage-1 backbone teaches a BEV
backbone. Teacher point features are mean-pooled into the student's BEV cells; ``N`` + ``M`` cells
per scan are sampled, and ``L_RAD`` is an InfoNCE from student to teacher cell features in which
every region (and each scan's semantic-less cells, as one group) weighs the same.

Hyper-parameters -> config keys (``model.init_args.*``):

=====================================  ====================  =========================
paper / official code                  key                   default
=====================================  ====================  =========================
PLRC vs RAPC balance ``alpha``         ``alpha``             0.5
temperature (official: logit scale 10) ``temperature``       0.1
semantic-rich / -less points per scan  ``num_rich``/``num_less``  1024 / 1024
semantic pooling (DBSCAN, filters)     ``partition``         :class:`RegionPartition`
view augmentation                      ``augmentation``      rot +-90 deg, scale 0.9-1.1, flips
projection size                        ``feature_dim``       64
both directions of each InfoNCE        ``symmetric``         True (official ``ClipLoss``)
=====================================  ====================  =========================
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.lidar.augment import ScanAugmentation
from lightning_distill.lidar.bev import BEVGrid, bev_cells, gather_from_bev, scatter_to_bev
from lightning_distill.lidar.networks import PointHead, sparse_point_features
from lightning_distill.lidar.region_contrast import (
    point_region_contrast,
    region_aware_distillation,
    region_aware_point_contrast,
    sample_region_points,
)
from lightning_distill.lidar.regions import RegionPartition
from lightning_distill.module import DistillationModule

__all__ = ["CALICOPRC", "CALICORAD", "prc_teacher"]


def _paper_augmentation() -> ScanAugmentation:
    return ScanAugmentation(
        rotation_range_deg=(-90.0, 90.0), flip_probability=0.5, scale_range=(0.9, 1.1), jitter_std=0.0
    )


def _step_generator(step: int) -> torch.Generator:
    """A generator from the run seed and the step, so a resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed((torch.initial_seed() * 1_000_003 + step) % (2**63))


class _CALICOBase(DistillationModule):
    """Shared checks and the semantic pooling of both stages."""

    def _setup_common(
        self,
        backbone: nn.Module,
        role: str,
        temperature: float,
        num_rich: int,
        num_less: int,
        voxel_size: float,
        input_features: str,
        partition: RegionPartition | None,
    ) -> None:
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
        self.temperature = temperature
        self.num_rich = num_rich
        self.num_less = num_less
        self.voxel_size = voxel_size
        self.input_features = input_features
        self.partition = partition if partition is not None else RegionPartition()

    def regions(self, points: Tensor) -> Tensor:
        """Semantic pooling: batch-unique region id per point, -1 for semantic-less ``(N,)``."""
        return self.partition(points)

    def point_features_of(self, backbone: nn.Module, points: Tensor) -> Tensor:
        """Per-point features ``(N, C)`` of a sparse 3D backbone."""
        return sparse_point_features(
            backbone, points, voxel_size=self.voxel_size, input_features=self.input_features
        )

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._batch_size_hint = int(batch["points"][:, 0].max()) + 1  # scans, not points

    def _log_eval(self, metrics: dict[str, Tensor], stage: str, batch: dict[str, Tensor]) -> None:
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=int(batch["points"][:, 0].max()) + 1,
            prog_bar=True,
        )

    @staticmethod
    def _match_accuracy(anchors: Tensor, keys: Tensor) -> Tensor:
        target = torch.arange(len(anchors), device=anchors.device)
        return ((anchors @ keys.T).argmax(dim=1) == target).float().mean()


class CALICOPRC(_CALICOBase):
    """Stage 1: point-region contrast on LiDAR (self-supervised; no teacher).

    Args:
        student: sparse 3D backbone with an ``out_channels`` attribute
            (:class:`~lightning_distill.lidar.networks.SparseUNet`).
        feature_dim: size of the projected, L2-normalised features.
        alpha: weight of PLRC; RAPC gets ``1 - alpha``.
        temperature: InfoNCE temperature of both terms.
        num_rich: semantic-rich points sampled per scan (``N``).
        num_less: semantic-less points sampled per scan (``M``).
        voxel_size: cubic voxel edge of the backbone, metres.
        input_features: ``"ones"`` or ``"intensity"`` as the backbone's input.
        partition: the semantic pooling (default :class:`RegionPartition` with the official settings).
        augmentation: draws each view (default: the paper's rotation, scaling and flips).
        symmetric: average each InfoNCE over both directions (view 1 -> 2 and 2 -> 1).
        loss_weights: ``{"plrc": ..., "rapc": ...}``; default ``alpha`` and ``1 - alpha``.
        optimizer: optimizer of the backbone and the head.
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: ``alpha`` outside [0, 1], non-positive ``temperature``, ``feature_dim`` or
            ``voxel_size``, bad sample counts or ``input_features``.
        TypeError: a student without an int ``out_channels``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("plrc", "rapc")
    requires_teacher: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        feature_dim: int = 64,
        alpha: float = 0.5,
        temperature: float = 0.1,
        num_rich: int = 1024,
        num_less: int = 1024,
        voxel_size: float = 0.1,
        input_features: Literal["ones", "intensity"] = "ones",
        partition: RegionPartition | None = None,
        augmentation: ScanAugmentation | None = None,
        symmetric: bool = True,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha}; set `model.init_args.alpha`.")
        if feature_dim < 1:
            raise ValueError(
                f"`feature_dim` must be >= 1, got {feature_dim}; set `model.init_args.feature_dim`."
            )
        weights = {"plrc": alpha, "rapc": 1.0 - alpha, **(loss_weights or {})}
        super().__init__(student, loss_weights=weights, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self._setup_common(
            student, "student", temperature, num_rich, num_less, voxel_size, input_features, partition
        )
        self.save_hyperparameters(
            ignore=["student", "optimizer", "lr_scheduler", "partition", "augmentation"]
        )
        self.alpha = alpha
        self.symmetric = symmetric
        self.augmentation = augmentation if augmentation is not None else _paper_augmentation()
        self.head = PointHead(student.out_channels, feature_dim)

    # ---------------------------------------------------------------- the paper
    def views(self, points: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 2: two independently augmented copies of the batch (rows keep their order)."""
        return self.augmentation(points, generator)[0], self.augmentation(points, generator)[0]

    def projected_features(self, points: Tensor, index: Tensor) -> Tensor:
        """Step 2: L2-normalised head features ``(P, D)`` of the points ``index`` of one view."""
        return F.normalize(self.head(self.point_features_of(self.student, points)[index]), dim=1)

    def plrc_loss(self, z1: Tensor, z2: Tensor, regions: Tensor) -> Tensor:
        """Eq. 1, PLRC: positives are the other view's points of the same region."""
        loss = point_region_contrast(z1, z2, regions, temperature=self.temperature)
        if self.symmetric:
            loss = 0.5 * (loss + point_region_contrast(z2, z1, regions, temperature=self.temperature))
        return loss

    def rapc_loss(self, z1: Tensor, z2: Tensor, regions: Tensor) -> Tensor:
        """RAPC: the same point in the other view is the positive; same-region points are not negatives."""
        loss = region_aware_point_contrast(z1, z2, regions, temperature=self.temperature)
        if self.symmetric:
            loss = 0.5 * (loss + region_aware_point_contrast(z2, z1, regions, temperature=self.temperature))
        return loss

    def contrast(self, points: Tensor, step: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Steps 1-4 on a batch: the two loss terms and the sampled features of both views."""
        regions = self.regions(points)  # (N,)
        generator = _step_generator(step)
        view1, view2 = self.views(points, generator)
        index = sample_region_points(
            regions, points[:, 0].long(), num_rich=self.num_rich, num_less=self.num_less, generator=generator
        )
        z1, z2 = self.projected_features(view1, index), self.projected_features(view2, index)  # (P, D)
        sampled = regions[index]
        terms = {"plrc": self.plrc_loss(z1, z2, sampled), "rapc": self.rapc_loss(z1, z2, sampled)}
        return terms, z1, z2

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        terms, z1, _ = self.contrast(batch["points"], self.global_step)
        self.log("train/sampled_points", float(len(z1)), on_step=True, on_epoch=False, batch_size=1)
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Logs both terms and ``match_acc``: how often a point's nearest key in the other view is itself."""
        terms, z1, z2 = self.contrast(batch["points"], 0)
        self._log_eval({**terms, "match_acc": self._match_accuracy(z1, z2)}, stage, batch)

    def forward(self, points: Tensor) -> Tensor:
        """Per-point backbone features ``(N, C)`` of batched points ``(N, 4 + F)``."""
        return self.point_features_of(self.student, points)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.forward(batch["points"])


class CALICORAD(_CALICOBase):
    """Stage 2: region-aware distillation of the frozen stage-1 3D backbone into a BEV backbone.

    Args:
        student: BEV backbone, batched points ``(N, 4 + F)`` -> ``(B, C, H, W)``, with ``out_channels``
            and a :class:`~lightning_distill.lidar.bev.BEVGrid` ``grid``
            (:class:`~lightning_distill.lidar.bev.BEVBackbone`).
        teacher: the stage-1 sparse 3D backbone (frozen), e.g. from :func:`prc_teacher`.
        feature_dim: size of the projected, L2-normalised features.
        temperature: InfoNCE temperature.
        num_rich: semantic-rich BEV cells sampled per scan.
        num_less: semantic-less BEV cells sampled per scan.
        voxel_size: voxel edge of the teacher, metres.
        input_features: the teacher's input (``"ones"`` or ``"intensity"``).
        partition: the semantic pooling (default :class:`RegionPartition`).
        augmentation: one random transform per scan, shared by teacher and student (``None``: the
            paper's; pass ``ScanAugmentation(rotation_range_deg=(0, 0), flip_probability=0,
            scale_range=(1, 1), jitter_std=0)`` for none).
        symmetric: also the teacher -> student direction of the InfoNCE.
        loss_weights: ``{"rad": ...}``.
        optimizer: optimizer of the student and both heads.
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: non-positive ``temperature``, ``feature_dim`` or ``voxel_size``, bad counts.
        TypeError: a student without ``out_channels`` and a ``BEVGrid`` ``grid``, or a teacher
            without ``out_channels``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("rad",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        feature_dim: int = 64,
        temperature: float = 0.1,
        num_rich: int = 1024,
        num_less: int = 1024,
        voxel_size: float = 0.1,
        input_features: Literal["ones", "intensity"] = "ones",
        partition: RegionPartition | None = None,
        augmentation: ScanAugmentation | None = None,
        symmetric: bool = True,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if feature_dim < 1:
            raise ValueError(
                f"`feature_dim` must be >= 1, got {feature_dim}; set `model.init_args.feature_dim`."
            )
        if not isinstance(getattr(student, "grid", None), BEVGrid):
            raise TypeError(f"The student ({type(student).__name__}) needs a `grid` attribute (a BEVGrid).")
        self._setup_common(
            student, "student", temperature, num_rich, num_less, voxel_size, input_features, partition
        )
        if not isinstance(getattr(teacher, "out_channels", None), int):
            raise TypeError(f"The teacher ({type(teacher).__name__}) needs an int `out_channels` attribute.")
        self.save_hyperparameters(
            ignore=["student", "teacher", "optimizer", "lr_scheduler", "partition", "augmentation"]
        )
        self.symmetric = symmetric
        self.augmentation = augmentation if augmentation is not None else _paper_augmentation()
        self.grid: BEVGrid = student.grid
        self.student_head = PointHead(student.out_channels, feature_dim)
        self.teacher_head = PointHead(teacher.out_channels, feature_dim)

    # ---------------------------------------------------------------- the paper
    def teacher_bev(self, points: Tensor, batch_size: int) -> Tensor:
        """The frozen teacher's point features mean-pooled into the student's cells ``(B, C_t, H, W)``."""
        with torch.no_grad():
            features = self.point_features_of(self.teacher, points)
        cells, inside = bev_cells(points, self.grid)
        return scatter_to_bev(features[inside], cells[inside], batch_size, self.grid)

    def cell_regions(self, points: Tensor, regions: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Occupied cells ``(M,)`` and their region (the largest id of their points; -1 if none) ``(M,)``."""
        cells, inside = bev_cells(points, self.grid)
        cells, regions = cells[inside], regions[inside]
        occupied, inverse = torch.unique(cells, return_inverse=True)
        cell_region = torch.full((len(occupied),), -1, dtype=torch.long, device=points.device)
        return occupied, cell_region.scatter_reduce(0, inverse, regions, reduce="amax", include_self=True)

    def rad_loss(self, student: Tensor, teacher: Tensor, groups: Tensor) -> Tensor:
        """Eq. 3, RAD: region-normalised InfoNCE between student and teacher cell features."""
        loss = region_aware_distillation(student, teacher, groups, temperature=self.temperature)
        if self.symmetric:
            loss = 0.5 * (
                loss + region_aware_distillation(teacher, student, groups, temperature=self.temperature)
            )
        return loss

    def distill(self, points: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """One RAD step: the loss and the sampled student and teacher features ``(P, D)``."""
        batch_size = int(points[:, 0].max()) + 1
        regions = self.regions(points)  # 1. semantic pooling on the raw scan
        generator = _step_generator(step)
        points = self.augmentation(points, generator)[0]  # 2. one view, shared by both networks
        student_map = self.student(points, batch_size)  # 3. (B, C, H, W)
        teacher_map = self.teacher_bev(points, batch_size)  # (B, C_t, H, W)
        cells, cell_region = self.cell_regions(points, regions, batch_size)  # 4. cells and their regions
        scan = cells // (self.grid.height * self.grid.width)
        index = sample_region_points(
            cell_region, scan, num_rich=self.num_rich, num_less=self.num_less, generator=generator
        )
        cells, cell_region, scan = cells[index], cell_region[index], scan[index]
        s = F.normalize(self.student_head(gather_from_bev(student_map, cells)), dim=1)
        t = F.normalize(self.teacher_head(gather_from_bev(teacher_map, cells)), dim=1)
        # semantic-less cells of scan b form one group, after the regions
        groups = torch.where(cell_region >= 0, cell_region, int(regions.max()) + 1 + scan)
        return self.rad_loss(s, t, groups), s, t

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, s, _ = self.distill(batch["points"], self.global_step)
        self.log("train/sampled_cells", float(len(s)), on_step=True, on_epoch=False, batch_size=1)
        return self.log_losses({"rad": loss})

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Logs ``rad`` and ``match_acc``: how often a student cell's nearest teacher cell is its own."""
        loss, s, t = self.distill(batch["points"], 0)
        self._log_eval({"rad": loss, "match_acc": self._match_accuracy(s, t)}, stage, batch)

    def forward(self, points: Tensor) -> Tensor:
        """BEV features ``(B, C, H, W)`` of the student for batched points ``(N, 4 + F)``."""
        return self.student(points)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.forward(batch["points"])


def prc_teacher(
    backbone: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 3,
    lr: float = 3e-3,
    voxel_size: float = 0.1,
    num_rich: int = 1024,
    num_less: int = 1024,
    partition: RegionPartition | None = None,
    prc: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """The stage-1 teacher: ``backbone`` with PRC-pretrained weights, from a checkpoint, the cache, or trained now.

    With ``checkpoint`` (a ``CALICOPRC`` Lightning checkpoint or a raw ``state_dict``) the weights
    are loaded. Otherwise ``backbone`` is re-initialised from ``seed``, :class:`CALICOPRC` trains it on
    ``data`` for ``epochs`` (AdamW, cosine schedule) and the weights are cached under ``cache_dir`` by
    a key of the architecture, the data settings and these arguments, so a changed teacher config
    trains a new teacher.

    Args:
        backbone: the sparse 3D backbone to pretrain (:class:`~lightning_distill.lidar.networks.SparseUNet`).
        data: a :class:`~lightning_distill.lidar.data.SyntheticLidarDataModule` (or any module serving
            ``points``); required unless ``checkpoint`` is given.
        checkpoint: path of trained weights.
        epochs: PRC epochs when training.
        lr: peak AdamW learning rate.
        voxel_size: :class:`CALICOPRC` ``voxel_size`` (the RAD recipe must use the same).
        num_rich: :class:`CALICOPRC` ``num_rich``.
        num_less: :class:`CALICOPRC` ``num_less``.
        partition: :class:`CALICOPRC` ``partition``.
        prc: other :class:`CALICOPRC` arguments with plain values (e.g. ``{"alpha": 0.9}``).
        seed: seed of the pretraining.
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE`` or
            ``~/.cache/lightning_distill``).
        retrain: ignore a cached teacher and train again.

    Returns:
        ``backbone`` in eval mode, with a ``distill_source`` string saying where its weights came from.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or ``epochs`` < 1.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    from lightning_distill.models.pretrained import cached_training, load_weights

    if checkpoint is not None:
        load_weights(backbone, checkpoint)
        backbone.distill_source = f"PRC checkpoint {checkpoint}"
        return backbone.eval()
    if data is None:
        raise ValueError(
            "`prc_teacher` needs `checkpoint` (stage-1 weights) or `data` (to run stage 1 on first use); set "
            "`model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    prc = dict(prc or {})
    prc.update(voxel_size=voxel_size, num_rich=num_rich, num_less=num_less)
    settings = {
        "recipe": "calico_prc",
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "prc": json.dumps(prc, sort_keys=True),
        "partition": repr(partition if partition is not None else RegionPartition()),
    }

    def fit() -> dict[str, Any]:
        model = CALICOPRC(
            backbone,
            optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-4),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
            partition=partition,
            **prc,
        )
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, datamodule=data)
        return {}

    # seed: initialisation, data order, views and samples
    weights, _ = cached_training(
        backbone,
        data,
        settings,
        fit,
        seed=seed,
        stem=f"calico_prc-{type(backbone).__name__}",
        what=f"{epochs} epochs of CALICO stage 1 (PRC)",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    backbone.distill_source = f"calico prc_teacher cache {weights} (sha256 {digest})"
    return backbone.eval()
