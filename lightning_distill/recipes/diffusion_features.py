"""DistillDIFT: Distillation of Diffusion Features for Semantic Correspondence (Fundel et al., arXiv 2412.03512).

An ensemble of slow teachers, a diffusion UNet read at a few noise levels and a ViT, gives better
dense features for matching points across images than either alone. DistillDIFT distils the
ensemble's *similarity structure* into one ViT with LoRA adapters, so that a single forward pass
matches points as well as the ensemble.

Algorithm (one step; official code ``CompVis/distilldift``, ``train/train.py::distill_epoch``):

1. Teachers (frozen, features cached per pair as the paper caches them per dataset): each teacher
   maps the source and target images to dense features; each map is L2-normalised per location,
   resized to one grid and concatenated over channels (the ensemble), then resized to the student grid.
2. Student: the ViT with LoRA adapters maps both images to its patch-token grid.
3. Similarity maps: ``S[b, n, m] = cos(f_src[b, n], f_tgt[b, m])`` for every source location ``n``
   and target location ``m``, for student and teacher.
4. ``L_distill = −mean_{b,n} Σ_m softmax(S_T/τ)[b,n,m] · log softmax(S_S/τ)[b,n,m]`` (τ = 0.01).

Only the LoRA adapters learn. Evaluation: PCK@α of nearest-neighbour matches of the pairs'
keypoints (``val/pck``), once per run each teacher's (``val/teacher{k}_pck``) and the ensemble's
(``val/teacher_ensemble_pck``).

Hyper-parameters -> config keys (``model.init_args.*``):

==================================  ===========================  ===========================
paper / official flag               key                          default
==================================  ===========================  ===========================
``softmax_temperature``             ``temperature``              0.01
LoRA ``rank``                       ``lora_rank``                8
LoRA scale (custom layer, none)     ``lora_alpha``               8.0 (alpha / rank = 1)
``lora_dropout``                    ``lora_dropout``             0.05
LoRA on q and v of every block      ``lora_target_modules``      [q_proj, v_proj]
student feature layer (last)        ``student_layer``            -1
``sampling_method: full``           (every student location)     --
AdamW lr / weight decay             ``optimizer``                1e-4 / 0.05 (config)
PCK threshold                       ``pck_alpha``                0.1
==================================  ===========================  ===========================

The official code feeds the two softmaxes to ``torch.nn.CrossEntropyLoss`` with the similarity
tensor ``(B, N, HW)``, which (a) applies ``log_softmax`` again to the student's probabilities and
(b) takes dimension 1 (source locations) as the class dimension. We implement the loss the paper
writes (cross-entropy over target locations of the two softmaxes); recipes/diffusion_features/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion.guidance_distillation import inject_lora
from lightning_distill.losses.correspondence import similarity_distillation_loss
from lightning_distill.module import DistillationModule
from lightning_distill.representation.correspondence import (
    FeatureCache,
    ensemble_features,
    match_points,
    pck,
    vit_feature_map,
)
from lightning_distill.representation.encoding import encoder_of
from lightning_distill.utils.checks import check_int, check_positive

__all__ = ["DiffusionFeatures"]


def _flat(features: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, h*w, C)``."""
    return features.flatten(2).transpose(1, 2)


class DiffusionFeatures(DistillationModule):
    """DistillDIFT recipe. See the module docstring for the algorithm.

    Args:
        student: a transformers ViT (``ViTModel``, ``ViTMAEModel`` or ``ViTMAEForPreTraining``, whose
            encoder is used); the paper starts it from the ViT teacher's weights (DINOv2). Its
            weights stay frozen; LoRA adapters are added to ``lora_target_modules``.
        teachers: dense feature extractors ``images (B, C, H, W) -> (B, C_k, h_k, w_k)``, e.g.
            :class:`~lightning_distill.representation.correspondence.UNetFeatures` and
            :class:`~lightning_distill.representation.correspondence.ViTFeatures`; concatenated as the ensemble.
        temperature: softmax temperature ``τ`` of the similarity maps.
        lora_rank: LoRA rank.
        lora_alpha: LoRA alpha (the update is scaled by ``alpha / rank``).
        lora_dropout: dropout on the LoRA input.
        lora_target_modules: names of the student's linear layers that get adapters.
        student_layer: student block (1-based) whose patch tokens are the features; ``-1`` = last.
        cache_teacher_features: keep the teachers' training-pair features in memory after their
            first computation (the paper precomputes them for the whole dataset).
        pck_alpha: PCK threshold as a fraction of the image side.
        loss_weights: ``{"distill": ...}``.
        optimizer: for the LoRA adapters (the paper: AdamW, lr 1e-4, weight decay 0.05).
        lr_scheduler: optional epoch-wise scheduler (the paper: StepLR, gamma 0.1).

    Raises:
        TypeError: a student that is not a transformers ViT.
        ValueError: no teacher, a bad temperature, rank or layer.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("distill",)
    default_loss_weights: ClassVar[dict[str, float]] = {"distill": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module],
        temperature: float = 0.01,
        lora_rank: int = 8,
        lora_alpha: float = 8.0,
        lora_dropout: float = 0.05,
        lora_target_modules: Sequence[str] = ("q_proj", "v_proj"),
        student_layer: int = -1,
        cache_teacher_features: bool = True,
        pck_alpha: float = 0.1,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        backbone = encoder_of(student)
        if not (hasattr(backbone, "embeddings") and hasattr(getattr(backbone, "config", None), "patch_size")):
            raise TypeError(
                f"`student` must be a transformers ViT (ViTModel, ViTMAEModel or ViTMAEForPreTraining), got "
                f"{type(student).__name__}; set `model.init_args.student`."
            )
        if not teachers:
            raise ValueError(
                "`teachers` must hold at least one dense feature extractor; set `model.init_args.teachers`."
            )
        check_positive("temperature", temperature)
        check_positive("pck_alpha", pck_alpha)
        depth = backbone.config.num_hidden_layers
        if student_layer != -1:
            check_int(
                "student_layer", student_layer, low=1, high=depth, high_name=f"the student's {depth} blocks"
            )
        backbone.requires_grad_(False)
        backbone = inject_lora(
            backbone,
            rank=lora_rank,
            alpha=lora_alpha,
            target_modules=tuple(lora_target_modules),
            dropout=lora_dropout,
        )
        super().__init__(
            backbone,
            teachers=list(teachers),
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.save_hyperparameters(ignore=["student", "teachers", "optimizer", "lr_scheduler"])
        self.temperature = temperature
        self.student_layer = student_layer
        self.cache_teacher_features = cache_teacher_features
        self.pck_alpha = pck_alpha
        self.teacher_cache = FeatureCache()

    # ---------------------------------------------------------------- the paper
    def student_features(self, images: Tensor) -> Tensor:
        """Step 2: the student's patch-token map ``(B, C, h, w)``."""
        return vit_feature_map(self.student, images, self.student_layer)

    @torch.no_grad()
    def ensemble_features(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Step 1: each teacher's map, normalised per location, resized and concatenated; then resized to ``size``."""
        maps = ensemble_features([teacher(images) for teacher in self.teachers])
        if size is not None and tuple(maps.shape[-2:]) != tuple(size):
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps

    def teacher_pair_features(
        self, source: Tensor, target: Tensor, index: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """Step 1 for a batch of pairs: ``(2, B, C_T, h, w)``, from the cache when ``cache_teacher_features``."""

        def compute(rows: Tensor) -> Tensor:
            return torch.stack(
                [self.ensemble_features(source[rows], size), self.ensemble_features(target[rows], size)],
                dim=1,
            )

        if not self.cache_teacher_features:
            return compute(torch.ones_like(index, dtype=torch.bool)).transpose(0, 1)
        return self.teacher_cache.get(index, compute).transpose(0, 1).to(source.dtype)

    def distillation_loss(self, student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
        """Steps 3-4: cross-entropy between the softmaxed similarity maps (source -> target)."""
        s_src, s_tgt = student_maps
        t_src, t_tgt = teacher_maps
        return similarity_distillation_loss(
            _flat(s_src), _flat(s_tgt), _flat(t_src), _flat(t_tgt), temperature=self.temperature
        )

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        source, target, index = batch[0], batch[1], batch[5]
        b = source.shape[0]
        student_maps = self.student_features(torch.cat([source, target]))  # 2.
        size = tuple(student_maps.shape[-2:])
        teacher_maps = self.teacher_pair_features(source, target, index, size)  # 1.
        terms = {
            "distill": self.distillation_loss((student_maps[:b], student_maps[b:]), teacher_maps)
        }  # 3.-4.
        return self.log_losses(terms)

    # ---------------------------------------------------------------- evaluation
    def feature_maps(self, model: nn.Module, images: Tensor) -> Tensor:
        """Dense features of the student (through its feature layer) or of a teacher extractor."""
        return self.student_features(images) if model is self.student else model(images)

    def correspondence_pck(self, maps_fn: Any, batch: Any) -> Tensor:
        """PCK@``pck_alpha`` of nearest-neighbour matches of the batch's keypoints under ``maps_fn``."""
        source, target, source_points, target_points, valid = batch[:5]
        b = source.shape[0]
        maps = maps_fn(torch.cat([source, target]))
        predicted = match_points(maps[:b], maps[b:], source_points, tuple(source.shape[-2:]))
        return pck(predicted, target_points, valid, tuple(source.shape[-2:]), alpha=self.pck_alpha)

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """``pck``: PCK@α of ``model``'s features on one batch of pairs."""
        return {"pck": self.correspondence_pck(lambda x: self.feature_maps(model, x), batch)}

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The student's dense features ``(B, C, h, w)`` of the batch's source images."""
        return self.student_features(batch[0])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_ensemble(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_ensemble(batch, "test")

    def _log_ensemble(self, batch: Any, stage: str) -> None:
        if (
            len(self.teachers) > 1
            and self._teacher_metrics_pending.get(stage, False)
            and not self.trainer.sanity_checking
        ):
            value = self.correspondence_pck(self.ensemble_features, batch)
            self.log(
                f"{stage}/teacher_ensemble_pck",
                value,
                on_epoch=True,
                sync_dist=True,
                batch_size=batch[0].shape[0],
            )
