"""Label-Assisted Distillation: a same-size teacher that reads the labels (skyshoumeng/Label_Assisted_Distillation).

The teacher has the student's architecture plus one input channel that carries the label map,
coded as a noisy scalar per class. Knowing the answer's layout, it learns features and logits that
are easy for a network of that size to reach, and so it is a good teacher without being larger.

Algorithm (official ``train_baseline.py``; the teacher comes from
:func:`~lightning_distill.segmentation.teachers.label_assisted_teacher`):

1. Teacher training (on first use): image + label channel ``100 * (v[y] + 0.03 N(0, 1))`` with
   random class codes ``v ~ N(0, 1)``, two independently coded passes ``o1, o2``;
   ``L_T = CE(o1, y) + CE(o2, y) + 5 (CWD(o1, o2) + CWD(o2, o1))``.
2. Distillation, per batch: teacher input = image + label channel with the fixed codes
   ``v_k = (k - (K + 1) / 2) / 10`` and noise 0.02 (``label_code="fixed"``, as the official
   distillation step), logits ``z_T`` without gradient.
3. Student on the image alone (the official student is the same network with the label channel
   set to zero, which is the same function): logits ``z_S``.
4. ``L = CE(z_S, y) + 3 CWD(z_S, z_T)``, CWD at ``T = 4``
   (:func:`~lightning_distill.losses.feature.cwd_loss`).

With ``label_assisted=False`` the teacher reads the image only: plain CWD from an ordinary
teacher (the benchmark's comparison).

Hyper-parameters -> config keys (``model.init_args.*``):

==============================  ======================  ==========================
paper / official code           key                     default
==============================  ======================  ==========================
CWD temperature                 ``temperature``         4.0
CE / CWD weights                ``loss_weights``        {ce: 1, cwd: 3}
distillation-time label codes   ``label_code``          ``"fixed"``
label noise at distillation     ``label_noise_std``     0.02
label channel scale             ``label_scale``         100.0
teacher sees labels             ``label_assisted``      true
SGD lr 1e-3 momentum 0.9 wd 1e-4  ``optimizer``         torch's AdamW (see README)
==============================  ======================  ==========================
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.feature import cwd_loss
from lightning_distill.module import DistillationModule
from lightning_distill.segmentation.label_coding import code_labels, fixed_label_values, random_label_values
from lightning_distill.segmentation.metrics import IoUTracker
from lightning_distill.utils.checks import check_non_negative, check_option, check_positive

__all__ = ["LabelAssist"]


class LabelAssist(DistillationModule):
    """Student segmentation with CE + CWD to a label-assisted (or ordinary) teacher.

    Args:
        student: segmenter ``(B, C, H, W) -> (B, K, H, W)``.
        teacher: frozen segmenter; with ``label_assisted`` it reads ``C + 1`` channels.
        temperature: CWD's spatial-softmax temperature.
        label_assisted: feed the teacher the coded label channel (else the image alone).
        label_code: ``"fixed"`` (the official distillation-time ladder) or ``"random"`` (fresh
            ``N(0, 1)`` codes per image, as while the teacher trained).
        label_noise_std: per-pixel noise of the label channel (before ``label_scale``).
        label_scale: factor of the label channel.
        ignore_index: label of pixels without a class (coded with the extra code, left out of CE).
        noise_seed: seed of the label channel's noise; step ``k`` draws from ``(noise_seed, k)``, so a
            run, its resumption and every DDP rank draw the same noise whatever the global RNG did.
        loss_weights: ``{"ce": ..., "cwd": ...}``.
        optimizer: optimizer of the student.
        lr_scheduler: optional epoch-wise scheduler.

    Batches are ``(x, y)``: images ``(B, C, H, W)`` and labels ``(B, H, W)`` int64.

    Raises:
        ValueError: ``temperature`` or ``label_scale`` <= 0, ``label_noise_std`` < 0, an unknown
            ``label_code``; at the first step, a teacher whose input channels do not fit.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ce", "cwd")
    default_loss_weights: ClassVar[dict[str, float]] = {"ce": 1.0, "cwd": 3.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float = 4.0,
        label_assisted: bool = True,
        label_code: Literal["fixed", "random"] = "fixed",
        label_noise_std: float = 0.02,
        label_scale: float = 100.0,
        ignore_index: int = -1,
        noise_seed: int = 0,
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
        check_option(temperature > 0, "temperature", temperature, "> 0")
        check_option(label_scale > 0, "label_scale", label_scale, "> 0")
        check_option(label_noise_std >= 0, "label_noise_std", label_noise_std, ">= 0")
        check_option(label_code in ("fixed", "random"), "label_code", label_code, "'fixed' or 'random'")
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.temperature = check_positive("temperature", temperature)
        self.label_assisted, self.label_code = label_assisted, label_code
        self.label_noise_std = check_non_negative("label_noise_std", label_noise_std)
        self.label_scale, self.ignore_index = label_scale, ignore_index
        self.noise_seed = int(noise_seed)
        self.iou = IoUTracker(ignore_index=ignore_index)

    # ---------------------------------------------------------------- the paper
    def teacher_input(self, x: Tensor, y: Tensor, num_classes: int) -> Tensor:
        """Step 2: the image and, for a label-assisted teacher, the coded label channel ``(B, C + 1, H, W)``."""
        if not self.label_assisted:
            return x
        expected = getattr(self.teacher, "in_channels", x.shape[1] + 1)
        if expected != x.shape[1] + 1:
            raise ValueError(
                f"A label-assisted teacher reads the image's {x.shape[1]} channels plus the label channel, but the "
                f"teacher takes {expected}; build it with `in_channels: {x.shape[1] + 1}` or set `label_assisted: false`."
            )
        step = self.global_step if self._trainer is not None else 0
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + step)
        if self.label_code == "fixed":
            values = fixed_label_values(num_classes)
        else:
            values = random_label_values(len(y), num_classes, generator=generator)
        channel = code_labels(
            y,
            values,
            noise_std=self.label_noise_std,
            scale=self.label_scale,
            ignore_index=self.ignore_index,
            generator=generator,
        )
        return torch.cat([x, channel.to(x.dtype)], dim=1)

    def task_loss(self, student_logits: Tensor, y: Tensor) -> Tensor:
        """Step 4, first term: per-pixel cross-entropy."""
        return F.cross_entropy(student_logits.float(), y, ignore_index=self.ignore_index)

    def distillation_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Step 4, second term: ``CWD(z_S, z_T)`` at ``temperature``."""
        return cwd_loss(student_logits, teacher_logits, temperature=self.temperature)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        # 3. The student on the image alone.
        student_logits = self.student(x)
        # 2. The teacher on the image and, label-assisted, the coded labels.
        with torch.no_grad():
            teacher_logits = self.teacher(self.teacher_input(x, y, student_logits.shape[1]))
        self.check_output_shapes(student_logits, teacher_logits)
        # 4. CE + CWD.
        terms = {
            "ce": self.task_loss(student_logits, y),
            "cwd": self.distillation_loss(student_logits, teacher_logits),
        }
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        self.iou.update(f"{stage}/student", logits, y)
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            self.iou.update(f"{stage}/teacher", self.teacher(self.teacher_input(x, y, logits.shape[1])), y)

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
