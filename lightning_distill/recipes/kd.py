"""Knowledge distillation baselines: Hinton KD, optionally with a feature term (FitNets, AT, CWD).

The baseline every distillation paper compares against, as a recipe (Hinton, Vinyals & Dean,
"Distilling the Knowledge in a Neural Network", arXiv 1503.02531), with the common feature-level
terms on top:

1. Teacher logits ``z_T``: run the frozen teacher, or read them from a teacher-output cache
   (``cache``: the teacher runs once per sample and stored augmentation, FKD-style).
2. Soft targets: ``L_kd = T^2 KL(softmax(z_T / T) || softmax(z_S / T))``.
3. Hard targets: ``L_ce = CE(z_S, y)`` on labelled samples.
4. Optional feature term between tapped layers (FeatureHooks): FitNets' hint
   ``mean (A(f_S) - f_T)^2`` with a trainable adapter ``A`` (arXiv 1412.6550), attention transfer
   (arXiv 1612.03928) or channel-wise distillation (arXiv 2011.13256).

Total loss: ``w_kd L_kd + w_ce L_ce + w_feat L_feat``.

Hyper-parameters -> config keys (``model.init_args.*``):

=====================  ==========================  ==========================
paper                  key                         default
=====================  ==========================  ==========================
temperature T          ``temperature``             4.0
loss weights           ``loss_weights``            {kd: 0.9, ce: 0.1, feat: 1}
feature term           ``feature_loss``            None (``hint``/``at``/``cwd``)
tapped layers          ``student_layer``,          None
                       ``teacher_layer``
adapter (hint, CWD)    ``adapter``                 None (identity)
CWD temperature        ``feature_temperature``     4.0
teacher-output cache   ``cache``                   None
=====================  ==========================  ==========================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks import FeatureHooks, TeacherCacheCallback
from lightning_distill.losses import (
    attention_transfer_loss,
    cwd_loss,
    hint_loss,
    kd_loss,
    labelled_cross_entropy,
)
from lightning_distill.module import DistillationModule

__all__ = ["KnowledgeDistillation"]

FeatureLoss = Literal["hint", "at", "cwd"]


class KnowledgeDistillation(DistillationModule):
    """Hinton KD with an optional feature term and an optional teacher-output cache.

    Args:
        student: classifier ``(B, C, H, W) -> (B, K)``.
        teacher: frozen classifier with the same ``K`` outputs.
        temperature: softmax temperature of the KD term.
        feature_loss: ``None``, ``"hint"`` (FitNets), ``"at"`` (attention transfer) or ``"cwd"``.
        student_layer: module path inside the student whose output is tapped (e.g. ``"layer2"``).
        teacher_layer: module path inside the teacher whose output is tapped.
        adapter: trainable module mapping the student feature to the teacher's shape (hint and CWD),
            e.g. :class:`~lightning_distill.models.ConvAdapter`; optimised and saved with the recipe.
        feature_temperature: temperature of CWD's spatial softmax.
        cache: a :class:`~lightning_distill.callbacks.TeacherCacheCallback`; batches must then carry
            the sample index (``(x, y, index)``, e.g. ``DigitsDataModule(return_index=True)``), and
            the cache's augmentation is applied to the images the student sees.
        loss_weights: ``{"kd": ..., "ce": ..., "feat": ...}``.
        optimizer: optimizer for the student (and the adapter). Hinton et al. state no optimizer,
            so the default is torch's AdamW; ``temperature`` 4 and the 0.9/0.1 weights are the
            common choice of later KD benchmarks (the paper tries several ``T``), not the paper's.
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: ``temperature <= 0``, an unknown ``feature_loss``, a feature loss without both
            layers, or a feature loss together with a cache (cached runs skip the teacher forward,
            so there are no teacher features).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("kd", "ce", "feat")
    default_loss_weights: ClassVar[dict[str, float]] = {"kd": 0.9, "ce": 0.1, "feat": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float = 4.0,
        feature_loss: FeatureLoss | None = None,
        student_layer: str | None = None,
        teacher_layer: str | None = None,
        adapter: nn.Module | None = None,
        feature_temperature: float = 4.0,
        cache: TeacherCacheCallback | None = None,
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
        for name, value in (("temperature", temperature), ("feature_temperature", feature_temperature)):
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0, got {value}; set `model.init_args.{name}`.")
        if feature_loss not in (None, "hint", "at", "cwd"):
            raise ValueError(
                f"`feature_loss` must be null, 'hint', 'at' or 'cwd', got {feature_loss!r}; "
                "set `model.init_args.feature_loss`."
            )
        if feature_loss is not None and (student_layer is None or teacher_layer is None):
            raise ValueError(
                f"`feature_loss={feature_loss!r}` needs `student_layer` and `teacher_layer` (module paths "
                "inside the student and the teacher, e.g. 'layer2'); set them in `model.init_args`."
            )
        if feature_loss is not None and cache is not None:
            raise ValueError(
                "`cache` skips the teacher forward, so there are no teacher features for `feature_loss`; "
                "use one or the other."
            )
        self.save_hyperparameters(
            ignore=["student", "teacher", "adapter", "cache", "optimizer", "lr_scheduler"]
        )
        self.temperature = temperature
        self.feature_loss = feature_loss
        self.feature_temperature = feature_temperature
        self.adapter = adapter if adapter is not None else nn.Identity()
        self.cache = cache
        self.hooks: FeatureHooks | None = None
        if feature_loss is not None:
            self.hooks = FeatureHooks(
                {"student": f"student.{student_layer}", "teacher": f"teacher.{teacher_layer}"}
            )

    # ---------------------------------------------------------------- the paper
    def teacher_logits(self, x: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
        """Step 1: the (possibly augmented) student input and the teacher's logits ``(B, K)``."""
        if self.cache is not None:
            if index is None:
                raise ValueError(
                    "The teacher cache needs sample indices: give batches (x, y, index), e.g. "
                    "`data.init_args.return_index: true`."
                )
            return self.cache.teacher_outputs(x, index)
        with torch.no_grad():
            return x, self.teacher(x)

    def soft_target_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Step 2: ``T^2 KL(softmax(z_T / T) || softmax(z_S / T))``."""
        return kd_loss(student_logits, teacher_logits, temperature=self.temperature)

    @staticmethod
    def hard_target_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
        """Step 3: cross-entropy on the labelled samples (label -1 marks unlabelled ones)."""
        return labelled_cross_entropy(student_logits, labels)

    def feature_term(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        """Step 4: the feature loss between the tapped student and teacher features."""
        if self.feature_loss == "at":
            return attention_transfer_loss(student_feature, teacher_feature)
        projected = self.adapter(student_feature)
        if self.feature_loss == "hint":
            return hint_loss(projected, teacher_feature)
        return cwd_loss(projected, teacher_feature, temperature=self.feature_temperature)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        index = batch[2] if len(batch) > 2 else None
        # 1. Teacher logits (frozen teacher, or the cache), and the student on the same images.
        x, teacher_logits = self.teacher_logits(x, index)
        student_logits = self.student(x)
        self.check_output_shapes(student_logits, teacher_logits)
        # 2.-3. Soft and hard targets.
        terms = {
            "kd": self.soft_target_loss(student_logits, teacher_logits),
            "ce": self.hard_target_loss(student_logits, y),
        }
        # 4. Feature term from the taps the forward passes just filled.
        if self.hooks is not None:
            terms["feat"] = self.feature_term(self.hooks["student"], self.hooks["teacher"])
        return self.log_losses(terms)

    def configure_callbacks(self) -> Sequence[L.Callback]:
        return [c for c in (self.hooks, self.cache) if c is not None]
