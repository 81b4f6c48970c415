"""DistillFSS: a few-shot segmenter that needs support images, distilled into per-class heads that
need none (pasqualedem/DistillFSS, arXiv 2512.05613).

A few-shot teacher segments a class in a query image by attending to labelled support images.
DistillFSS keeps the teacher's encoder and decoder, and replaces the support-dependent part (the
coarse attention maps) by small per-class convolution heads on the query features, trained on the
task's few labelled images with the teacher as the only target. At inference the student needs
no support images: one encoder pass, ``N`` small heads, the decoder.

Algorithm (``distill.py`` and ``distillfss/models/loss.py`` of the official code):

1. The task's support set (``shots`` labelled images per class) is the training data. Each support
   image is a query in turn; the teacher segments it with the *other* support images as support
   (leave-one-out; the official ``Substitutor``), giving per-class coarse maps ``A_T`` (per level)
   and ``(1 + N)``-way logits ``z_T`` (per-class background/foreground, combined).
2. The student: per class and level a ``conv3x3 - ReLU - conv1x1`` head maps the teacher's frozen
   query features to a coarse map ``A_S``; the teacher's frozen decoder turns it into ``z_S``.
3. ``L = 1/2 focal_{gamma=2}(z_S, argmax z_T) + 1/2 mean_levels MSE(A_S, A_T)``. The labels of the
   support images are used only as the teacher's support masks, never as a target.

Only the heads learn. Hyper-parameters -> config keys (``model.init_args.*``):

===========================  ======================  ======================
paper / official code        key                     default
===========================  ======================  ======================
focal gamma                  ``gamma``               2.0
focal / coarse-map weights   ``loss_weights``        {focal: 0.5, coarse: 0.5}
leave-one-out substitution   ``leave_one_out``       true
AdamW                        ``optimizer``           torch's AdamW
===========================  ======================  ======================
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.segmentation import coarse_map_mse, focal_loss
from lightning_distill.module import DistillationModule
from lightning_distill.segmentation.few_shot import class_masks, combine_class_logits
from lightning_distill.segmentation.metrics import IoUTracker
from lightning_distill.utils.checks import check_option

__all__ = ["DistillFSS"]


class DistillFSS(DistillationModule):
    """Distil a support-conditioned few-shot teacher into support-free per-class heads.

    Args:
        student: the per-class heads (:class:`~lightning_distill.models.segmentation.ClassHeads`),
            ``features -> [(B, N, h_l, w_l)]``.
        teacher: a few-shot segmenter with ``encode``, ``coarse_maps`` and ``decode``
            (:class:`~lightning_distill.models.segmentation.MatchingSegmenter`), frozen.
        gamma: focal-loss exponent.
        leave_one_out: a support image never serves as its own support while it is the query.
        loss_weights: ``{"focal": ..., "coarse": ...}``.
        optimizer: optimizer of the heads.
        lr_scheduler: optional epoch-wise scheduler.

    The datamodule must offer ``support_set() -> (images (M, C, H, W), labels (M, H, W))``
    (:class:`~lightning_distill.data.segmentation.FewShotTaskDataModule`); training batches are
    ``(x, y, index)`` with ``index`` into the support set, evaluation batches ``(x, y)``.

    Raises:
        ValueError: ``gamma`` < 0; at setup, a datamodule without ``support_set``, a support set
            of one image with ``leave_one_out``, or heads whose classes or channels do not fit.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("focal", "coarse")
    default_loss_weights: ClassVar[dict[str, float]] = {"focal": 0.5, "coarse": 0.5}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        gamma: float = 2.0,
        leave_one_out: bool = True,
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
        check_option(gamma >= 0, "gamma", gamma, ">= 0")
        for part in ("encode", "coarse_maps", "decode"):
            if not callable(getattr(teacher, part, None)):
                raise ValueError(
                    f"The teacher must be a few-shot segmenter with `encode`, `coarse_maps` and `decode` (e.g. "
                    f"MatchingSegmenter); {type(teacher).__name__} has no `{part}`."
                )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.gamma, self.leave_one_out = gamma, leave_one_out
        self.iou = IoUTracker()
        self.register_buffer("support_images", torch.empty(0), persistent=False)
        self.register_buffer("support_labels", torch.empty(0, dtype=torch.long), persistent=False)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not callable(getattr(datamodule, "support_set", None)):
            raise ValueError(
                "DistillFSS needs the task's support set: use a datamodule with `support_set()` (e.g. "
                "lightning_distill.data.segmentation.FewShotTaskDataModule) as `data`."
            )
        images, labels = datamodule.support_set()
        self.set_support(images, labels)

    def set_support(self, images: Tensor, labels: Tensor) -> None:
        """Use ``images (M, C, H, W)`` with label maps ``(M, H, W)`` (0 = background, 1..N) as the support set.

        Raises:
            ValueError: fewer than 2 images with ``leave_one_out``, or heads for another number of
                classes or feature channels than the support set and the teacher have.
        """
        num_classes = int(labels.max()) if labels.numel() else 0
        heads = getattr(self.student, "num_classes", num_classes)
        if heads < num_classes:
            raise ValueError(
                f"The support set labels {num_classes} classes but the student has heads for {heads}; set "
                f"`model.init_args.student.init_args.num_classes: {num_classes}`."
            )
        channels = getattr(self.student, "channels", None)
        if channels is not None and tuple(channels) != tuple(
            getattr(self.teacher, "feature_channels", channels)
        ):
            raise ValueError(
                f"The student's heads read {list(channels)} channels but the teacher's features have "
                f"{list(self.teacher.feature_channels)}; set `model.init_args.student.init_args.channels`."
            )
        if self.leave_one_out and len(images) < 2:
            raise ValueError(
                "`leave_one_out` needs a support set of at least 2 images; raise `data.init_args.shots`."
            )
        self.support_images = images.to(self.device)
        self.support_labels = labels.to(self.device)

    # ---------------------------------------------------------------- the paper
    @torch.no_grad()
    def teacher_segment(
        self, x: Tensor, exclude: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Step 1: the teacher with the support set (minus ``exclude[b]`` for query ``b``).

        Returns:
            Logits ``(B, 1 + N, H, W)``, coarse maps per level ``(B, N, h, w)``, query features.
        """
        if self.support_images.numel() == 0:
            raise ValueError(
                "No support set: call `set_support(images, labels)` or fit with a FewShotTaskDataModule."
            )
        num_classes = self._num_classes()
        features = self.teacher.encode(x)
        support_features = self.teacher.encode(self.support_images)
        masks = class_masks(self.support_labels, num_classes)
        key_mask = None
        if exclude is not None:
            key_mask = torch.arange(len(self.support_images), device=x.device).unsqueeze(
                0
            ) != exclude.unsqueeze(1)
        coarse = self.teacher.coarse_maps(features, support_features, masks, key_mask)
        logits = combine_class_logits(self.teacher.decode(coarse, features, x.shape[-2:]))
        return logits, coarse, features

    def student_segment(self, features: list[Tensor], size: tuple[int, int]) -> tuple[Tensor, list[Tensor]]:
        """Step 2: support-free coarse maps from the heads, logits through the frozen decoder."""
        coarse = self.student(features)
        return combine_class_logits(self.teacher.decode(coarse, features, size)), coarse

    def logit_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Step 3, first term: focal loss to the teacher's argmax."""
        return focal_loss(student_logits, teacher_logits.argmax(dim=1), gamma=self.gamma)

    @staticmethod
    def coarse_loss(student_coarse: list[Tensor], teacher_coarse: list[Tensor]) -> Tensor:
        """Step 3, second term: MSE between coarse maps, averaged over levels."""
        return coarse_map_mse(student_coarse, teacher_coarse)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, index = batch[0], batch[2] if len(batch) > 2 else None
        if self.leave_one_out and index is None:
            raise ValueError(
                "`leave_one_out` needs training batches (x, y, index) with the support-set index."
            )
        # 1. The teacher on each support image with the others as support.
        teacher_logits, teacher_coarse, features = self.teacher_segment(
            x, index if self.leave_one_out else None
        )
        # 2. The support-free student on the same (frozen) features.
        student_logits, student_coarse = self.student_segment(features, x.shape[-2:])
        self.check_output_shapes(student_logits, teacher_logits)
        # 3. 1/2 focal + 1/2 coarse-map MSE.
        terms = {
            "focal": self.logit_loss(student_logits, teacher_logits),
            "coarse": self.coarse_loss(student_coarse, teacher_coarse),
        }
        return self.log_losses(terms)

    def forward(self, x: Tensor) -> Tensor:
        """The distilled segmenter: ``(B, C, H, W) -> (B, 1 + N, H, W)``, no support needed."""
        with torch.no_grad():
            features = self.teacher.encode(x)
        return self.student_segment(features, x.shape[-2:])[0]

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch)

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        self.iou.update(f"{stage}/student", self(x), y)
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            self.iou.update(f"{stage}/teacher", self.teacher_segment(x)[0], y)

    def _log_evaluation(self, stage: str) -> None:
        self.iou.log(self, f"{stage}/student", f"{stage}/")
        self.iou.log(self, f"{stage}/teacher", f"{stage}/teacher_")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
        super().on_test_epoch_end()

    def _num_classes(self) -> int:
        return int(getattr(self.student, "num_classes", int(self.support_labels.max())))
