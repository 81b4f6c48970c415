"""DMJD: Disjoint Masking with Joint Distillation for efficient masked image modelling (Ma et al., arXiv 2301.00230).

No teacher network: the targets are hand-crafted HOG features of each patch (MaskFeat). Each
image is seen through two masked views whose visible patches are disjoint, so one pass over the
data trains on about twice as many (view, patch) predictions; each view learns to regress the
HOG of its masked patches (decoder) and, through a projector and predictor, of its visible
patches too ("joint distillation").

Algorithm (one step; official code ``mx-mark/DMJD``, ``models_dmjd.py``):

1. Targets: ``t = HOG(x)`` per patch, ``(B, L, D)`` (scikit-image, 9 orientations, 2x2 cells per patch).
2. Masks: two block-wise masks at ``mask_ratio`` (0.6) per image with disjoint visible sets
   (``num_views = 1``: one mask, the MAE-with-HOG baseline).
3. Encode both views as one batch ``(2B)``; decode every patch from the visible tokens.
4. ``L_mim = mean over masked patches of ||pred - t||^2``.
5. ``L_vis = mean smooth_L1_beta(predictor(projector(z_visible)) - t_visible)``, beta = 2.

Total loss: ``L_mim + theta * L_vis`` with ``theta = 1`` (``loss_weights: {mim: 1, vis: 1}``).

Hyper-parameters -> config keys (``model.init_args.*``):

==========================  ======================  ==================
paper / official flag       key                     default
==========================  ======================  ==================
``--mask_ratio``            ``mask_ratio``          0.6
``--mask_type``             ``mask_kind``           ``"block"``
disjoint views              ``num_views``           2
smooth-L1 beta              ``beta``                2.0
``theta``                   ``loss_weights.vis``    1.0
HOG orientations / cells    ``hog_orientations``    9
                            ``hog_cells_per_patch`` 2
==========================  ======================  ==================

Evaluation: linear-probe (``val/acc``) and k-NN (``val/knn_acc``) accuracy of the encoder's
pooled features. The recipe's only "teacher" is the fixed HOG map that makes the targets
(:class:`~lightning_distill.representation.HOGFeatures`, no parameters); its probe on the
flattened HOG of all patches is logged once per run as ``val/teacher_acc``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.representation import masked_patch_mse, visible_smooth_l1
from lightning_distill.module import DistillationModule
from lightning_distill.representation import (
    BackboneProbes,
    HOGFeatures,
    block_masks,
    decode,
    disjoint_masks,
    encode,
    encoder_of,
    hog_dim,
    num_patches_of,
    random_masks,
    set_prediction_head,
    visible_tokens,
)
from lightning_distill.utils.checks import check_choice, check_int, check_option, check_positive

__all__ = ["DMJD"]


class DMJD(DistillationModule):
    """DMJD recipe. See the module docstring for the algorithm.

    Args:
        student: a ``ViTMAEForPreTraining``; its decoder's last layer is replaced to predict HOG.
        mask_ratio: masked fraction of each view (>= 0.5 for disjoint views).
        mask_kind: ``"block"`` (2x2 patch groups, the official setting) or ``"random"``.
        num_views: 2 (disjoint views, DMJD) or 1 (one mask: MAE with HOG targets).
        beta: smooth-L1 threshold of the visible-token term.
        hog_orientations: HOG orientation bins.
        hog_cells_per_patch: HOG cells along a patch side.
        probe_train_images: labelled training images the evaluation probes are fitted on.
        probe_pool: the probed feature: ``"cls"`` (default), ``"mean"`` or ``"tokens"``.
        noise_seed: seed of the masks (mask of step ``s`` = f(noise_seed, s)).
        loss_weights: ``{"mim": ..., "vis": ...}`` (``vis`` is the paper's ``theta``).
        optimizer: for the encoder, decoder, projector and predictor.
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        TypeError: a student that is not a ViT-MAE.
        ValueError: a bad ratio, kind, view count or HOG setting.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("mim", "vis")
    default_loss_weights: ClassVar[dict[str, float]] = {"mim": 1.0, "vis": 1.0}

    def __init__(
        self,
        student: nn.Module,
        mask_ratio: float = 0.6,
        mask_kind: Literal["block", "random"] = "block",
        num_views: int = 2,
        beta: float = 2.0,
        hog_orientations: int = 9,
        hog_cells_per_patch: int = 2,
        probe_train_images: int = 5000,
        probe_pool: str = "cls",
        noise_seed: int = 0,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not (hasattr(student, "vit") and hasattr(student, "decoder")):
            raise TypeError(
                f"`student` must be a transformers ViTMAEForPreTraining (e.g. lightning_distill.models.vit.mae_vit), got "
                f"{type(student).__name__}; set `model.init_args.student`."
            )
        check_int("hog_cells_per_patch", hog_cells_per_patch, low=1)
        # the only "teacher" is the fixed HOG map; it is probed (val/teacher_acc), never trained
        hog = HOGFeatures(encoder_of(student).config.patch_size, hog_orientations, hog_cells_per_patch)
        super().__init__(
            student, teacher=hog, loss_weights=loss_weights, optimizer=optimizer, lr_scheduler=lr_scheduler
        )
        check_choice("mask_kind", mask_kind, ("block", "random"))
        check_int("num_views", num_views, low=1, high=2)
        low = 0.5 if num_views == 2 else 0.0
        check_option(
            low <= mask_ratio < 1.0, "mask_ratio", mask_ratio, f"in [{low}, 1) for {num_views} view(s)"
        )
        check_positive("beta", beta)
        check_int("hog_orientations", hog_orientations, low=1)
        check_int("hog_cells_per_patch", hog_cells_per_patch, low=1)
        config = encoder_of(student).config
        if config.patch_size % hog_cells_per_patch:
            raise ValueError(
                f"`hog_cells_per_patch` ({hog_cells_per_patch}) must divide the patch size ({config.patch_size}); "
                "set `model.init_args.hog_cells_per_patch`."
            )
        self.save_hyperparameters(ignore=["student", "optimizer", "lr_scheduler"])
        self.mask_ratio = mask_ratio
        self.mask_kind = mask_kind
        self.num_views = num_views
        self.beta = beta
        self.hog_orientations = hog_orientations
        self.hog_cells_per_patch = hog_cells_per_patch
        self.noise_seed = noise_seed
        target_dim = hog_dim(
            config.num_channels, orientations=hog_orientations, cells_per_patch=hog_cells_per_patch
        )
        set_prediction_head(student, target_dim)
        width, hidden = config.hidden_size, config.decoder_hidden_size
        # the visible-token branch: a 3-layer projector (last LayerNorm without affine) and a linear predictor
        self.projector = nn.Sequential(
            nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden, elementwise_affine=False),
        )  # fmt: skip
        self.predictor = nn.Linear(hidden, target_dim)
        self.probes = BackboneProbes(max_train_images=probe_train_images, pool=probe_pool)

    # ---------------------------------------------------------------- the paper
    def targets(self, x: Tensor) -> Tensor:
        """Step 1: per-patch HOG targets ``(B, L, D)``."""
        return self.teacher.patch_targets(x)

    def sample_masks(self, batch: int, device: torch.device) -> Tensor:
        """Step 2: masks ``(num_views * B, L)``, view-major; the views of an image have disjoint visible sets."""
        step = self.trainer.global_step if self._trainer is not None else 0
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + step)
        total = num_patches_of(self.student)
        if self.num_views == 2:
            first, second = disjoint_masks(
                batch, total, self.mask_ratio, kind=self.mask_kind, generator=generator
            )
            return torch.cat([first, second]).to(device)
        if self.mask_kind == "block":
            return block_masks(batch, total, self.mask_ratio, generator=generator).to(device)
        return random_masks(batch, total, self.mask_ratio, generator=generator).to(device)

    def masked_loss(self, prediction: Tensor, targets: Tensor, masks: Tensor) -> Tensor:
        """Step 4: MSE to the HOG targets on the masked patches of every view."""
        return masked_patch_mse(prediction, targets, masks)

    def visible_loss(self, latent: Tensor, targets: Tensor, masks: Tensor) -> Tensor:
        """Step 5: smooth L1 (``beta``) between predictor(projector(visible tokens)) and their HOG targets."""
        prediction = self.predictor(self.projector(latent[:, 1:]))  # drop cls: (nB, V, D)
        return visible_smooth_l1(prediction, visible_tokens(targets, masks), beta=self.beta)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x = batch[0]
        targets = self.targets(x).repeat(self.num_views, 1, 1)  # 1. (nB, L, D)
        masks = self.sample_masks(x.shape[0], x.device)  # 2.
        views = x.repeat(self.num_views, 1, 1, 1)
        encoded = encode(self.student, views, masks)  # 3.
        prediction = decode(self.student, encoded)
        terms = {
            "mim": self.masked_loss(prediction, targets, masks),  # 4.
            "vis": self.visible_loss(encoded.latent, targets, masks),  # 5.
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
