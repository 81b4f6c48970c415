"""PointDistiller: structured knowledge distillation into a compact 3D detector (Zhang et al., arXiv 2205.11098).

A narrow student detector learns its detection loss plus the *local structure* of the teacher's voxel
features (official code: RunpeiDong/PointDistiller, ``voxelnet.py::get_voxel_knn``):

1. Run the frozen teacher and the student on the same points; both voxelise alike, so their voxel
   features (at ``voxel_level`` of the sparse backbone) sit on the same coordinates.
2. Saliency: keep the ``N`` voxels with the most points.
3. Local graphs: for each kept voxel, its ``K`` nearest voxels in the *teacher's* feature space; the
   same neighbour sets group the teacher's and the student's features, edges ``[f_neighbour, f_centre]``.
4. Dynamic-graph-conv adapters (1x1 conv + BN + ReLU over the edges; one trainable adapter per side)
   map both graphs to ``C'`` channels: ``G_t``, ``G_s`` ``(N, C', K)``.
5. Re-weighting: ``w = N · softmax(points per voxel / τ)``; ``L_kd = 2 · mean(w · (G_t − G_s)²)``.
6. Total: CenterPoint's detection loss of the student (heatmap focal + 0.25 box L1) + ``L_kd``.

``distillation="imitation"`` replaces steps 3-5 by plain feature imitation on the same voxels
(MSE between a linear projection of the student's voxel features and the teacher's), and ``"none"``
trains the student alone: the two baselines of the paper's tables.

Hyper-parameters -> config keys (``model.init_args.*``):

=========================  ======================  ========================================
paper / official code      key                     default
=========================  ======================  ========================================
N (sampled voxels)         ``num_voxels``          6000 (official PointPillars setting)
K (kNN neighbours)         ``num_neighbours``      128
τ (re-weighting)           ``temperature``         0.01
points counted per voxel   ``max_points_per_voxel`` 32 (hard voxelisation of the official
                                                   PointPillars config caps counts there)
distilled features         ``voxel_level``         0 (the input voxels; the official code
                                                   distils PointPillars' pillar features)
adapter output C'          ``adapter_channels``    None (the student's width there, as official)
loss weights               ``loss_weights``        {heatmap: 1, box: 0.25, kd: 1}
=========================  ======================  ========================================
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.detection.boxes import nms_bev
from lightning_distill.detection.detector import DetectorOutput, batch_targets
from lightning_distill.detection.local_graph import (
    GraphAdapter,
    graph_features,
    knn_in_feature_space,
    salient_voxels,
)
from lightning_distill.detection.metrics import DetectionEvaluation
from lightning_distill.losses import hint_loss
from lightning_distill.losses.detection import local_structure_loss, saliency_weights
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["PointDistiller"]

Distillation = Literal["pointdistiller", "imitation", "none"]


class PointDistiller(DistillationModule):
    """PointDistiller's local-structure distillation between two voxel detectors.

    Args:
        student: a detector (e.g. :class:`~lightning_distill.detection.detector.VoxelDetector` with a
            smaller ``width_multiplier``): ``forward(points, batch_index, batch_size) -> DetectorOutput``,
            ``loss``, ``detect`` and ``sparse_widths``.
        teacher: a frozen detector with the same voxelisation (e.g. from
            :func:`~lightning_distill.models.detection.trained_detector`).
        distillation: ``"pointdistiller"`` (the paper), ``"imitation"`` (MSE on the same voxels, a
            baseline) or ``"none"`` (the student alone).
        num_voxels: ``N``, salient voxels per batch.
        num_neighbours: ``K``, neighbours per local graph (the voxel itself included).
        temperature: ``τ`` of the saliency re-weighting.
        max_points_per_voxel: cap on the point count used as saliency (``None``: no cap). The official
            code reads counts from hard voxelisation, which stops at ``max_num_points`` (32 in its
            PointPillars config), so with ``τ`` = 0.01 the weight spreads over the voxels at the cap;
            uncapped, it would fall on the single densest voxel.
        voxel_level: sparse-backbone level whose voxel features are distilled (0: the input voxels).
        adapter_channels: ``C'`` of both graph adapters; ``None`` takes the student's width at that level.
        nms_iou_threshold: BEV NMS threshold of the evaluated detections (CenterPoint: 0.2); ``None``
            keeps the heatmap peak NMS only.
        loss_weights: ``{"heatmap": ..., "box": ..., "kd": ...}``.
        optimizer: optimizer of the student and the adapters (CenterPoint: AdamW, lr 1e-3, wd 0.01).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: an unknown ``distillation``, ``num_voxels``/``num_neighbours`` < 1, ``temperature`` <= 0,
            a ``voxel_level`` the detectors do not have, or detectors without ``sparse_widths``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("heatmap", "box", "kd")
    default_loss_weights: ClassVar[dict[str, float]] = {"heatmap": 1.0, "box": 0.25, "kd": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distillation: Distillation = "pointdistiller",
        num_voxels: int = 6000,
        num_neighbours: int = 128,
        temperature: float = 0.01,
        max_points_per_voxel: int | None = 32,
        voxel_level: int = 0,
        adapter_channels: int | None = None,
        nms_iou_threshold: float | None = 0.2,
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
        check_option(distillation in ("pointdistiller", "imitation", "none"), "distillation", distillation,
                     "'pointdistiller', 'imitation' or 'none'")  # fmt: skip
        for key, value in (("num_voxels", num_voxels), ("num_neighbours", num_neighbours)):
            check_option(isinstance(value, int) and value >= 1, key, value, "an int >= 1")
        check_option(temperature > 0, "temperature", temperature, "> 0")
        check_option(max_points_per_voxel is None or max_points_per_voxel >= 1, "max_points_per_voxel",
                     max_points_per_voxel, "None or an int >= 1")  # fmt: skip
        check_option(
            adapter_channels is None or adapter_channels >= 1,
            "adapter_channels",
            adapter_channels,
            "None or >= 1",
        )
        widths = [getattr(m, "sparse_widths", None) for m in (student, teacher)]
        check_option(all(isinstance(w, list) for w in widths), "student", type(student).__name__,
                     "a detector with `sparse_widths` (per-level voxel feature widths), e.g. VoxelDetector")  # fmt: skip
        s_widths, t_widths = widths
        check_option(0 <= voxel_level < min(len(s_widths), len(t_widths)), "voxel_level", voxel_level,
                     f"a sparse level in [0, {min(len(s_widths), len(t_widths)) - 1}]")  # fmt: skip
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.distillation = distillation
        self.num_voxels, self.num_neighbours, self.temperature = num_voxels, num_neighbours, temperature
        self.max_points_per_voxel = max_points_per_voxel
        self.voxel_level = voxel_level
        self.nms_iou_threshold = nms_iou_threshold
        c_s, c_t = s_widths[voxel_level], t_widths[voxel_level]
        out = adapter_channels or c_s
        if distillation == "pointdistiller":
            self.student_adapter: nn.Module = GraphAdapter(c_s, out)
            self.teacher_adapter: nn.Module = GraphAdapter(c_t, out)
        elif distillation == "imitation":
            self.student_adapter = nn.Linear(c_s, c_t)
        self.detection_metrics = DetectionEvaluation()

    # ---------------------------------------------------------------- the paper
    def detection_loss(self, output: DetectorOutput, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Step 6 (first part): CenterPoint's terms of the student, ``{"heatmap", "box"}``."""
        return self.student.loss(output, batch["boxes"], batch["labels"])

    def saliency(self, output: DetectorOutput) -> Tensor:
        """Points per voxel ``(V,)`` at ``voxel_level``, capped at ``max_points_per_voxel``."""
        counts = output.num_points[self.voxel_level]
        return counts if self.max_points_per_voxel is None else counts.clamp(max=self.max_points_per_voxel)

    def distillation_voxels(
        self, teacher_out: DetectorOutput, student_out: DetectorOutput
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-2: teacher and student voxel features ``(V, C)`` at ``voxel_level``, and the salient voxels ``(N,)``.

        Raises:
            ValueError: the two detectors voxelised the points differently.
        """
        level = self.voxel_level
        t_coords, s_coords = teacher_out.voxel_coords[level], student_out.voxel_coords[level]
        if t_coords.shape != s_coords.shape or not torch.equal(t_coords, s_coords):
            raise ValueError(
                f"Teacher and student voxels differ at level {level} ({len(t_coords)} vs {len(s_coords)} voxels): give "
                "both detectors the same `point_range` and `voxel_size` (only widths may differ)."
            )
        centres = salient_voxels(self.saliency(teacher_out), self.num_voxels)
        return teacher_out.voxel_features[level], student_out.voxel_features[level], centres

    def local_structure_term(
        self, t_feats: Tensor, s_feats: Tensor, centres: Tensor, saliency: Tensor
    ) -> Tensor:
        """Steps 3-5: kNN graphs in teacher feature space, adapters, ``2 · mean(w · (G_t − G_s)²)``."""
        neighbours = knn_in_feature_space(t_feats, centres, self.num_neighbours)
        g_t = self.teacher_adapter(graph_features(t_feats.detach(), centres, neighbours))
        g_s = self.student_adapter(graph_features(s_feats, centres, neighbours))
        weights = saliency_weights(saliency[centres], temperature=self.temperature)
        return local_structure_loss(g_t, g_s, weights)

    def imitation_term(self, t_feats: Tensor, s_feats: Tensor, centres: Tensor) -> Tensor:
        """The feature-imitation baseline: ``mean (P f_s − f_t)²`` over the same salient voxels."""
        return hint_loss(self.student_adapter(s_feats[centres]), t_feats[centres].detach())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        points, index, size = batch["points"], batch["batch_index"], len(batch["boxes"])
        # 1. The frozen teacher and the student on the same points.
        with torch.no_grad():
            teacher_out = self.teacher(points, index, size) if self.distillation != "none" else None
        student_out = self.student(points, index, size)
        # 6. The student's own detection loss.
        terms = self.detection_loss(student_out, batch)
        if teacher_out is not None:
            # 2. Salient voxels (most points), on the coordinates both detectors share.
            t_feats, s_feats, centres = self.distillation_voxels(teacher_out, student_out)
            saliency = self.saliency(teacher_out)
            # 3.-5. Local-structure loss (or the imitation baseline).
            if self.distillation == "pointdistiller":
                terms["kd"] = self.local_structure_term(t_feats, s_feats, centres, saliency)
            else:
                terms["kd"] = self.imitation_term(t_feats, s_feats, centres)
            self.log_diagnostics({"kd_voxels": float(len(centres)), "voxels": float(len(t_feats))})
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _nms(self) -> Any:
        if self.nms_iou_threshold is None:
            return None
        return lambda boxes, scores, iou: nms_bev(boxes, scores, iou)

    @torch.no_grad()
    def _detect(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        output = model(batch["points"], batch["batch_index"], len(batch["boxes"]))
        return model.detect(output, nms=self._nms())

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        targets = batch_targets(batch)
        self.detection_metrics.update(stage, self._detect(self.student, batch), targets)
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            self.detection_metrics.update(stage, self._detect(self.teacher, batch), targets, model="teacher")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.detection_metrics.reset("val")
            return
        self.log_dict(self.detection_metrics.logs("val"))
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.detection_metrics.logs("test"))
        super().on_test_epoch_end()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Tensor]]:
        return self._detect(self.student, batch)

    def predict_boxes(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """The student's detections per frame (what ``DetectionPictures`` draws)."""
        return self._detect(self.student, batch)

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int | None = None) -> DetectorOutput:
        return self.student(points, batch_index, batch_size)
