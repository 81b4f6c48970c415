"""vlm_ood: distilling a large vision-language model for out-of-distribution generalisation.

Li et al., "Distilling Large Vision-Language Model with Out-of-Distribution Generalizability"
(arXiv 2307.03135; official code xuanlinli17/large_vlm_distillation_ood, ``main_experiments.py``).

The student maps an image to a vector in CLIP's embedding space and classifies it against text
embeddings, so any class with a name (and a description) can be predicted, also one it never saw.
With normalised student features ``s = ŝ(x)``, CLIP image features ``v`` and class text
embeddings ``c`` of the training classes (prompt ensembles of names and descriptions), ``τ = 0.07``:

1. ``L_cls = CE(s cᵀ / τ, y)``: the text classifier on the labels.
2. ``L_vlalign = KL(softmax(v c_Sᵀ / τ) || softmax(s c_Sᵀ / τ))`` over the teacher's top-k classes
   ``S``, on the images the teacher classifies right (``--clip-filter-out-wrong-alignment``).
3. ``L_mse = ||s − v||²``.
4. ``L_im_cst = ½ [CE(s vᵀ/τ, I) + CE(v sᵀ/τ, I)]``: in-batch image contrast to the teacher.
5. Total ``L_cls + L_vlalign + L_mse + L_im_cst`` (all weights 1); predict ``argmax s cᵀ`` over the
   text embeddings of every class, seen or not.

Hyper-parameters -> config keys (``model.init_args.*``):

=====================================  ======================  ====================================
official flag                          key                     default
=====================================  ======================  ====================================
``--temperature 0.07``                 ``temperature``         0.07
``--clip-align-proximal-text-num``     ``top_k``               256 (the example scripts)
``--clip-filter-out-wrong-alignment``  ``filter_wrong``        True
all four terms weigh 1                 ``loss_weights``        {cls: 1, vlalign: 1, mse: 1, im_cst: 1}
label descriptions (ChatGPT)           ``descriptions``        None (prompt templates only)
SGD lr 0.05, momentum 0.9, wd 1e-4     ``optimizer``           :func:`vlm_ood_sgd`
=====================================  ======================  ====================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.vision_language import (
    feature_l2_loss,
    image_contrastive_loss,
    text_classifier_loss,
    text_logits,
    topk_text_alignment_loss,
)
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option, check_positive

__all__ = ["VLMOOD", "vlm_ood_sgd"]


def vlm_ood_sgd(params: Any) -> torch.optim.Optimizer:
    """The official ResNet optimizer: SGD, lr 0.05, momentum 0.9, weight decay 1e-4 (``example_scripts.sh``)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


class VLMOOD(DistillationModule):
    """Vision-language distillation with a text classifier. See the module docstring for the algorithm.

    Args:
        student: image encoder ``(B, 3, H, W) -> (B, F)`` with ``num_features`` (e.g.
            :class:`~lightning_distill.vision_language.ImageEncoder`); a linear projection to the
            teacher's embedding size is added and trained with it.
        teacher: a :class:`~lightning_distill.vision_language.CLIPTeacher` (its ``class_names`` and
            ``templates`` name every class that can be predicted).
        temperature: ``τ`` of every similarity softmax.
        top_k: size of the teacher's class subset in ``L_vlalign``.
        filter_wrong: ``L_vlalign`` only on images the teacher classifies right.
        descriptions: extra texts per class averaged into its text embedding (one list per class).
        seen_classes: the classes of the training labels; ``None`` reads
            ``trainer.datamodule.seen_classes()`` at setup (every class if it has none).
        loss_weights: ``{"cls": ..., "vlalign": ..., "mse": ..., "im_cst": ...}``.
        optimizer: optimizer of the student and projection (default :func:`vlm_ood_sgd`).
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: ``temperature`` <= 0, ``top_k`` < 1, a teacher without text embeddings, a student
            without ``num_features``, or seen classes outside the teacher's classes.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("cls", "vlalign", "mse", "im_cst")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float = 0.07,
        top_k: int = 256,
        filter_wrong: bool = True,
        descriptions: Sequence[Sequence[str]] | None = None,
        seen_classes: Sequence[int] | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = vlm_ood_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.temperature = check_positive("temperature", temperature)
        check_option(isinstance(top_k, int) and top_k >= 1, "top_k", top_k, "an integer >= 1")
        for name in ("encode_images", "zero_shot_classifier", "class_names"):
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
        self.top_k, self.filter_wrong = top_k, filter_wrong
        self.projection = nn.Linear(num_features, int(teacher.embed_dim))
        # Text embeddings of every class the teacher names (K, D): fixed, part of the frozen teacher side.
        text = teacher.zero_shot_classifier(teacher.class_names, teacher.templates, descriptions)
        self.register_buffer("text_embeddings", text)
        self.seen_classes = None if seen_classes is None else self._check_seen(seen_classes)

    def _check_seen(self, classes: Sequence[int]) -> list[int]:
        classes = sorted(int(c) for c in classes)
        k = self.text_embeddings.shape[0]
        check_option(
            bool(classes) and all(0 <= c < k for c in classes),
            "seen_classes",
            classes,
            f"classes in [0, {k})",
        )
        return classes

    def setup(self, stage: str) -> None:
        if self.seen_classes is None:
            data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            seen = (
                data.seen_classes() if hasattr(data, "seen_classes") else range(self.text_embeddings.shape[0])
            )
            self.seen_classes = self._check_seen(list(seen))

    # ---------------------------------------------------------------- the paper
    def student_features(self, x: Tensor) -> Tensor:
        """Student vectors ``(B, D)`` in the teacher's embedding space (unnormalised; the losses normalise)."""
        return self.projection(self.student(x))

    def predict_logits(self, x: Tensor) -> Tensor:
        """Step 5: ``ŝ ĉᵀ / τ`` over the text embeddings of every class ``(B, K)``."""
        return text_logits(self.student_features(x), self.text_embeddings, temperature=self.temperature)

    def language_terms(self, s: Tensor, v: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Steps 1-2 on the training classes' text embeddings (labels re-indexed into them)."""
        seen = torch.as_tensor(
            self.seen_classes or range(self.text_embeddings.shape[0]), device=labels.device
        )
        lookup = torch.full((self.text_embeddings.shape[0],), -1, dtype=torch.long, device=labels.device)
        lookup[seen] = torch.arange(len(seen), device=labels.device)
        y = lookup[labels]
        if bool((y < 0).any()):
            raise ValueError(
                f"A training label is outside `seen_classes` {self.seen_classes}: {labels[y < 0].unique().tolist()}."
            )
        c = self.text_embeddings[seen]
        return {
            "cls": text_classifier_loss(s, c, y, temperature=self.temperature),
            "vlalign": topk_text_alignment_loss(
                s, v, c, y if self.filter_wrong else None, top_k=self.top_k, temperature=self.temperature
            ),
        }

    def vision_terms(self, s: Tensor, v: Tensor) -> dict[str, Tensor]:
        """Steps 3-4: feature L2 and the bidirectional image contrast to the teacher's image features."""
        return {
            "mse": feature_l2_loss(s, v),
            "im_cst": image_contrastive_loss(s, v, temperature=self.temperature),
        }

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        if bool((y < 0).any()):
            raise ValueError(
                "vlm_ood trains on labelled images only; set `data.init_args.labelled_fraction: 1.0`."
            )
        with torch.no_grad():
            v = self.teacher.encode_images(x)  # CLIP image features (B, D), normalised
        s = self.student_features(x)
        # 1.-4. The four terms; 5. the base weighs (all 1), sums and logs them.
        return self.log_losses({**self.language_terms(s, v, y), **self.vision_terms(s, v)})

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """The student is scored through the text classifier over every class; the teacher zero-shot."""
        if model is self.student:
            return super().evaluate(self.predict_logits, batch)
        return super().evaluate(model, batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.predict_logits(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_logits(x)
