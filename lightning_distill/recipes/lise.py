"""LiSe: LiDAR-2D self-paced learning for unsupervised 3D detection (Zhang et al., ECCV 2024, arXiv 2407.08569).

No 3D label is used for training. A LiDAR detector learns from pseudo-boxes that improve round by
round (official code: Ruiyang-061X/LiSe, built on MODEST):

1. **Seed labels** (round 0, at the start of fit): per training frame, LiDAR boxes from ground removal,
   DBSCAN and box fitting, plus image boxes: the frozen 2D detector (``teacher``) finds objects in
   the camera views and each 2D box is lifted with the LiDAR points in its frustum; image boxes are
   kept from ``min_image_distance`` (10 m) on, where clusters get too few points
   (:class:`~lightning_distill.detection.pseudo_labels.PseudoLabeler`).
2. **Training**: CenterPoint's loss of the student on the current pseudo-boxes (heatmap focal + 0.25 box L1).
3. **Re-labelling** after each round of ``epochs_per_round`` epochs: the student's detections on the
   training frames; the boxes above ``score_threshold`` set the label budget, and **adaptive sampling**
   shares it over distance x size bins with a balancing power that grows to ``sampling_power`` over
   ``rounds`` (:func:`~lightning_distill.detection.self_training.adaptive_sample`).
4. **Weak-model aggregation**: the student of every finished round is averaged into ``aggregate``
   (:func:`~lightning_distill.detection.self_training.average_into`), the model evaluated and exported.

Scaled down (see the README): the student continues from round to round instead of restarting,
``rounds`` x ``epochs_per_round`` is small, and the 2D detector is a small CenterNet trained on the
generator's 2D boxes (the stand-in for GroundingDINO).

Hyper-parameters -> config keys (``model.init_args.*``):

=============================  ======================  ==========================================
paper / official code          key                     default
=============================  ======================  ==========================================
self-training rounds           ``rounds``              10 (official scripts: ``max_iter=10``)
epochs per round               ``epochs_per_round``    80 (official PointRCNN schedule)
image boxes kept beyond        ``min_image_distance``  10 m (``integration_with_2D_scenes --d_min``)
detections kept as labels      ``score_threshold``     0.3 (ours; the release filters by persistence)
candidate floor for sampling   ``min_score``           0.1
sampling balance at the end    ``sampling_power``      1.0 (equal share per distance x size bin)
loss weights                   ``loss_weights``        {heatmap: 1, box: 0.25} (CenterPoint)
=============================  ======================  ==========================================
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.detection.boxes import nms_bev
from lightning_distill.detection.detector import DetectorOutput, batch_targets
from lightning_distill.detection.metrics import DetectionEvaluation
from lightning_distill.detection.pseudo_labels import PseudoLabeler
from lightning_distill.detection.self_training import (
    adaptive_sample,
    average_into,
    refresh_batch_norm,
    sampling_bins,
)
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["LiSe"]

Labels = dict[tuple[int, int], dict[str, Tensor]]


class LiSe(DistillationModule):
    """LiSe's unsupervised self-training of a LiDAR detector from LiDAR and image pseudo-boxes.

    Args:
        student: a detector (e.g. :class:`~lightning_distill.detection.detector.VoxelDetector`):
            ``forward(points, batch_index, batch_size) -> DetectorOutput``, ``loss`` and ``detect``.
        teacher: the frozen 2D detector (e.g. from
            :func:`~lightning_distill.models.image_detection.trained_image_detector`): ``forward(images)``
            and ``detect(output) -> [{"boxes_2d", "labels", "scores"}]``.
        pseudo_labeler: the seed-label builder (default :class:`PseudoLabeler` with LiSe's 10 m fusion).
        rounds: self-training rounds after the seed round.
        epochs_per_round: training epochs per round.
        use_images: add the lifted image boxes to the seed labels (``False``: clustering only, MODEST).
        score_threshold: detections above it set each re-labelling's budget.
        min_score: detections above it are sampling candidates.
        sampling_power: the adaptive sampling's balancing power reached at the last round (0: none).
        aggregate_rounds: average the round models (weak-model aggregation); ``False`` keeps the last.
        nms_iou_threshold: BEV NMS of detections (CenterPoint: 0.2); ``None``: heatmap peaks only.
        loss_weights: ``{"heatmap": ..., "box": ...}``.
        optimizer: optimizer of the student (CenterPoint: AdamW).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: ``rounds`` < 0, ``epochs_per_round`` < 1, thresholds outside ``[0, 1]`` or
            ``sampling_power`` outside ``[0, 1]``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("heatmap", "box")
    default_loss_weights: ClassVar[dict[str, float]] = {"heatmap": 1.0, "box": 0.25}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        pseudo_labeler: PseudoLabeler | None = None,
        rounds: int = 10,
        epochs_per_round: int = 80,
        use_images: bool = True,
        score_threshold: float = 0.3,
        min_score: float = 0.1,
        sampling_power: float = 1.0,
        aggregate_rounds: bool = True,
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
        check_option(isinstance(rounds, int) and rounds >= 0, "rounds", rounds, "an int >= 0")
        check_option(isinstance(epochs_per_round, int) and epochs_per_round >= 1, "epochs_per_round",
                     epochs_per_round, "an int >= 1")  # fmt: skip
        for key, value in (("score_threshold", score_threshold), ("min_score", min_score), ("sampling_power", sampling_power)):  # fmt: skip
            check_option(0.0 <= value <= 1.0, key, value, "in [0, 1]")
        check_option(
            min_score <= score_threshold, "min_score", min_score, f"<= score_threshold ({score_threshold})"
        )
        self.save_hyperparameters(
            ignore=["student", "teacher", "pseudo_labeler", "optimizer", "lr_scheduler"]
        )
        self.pseudo_labeler = pseudo_labeler if pseudo_labeler is not None else PseudoLabeler()
        self.rounds, self.epochs_per_round, self.use_images = rounds, epochs_per_round, use_images
        self.score_threshold, self.min_score, self.sampling_power = score_threshold, min_score, sampling_power
        self.aggregate_rounds, self.nms_iou_threshold = aggregate_rounds, nms_iou_threshold
        self.register_frozen("aggregate", copy.deepcopy(student))
        self.register_buffer("rounds_done", torch.zeros((), dtype=torch.long))
        self.labels: Labels = {}
        self.detection_metrics = DetectionEvaluation()
        self._pending_diagnostics: dict[str, float] = {}

    # ---------------------------------------------------------------- the paper
    @torch.no_grad()
    def seed_labels(self, frames: list[dict[str, Tensor]]) -> Labels:
        """Step 1: LiDAR cluster boxes plus lifted image boxes beyond ``min_image_distance`` (per frame key)."""
        labels = {}
        for frame in frames:
            detections: list[dict[str, Tensor]] = []
            if self.use_images:
                images = frame["images"].to(self.device)
                detections = [
                    {k: v.cpu() for k, v in d.items()} for d in self.teacher.detect(self.teacher(images))
                ]
            labels[_key(frame)] = self.pseudo_labeler(
                frame["points"], detections, frame["K"], frame["T_cam_from_lidar"], tuple(frame["images"].shape[-2:]),
                use_images=self.use_images,
            )  # fmt: skip
        return labels

    def sampling_power_at(self, round_index: int) -> float:
        """The adaptive sampling's balancing power when labelling ``round_index`` (1 ... ``rounds``): linear to ``sampling_power``."""
        return self.sampling_power * min(1.0, round_index / max(1, self.rounds))

    @torch.no_grad()
    def relabel(self, model: nn.Module, frames: list[dict[str, Tensor]], power: float) -> Labels:
        """Step 3: the model's detections, adaptively sampled over distance x size bins (budget: scores >= ``score_threshold``)."""
        was_training = model.training
        model.eval()
        found = []
        for frame in frames:
            points = frame["points"].to(self.device)
            det = model.detect(
                model(points, torch.zeros(len(points), dtype=torch.long, device=self.device), 1),
                nms=self._nms(),
            )[0]
            keep = det["scores"] >= self.min_score
            found.append({k: det[k][keep].cpu() for k in ("boxes", "labels", "scores")})
        model.train(was_training)
        scores = torch.cat([f["scores"] for f in found]) if found else torch.zeros(0)
        boxes = torch.cat([f["boxes"] for f in found]) if found else torch.zeros(0, 7)
        owner = (
            torch.cat([torch.full((len(f["scores"]),), i) for i, f in enumerate(found)])
            if found
            else torch.zeros(0)
        )
        budget = int((scores >= self.score_threshold).sum())
        kept = torch.zeros(len(scores), dtype=torch.bool)
        kept[adaptive_sample(scores, sampling_bins(boxes), budget=budget, power=power)] = True
        return {_key(frame): {**{k: v[kept[owner == i]] for k, v in f.items()},
                              "source": torch.full((int(kept[owner == i].sum()),), 2)}
                for i, (frame, f) in enumerate(zip(frames, found))}  # fmt: skip

    def aggregate_round(self, frames: list[dict[str, Tensor]]) -> None:
        """Step 4: average the finished round's student into ``aggregate`` (or copy it, without aggregation).

        Both get BatchNorm statistics recomputed over the training frames first (what SWA's ``update_bn`` does
        for averaged weights; the detector's BatchNorm momentum of 0.01 would otherwise leave them near their
        start after a short round).
        """
        batches = list(_batches(frames, self.device))
        refresh_batch_norm(self.student, batches)
        count = int(self.rounds_done) if self.aggregate_rounds else 0
        average_into(self.aggregate, self.student, count)
        refresh_batch_norm(self.aggregate, batches)
        self.rounds_done += 1

    def targets(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The current pseudo-boxes and classes of the batch's frames (never its ground truth)."""
        keys = list(zip(batch["scene"].tolist(), batch["frame"].tolist()))
        missing = [k for k in keys if k not in self.labels]
        if missing:
            raise RuntimeError(f"No pseudo-labels for frames {missing[:3]} (scene, frame): the seed labels are built "
                               "at the start of fit from the datamodule's training frames.")  # fmt: skip
        device = batch["points"].device
        return [self.labels[k]["boxes"].to(device) for k in keys], [
            self.labels[k]["labels"].to(device) for k in keys
        ]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        # label statistics are logged at the next step: Lightning refuses logging from the fit hooks
        if self._pending_diagnostics:
            self.log_diagnostics(self._pending_diagnostics)
            self._pending_diagnostics = {}
        boxes, labels = self.targets(batch)
        output = self.student(batch["points"], batch["batch_index"], len(boxes))
        return self.log_losses(self.student.loss(output, boxes, labels))

    # ------------------------------------------------------------- the rounds
    def _training_frames(self) -> list[dict[str, Tensor]]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "frames"):
            raise ValueError("LiSe needs a datamodule with `frames('train')` (e.g. DetectionSceneDataModule): pseudo-"
                             "labels are built over the whole training split.")  # fmt: skip
        return datamodule.frames("train")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.labels:
            self.labels = self.seed_labels(self._training_frames())
            self._log_labels()

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        if epoch % self.epochs_per_round or epoch // self.epochs_per_round > self.rounds + 1:
            return
        frames = self._training_frames()
        self.aggregate_round(frames)
        next_round = epoch // self.epochs_per_round
        if next_round <= self.rounds and (self.trainer.max_epochs is None or epoch < self.trainer.max_epochs):
            labels = self.relabel(self.student, frames, self.sampling_power_at(next_round))
            # a detector with no detection above `score_threshold` yet would erase every label: keep the round's
            kept = not any(len(v["boxes"]) for v in labels.values())
            self.labels = self.labels if kept else labels
            self._log_labels()
            self._pending_diagnostics["kept_previous_labels"] = float(kept)
            self._pending_diagnostics.update(
                {"round": float(next_round), "sampling_power": self.sampling_power_at(next_round)}
            )

    def _log_labels(self) -> None:
        boxes = [v["boxes"] for v in self.labels.values()]
        count = sum(len(b) for b in boxes)
        far = sum(int((b[:, :2].norm(dim=1) >= 20).sum()) for b in boxes)
        self._pending_diagnostics.update(
            {"pseudo_boxes_per_frame": count / max(1, len(boxes)), "pseudo_far_share": far / max(1, count)}
        )

    def final_model(self) -> nn.Module:
        """The aggregated model once a round has finished, else the student."""
        return self.aggregate if int(self.rounds_done) > 0 else self.student

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
        self.detection_metrics.update(stage, self._detect(self.final_model(), batch), batch_targets(batch))

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
        return self._detect(self.final_model(), batch)

    def predict_boxes(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """The final model's detections per frame (what ``DetectionPictures`` draws)."""
        return self._detect(self.final_model(), batch)

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int | None = None) -> DetectorOutput:
        return self.final_model()(points, batch_index, batch_size)


def _key(frame: dict[str, Tensor]) -> tuple[int, int]:
    return int(frame["scene"]), int(frame["frame"])


def _batches(frames: list[dict[str, Tensor]], device: torch.device, size: int = 4) -> Any:
    """``(points, batch_index, batch_size)`` of the frames, ``size`` at a time (a detector's forward arguments)."""
    for i in range(0, len(frames), size):
        chunk = frames[i : i + size]
        points = torch.cat([f["points"] for f in chunk]).to(device)
        index = torch.cat(
            [torch.full((len(f["points"]),), b, dtype=torch.long) for b, f in enumerate(chunk)]
        ).to(device)
        yield points, index, len(chunk)
