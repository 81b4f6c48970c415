"""X-Ray distillation: weak-to-strong 3D detection from object-complete frames (Gambashidze et al., arXiv 2404.00679).

A LiDAR frame sees each object from one side, and far or occluded objects get a handful of points.
Over a sequence the same object is seen from many sides, so the points of each tracked box, gathered
in box coordinates over the sequence and pasted back, make an *object-complete* frame
(:mod:`lightning_distill.detection.object_complete`; official tools: sakharok13/X-Ray-Teacher-Patching-Tools).
Such frames cannot be built online (they need future frames), so:

1. A teacher (the X-Ray teacher) is trained on object-complete frames: an easier task, a "weak" model
   that sees more (first use: :func:`~lightning_distill.models.detection.trained_detector` on
   ``DetectionSceneDataModule(object_complete="replace")``).
2. The student, usually the same architecture, is trained on the raw frames. Each step the frozen
   teacher runs on the object-complete version of the same frame (``batch["complete_points"]``,
   ``object_complete="add"``) and the student learns its detection loss plus the teacher's knowledge
   on heads, embeddings and detections (the paper's three KD terms, as SparseKD sets them for
   CenterPoint):
   * heads: ``kd_heatmap``, masked MSE between heatmap probabilities (teacher peak x ground-truth
     Gaussian as cell weight), and ``kd_box``, L1 between box codes at the ground-truth centres;
   * embeddings: ``kd_feature``, MSE between the neck's BEV features on the same cells;
   * detections: the teacher's boxes scoring above ``label_score_threshold`` join the ground truth as
     extra targets of the student's detection loss (``heatmap``, ``box``).
3. Total: ``heatmap + 0.25 box + 10 kd_heatmap + 0.2 kd_box + 0.1 kd_feature``.

``distillation="none"`` trains the student alone on the raw frames (the baseline).

Hyper-parameters -> config keys (``model.init_args.*``):

=============================  ==========================  ==================================
paper / official setting       key                         default
=============================  ==========================  ==================================
detections KD score threshold  ``label_score_threshold``   0.6 (SparseKD ``LABEL_ASSIGN_KD``)
heatmap KD score threshold     ``heatmap_score_threshold`` 0.0 (SparseKD ``HM_LOSS.thresh``)
loss weights                   ``loss_weights``            heatmap 1, box 0.25, kd_heatmap 10,
                                                           kd_box 0.2, kd_feature 0.1
=============================  ==========================  ==================================
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.detection.boxes import nms_bev
from lightning_distill.detection.detector import DetectorOutput, batch_targets
from lightning_distill.detection.heads import build_targets, gather_codes
from lightning_distill.detection.metrics import DetectionEvaluation
from lightning_distill.losses.detection import (
    box_regression_l1,
    heatmap_distillation_loss,
    masked_feature_loss,
)
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["XRayDistill"]

Distillation = Literal["xray", "none"]


class XRayDistill(DistillationModule):
    """X-Ray distillation from a teacher on object-complete frames into a student on raw frames.

    Args:
        student: a detector (e.g. :class:`~lightning_distill.detection.detector.VoxelDetector`):
            ``forward(points, batch_index, batch_size) -> DetectorOutput`` (with ``bev``), ``loss``,
            ``detect``, ``grid``, ``num_classes``, ``code_weights`` and a ``head.shared`` first conv.
        teacher: a frozen detector on the same BEV grid, trained on object-complete frames (e.g.
            :func:`~lightning_distill.models.detection.trained_detector` on
            ``DetectionSceneDataModule(object_complete="replace")``).
        distillation: ``"xray"`` (the paper) or ``"none"`` (the student alone, the baseline).
        label_score_threshold: the teacher's boxes above this score join the ground-truth targets
            (KD on detections); ``None`` turns that off.
        heatmap_score_threshold: heatmap KD leaves out cells where the teacher's peak is not above it.
        nms_iou_threshold: BEV NMS threshold of the evaluated detections (CenterPoint: 0.2); ``None``
            keeps the heatmap peak NMS only.
        loss_weights: ``{"heatmap", "box", "kd_heatmap", "kd_box", "kd_feature"}``.
        optimizer: optimizer of the student and the feature adapter (AdamW, lr 3e-3, wd 0.01 in
            SparseKD's CenterPoint runs).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: an unknown ``distillation``, a threshold outside ``[0, 1)``, or detectors without
            the attributes above.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("heatmap", "box", "kd_heatmap", "kd_box", "kd_feature")
    default_loss_weights: ClassVar[dict[str, float]] = {
        "heatmap": 1.0,
        "box": 0.25,
        "kd_heatmap": 10.0,
        "kd_box": 0.2,
        "kd_feature": 0.1,
    }

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distillation: Distillation = "xray",
        label_score_threshold: float | None = 0.6,
        heatmap_score_threshold: float = 0.0,
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
        check_option(distillation in ("xray", "none"), "distillation", distillation, "'xray' or 'none'")
        check_option(label_score_threshold is None or 0 <= label_score_threshold < 1, "label_score_threshold",
                     label_score_threshold, "None or in [0, 1)")  # fmt: skip
        check_option(0 <= heatmap_score_threshold < 1, "heatmap_score_threshold", heatmap_score_threshold,
                     "in [0, 1)")  # fmt: skip
        widths = [_bev_width(m) for m in (student, teacher)]
        check_option(all(w is not None for w in widths), "student", type(student).__name__,
                     "a CenterPoint-style detector with `grid` and `head.shared` (e.g. VoxelDetector)")  # fmt: skip
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.distillation = distillation
        self.label_score_threshold = label_score_threshold
        self.heatmap_score_threshold = heatmap_score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        s_width, t_width = widths
        # embeddings KD on a narrower student goes through a 1x1 conv (SparseKD's conv alignment)
        self.feature_adapter: nn.Module = (
            nn.Identity() if s_width == t_width else nn.Conv2d(s_width, t_width, 1)
        )
        self.detection_metrics = DetectionEvaluation()

    # ---------------------------------------------------------------- the paper
    def label_targets(
        self, teacher_out: DetectorOutput, batch: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """KD on detections: per frame the ground truth plus the teacher's boxes scoring above the threshold."""
        boxes, labels = list(batch["boxes"]), list(batch["labels"])
        if self.label_score_threshold is None or teacher_out is None:
            return boxes, labels
        added = 0
        for i, det in enumerate(self.teacher.detect(teacher_out)):
            keep = det["scores"] > self.label_score_threshold
            boxes[i] = torch.cat([det["boxes"][keep].to(boxes[i]), boxes[i]])
            labels[i] = torch.cat([det["labels"][keep].to(labels[i]), labels[i]])
            added += int(keep.sum())
        self.log_diagnostics({"label_kd_boxes": added / max(1, len(boxes))})
        return boxes, labels

    def head_terms(
        self, student_out: DetectorOutput, teacher_out: DetectorOutput, batch: dict[str, Any]
    ) -> dict[str, Tensor]:
        """KD on heads and embeddings: ``kd_heatmap``, ``kd_box`` and ``kd_feature`` (see the module docstring).

        Raises:
            ValueError: the two detectors' BEV maps differ in size (different ``point_range`` / voxels).
        """
        if student_out.heatmap.shape != teacher_out.heatmap.shape:
            raise ValueError(
                f"Teacher and student heatmaps differ ({tuple(teacher_out.heatmap.shape)} vs "
                f"{tuple(student_out.heatmap.shape)}): give both detectors the same `point_range`, `voxel_size` "
                "and `sparse_widths` length (only widths may differ)."
            )
        s = self.student
        targets = build_targets(s.grid, batch["boxes"], batch["labels"], num_classes=s.num_classes,
                                max_objects=s.max_objects, min_radius=s.min_radius)  # fmt: skip
        foreground = targets.heatmap.amax(dim=1)  # (B, X, Y): the ground truth's Gaussians
        kd_heatmap = heatmap_distillation_loss(
            student_out.heatmap, teacher_out.heatmap, foreground, score_threshold=self.heatmap_score_threshold
        )
        kd_box = box_regression_l1(
            gather_codes(student_out.codes, targets.indices),
            gather_codes(teacher_out.codes, targets.indices).detach(),
            targets.mask,
            code_weights=s.code_weights,
        )
        kd_feature = masked_feature_loss(self.feature_adapter(student_out.bev), teacher_out.bev, foreground)
        return {"kd_heatmap": kd_heatmap, "kd_box": kd_box, "kd_feature": kd_feature}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        points, index, size = batch["points"], batch["batch_index"], len(batch["boxes"])
        teacher_out = None
        if self.distillation == "xray":
            # 1. The frozen X-Ray teacher on the object-complete version of the same frames.
            complete, complete_index = _complete_points(batch)
            with torch.no_grad():
                teacher_out = self.teacher(complete, complete_index, size)
        # 2. The student on the raw frames.
        student_out = self.student(points, index, size)
        # 3. Detection loss on the ground truth plus the teacher's confident boxes (KD on detections).
        boxes, labels = self.label_targets(teacher_out, batch)
        terms = self.student.loss(student_out, boxes, labels)
        # 4. KD on heads and embeddings.
        if teacher_out is not None:
            terms.update(self.head_terms(student_out, teacher_out, batch))
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _nms(self) -> Any:
        if self.nms_iou_threshold is None:
            return None
        return lambda boxes, scores, iou: nms_bev(boxes, scores, iou)

    @torch.no_grad()
    def _detect(self, model: nn.Module, points: Tensor, index: Tensor, size: int) -> list[dict[str, Tensor]]:
        return model.detect(model(points, index, size), nms=self._nms())

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        targets, size = batch_targets(batch), len(batch["boxes"])
        student = self._detect(self.student, batch["points"], batch["batch_index"], size)
        self.detection_metrics.update(stage, student, targets)
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            # the teacher on what it was trained for: object-complete frames when the batch has them
            points = batch.get("complete_points", batch["points"])
            index = batch.get("complete_batch_index", batch["batch_index"])
            teacher = self._detect(self.teacher, points, index, size)
            self.detection_metrics.update(stage, teacher, targets, model="teacher")

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
        return self._detect(self.student, batch["points"], batch["batch_index"], len(batch["boxes"]))

    def predict_boxes(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """The student's detections per frame (what ``DetectionPictures`` draws)."""
        return self.predict_step(batch, 0)

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int | None = None) -> DetectorOutput:
        return self.student(points, batch_index, batch_size)


def _bev_width(model: nn.Module) -> int | None:
    """Channels of the BEV features a CenterPoint-style detector hands its head, or ``None``."""
    try:
        model.grid  # noqa: B018
        return int(model.head.shared[0].in_channels)
    except (AttributeError, IndexError, TypeError):
        return None


def _complete_points(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The object-complete points of the batch and their frame index.

    Raises:
        ValueError: the batch has none.
    """
    if "complete_points" not in batch or "complete_batch_index" not in batch:
        raise ValueError(
            "X-Ray distillation runs the teacher on object-complete frames, but the batch has no "
            "`complete_points`: set `data.init_args.object_complete: add` (and `num_frames` > 1) on the "
            "DetectionSceneDataModule, or `model.init_args.distillation: none` for the student alone."
        )
    return batch["complete_points"], batch["complete_batch_index"]
