"""Hybrid Distill: Connecting Masked Autoencoders with Contrastive Learners (Shi et al., arXiv 2306.15876).

A student ViT learns from two frozen teachers at once: a supervised or contrastive teacher ``T_c``
(DeiT, CLIP: discriminative final features, but attention that collapses onto a few tokens in
the late blocks) and a masked-image-modelling teacher ``T_m`` (MAE: local, diverse attention in
every block). The student copies ``T_c``'s final token features and ``T_m``'s token relations
(attention maps) at intermediate blocks, so that it gets discrimination and diversity together.
Redundant tokens (those ``T_c``'s cls token attends to least) are dropped from the student's input,
a fraction that grows during training: cheaper steps and, per the paper, fewer local optima.

Algorithm (one step; no official code, the details marked * are our reading, see the README):

1. ``T_c`` on the whole image (no grad): final tokens ``F_c`` and the cls attention of its last block.
2. Drop the ``r(t)`` fraction of patches with the lowest cls attention* (``r`` from a
   ``ProgressiveSchedule``: linear from 0 to ``drop_ratio`` over ``drop_epochs`` epochs*).
3. ``T_m`` on the whole image (no grad): attention ``A_m^l`` of the blocks mapped to ``relation_layers``,
   restricted to the kept tokens and renormalised (= softmax of the same logits over them).
4. Student on the kept tokens only: final tokens ``F_s`` and attention ``A_s^l``.
5. ``L_feature = smoothL1_beta(W F_s, LN(F_c[kept]))`` (FD's whitened target*, ``W`` linear).
6. ``L_relation = mean_l KL(A_m^l || A_s^l)`` over rows, heads and layers*.

Total loss: ``w_feature * L_feature + w_relation * L_relation`` (1 : 1*).

Hyper-parameters -> config keys (``model.init_args.*``):

=================================  ======================  ==================================
paper                              key                     default
=================================  ======================  ==================================
supervised/CL teacher ``T_c``      ``teacher``             (required)
MIM teacher ``T_m``                ``mim_teacher``         (required)
relation-distilled blocks          ``relation_layers``     every student block but the last*
redundant-token masking ratio      ``drop_ratio``          0.5*
progressive masking                ``drop_epochs``         ramp over 300 epochs* (0: constant)
distance ``D`` (features)          ``feature_beta``        smooth L1, beta 2.0 (FD)*
loss weights ``alpha, beta``       ``loss_weights``        {feature: 1, relation: 1}*
=================================  ======================  ==================================

Layers count blocks from 1; a student block ``l`` reads teacher block ``round(l * L_T / L_S)``.
Evaluation: linear-probe (``val/acc``) and k-NN (``val/knn_acc``) accuracy of the student's cls
token; once per run the teachers' (``val/teacher0_acc``: ``T_c``, ``val/teacher1_acc``: ``T_m``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks import ProgressiveSchedule
from lightning_distill.losses.representation import relation_kl, whitened_feature_smooth_l1
from lightning_distill.module import DistillationModule
from lightning_distill.representation import BackboneProbes, encoder_of, num_patches_of
from lightning_distill.representation.token_relations import (
    cls_attention,
    gather_tokens,
    is_mae_encoder,
    redundant_token_mask,
    restricted_relations,
    run_vit,
    token_index,
    use_eager_attention,
)
from lightning_distill.utils.checks import check_int, check_option

__all__ = ["HybridDistill"]


def _depth(model: nn.Module) -> int:
    return int(encoder_of(model).config.num_hidden_layers)


def _check_vit(name: str, model: nn.Module) -> None:
    if not hasattr(getattr(encoder_of(model), "embeddings", None), "patch_embeddings"):
        raise TypeError(
            f"`{name}` must be a transformers ViT (ViTModel, ViTMAEModel or ViTMAEForPreTraining), got "
            f"{type(model).__name__}; set `model.init_args.{name}`."
        )


class HybridDistill(DistillationModule):
    """Hybrid Distill recipe. See the module docstring for the algorithm.

    Args:
        student: a ``ViTMAEModel`` (:func:`~lightning_distill.representation.token_relations.mae_encoder`),
            the class that runs on the kept tokens only.
        teacher: the supervised or contrastive teacher ``T_c`` (any transformers ViT; e.g.
            :func:`~lightning_distill.representation.hybrid_teachers.trained_contrastive_vit`).
        mim_teacher: the MIM teacher ``T_m`` (e.g. :func:`~lightning_distill.representation.trained_mae`).
        relation_layers: student blocks (1-based) whose attention imitates ``T_m``'s; ``None``: all but the last.
        drop_ratio: the final fraction of redundant patches dropped from the student's input.
        drop_epochs: epochs over which the dropped fraction grows linearly from 0 (``0``: from the start).
        feature_beta: threshold of the smooth-L1 feature distance.
        probe_train_images: labelled training images the evaluation probes are fitted on.
        probe_pool: probed feature: ``"cls"`` token or ``"mean"`` of patch tokens.
        loss_weights: ``{"feature": ..., "relation": ...}``.
        optimizer: for the student and the projection (AdamW).
        lr_scheduler: optional scheduler.

    Raises:
        TypeError: a student that cannot drop tokens, or a teacher that is not a transformers ViT.
        ValueError: bad layers or ratios, or different patch grids.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("feature", "relation")
    default_loss_weights: ClassVar[dict[str, float]] = {"feature": 1.0, "relation": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        mim_teacher: nn.Module,
        relation_layers: Sequence[int] | None = None,
        drop_ratio: float = 0.5,
        drop_epochs: int = 300,
        feature_beta: float = 2.0,
        probe_train_images: int = 5000,
        probe_pool: str = "cls",
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not is_mae_encoder(student) or hasattr(student, "decoder"):
            raise TypeError(
                "`student` must be a transformers ViTMAEModel (the encoder alone, which can drop tokens; "
                "lightning_distill.representation.token_relations.mae_encoder), got "
                f"{type(student).__name__}; set `model.init_args.student`."
            )
        _check_vit("teacher", teacher)
        _check_vit("mim_teacher", mim_teacher)
        super().__init__(
            student,
            teachers=[teacher, mim_teacher],
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        for model in (student, teacher, mim_teacher):
            use_eager_attention(model)
        s_depth = _depth(student)
        layers = list(range(1, s_depth)) if relation_layers is None else [int(v) for v in relation_layers]
        check_option(
            len(layers) > 0, "relation_layers", relation_layers, "a non-empty list of student blocks"
        )
        for layer in layers:
            check_int(
                "relation_layers", layer, low=1, high=s_depth, high_name=f"the student's {s_depth} blocks"
            )
        check_option(0.0 <= drop_ratio < 1.0, "drop_ratio", drop_ratio, "in [0, 1)")
        check_int("drop_epochs", drop_epochs, low=0)
        check_option(feature_beta > 0, "feature_beta", feature_beta, "> 0")
        for name, model in (("teacher", teacher), ("mim_teacher", mim_teacher)):
            if num_patches_of(model) != num_patches_of(student):
                raise ValueError(
                    f"`{name}` and `student` must cut images into the same patches, got "
                    f"{num_patches_of(model)} and {num_patches_of(student)}; match `image_size` and `patch_size`."
                )
        self.save_hyperparameters(ignore=["student", "teacher", "mim_teacher", "optimizer", "lr_scheduler"])
        self.relation_layers = layers
        t_depth = _depth(mim_teacher)
        self.teacher_layers = [max(1, round(layer * t_depth / s_depth)) for layer in layers]
        self.drop_ratio = drop_ratio
        self.drop_epochs = drop_epochs
        self.feature_beta = feature_beta
        self.current_drop_ratio = 0.0 if drop_epochs > 0 else drop_ratio  # set by ProgressiveSchedule
        # W: student width -> T_c's width
        self.projection = nn.Linear(
            encoder_of(student).config.hidden_size, encoder_of(teacher).config.hidden_size
        )
        self.probes = BackboneProbes(max_train_images=probe_train_images, pool=probe_pool)

    @property
    def feature_teacher(self) -> nn.Module:
        """``T_c``, the supervised/contrastive teacher."""
        return self.teachers[0]

    @property
    def mim_teacher(self) -> nn.Module:
        """``T_m``, the masked-image-modelling teacher."""
        return self.teachers[1]

    # ---------------------------------------------------------------- the paper
    def drop_mask(self, teacher_attention: Tensor) -> Tensor:
        """Step 2: mask ``(B, L)`` (1 = dropped) of the ``current_drop_ratio`` least-attended patches."""
        return redundant_token_mask(cls_attention(teacher_attention), self.current_drop_ratio)

    def teacher_relations(self, attentions: Sequence[Tensor], index: Tensor) -> list[Tensor]:
        """Step 3: ``T_m``'s attention at the mapped blocks, restricted to the kept tokens ``(B, H, n, n)``."""
        return [restricted_relations(attentions[k - 1], index) for k in self.teacher_layers]

    def feature_loss(self, student_tokens: Tensor, teacher_tokens: Tensor) -> Tensor:
        """Step 5: smooth L1 between the projected student tokens and ``T_c``'s whitened tokens."""
        return whitened_feature_smooth_l1(
            self.projection(student_tokens), teacher_tokens, beta=self.feature_beta
        )

    def relation_loss(
        self, student_attentions: Sequence[Tensor], teacher_relations: Sequence[Tensor]
    ) -> Tensor:
        """Step 6: mean over the relation blocks of ``KL(A_m || A_s)`` (heads averaged when their counts differ)."""
        losses = []
        for layer, target in zip(self.relation_layers, teacher_relations):
            mine = student_attentions[layer - 1]
            if mine.shape[1] != target.shape[1]:
                mine, target = mine.mean(dim=1, keepdim=True), target.mean(dim=1, keepdim=True)
            losses.append(relation_kl(mine, target))
        return torch.stack(losses).mean()

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x = batch[0]
        with torch.no_grad():
            feature_out = run_vit(self.feature_teacher, x, attentions=True)  # 1.
            mask = self.drop_mask(feature_out.attentions[-1])  # 2.
            index = token_index(mask)
            targets = gather_tokens(feature_out.tokens, index)
            relations = self.teacher_relations(run_vit(self.mim_teacher, x).attentions, index)  # 3.
        out = run_vit(self.student, x, mask)  # 4.
        terms = {
            "feature": self.feature_loss(out.tokens, targets),  # 5.
            "relation": self.relation_loss(out.attentions, relations),  # 6.
        }
        return self.log_losses(terms)

    def configure_callbacks(self) -> list:
        if self.drop_epochs == 0:
            return []
        ramp = {"kind": "linear", "start": 0.0, "end": self.drop_ratio, "steps": self.drop_epochs}
        return [ProgressiveSchedule({"current_drop_ratio": ramp}, unit="epoch")]

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._refit_probes("val")

    def on_test_epoch_start(self) -> None:
        self._refit_probes("test")

    def _refit_probes(self, stage: str) -> None:
        models = {"student": self.student}
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            models.update({f"teacher{k}": t for k, t in enumerate(self.teachers)})
        self.probes.refit(models, self.trainer.datamodule)

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """Linear-probe (``acc``) and k-NN (``knn_acc``) accuracy of ``model``'s features on one batch."""
        name = "student"
        for k, teacher in enumerate(self.teachers):
            if model is teacher:
                name = f"teacher{k}"
        return self.probes.evaluate(name, model, batch[0], batch[1])
