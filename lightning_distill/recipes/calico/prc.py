"""CALICO: self-supervised camera-LiDAR contrastive pre-training for BEV perception (Sun et al., ICLR 2024,
arXiv 2306.00349), in two stages, two recipes: stage 1 here, stage 2 in
:mod:`lightning_distill.recipes.calico.rad`.

Stage 1, point-region contrast (:class:`CALICOPRC`), on LiDAR alone:

1. Semantic pooling: ground removal, DBSCAN (eps 0.75 m, 5 points) and object-like filtering split
   each scan into regions (semantic-rich points) and semantic-less points.
2. Two random rigid views of the batch (rotation, flips, scaling); the sparse 3D backbone and a
   linear head give L2-normalised features of every point in each view.
3. Sample ``N`` semantic-rich and ``M`` semantic-less points per scan (paper: 1024 and 1024).
4. ``L_PRC = alpha * L_PLRC + (1 - alpha) * L_RAPC`` (``loss_weights: {plrc: alpha, rapc: 1 - alpha}``):
   PLRC pulls a point towards every point of its region in the other view (region level); RAPC
   pulls it towards itself in the other view and pushes it from points of other regions (scene
   level).

Stage 2, region-aware distillation (:class:`~lightning_distill.recipes.calico.rad.CALICORAD`): the
frozen stage-1 backbone teaches a BEV backbone. Teacher point features are mean-pooled into the
student's BEV cells; ``N`` + ``M`` cells per scan are sampled, and ``L_RAD`` is an InfoNCE from
student to teacher cell features in which every region (and each scan's semantic-less cells, as
one group) weighs the same.

Hyper-parameters -> config keys (``model.init_args.*``):

=====================================  ====================  =========================
paper / official code                  key                   default
=====================================  ====================  =========================
PLRC vs RAPC balance ``alpha``         ``loss_weights``      ``{plrc: 0.5, rapc: 0.5}``
temperature (official: logit scale 10) ``temperature``       0.1
semantic-rich / -less points per scan  ``num_rich``/``num_less``  1024 / 1024
semantic pooling (DBSCAN, filters)     ``partition``         :class:`RegionPartition`
view augmentation                      ``augmentation``      rot +-90 deg, scale 0.9-1.1, flips
projection size                        ``feature_dim``       64
both directions of each InfoNCE        ``symmetric``         True (official ``ClipLoss``)
optimizer (not published)              ``optimizer``         torch's AdamW
=====================================  ====================  =========================

Shared steps of both stages are parts of :mod:`lightning_distill.lidar.region_contrast`; the losses
are :mod:`lightning_distill.losses.contrastive`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.lidar import region_contrast
from lightning_distill.lidar.augment import ScanAugmentation
from lightning_distill.lidar.networks import PointHead, sparse_point_features
from lightning_distill.lidar.regions import RegionPartition
from lightning_distill.losses.contrastive import point_region_contrast, region_aware_point_contrast
from lightning_distill.module import DistillationModule
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["CALICOPRC", "prc_teacher"]


def _scans(points: Tensor) -> int:
    return int(points[:, 0].max()) + 1


class CALICOPRC(DistillationModule):
    """Stage 1: point-region contrast on LiDAR (self-supervised; no teacher).

    Args:
        student: sparse 3D backbone with an ``out_channels`` attribute
            (:class:`~lightning_distill.lidar.networks.SparseUNet`).
        feature_dim: size of the projected, L2-normalised features.
        temperature: InfoNCE temperature of both terms.
        num_rich: semantic-rich points sampled per scan (``N``).
        num_less: semantic-less points sampled per scan (``M``).
        voxel_size: cubic voxel edge of the backbone, metres.
        input_features: ``"ones"`` or ``"intensity"`` as the backbone's input.
        partition: the semantic pooling (default :class:`RegionPartition` with the official settings).
        augmentation: draws each view (default: the paper's rotation, scaling and flips).
        symmetric: average each InfoNCE over both directions (view 1 -> 2 and 2 -> 1).
        loss_weights: ``{"plrc": alpha, "rapc": 1 - alpha}``, the paper's ``L_PRC`` balance; default
            ``alpha = 0.5``. Give both terms to keep them summing to one.
        optimizer: optimizer of the backbone and the head (not published; torch's AdamW).
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: non-positive ``temperature``, ``feature_dim`` or
            ``voxel_size``, bad sample counts or ``input_features``.
        TypeError: a student without an int ``out_channels``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("plrc", "rapc")
    default_loss_weights: ClassVar[dict[str, float]] = {"plrc": 0.5, "rapc": 0.5}
    requires_teacher: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
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
        if feature_dim < 1:
            raise ValueError(
                f"`feature_dim` must be >= 1, got {feature_dim}; set `model.init_args.feature_dim`."
            )
        super().__init__(student, loss_weights=loss_weights, optimizer=optimizer, lr_scheduler=lr_scheduler)
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
        self.save_hyperparameters(
            ignore=["student", "optimizer", "lr_scheduler", "partition", "augmentation"]
        )
        self.symmetric = symmetric
        self.augmentation = (
            augmentation if augmentation is not None else region_contrast.paper_view_augmentation()
        )
        self.head = PointHead(student.out_channels, feature_dim)

    # ---------------------------------------------------------------- the paper
    def regions(self, points: Tensor) -> Tensor:
        """Step 1, semantic pooling: batch-unique region id per point, -1 for semantic-less ``(N,)``."""
        return self.partition(points)

    def views(self, points: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 2: two independently augmented copies of the batch (rows keep their order)."""
        return self.augmentation(points, generator)[0], self.augmentation(points, generator)[0]

    def projected_features(self, points: Tensor, index: Tensor) -> Tensor:
        """Step 2: L2-normalised head features ``(P, D)`` of the points ``index`` of one view."""
        features = sparse_point_features(
            self.student, points, voxel_size=self.voxel_size, input_features=self.input_features
        )
        return F.normalize(self.head(features[index]), dim=1)

    def plrc_loss(self, z1: Tensor, z2: Tensor, regions: Tensor) -> Tensor:
        """Eq. 1, PLRC: positives are the other view's points of the same region."""
        return region_contrast.symmetric_contrast(
            point_region_contrast, z1, z2, regions, temperature=self.temperature, symmetric=self.symmetric
        )

    def rapc_loss(self, z1: Tensor, z2: Tensor, regions: Tensor) -> Tensor:
        """RAPC: the same point in the other view is the positive; same-region points are not negatives."""
        return region_contrast.symmetric_contrast(
            region_aware_point_contrast,
            z1,
            z2,
            regions,
            temperature=self.temperature,
            symmetric=self.symmetric,
        )

    def contrast(self, points: Tensor, step: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Steps 1-4 on a batch: the two loss terms and the sampled features of both views."""
        regions = self.regions(points)  # (N,)
        generator = region_contrast.step_generator(step)
        view1, view2 = self.views(points, generator)
        index = region_contrast.sample_region_points(
            regions, points[:, 0].long(), num_rich=self.num_rich, num_less=self.num_less, generator=generator
        )
        z1, z2 = self.projected_features(view1, index), self.projected_features(view2, index)  # (P, D)
        sampled = regions[index]
        terms = {"plrc": self.plrc_loss(z1, z2, sampled), "rapc": self.rapc_loss(z1, z2, sampled)}
        return terms, z1, z2

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        terms, z1, _ = self.contrast(batch["points"], self.global_step)
        self.log_diagnostics({"sampled_points": float(len(z1))})
        return self.log_losses(terms)

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._batch_size_hint = _scans(batch["points"])  # scans, not points

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Logs both terms and ``match_acc``: how often a point's nearest key in the other view is itself."""
        terms, z1, z2 = self.contrast(batch["points"], 0)
        metrics = {**terms, "match_acc": region_contrast.match_accuracy(z1, z2)}
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=_scans(batch["points"]),
            prog_bar=True,
        )

    def forward(self, points: Tensor) -> Tensor:
        """Per-point backbone features ``(N, C)`` of batched points ``(N, 4 + F)``."""
        return sparse_point_features(
            self.student, points, voxel_size=self.voxel_size, input_features=self.input_features
        )

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
        data: a :class:`~lightning_distill.data.lidar.SyntheticLidarDataModule` (or any module serving
            ``points``); required unless ``checkpoint`` is given.
        checkpoint: path of trained weights.
        epochs: PRC epochs when training.
        lr: peak AdamW learning rate.
        voxel_size: :class:`CALICOPRC` ``voxel_size`` (the RAD recipe must use the same).
        num_rich: :class:`CALICOPRC` ``num_rich``.
        num_less: :class:`CALICOPRC` ``num_less``.
        partition: :class:`CALICOPRC` ``partition``.
        prc: other :class:`CALICOPRC` arguments with plain values (e.g.
            ``{"loss_weights": {"plrc": 0.9, "rapc": 0.1}}``).
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
    digest = file_sha256(weights)
    backbone.distill_source = f"calico prc_teacher cache {weights} (sha256 {digest})"
    return backbone.eval()
