"""IMDN: a lightweight SR network trained with L1, optionally distilled from a larger SR teacher.

Paper: Hui, Gao, Yang & Wang, "Lightweight Image Super-Resolution with Information Multi-distillation
Network" (ACM MM 2019, arXiv 1909.11856; official code Zheng222/IMDN). The paper's "distillation" is
not teacher-student: it is the progressive channel splitting inside each block
(:class:`~lightning_distill.models.super_resolution.IMDBlock`), so the paper's recipe is plain
supervised SR:

1. Super-resolve the LR patch with the student, ``SR = IMDN(LR)``.
2. Reconstruction loss ``L_l1 = mean |SR − HR|`` (the paper's only loss).
3. Our extension (not in the paper), on when a ``teacher`` is given: output distillation from a
   larger, frozen SR network, ``L_kd = mean |SR − sg(T(LR))|``.

Total loss: ``w_l1 L_l1 + w_kd L_kd`` (``w_kd`` only counts with a teacher).
Validation logs PSNR and SSIM on the Y channel with a border of ``scale`` pixels shaved (as the
paper and its code evaluate), and RGB PSNR: ``val/psnr``, ``val/ssim``, ``val/psnr_rgb``, and the
teacher's once (``val/teacher_psnr``).

Hyper-parameters -> config keys (``model.init_args.*``):

==================================  =====================  ==========================================
paper / official code               key                    default
==================================  =====================  ==========================================
L1 loss                             ``loss_weights.l1``    1.0
KD weight (our extension)           ``loss_weights.kd``    1.0 (used only with a ``teacher``)
Adam, lr 2e-4                       ``optimizer``          :func:`imdn_adam`
lr halved every 200 epochs          ``lr_scheduler``       :func:`imdn_step_lr`
PSNR/SSIM border shave              ``border``             None (= the scale, read from the batch)
features 64, 6 blocks, rate 1/4     ``student.init_args``  :class:`~lightning_distill.models.super_resolution.IMDN`
==================================  =====================  ==========================================
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.super_resolution import pixel_l1_loss, teacher_sr_l1_loss
from lightning_distill.module import DistillationModule
from lightning_distill.super_resolution.degradations import pair_scale
from lightning_distill.super_resolution.metrics import SRMetrics

__all__ = ["IMDNRecipe", "imdn_adam", "imdn_step_lr"]


def imdn_adam(params: Any) -> torch.optim.Optimizer:
    """Adam with lr 2e-4 (β 0.9/0.999), as ``train_IMDN.py`` trains."""
    return torch.optim.Adam(params, lr=2e-4)


def imdn_step_lr(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate halved every 200 epochs (``train_IMDN.py``: step 200, gamma 0.5)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=200, gamma=0.5)


class IMDNRecipe(DistillationModule):
    """L1 training of an SR student (IMDN), with optional output distillation from an SR teacher.

    Args:
        student: an SR network ``(B, C, h, w) -> (B, C, h·s, w·s)``, e.g. ``IMDN(scale=s)``.
        teacher: optional frozen larger SR network with the same scale (the KD extension), e.g.
            :func:`~lightning_distill.models.super_resolution.trained_sr_network`.
        border: pixels shaved off each side before PSNR/SSIM (``None``: the batch's scale).
        loss_weights: ``{"l1": ..., "kd": ...}``.
        optimizer: the student's optimizer (default: the paper's Adam, lr 2e-4).
        lr_scheduler: epoch-wise scheduler (default: the paper's halving every 200 epochs).

    Raises:
        ValueError: ``border`` < 0, or a positive ``loss_weights["kd"]`` given without a teacher.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("l1", "kd")
    default_loss_weights: ClassVar[dict[str, float]] = {"l1": 1.0, "kd": 1.0}
    requires_teacher: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        border: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = imdn_adam,
        lr_scheduler: LRSchedulerCallable | None = imdn_step_lr,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if border is not None and (isinstance(border, bool) or not isinstance(border, int) or border < 0):
            raise ValueError(
                f"`border` must be None or an int >= 0, got {border!r}; set `model.init_args.border`."
            )
        if teacher is None and (loss_weights or {}).get("kd", 0.0) > 0:
            raise ValueError(
                "`loss_weights['kd']` > 0 needs a `teacher` (the larger SR network to distil from); set "
                "`model.init_args.teacher` or drop `kd` from `model.init_args.loss_weights`."
            )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.border = border
        self.metrics = SRMetrics(border=border)

    # ---------------------------------------------------------------- the paper
    def reconstruction_loss(self, sr: Tensor, hr: Tensor) -> Tensor:
        """Step 2: ``mean |SR − HR|``."""
        return pixel_l1_loss(sr, hr)

    def distillation_loss(self, sr: Tensor, teacher_sr: Tensor) -> Tensor:
        """Step 3 (our extension): ``mean |SR − sg(T(LR))|``."""
        return teacher_sr_l1_loss(sr, teacher_sr)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        lr, hr = batch[0], batch[1]
        pair_scale(lr, hr)
        # 1. Super-resolve with the student.
        sr = self.student(lr)
        # 2. L1 to the ground truth.
        terms = {"l1": self.reconstruction_loss(sr, hr)}
        # 3. With a teacher: L1 to its SR output from the same LR input.
        if len(self.teachers) > 0:
            with torch.no_grad():
                teacher_sr = self.teacher(lr)
            terms["kd"] = self.distillation_loss(sr, teacher_sr)
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """PSNR/SSIM on Y with the border shaved, and RGB PSNR, of ``model`` on an ``(lr, hr)`` batch."""
        lr, hr = batch[0], batch[1]
        scale = pair_scale(lr, hr)
        sr = model(lr)
        if sr.shape != hr.shape:
            raise ValueError(
                f"{type(model).__name__} returned {tuple(sr.shape)} for HR {tuple(hr.shape)}; build it with "
                f"`scale`={scale} (`model.init_args.student.init_args.scale`)."
            )
        return self.metrics(sr, hr, scale=scale)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        lr = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.student(lr).clamp(0, 1)
