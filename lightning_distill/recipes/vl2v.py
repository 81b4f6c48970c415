"""VL2V-ADiP: align a vision student's projected features with CLIP's image and text embeddings.

Addepalli et al., "Leveraging Vision-Language Models for Improving Domain Generalization in Image
Classification" (CVPR 2024, arXiv 2310.08255; official code val-iisc/VL2V-ADiP,
``domainbed/algorithms/distill_clip.py``, ``domainbed/hparams_registry.py``, ``domainbed/swad.py``).

1. Teacher: normalised CLIP image embedding ``v`` of the image and the text embedding ``c_y`` of its
   label (the prompt-ensemble zero-shot classifier row).
2. Student: ``p = normalize(P(g(x)))`` with a linear projection ``P`` to CLIP's dimension.
3. ``L = λ (−cos(p, v)) + (1 − λ)(−cos(p, c_y))``, ``λ = 0.5``.
4. Stage 1 trains ``P`` with the backbone ``g`` frozen (and in eval mode); stage 2 fine-tunes ``g`` and
   ``P`` together (a ``ProgressiveSchedule`` stage schedule on ``stage``, boundary ``stage1_epochs``).
5. Predict with CLIP's text classifier on ``p``: ``scale · p ĉᵀ``.
6. Evaluate the uniform average of the weights of every step in the second half of stage 2
   (:class:`StageTwoAveraging`: SWAD's dense averaging, with a fixed window instead of SWAD's
   loss-based one).

Hyper-parameters -> config keys (``model.init_args.*``):

================================  ====================  =========================================
paper / official code             key                   default
================================  ====================  =========================================
λ (``lmd`` = 0.5)                 ``loss_weights``      {image: 0.5, text: 0.5}
stage 1 length                    ``stage1_epochs``     1
SWAD                              ``average_weights``   True (uniform dense average)
SWAD's window start               ``average_start``     0.5 (of stage 2)
Adam, lr 5e-5, weight decay 0     ``optimizer``         :func:`vl2v_adam`
================================  ====================  =========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from lightning_distill.callbacks import ProgressiveSchedule
from lightning_distill.losses.vision_language import negative_cosine_loss
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["VL2V", "StageTwoAveraging", "vl2v_adam"]


def vl2v_adam(params: Any) -> torch.optim.Optimizer:
    """The official optimizer: Adam, lr 5e-5, weight decay 0 (``hparams_registry.py``, large images)."""
    return torch.optim.Adam(params, lr=5e-5, weight_decay=0.0)


class StageTwoAveraging(WeightAveraging):
    """Uniform average of the weights after every optimizer step late in stage 2.

    Averaging starts ``start`` of the way through stage 2 (0: at its first step), a fixed stand-in
    for SWAD's start "once the validation loss stops falling": weights far apart on the loss surface
    (a network early in training and the same network trained) do not average into a good one.
    Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` swaps the average in for
    validation and copies it into the module when training ends; the student's batch-norm statistics
    are then recomputed for the averaged weights with one pass over the training data
    (``torch.optim.swa_utils.update_bn``: averaged statistics do not belong to averaged weights).
    """

    def __init__(self, stage1_epochs: int, start: float = 0.5) -> None:
        super().__init__()
        self.stage1_epochs, self.start = stage1_epochs, start
        self._start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage1 = self.stage1_epochs * int(trainer.num_training_batches)
        total = int(trainer.estimated_stepping_batches)
        self._start_step = stage1 + int(self.start * max(total - stage1, 0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning deep-copies the whole module for the average. The optimizer and scheduler
        # factories LightningCLI puts on it cannot be copied under DDP (they hold a lock) and the
        # averaged copy never builds an optimizer, so they stay out of the copy.
        factories = {
            k: pl_module.__dict__.pop(k) for k in ("optimizer", "lr_scheduler") if k in pl_module.__dict__
        }
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            pl_module.__dict__.update(factories)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self._start_step is not None and step_idx >= self._start_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        student = getattr(pl_module, "student", None)
        if student is not None and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()
        ):
            update_bn(trainer.train_dataloader, student, device=pl_module.device)


class VL2V(DistillationModule):
    """VL2V-ADiP distillation. See the module docstring for the algorithm.

    Args:
        student: image encoder ``(B, 3, H, W) -> (B, F)`` with ``num_features`` (an ``ImageEncoder``).
        teacher: a :class:`~lightning_distill.vision_language.CLIPTeacher`.
        stage1_epochs: epochs of stage 1 (projection only); stage 2 runs for the rest.
        average_weights: evaluate (and end with) the uniform average of the late stage-2 weights.
        average_start: where in stage 2 averaging starts, as a fraction of its steps (see
            :class:`StageTwoAveraging`).
        loss_weights: ``{"image": λ, "text": 1 − λ}``.
        optimizer: optimizer of the projection and the backbone (default :func:`vl2v_adam`).
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: ``stage1_epochs`` < 0, a teacher that is not a ``CLIPTeacher``, or a student
            without ``num_features``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("image", "text")
    default_loss_weights: ClassVar[dict[str, float]] = {"image": 0.5, "text": 0.5}
    # stage 1 freezes the backbone after DDP has wrapped the module: DDP looks for unused parameters
    trains_parameters_by_stage: ClassVar[bool] = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        stage1_epochs: int = 1,
        average_weights: bool = True,
        average_start: float = 0.5,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = vl2v_adam,
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
            isinstance(stage1_epochs, int) and stage1_epochs >= 0,
            "stage1_epochs",
            stage1_epochs,
            "an integer >= 0",
        )
        for name in ("encode_images", "class_embeddings", "embed_dim"):
            if not hasattr(teacher, name):
                raise ValueError(
                    f"The teacher {type(teacher).__name__} has no `{name}`; use "
                    "`lightning_distill.vision_language.clip_teacher` (a CLIPTeacher)."
                )
        num_features = getattr(student, "num_features", None)
        if not isinstance(num_features, int):
            raise ValueError(
                f"The student {type(student).__name__} has no integer `num_features`; wrap it in "
                "`lightning_distill.vision_language.ImageEncoder`."
            )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        check_option(0.0 <= average_start < 1.0, "average_start", average_start, "a fraction in [0, 1)")
        self.stage1_epochs, self.average_weights, self.average_start = (
            stage1_epochs,
            average_weights,
            average_start,
        )
        self.projection = nn.Linear(num_features, int(teacher.embed_dim))
        self.stage = 1 if stage1_epochs > 0 else 2  # set by the ProgressiveSchedule of configure_callbacks

    # ---------------------------------------------------------------- the paper
    def projected(self, x: Tensor) -> Tensor:
        """Step 2: ``p = normalize(P(g(x)))`` ``(B, D)``."""
        return F.normalize(self.projection(self.student(x)), dim=-1)

    @torch.no_grad()
    def targets(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Step 1: the CLIP image embeddings ``(B, D)`` and the text embeddings of the labels ``(B, D)``."""
        return self.teacher.encode_images(x), self.teacher.class_embeddings[labels]

    def alignment_terms(self, p: Tensor, image: Tensor, text: Tensor) -> dict[str, Tensor]:
        """Step 3: ``−cos(p, v)`` and ``−cos(p, c_y)`` (weighed ``λ`` and ``1 − λ`` by ``loss_weights``)."""
        return {"image": negative_cosine_loss(p, image), "text": negative_cosine_loss(p, text)}

    def predict_logits(self, x: Tensor) -> Tensor:
        """Step 5: the text classifier on the projected features, ``scale · p ĉᵀ`` ``(B, K)``."""
        return self.teacher.scale() * self.projected(x).float() @ self.teacher.class_embeddings.t()

    def on_stage_change(self, name: str, old: Any, new: Any) -> None:
        """Step 4: called by ``ProgressiveSchedule`` when ``stage`` changes."""
        self._apply_stage()

    def _apply_stage(self) -> None:
        stage2 = self.stage == 2
        self.student.requires_grad_(stage2)
        self.student.train(stage2)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        if bool((y < 0).any()):
            raise ValueError(
                "VL2V trains on labelled images only; set `data.init_args.labelled_fraction: 1.0`."
            )
        self._apply_stage()  # stage 1: backbone frozen and in eval mode; stage 2: everything learns
        image, text = self.targets(x, y)
        return self.log_losses(self.alignment_terms(self.projected(x), image, text))

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        if model is self.student:
            return super().evaluate(self.predict_logits, batch)
        return super().evaluate(model, batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.predict_logits(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_logits(x)

    def configure_callbacks(self) -> Sequence[L.Callback]:
        stages = ProgressiveSchedule(
            {"stage": {"kind": "stages", "boundaries": [max(self.stage1_epochs, 0)], "values": [1, 2]}},
            unit="epoch",
        )
        averaging = StageTwoAveraging(self.stage1_epochs, self.average_start)
        return [stages, averaging] if self.average_weights else [stages]
