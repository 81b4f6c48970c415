"""SSLD: label-free distillation on labelled and unlabelled images (Cui et al., arXiv 2103.05959).

"Beyond Self-Supervision" improves a backbone without labels: a strong teacher's predictions on
every available image (the labelled training set plus teacher-selected unlabelled images) are
the only target, and the loss is a divergence between the two softmax outputs.

Algorithm:

1. Select data: every labelled image, plus unlabelled images the teacher is confident on
   (the paper ranks ~14M ImageNet-22k images by teacher score and keeps the top per class; here a
   per-sample threshold ``min_teacher_confidence`` on the teacher's top probability).
2. Distil: ``L_dist = D(softmax(S(x) / T), softmax(T(x) / T))`` on the selected images, where D
   is the Jensen-Shannon divergence (paper) or the symmetric KL that PaddleClas's SSLD code
   actually computes (``divergence="symmetric_kl"``). Labels are not used (``ce`` weight 0).
3. Fine-tune: the last ``finetune_epochs`` epochs use only the labelled images (the paper's
   final stage on ImageNet-1k), still with the distillation loss, at the scheduler's small lr.

Total loss: ``w_dist * L_dist + w_ce * CE(S(x), y)`` on labelled samples (``w_ce = 0`` by default:
label-free, as in the paper).

Hyper-parameters -> config keys (``model.init_args.*``):

===============================  ===========================  =========
paper                            key                          default
===============================  ===========================  =========
divergence                       ``divergence``               ``"js"``
temperature                      ``temperature``              1.0
unlabelled-data selection        ``min_teacher_confidence``   0.0 (keep all)
fine-tune stage on labelled data ``finetune_epochs``          0
loss weights                     ``loss_weights``             {dist: 1, ce: 0}
===============================  ===========================  =========
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses import js_divergence, labelled_cross_entropy, symmetric_kl
from lightning_distill.module import DistillationModule

__all__ = ["BeyondSSL"]


class BeyondSSL(DistillationModule):
    """SSLD recipe. See the module docstring for the algorithm.

    Args:
        student: classifier ``(B, C, H, W) -> (B, K)``.
        teacher: frozen classifier with the same ``K`` outputs.
        divergence: ``"js"`` (the paper) or ``"symmetric_kl"`` (PaddleClas's implementation).
        temperature: softmax temperature of both distributions.
        min_teacher_confidence: unlabelled images whose teacher top probability is below this are
            left out of the loss (labelled images are always kept).
        finetune_epochs: number of final epochs that train on the labelled images only.
        loss_weights: ``{"dist": ..., "ce": ...}``.
        optimizer: optimizer for the student. The paper gives no single setting: PaddleClas's SSLD
            table uses momentum SGD with cosine decay and warm-up, and a learning rate and L2 decay
            per student and batch size (e.g. ResNet50_vd: lr 0.4 at batch 1024, decay 7e-5), so the
            default stays torch's AdamW; set it for your student.
        lr_scheduler: optional epoch-wise scheduler.

    Batches are ``(x, y)`` with ``y = -1`` for unlabelled images
    (:class:`~lightning_distill.data.DigitsDataModule` with ``train_split="all"``).

    Raises:
        ValueError: an unknown ``divergence``, ``temperature <= 0``, a confidence outside [0, 1],
            or negative ``finetune_epochs``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("dist", "ce")
    default_loss_weights: ClassVar[dict[str, float]] = {"dist": 1.0, "ce": 0.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        divergence: Literal["js", "symmetric_kl"] = "js",
        temperature: float = 1.0,
        min_teacher_confidence: float = 0.0,
        finetune_epochs: int = 0,
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
        if divergence not in ("js", "symmetric_kl"):
            raise ValueError(
                f"`divergence` must be 'js' or 'symmetric_kl', got {divergence!r}; "
                "set `model.init_args.divergence`."
            )
        if temperature <= 0:
            raise ValueError(
                f"`temperature` must be > 0, got {temperature}; set `model.init_args.temperature`."
            )
        if not 0.0 <= min_teacher_confidence <= 1.0:
            raise ValueError(
                f"`min_teacher_confidence` must be in [0, 1], got {min_teacher_confidence}; "
                "set `model.init_args.min_teacher_confidence`."
            )
        if finetune_epochs < 0:
            raise ValueError(f"`finetune_epochs` must be >= 0, got {finetune_epochs}.")
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.divergence = divergence
        self.temperature = temperature
        self.min_teacher_confidence = min_teacher_confidence
        self.finetune_epochs = finetune_epochs

    # ---------------------------------------------------------------- the paper
    def select(self, labels: Tensor, teacher_logits: Tensor) -> Tensor:
        """Step 1: mask ``(B,)`` of the samples that enter the loss.

        Labelled samples always; unlabelled ones (``y = -1``) when the teacher's top probability is
        at least ``min_teacher_confidence``, and none during the fine-tune stage.
        """
        labelled = labels >= 0
        if self.in_finetune_stage:
            return labelled
        confident = teacher_logits.float().softmax(dim=-1).amax(dim=-1) >= self.min_teacher_confidence
        return labelled | confident

    def distillation_loss(self, student_logits: Tensor, teacher_logits: Tensor, keep: Tensor) -> Tensor:
        """Step 2: mean over kept samples of ``D(softmax(z_S / T), softmax(z_T / T))``, D = JS or sym. KL.

        A masked mean rather than indexing keeps shapes static (DDP- and compile-friendly).
        """
        fn = js_divergence if self.divergence == "js" else symmetric_kl
        per_sample = fn(student_logits, teacher_logits, temperature=self.temperature, reduction="none")
        weight = keep.float()
        return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)

    @staticmethod
    def supervised_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy on the labelled samples only (weight 0 by default: SSLD is label-free)."""
        return labelled_cross_entropy(student_logits, labels)

    @property
    def in_finetune_stage(self) -> bool:
        """Step 3: whether the current epoch is one of the last ``finetune_epochs``."""
        if self.finetune_epochs == 0 or self._trainer is None:
            return False
        max_epochs = self.trainer.max_epochs
        return (
            max_epochs is not None
            and max_epochs > 0
            and self.current_epoch >= max_epochs - self.finetune_epochs
        )

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        keep = self.select(y, teacher_logits)
        student_logits = self.student(x)
        self.check_output_shapes(student_logits, teacher_logits)
        self.log_diagnostics({"kept_fraction": keep.float().mean()})  # diag/kept_fraction
        terms = {
            "dist": self.distillation_loss(student_logits, teacher_logits, keep),
            "ce": self.supervised_loss(student_logits, y),
        }
        return self.log_losses(terms)
