"""YONOS-SR: one-step diffusion super-resolution by scale distillation.

Paper: Noroozi, Hadji, Martinez, Bulat & Tzimiropoulos, "You Only Need One Step: Fast
Super-Resolution with Stable Diffusion via Scale Distillation" (arXiv 2401.17258). No official
code; written from the paper (what could not be checked is listed in recipes/yonos_sr/README.md).
The denoiser predicts x0 from ``x_t`` and the LR image (:class:`~lightning_distill.super_resolution.LRConditionedUNet`,
pixel space; the paper works in Stable Diffusion's latent space).

0. The teacher: an SR diffusion model trained at the smallest scale ``scales[0]`` (×2), e.g.
   :func:`~lightning_distill.super_resolution.scale_distillation.trained_sr_denoiser`. The student
   starts from its weights (``student_init="teacher"``).
1. Scale distillation, stage ``k`` (``scales[k] → scales[k+1]``): draw ``t``, ε, ``x_t = α_t x0 + σ_t ε``
   from the HR image; the student sees ``LR_{scales[k+1]}``, the frozen teacher the easier
   ``LR_{scales[k]}``; ``L_distill = ‖x̂0_S(x_t, t, LR_hard) − sg(x̂0_T(x_t, t, LR_easy))‖²``.
   The target follows the noise level (it is the teacher's estimate for this ``x_t``), not the
   same HR image for every ``t``.
2. At each stage change (``ProgressiveSchedule`` stages call :meth:`YONOSSR.on_stage_change`) the
   student is copied into the frozen ``stage_teacher``: each stage's student is the next one's teacher.
3. Decoder stage: the denoiser is frozen, one DDIM step from pure noise gives x̂0, and the decoder
   (:class:`~lightning_distill.super_resolution.scale_distillation.RefinementDecoder`, our pixel-space
   stand-in for the VAE decoder) learns ``L_decoder = mean |D(x̂0, LR) − HR|``.
4. Inference: one step, ``SR = D(x̂0(ε, T − 1, LR))``.

Ablation (``target="ground_truth"``): the same stages trained directly on the HR image at each
scale, term ``direct`` (``‖x̂0_S − x0‖²``): the paper's "trained for the scale directly".
Validation logs ``val/psnr``, ``val/ssim``, ``val/psnr_rgb`` of the one-step student (+ decoder) on
the data's LR, and once ``val/teacher_*``: the ×``scales[0]`` teacher at one step on LR made from
the same HR at its own scale (a sanity check of the teacher, not a like-for-like row).

==================================  ============================  ==================================
paper                               key (``model.init_args.*``)   default
==================================  ============================  ==================================
scales ×2 → ×4 → ×8                 ``scales``                    (2, 4, 8)
when each stage ends                ``stage_steps``               None (drive ``stage`` yourself)
decoder fine-tuning after the UNet  ``decoder_stage``/``decoder`` True / RefinementDecoder
teacher prediction as the target    ``target``                    "teacher"
student initialised from teacher    ``student_init``              "teacher"
loss weights                        ``loss_weights``              1 each
optimizer                           ``optimizer``                 AdamW, lr 5e-5 (not given in the paper)
==================================  ============================  ==================================
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks.progressive_schedule import ProgressiveSchedule
from lightning_distill.losses.super_resolution import pixel_l1_loss, scale_distillation_loss
from lightning_distill.module import DistillationModule
from lightning_distill.super_resolution.degradations import bicubic_downsample
from lightning_distill.super_resolution.metrics import SRMetrics
from lightning_distill.super_resolution.scale_distillation import (
    RefinementDecoder,
    Stage,
    denoised_prediction,
    one_step_sr,
    scale_stages,
    sr_noise_scheduler,
    teacher_target,
    to_model_range,
)
from lightning_distill.utils.checks import check_choice, check_int, check_option
from lightning_distill.utils.random import stable_seed

__all__ = ["YONOSSR", "yonos_adamw"]


def yonos_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 5e-5 (a usual Stable Diffusion fine-tuning rate; the paper gives none we could read)."""
    return torch.optim.AdamW(params, lr=5e-5)


class YONOSSR(DistillationModule):
    """Scale distillation (see the module docstring).

    Args:
        student: the denoiser that learns, called ``student(x_t, t, lr)`` and predicting x0 (an
            ``LRConditionedUNet``); with ``student_init="teacher"`` the teacher's architecture.
        teacher: the frozen SR diffusion model at ``scales[0]`` (x0 prediction, same call).
        decoder: the module fine-tuned after the denoiser, ``decoder(x0, lr)``; ``None`` builds a
            :class:`RefinementDecoder` for the student's ``image_channels``.
        scales: the teacher's scale, then one student scale per distillation stage (increasing).
        stage_steps: the global steps at which the stage advances (one per stage after the first);
            the recipe then adds a ``ProgressiveSchedule`` for ``stage``. ``None``: set ``stage`` yourself.
        decoder_stage: end with the decoder stage (the denoiser frozen).
        target: ``"teacher"`` (scale distillation) or ``"ground_truth"`` (the direct-training ablation).
        student_init: ``"teacher"`` (copy the teacher's weights) or ``"student"`` (keep ``student``'s).
        num_train_timesteps: length of the DDPM process (linear betas, x0 prediction).
        noise_seed: seed of the training noise and timesteps (with the global step).
        border: pixels shaved before PSNR/SSIM (``None``: the scale).
        loss_weights: weights of ``distill``, ``direct`` and ``decoder``.
        optimizer: ``params -> Optimizer`` for the student and the decoder.
        lr_scheduler: optional ``optimizer -> LRScheduler``.

    Raises:
        ValueError: for invalid arguments (the message names the config key), or a student that
            cannot take the teacher's weights under ``student_init="teacher"``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("distill", "direct", "decoder")
    default_loss_weights: ClassVar[dict[str, float]] = {"distill": 1.0, "direct": 1.0, "decoder": 1.0}
    # the decoder trains only in the last stage, the denoiser in all but that one
    trains_parameters_by_stage: ClassVar[bool] = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        decoder: nn.Module | None = None,
        scales: Sequence[int] = (2, 4, 8),
        stage_steps: Sequence[int] | None = None,
        decoder_stage: bool = True,
        target: Literal["teacher", "ground_truth"] = "teacher",
        student_init: Literal["teacher", "student"] = "teacher",
        num_train_timesteps: int = 1000,
        noise_seed: int = 0,
        border: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = yonos_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        check_choice("target", target, ("teacher", "ground_truth"))
        check_choice("student_init", student_init, ("teacher", "student"))
        check_int("noise_seed", noise_seed, low=0)
        check_int("border", border, low=0, optional=True)
        try:
            self.stages: list[Stage] = scale_stages(tuple(scales), decoder_stage=decoder_stage)
        except ValueError as err:
            raise ValueError(f"{err} Set `model.init_args.scales`.") from None
        if stage_steps is not None:
            steps = list(stage_steps)
            ok = len(steps) == len(self.stages) - 1 and all(isinstance(s, int) and s > 0 for s in steps)
            ok = ok and all(b > a for a, b in zip(steps, steps[1:]))
            check_option(
                ok,
                "stage_steps",
                stage_steps,
                f"{len(self.stages) - 1} increasing positive ints (one per stage change)",
            )
        if student_init == "teacher":
            try:
                student.load_state_dict(teacher.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    "`student_init`='teacher' copies the teacher's weights into the student, but the two "
                    f"architectures differ ({str(err).splitlines()[0]}); build the student like the teacher "
                    "or set `model.init_args.student_init: student`."
                ) from None
        self.save_hyperparameters(ignore=["student", "teacher", "decoder", "optimizer", "lr_scheduler"])
        channels = int(getattr(student, "image_channels", 3))
        self.decoder = RefinementDecoder(channels) if decoder is None else decoder
        self.scales = tuple(int(s) for s in scales)
        self.stage_steps = None if stage_steps is None else [int(s) for s in stage_steps]
        self.decoder_stage = decoder_stage
        self.target = target
        self.noise_seed = noise_seed
        self.scheduler = sr_noise_scheduler(num_train_timesteps)
        self.metrics = SRMetrics(border=border)
        self.stage = 0
        # The teacher of stages after the first: the previous stage's student, frozen (kept in checkpoints).
        self.register_frozen("stage_teacher", copy.deepcopy(student))

    # ------------------------------------------------------------------ the paper
    def stage_teacher_of(self, stage: int) -> nn.Module:
        """The frozen model whose predictions are stage ``stage``'s targets (step 1)."""
        return self.teacher if stage == 0 else self.stage_teacher

    def degrade(self, hr: Tensor, scale: int) -> Tensor:
        """The LR input at ``scale`` made from the HR image (bicubic, antialiased)."""
        return bicubic_downsample(hr, scale)

    def distillation_loss(self, hr: Tensor, stage: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Step 1: ``‖x̂0_S(x_t, t, LR_hard) − sg(x̂0_T(x_t, t, LR_easy))‖²`` (or ``− x0`` for the ablation)."""
        plan = self.stages[stage]
        x0 = to_model_range(hr)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (hr.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = t.to(hr.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = denoised_prediction(self.student, x_t, t, self.degrade(hr, plan.student_scale))
        if self.target == "ground_truth":
            return {"direct": scale_distillation_loss(pred, x0)}
        target = teacher_target(self.stage_teacher_of(stage), x_t, t, self.degrade(hr, plan.teacher_scale))
        return {"distill": scale_distillation_loss(pred, target)}

    def decoder_loss(self, hr: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Step 3: the frozen denoiser's one-step x̂0, then ``mean |D(x̂0, LR) − HR|``."""
        lr = self.degrade(hr, self.stages[-1].student_scale)
        noise = torch.randn(hr.shape, generator=generator).to(hr)
        t = torch.full((hr.shape[0],), self.scheduler.config.num_train_timesteps - 1, device=hr.device)
        with torch.no_grad():
            x0 = denoised_prediction(self.student, noise, t, lr)
        sr = (self.decoder(x0, lr) + 1.0) / 2.0
        return {"decoder": pixel_l1_loss(sr, hr)}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        hr = batch[1]
        stage = self._check_stage(hr)
        generator = torch.Generator().manual_seed(stable_seed(self.noise_seed, self.global_step, "yonos"))
        if self.stages[stage].kind == "decoder":
            return self.log_losses(self.decoder_loss(hr, generator))
        return self.log_losses(self.distillation_loss(hr, stage, generator))

    def on_stage_change(self, name: str, old: Any, new: Any) -> None:
        """Step 2: the student becomes the frozen teacher of the next stage; its optimizer state restarts."""
        if name != "stage":
            return
        with torch.no_grad():
            self.stage_teacher.load_state_dict(self.student.state_dict())
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()

    def configure_callbacks(self) -> list:
        if self.stage_steps is None:
            return []
        stages = {"kind": "stages", "boundaries": self.stage_steps, "values": list(range(len(self.stages)))}
        return [ProgressiveSchedule({"stage": stages})]

    # ------------------------------------------------------------------ inference and evaluation
    def super_resolve(
        self, lr: Tensor, scale: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Step 4: one step from noise, then the decoder; ``(B, C, h·s, w·s)`` in ``[0, 1]`` (s: ``scales[-1]``)."""
        scale = self.scales[-1] if scale is None else scale
        if generator is None:
            generator = torch.Generator().manual_seed(self.noise_seed)
        return one_step_sr(self.student, lr, lr.shape[-1] * scale, self.scheduler, generator, self.decoder)

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """One-step PSNR/SSIM of the student (+ decoder) on the batch's LR, or of the teacher at its own scale."""
        lr, hr = batch[0], batch[1]
        scale = hr.shape[-1] // lr.shape[-1]
        generator = torch.Generator().manual_seed(self.noise_seed)
        if model is self.student:
            sr = self.super_resolve(lr, scale, generator)
        else:
            scale = self.scales[0]
            sr = one_step_sr(model, self.degrade(hr, scale), hr.shape[-1], self.scheduler, generator)
        return self.metrics(sr, hr, scale=scale)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        lr = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.super_resolve(lr)

    @torch.no_grad()
    def sr_outputs(self, lr: Tensor) -> dict[str, Tensor]:
        """The column of ``SuperResolutionPictures``: the student's one step at the data's scale."""
        scale = getattr(getattr(self.trainer, "datamodule", None), "scale", None)
        return {"student, 1 step": self.super_resolve(lr, scale)}

    # ------------------------------------------------------------------ checks
    def _check_stage(self, hr: Tensor) -> int:
        stage = self.stage
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(self.stages):
            raise ValueError(
                f"`stage` must be an int in [0, {len(self.stages)}), got {stage!r}; check "
                "`model.init_args.stage_steps` or the schedule that sets `stage`."
            )
        if hr.ndim != 4 or hr.shape[-1] % self.scales[-1] or hr.shape[-2] % self.scales[-1]:
            raise ValueError(
                f"HR batches must be (B, C, H, W) with H and W divisible by the largest scale {self.scales[-1]}, "
                f"got {tuple(hr.shape)}; set `data.init_args.hr_size`."
            )
        return stage
