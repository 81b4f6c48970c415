"""CALICO stage 2, region-aware distillation (Sun et al., ICLR 2024, arXiv 2306.00349).

Stage 1 (point-region contrast, :class:`~lightning_distill.recipes.calico.CALICOPRC`) pretrains a
sparse 3D backbone on LiDAR alone; :func:`~lightning_distill.recipes.calico.prc.prc_teacher` builds it.
Here the frozen stage-1 backbone teaches a BEV backbone:

1. Semantic pooling of each raw scan into regions (ground removal, DBSCAN, object-like filters).
2. One random rigid view of the batch, shared by teacher and student.
3. Student BEV map ``(B, C, H, W)``; teacher point features mean-pooled into the student's cells.
4. Sample ``N`` semantic-rich and ``M`` semantic-less occupied cells per scan; project both sides
   with linear heads, L2-normalise.
5. ``L_RAD``: InfoNCE from student to teacher cell features in which every region (and each
   scan's semantic-less cells, as one group) weighs the same (eq. 3).

Hyper-parameters -> config keys (``model.init_args.*``):

=====================================  ====================  =========================
paper / official code                  key                   default
=====================================  ====================  =========================
temperature (official: logit scale 10) ``temperature``       0.1
semantic-rich / -less cells per scan   ``num_rich``/``num_less``  1024 / 1024
semantic pooling (DBSCAN, filters)     ``partition``         :class:`RegionPartition`
view augmentation                      ``augmentation``      rot +-90 deg, scale 0.9-1.1, flips
projection size                        ``feature_dim``       64
both directions of the InfoNCE         ``symmetric``         True (official ``ClipLoss``)
optimizer (not published)              ``optimizer``         torch's AdamW
=====================================  ====================  =========================
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.lidar import region_contrast
from lightning_distill.lidar.augment import ScanAugmentation
from lightning_distill.lidar.bev import BEVGrid, bev_cells, gather_from_bev, scatter_to_bev
from lightning_distill.lidar.networks import PointHead, sparse_point_features
from lightning_distill.lidar.regions import RegionPartition
from lightning_distill.losses.contrastive import region_aware_distillation
from lightning_distill.module import DistillationModule

__all__ = ["CALICORAD"]


def _scans(points: Tensor) -> int:
    return int(points[:, 0].max()) + 1


class CALICORAD(DistillationModule):
    """Stage 2: region-aware distillation of the frozen stage-1 3D backbone into a BEV backbone.

    Args:
        student: BEV backbone, batched points ``(N, 4 + F)`` -> ``(B, C, H, W)``, with ``out_channels``
            and a :class:`~lightning_distill.lidar.bev.BEVGrid` ``grid``
            (:class:`~lightning_distill.lidar.bev.BEVBackbone`).
        teacher: the stage-1 sparse 3D backbone (frozen), e.g. from
            :func:`~lightning_distill.recipes.calico.prc.prc_teacher`.
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
        optimizer: optimizer of the student and both heads (not published; torch's AdamW).
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
        region_contrast.check_region_contrast(
            student,
            "student",
            temperature=temperature,
            num_rich=num_rich,
            num_less=num_less,
            voxel_size=voxel_size,
            input_features=input_features,
        )
        self.temperature = temperature
        self.num_rich = num_rich
        self.num_less = num_less
        self.voxel_size = voxel_size
        self.input_features = input_features
        self.partition = partition if partition is not None else RegionPartition()
        if not isinstance(getattr(teacher, "out_channels", None), int):
            raise TypeError(f"The teacher ({type(teacher).__name__}) needs an int `out_channels` attribute.")
        self.save_hyperparameters(
            ignore=["student", "teacher", "optimizer", "lr_scheduler", "partition", "augmentation"]
        )
        self.symmetric = symmetric
        self.augmentation = (
            augmentation if augmentation is not None else region_contrast.paper_view_augmentation()
        )
        self.grid: BEVGrid = student.grid
        self.student_head = PointHead(student.out_channels, feature_dim)
        self.teacher_head = PointHead(teacher.out_channels, feature_dim)

    # ---------------------------------------------------------------- the paper
    def regions(self, points: Tensor) -> Tensor:
        """Step 1, semantic pooling: batch-unique region id per point, -1 for semantic-less ``(N,)``."""
        return self.partition(points)

    def teacher_bev(self, points: Tensor, batch_size: int) -> Tensor:
        """The frozen teacher's point features mean-pooled into the student's cells ``(B, C_t, H, W)``."""
        with torch.no_grad():
            features = sparse_point_features(
                self.teacher, points, voxel_size=self.voxel_size, input_features=self.input_features
            )
        cells, inside = bev_cells(points, self.grid)
        return scatter_to_bev(features[inside], cells[inside], batch_size, self.grid)

    def cell_regions(self, points: Tensor, regions: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Occupied cells ``(M,)`` and their region (the largest id of their points; -1 if none) ``(M,)``."""
        return region_contrast.cell_regions(points, regions, self.grid)

    def rad_loss(self, student: Tensor, teacher: Tensor, groups: Tensor) -> Tensor:
        """Eq. 3, RAD: region-normalised InfoNCE between student and teacher cell features."""
        return region_contrast.symmetric_contrast(
            region_aware_distillation,
            student,
            teacher,
            groups,
            temperature=self.temperature,
            symmetric=self.symmetric,
        )

    def distill(self, points: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """One RAD step: the loss and the sampled student and teacher features ``(P, D)``."""
        batch_size = int(points[:, 0].max()) + 1
        regions = self.regions(points)  # 1. semantic pooling on the raw scan
        generator = region_contrast.step_generator(step)
        points = self.augmentation(points, generator)[0]  # 2. one view, shared by both networks
        student_map = self.student(points, batch_size)  # 3. (B, C, H, W)
        teacher_map = self.teacher_bev(points, batch_size)  # (B, C_t, H, W)
        cells, cell_region = self.cell_regions(points, regions, batch_size)  # 4. cells and their regions
        scan = cells // (self.grid.height * self.grid.width)
        index = region_contrast.sample_region_points(
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
        self.log_diagnostics({"sampled_cells": float(len(s))})
        return self.log_losses({"rad": loss})

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._batch_size_hint = _scans(batch["points"])  # scans, not points

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Logs ``rad`` and ``match_acc``: how often a student cell's nearest teacher cell is its own."""
        loss, s, t = self.distill(batch["points"], 0)
        metrics = {"rad": loss, "match_acc": region_contrast.match_accuracy(s, t)}
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=_scans(batch["points"]),
            prog_bar=True,
        )

    def forward(self, points: Tensor) -> Tensor:
        """BEV features ``(B, C, H, W)`` of the student for batched points ``(N, 4 + F)``."""
        return self.student(points)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.forward(batch["points"])
