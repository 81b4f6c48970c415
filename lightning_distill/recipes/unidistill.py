"""UniDistill: a universal cross-modality distillation framework for 3D detection in BEV (Zhou et al., CVPR 2023, arXiv 2303.15083).

Teacher and student are BEV detectors of *any* two modalities (LiDAR → camera, camera → LiDAR, fusion →
either) on the same BEV grid; the student learns its detection loss plus three distillation terms, all
read only around the ground-truth objects (official code: megvii-research/CVPR2023-UniDistill,
``BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py``):

1. Run the frozen teacher and the student on the batch (each on its own sensor).
2. Nine BEV keypoints per ground-truth box: 4 corners, the centre, 4 edge midpoints.
3. Feature distillation: L1 between the low-level BEV features (encoder output, before the BEV
   neck) of teacher and student, bilinearly sampled at the keypoints (an adapter maps the student's
   channels to the teacher's where they differ).
4. Relation distillation: L1 between the 9 x 9 cosine-similarity matrices of the keypoints' high-level
   BEV features (the neck output).
5. Response distillation: L1 between the class-max heatmaps (teacher ``sigmoid(z / T)``, ``T`` = 2) and
   between the box codes, under a Gaussian mask around each box (CenterNet radius at overlap 0.7).
6. Total: ``det + 100 · feat + 40 · rel + 10 · (cls + reg)``.

``distillation="none"`` trains the student alone (the baseline). With a camera detector on either side,
only the objects a camera sees are distilled (and a camera student learns only those); evaluation counts
only them (the others are ignored boxes).

Hyper-parameters -> config keys (``model.init_args.*``):

==============================  ============================  =====================================
paper / official code           key                           default
==============================  ============================  =====================================
λ_feat, λ_rel, λ_resp           ``loss_weights``              feature 100, relation 40,
                                                              response_cls / response_reg 10
detection loss (CenterPoint)    ``loss_weights``              heatmap 1, box 0.25
depth supervision (BEVDepth)    ``loss_weights["depth"]``     0 (the official camera model has none)
teacher heatmap softening       ``temperature``               2.0 (``sigmoid(hm / 2)``)
Gaussian mask overlap           ``mask_min_overlap``          0.7
==============================  ============================  =====================================
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.detection.bev_distill import (
    bev_low_channels,
    gaussian_box_mask,
    is_camera_detector,
    padded_keypoints,
    run_bev_detector,
    sample_bev,
)
from lightning_distill.detection.boxes import nms_bev
from lightning_distill.detection.camera import camera_targets, visible_boxes
from lightning_distill.detection.detector import batch_targets
from lightning_distill.detection.metrics import DetectionEvaluation
from lightning_distill.losses.detection import (
    unidistill_feature_loss,
    unidistill_relation_loss,
    unidistill_response_loss,
)
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["UniDistill"]


class UniDistill(DistillationModule):
    """UniDistill's feature, relation and response distillation between two BEV detectors.

    Args:
        student: a BEV detector (:class:`~lightning_distill.detection.camera.LiftSplatDetector` or
            :class:`~lightning_distill.detection.detector.VoxelDetector`) with ``loss``, ``detect`` and ``grid``.
        teacher: a frozen BEV detector of another (or the same) modality on the same grid, e.g. from
            :func:`~lightning_distill.models.detection.trained_detector` (LiDAR) or
            :func:`~lightning_distill.models.detection.trained_camera_detector` (camera).
        distillation: ``"unidistill"`` (the paper) or ``"none"`` (the student alone, the baseline).
        temperature: divides the teacher's heatmap logits in the response term (official: 2).
        mask_min_overlap: CenterNet overlap that sets the Gaussian mask's radius (official: 0.7).
        nms_iou_threshold: BEV NMS threshold of evaluated detections; ``None`` keeps peak NMS only.
        loss_weights: ``{"heatmap", "box", "depth", "feature", "relation", "response_cls", "response_reg"}``.
        optimizer: optimizer of the student and the adapter (official: AdamW, lr 2e-4).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: an unknown ``distillation``, ``temperature`` <= 0, ``mask_min_overlap`` outside (0, 1),
            or detectors on different BEV grids.
    """

    loss_terms: ClassVar[tuple[str, ...]] = (
        "heatmap",
        "box",
        "depth",
        "feature",
        "relation",
        "response_cls",
        "response_reg",
    )
    default_loss_weights: ClassVar[dict[str, float]] = {
        "heatmap": 1.0,
        "box": 0.25,
        "depth": 0.0,
        "feature": 100.0,
        "relation": 40.0,
        "response_cls": 10.0,
        "response_reg": 10.0,
    }

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distillation: Literal["unidistill", "none"] = "unidistill",
        temperature: float = 2.0,
        mask_min_overlap: float = 0.7,
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
        check_option(
            distillation in ("unidistill", "none"), "distillation", distillation, "'unidistill' or 'none'"
        )
        check_option(temperature > 0, "temperature", temperature, "> 0")
        check_option(0 < mask_min_overlap < 1, "mask_min_overlap", mask_min_overlap, "in (0, 1)")
        grids = [getattr(m, "grid", None) for m in (student, teacher)]
        check_option(grids[0] is not None and tuple(grids[0]) == tuple(grids[1]), "student", grids[0],
                     f"a detector on the teacher's BEV grid {grids[1]} (build it with LiftSplatDetector.matching or the "
                     "same point_range / voxel_size)")  # fmt: skip
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.distillation = distillation
        self.temperature, self.mask_min_overlap = temperature, mask_min_overlap
        self.nms_iou_threshold = nms_iou_threshold
        self.grid = student.grid
        self.camera_view = is_camera_detector(student) or is_camera_detector(teacher)
        c_s, c_t = bev_low_channels(student), bev_low_channels(teacher)
        # the official pairs share the BEV channel count; where ours differ a 1x1 conv maps student -> teacher
        self.feature_adapter = nn.Conv2d(c_s, c_t, 1) if c_s != c_t else nn.Identity()
        self.detection_metrics = DetectionEvaluation()

    # ---------------------------------------------------------------- the paper
    def distilled_boxes(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """Ground truth the distillation reads: the boxes a camera sees when a camera detector is involved."""
        if self.camera_view:
            boxes, labels, _ = visible_boxes(batch)
            return boxes, labels
        return list(batch["boxes"]), list(batch["labels"])

    def detection_loss(self, output: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The student's own terms: CenterPoint's ``{"heatmap", "box"}`` (+ BEVDepth's ``"depth"`` for a camera
        student when its weight is > 0). A camera student learns only the objects its cameras see."""
        if is_camera_detector(self.student):
            boxes, labels, _ = visible_boxes(batch)
        else:
            boxes, labels = batch["boxes"], batch["labels"]
        terms = self.student.loss(output, boxes, labels)
        if is_camera_detector(self.student) and self.loss_weights.get("depth", 0.0) > 0:
            terms["depth"] = self.student.depth_loss(
                output, batch["points"], batch["batch_index"], batch["K"], batch["T_cam_from_lidar"]
            )
        return terms

    def feature_term(
        self, teacher_low: Tensor, student_low: Tensor, keypoints: Tensor, mask: Tensor
    ) -> Tensor:
        """Step 3: ``L_feat``, L1 of low-level BEV features at the keypoints (student through the adapter)."""
        t = sample_bev(teacher_low.detach().float(), self.grid, keypoints)
        s = sample_bev(self.feature_adapter(student_low.float()), self.grid, keypoints)
        return unidistill_feature_loss(t, s, mask)

    def relation_term(
        self, teacher_bev: Tensor, student_bev: Tensor, keypoints: Tensor, mask: Tensor
    ) -> Tensor:
        """Step 4: ``L_rel``, L1 between the keypoints' 9 x 9 cosine-similarity matrices of high-level BEV."""
        t = sample_bev(teacher_bev.detach().float(), self.grid, keypoints)
        s = sample_bev(student_bev.float(), self.grid, keypoints)
        return unidistill_relation_loss(t, s, mask)

    def response_terms(self, teacher_out: Any, student_out: Any, boxes: list[Tensor]) -> dict[str, Tensor]:
        """Step 5: ``L_cls`` and ``L_reg`` under the Gaussian box mask."""
        mask = gaussian_box_mask(self.grid, boxes, min_overlap=self.mask_min_overlap).to(
            student_out.heatmap.device
        )
        cls, reg = unidistill_response_loss(
            teacher_out.heatmap.detach(), student_out.heatmap, teacher_out.codes.detach(), student_out.codes, mask,
            teacher_temperature=self.temperature,
        )  # fmt: skip
        return {"response_cls": cls, "response_reg": reg}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        # 1. The frozen teacher on its sensor, the student on its own.
        with torch.no_grad():
            teacher_out = run_bev_detector(self.teacher, batch) if self.distillation != "none" else None
        student_out = run_bev_detector(self.student, batch)
        terms = self.detection_loss(student_out, batch)
        if teacher_out is not None:
            # 2. Nine keypoints per (seen) ground-truth box.
            boxes, _ = self.distilled_boxes(batch)
            keypoints, mask = padded_keypoints(boxes)
            # 3.-5. Feature, relation and response distillation; 6. the base weighs and sums.
            terms["feature"] = self.feature_term(teacher_out.bev_low, student_out.bev_low, keypoints, mask)
            terms["relation"] = self.relation_term(teacher_out.bev, student_out.bev, keypoints, mask)
            terms.update(self.response_terms(teacher_out, student_out, boxes))
            self.log_diagnostics({"distilled_boxes": float(mask.sum())})
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _targets(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        return camera_targets(batch) if self.camera_view else batch_targets(batch)

    @torch.no_grad()
    def _detect(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        nms = (
            None
            if self.nms_iou_threshold is None
            else (lambda boxes, scores, iou: nms_bev(boxes, scores, iou))
        )
        return model.detect(run_bev_detector(model, batch), nms=nms)

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        targets = self._targets(batch)
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

    @torch.no_grad()
    def bev_features(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Low-level BEV maps ``(B, C, X, Y)`` of the teacher and of the student after its adapter (pictures)."""
        return {
            "teacher": run_bev_detector(self.teacher, batch).bev_low,
            "student": self.feature_adapter(run_bev_detector(self.student, batch).bev_low),
        }

    def forward(self, batch: dict[str, Any]) -> Any:
        return run_bev_detector(self.student, batch)
