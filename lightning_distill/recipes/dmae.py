"""DMAE: Masked Autoencoders Enable Efficient Knowledge Distillers (Bai et al., arXiv 2208.12256).

A student ViT is pretrained as a masked autoencoder while its intermediate features are pulled
towards those of a larger, frozen, MAE-pretrained teacher that sees the *same visible patches*.
Only 25% of the patches go through either encoder, so the teacher costs a quarter of a forward
pass: distillation at little extra cost.

Algorithm (one step; official code ``UCSC-VLAA/DMAE``, ``models_mae_distill.py``):

1. Mask: draw one random mask per image at ``mask_ratio`` (0.75).
2. Teacher: encode the visible patches (no grad) and read the output of block ``teacher_layer``.
3. Student: encode the same visible patches, keep the output of block ``student_layer``;
   decode all patches from the final tokens.
4. ``L_pixel = mean over masked patches of ||pred - normalise_patch(x)||^2`` (MAE, ``norm_pix``).
5. ``L_distill = mean |normalise(h_T) - normalise(W h_S)|`` (L1, L2-normalised over features, W a
   linear projection from the student's width to the teacher's; every token, cls included).

Total loss: ``w_pixel * L_pixel + w_distill * L_distill`` (1 : 1).

Hyper-parameters -> config keys (``model.init_args.*``):

==============================  ====================  ==========================================
paper / official flag           key                   default
==============================  ====================  ==========================================
mask ratio                      ``mask_ratio``        0.75
``aligned_blks_indices``        ``student_layer``     9 (ViT-B; the official 0-based 8, +1)
``teacher_aligned_blks_indices`` ``teacher_layer``    18 (ViT-L; the official 17, +1)
``norm_pix_loss``               ``norm_pix_loss``     True
loss weights                    ``loss_weights``      {pixel: 1, distill: 1}
==============================  ====================  ==========================================

Layers count blocks from 1 (``hidden_states[k]`` of transformers is the output of block ``k``).
Evaluation: linear-probe (``val/acc``) and k-NN (``val/knn_acc``) accuracy of the student's pooled
features, and once per run of the teacher's (``val/teacher_acc``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.representation import (
    masked_patch_mse,
    normalized_feature_l1,
    normalized_patches,
)
from lightning_distill.module import DistillationModule
from lightning_distill.representation import (
    BackboneProbes,
    decode,
    encode,
    encoder_of,
    num_patches_of,
    random_masks,
)
from lightning_distill.utils.checks import check_int, check_option

__all__ = ["DMAE"]


def _check_mae(name: str, model: nn.Module) -> None:
    if not (hasattr(model, "vit") and hasattr(model, "decoder") and hasattr(model, "patchify")):
        raise TypeError(
            f"`{name}` must be a transformers ViTMAEForPreTraining (e.g. lightning_distill.models.vit.mae_vit), "
            f"got {type(model).__name__}; set `model.init_args.{name}`."
        )


class DMAE(DistillationModule):
    """DMAE recipe. See the module docstring for the algorithm.

    Args:
        student: a ``ViTMAEForPreTraining`` (the model being pretrained).
        teacher: a frozen, MAE-pretrained ``ViTMAEForPreTraining`` with the same patch grid
            (:func:`~lightning_distill.representation.trained_mae` trains one on first use).
        mask_ratio: fraction of masked patches; the visible ones go to both encoders.
        student_layer: student block (1-based) whose output is distilled.
        teacher_layer: teacher block (1-based) whose output is the target.
        norm_pix_loss: normalise each target patch by its mean and variance (MAE).
        probe_train_images: labelled training images the evaluation probes are fitted on.
        probe_pool: the probed feature: the ``"cls"`` token (MAE's linear probe), the ``"mean"`` of patch
            tokens, or all patch ``"tokens"`` concatenated.
        noise_seed: seed of the masks (mask of step ``s`` = f(noise_seed, s), so resume is exact).
        loss_weights: ``{"pixel": ..., "distill": ...}``; ``distill: 0`` is plain MAE.
        optimizer: for the student and the projection (the paper: AdamW, betas (0.9, 0.95), wd 0.05).
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        TypeError: a student or teacher that is not a ViT-MAE.
        ValueError: a bad ratio or layer, or different patch grids.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("pixel", "distill")
    default_loss_weights: ClassVar[dict[str, float]] = {"pixel": 1.0, "distill": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        mask_ratio: float = 0.75,
        student_layer: int = 9,
        teacher_layer: int = 18,
        norm_pix_loss: bool = True,
        probe_train_images: int = 5000,
        probe_pool: str = "cls",
        noise_seed: int = 0,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        _check_mae("student", student)
        _check_mae("teacher", teacher)
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        check_option(0.0 <= mask_ratio < 1.0, "mask_ratio", mask_ratio, "in [0, 1)")
        s_depth, t_depth = (
            encoder_of(student).config.num_hidden_layers,
            encoder_of(teacher).config.num_hidden_layers,
        )
        check_int(
            "student_layer", student_layer, low=1, high=s_depth, high_name=f"the student's {s_depth} blocks"
        )
        check_int(
            "teacher_layer", teacher_layer, low=1, high=t_depth, high_name=f"the teacher's {t_depth} blocks"
        )
        if num_patches_of(student) != num_patches_of(teacher):
            raise ValueError(
                f"student and teacher must cut images into the same patches (the same visible tokens go to both), got "
                f"{num_patches_of(student)} and {num_patches_of(teacher)} patches; match `image_size` and `patch_size`."
            )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.mask_ratio = mask_ratio
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.norm_pix_loss = norm_pix_loss
        self.noise_seed = noise_seed
        # W: student width -> teacher width (the official 'fc-1layer' projection head)
        self.projection = nn.Linear(
            encoder_of(student).config.hidden_size, encoder_of(teacher).config.hidden_size
        )
        self.probes = BackboneProbes(max_train_images=probe_train_images, pool=probe_pool)

    # ---------------------------------------------------------------- the paper
    def sample_masks(self, batch: int, device: torch.device) -> Tensor:
        """Step 1: random masks ``(B, L)`` (1 = masked) from a generator seeded by (noise_seed, step)."""
        step = self.trainer.global_step if self._trainer is not None else 0
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + step)
        return random_masks(batch, num_patches_of(self.student), self.mask_ratio, generator=generator).to(
            device
        )

    def pixel_targets(self, x: Tensor) -> Tensor:
        """Per-patch pixel targets ``(B, L, P)``, normalised per patch when ``norm_pix_loss``."""
        patches = self.student.patchify(x)
        return normalized_patches(patches) if self.norm_pix_loss else patches

    def pixel_loss(self, prediction: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """Step 4: MSE on the masked patches."""
        return masked_patch_mse(prediction, self.pixel_targets(x), mask)

    def distillation_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        """Step 5: ``mean |normalise(h_T) - normalise(W h_S)|`` over visible tokens and cls."""
        return normalized_feature_l1(self.projection(student_feature), teacher_feature)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x = batch[0]
        mask = self.sample_masks(x.shape[0], x.device)  # 1.
        with torch.no_grad():  # 2.
            teacher_feature = encode(self.teacher, x, mask, hidden_states=True).hidden_states[
                self.teacher_layer
            ]
        encoded = encode(self.student, x, mask, hidden_states=True)  # 3.
        prediction = decode(self.student, encoded)
        terms = {
            "pixel": self.pixel_loss(prediction, x, mask),  # 4.
            "distill": self.distillation_loss(
                encoded.hidden_states[self.student_layer], teacher_feature
            ),  # 5.
        }
        return self.log_losses(terms)

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._refit_probes("val")

    def on_test_epoch_start(self) -> None:
        self._refit_probes("test")

    def _refit_probes(self, stage: str) -> None:
        models = {"student": self.student}
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            models["teacher"] = self.teacher
        self.probes.refit(models, self.trainer.datamodule)

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """Linear-probe (``acc``) and k-NN (``knn_acc``) accuracy of ``model``'s features on one batch."""
        name = "teacher" if model is self.teacher else "student"
        return self.probes.evaluate(name, model, batch[0], batch[1])
