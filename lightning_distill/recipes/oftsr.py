"""OFTSR: a one-step flow SR student whose time input tunes fidelity against realism.

Paper: Zhu, Wang, Lu, Li, Yan & Zhang, "OFTSR: One-Step Flow for Image Super-Resolution with Tunable
Fidelity-Realism Trade-offs" (arXiv 2412.09465; official code yuanzhi-zhu/OFTSR, which ships the
stage-1 flow code and the distillation configs ``configs/dis_fm_*.yml``, not the distillation loop).

Stage 1 (the teacher, :func:`~lightning_distill.super_resolution.flow_sr.trained_flow_sr`): a
rectified flow ``v_φ`` from ``x_0 = sqrt(1 − σ_p²) up(LR) + σ_p ε`` (t = 0) to ``x_1 = HR`` (t = 1).
Stage 2 (this recipe): a student ``v_θ(x_0, t)`` of the same architecture, initialised from the
teacher, whose one-step state ``x̂_t = x_0 + t · v_θ(x_0, t)`` must lie on the teacher's ODE
trajectory through ``x_0`` for every ``t``:

1. Draw ``x_0`` from the LR image and ``t ~ U[t_min, t_max − Δt]``.
2. ``x̂_t = x_0 + t · sg(v_θ(x_0, t))``; one teacher RK2 step gives ``x̂_{t+Δt}``.
3. ``L_distil = |v_θ(x_0, t + Δt) − sg((x̂_{t+Δt} − x_0) / (t + Δt))|`` (the bootstrapped ``v_boot``).
4. ``L_align = |v_θ(x_0, t) − sg(v_φ(x̂_t, t))|``: the student's one-step output from ``x_0``,
   ``x_0 + v_θ(x_0, t)``, then equals the teacher's one-step prediction from the closer state ``x̂_t``.
5. ``L_boundary = |v_θ(x_0, ε) − sg(v_φ(x_0, ε))|``: at the start the student is the teacher.

Total: ``w_distil L_distil + w_boundary L_boundary + w_align L_align``. Inference: one evaluation,
``SR = x_0 + (1 − ε) v_θ(x_0, t)``, with ``t`` the knob (``one_step_t``): near 0 the teacher's
conditional mean (fidelity), near 1 the end of its trajectory (realism).

Hyper-parameters -> config keys (``model.init_args.*``; official ``configs/dis_fm_DIV2K.yml``):

* ``σ_p`` (``ir.sigma_pertubation``) -> ``sigma_p`` = 0.2, must match the teacher's;
* ``boot.t_min`` / ``boot.t_max`` -> ``t_min`` / ``t_max`` = 0.01 / 0.99;
* ``Δt`` (``boot.t_step``) -> ``t_step`` = 0.05;
* RK2 ``r`` (``boot.rk2_r``) -> ``rk2_r`` = 0.5 (midpoint);
* ``lambda_distil`` / ``lambda_boundary`` / ``lambda_align`` -> ``loss_weights`` = 1.0 / 0.1 / 0.01;
* one-step ``t`` (``sample.one_step_t``) -> ``one_step_t`` = 0.99;
* the teacher's sampler for ``val/teacher_*`` -> ``sample_steps`` = 8, ``sample_solver`` = ``"rk2"``;
* Adam lr 1e-5, gradient clip 1 -> ``optimizer`` = :func:`oftsr_adam`, ``trainer.gradient_clip_val``;
* the student starts from the teacher (``train.pre_train_model``) -> ``init_from_teacher`` = True.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.super_resolution import flow_velocity_l1_loss
from lightning_distill.module import DistillationModule
from lightning_distill.super_resolution.degradations import pair_scale
from lightning_distill.super_resolution.flow_sr import (
    FLOW_EPS,
    bootstrap_velocity_target,
    check_sigma_p,
    flow_sample,
    flow_start,
    flow_velocity,
    one_step_sr,
    to_signed,
    to_unit,
)
from lightning_distill.super_resolution.metrics import SRMetrics
from lightning_distill.utils.checks import check_choice, check_int, check_option

__all__ = ["OFTSR", "oftsr_adam"]


def oftsr_adam(params: Any) -> torch.optim.Optimizer:
    """Adam with lr 1e-5 (β 0.9/0.999), the official distillation setting."""
    return torch.optim.Adam(params, lr=1e-5)


class OFTSR(DistillationModule):
    """One-step flow SR by bootstrapped trajectory distillation from a rectified-flow SR teacher.

    Args:
        student: the velocity network ``v_θ(x, 999 t, lr)``, e.g. an :class:`LRConditionedUNet`.
        teacher: the trained flow teacher of the same call convention
            (:func:`~lightning_distill.super_resolution.flow_sr.trained_flow_sr`).
        sigma_p: start-point perturbation ``σ_p`` in ``[0, 1]``; must equal the teacher's.
        t_min, t_max: the range of the student's time input during training.
        t_step: the bootstrap step ``Δt`` (``t_min + Δt <= t_max``).
        rk2_r: the teacher's RK2 parameter in ``(0, 1]`` (0.5 midpoint, 1 Heun).
        one_step_t: the time input of the one-step output used for validation and ``predict``.
        sample_steps: steps of the teacher's sampler for ``val/teacher_*``.
        sample_solver: ``"euler"`` or ``"rk2"``.
        init_from_teacher: copy the teacher's weights into the student at construction.
        noise_seed: seed of the training and evaluation noise.
        border: pixels shaved before PSNR/SSIM (``None``: the scale).
        loss_weights: ``{"distil": ..., "boundary": ..., "align": ...}``.
        optimizer: the student's optimizer (default: the official Adam, lr 1e-5).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: a setting out of range, a ``sigma_p`` other than the teacher's ``flow_sigma_p``,
            or ``init_from_teacher`` with a student whose weights do not fit the teacher's.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("distil", "boundary", "align")
    default_loss_weights: ClassVar[dict[str, float]] = {"distil": 1.0, "boundary": 0.1, "align": 0.01}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        sigma_p: float = 0.2,
        t_min: float = 0.01,
        t_max: float = 0.99,
        t_step: float = 0.05,
        rk2_r: float = 0.5,
        one_step_t: float = 0.99,
        sample_steps: int = 8,
        sample_solver: Literal["euler", "rk2"] = "rk2",
        init_from_teacher: bool = True,
        noise_seed: int = 0,
        border: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = oftsr_adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        check_sigma_p(sigma_p)
        trained_with = getattr(teacher, "flow_sigma_p", None)
        check_option(
            trained_with is None or abs(trained_with - sigma_p) < 1e-12,
            "sigma_p",
            sigma_p,
            f"the σ_p the teacher was trained with ({trained_with}); the student must start where the teacher does",
        )
        check_option(0.0 <= t_min < t_max <= 1.0, "t_min", t_min, f"in [0, t_max={t_max}) with t_max <= 1")
        check_option(
            0.0 < t_step <= t_max - t_min, "t_step", t_step, f"in (0, t_max − t_min = {t_max - t_min:g}]"
        )
        check_option(0.0 < rk2_r <= 1.0, "rk2_r", rk2_r, "in (0, 1]")
        check_option(0.0 <= one_step_t <= 1.0, "one_step_t", one_step_t, "in [0, 1]")
        check_int("sample_steps", sample_steps, low=1)
        check_choice("sample_solver", sample_solver, ("euler", "rk2"))
        check_option(
            border is None or (isinstance(border, int) and not isinstance(border, bool) and border >= 0),
            "border",
            border,
            "None or an int >= 0",
        )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.sigma_p, self.t_min, self.t_max, self.t_step, self.rk2_r = sigma_p, t_min, t_max, t_step, rk2_r
        self.one_step_t, self.sample_steps, self.sample_solver = one_step_t, sample_steps, sample_solver
        self.noise_seed = noise_seed
        self.metrics = SRMetrics(border=border)
        if init_from_teacher:
            try:
                self.student.load_state_dict(teacher.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    f"`init_from_teacher` needs a student of the teacher's architecture: {err}; set "
                    "`model.init_args.init_from_teacher: false` or give the student the teacher's settings."
                ) from None

    # ---------------------------------------------------------------- the paper
    def student_velocity(self, x0: Tensor, t: Tensor | float, lr: Tensor) -> Tensor:
        """``v_θ(x_0, t | LR)``: the velocity that reaches the trajectory's state at ``t`` from ``x_0``."""
        return flow_velocity(self.student, x0, t, lr)

    def distillation_loss(self, v_next: Tensor, target: Tensor) -> Tensor:
        """Step 3: ``|v_θ(x_0, t + Δt) − sg((x̂_{t+Δt} − x_0)/(t + Δt))|``."""
        return flow_velocity_l1_loss(v_next, target)

    def alignment_loss(self, v_t: Tensor, v_teacher: Tensor) -> Tensor:
        """Step 4: ``|v_θ(x_0, t) − sg(v_φ(x̂_t, t))|``."""
        return flow_velocity_l1_loss(v_t, v_teacher)

    def boundary_loss(self, x0: Tensor, lr: Tensor) -> Tensor:
        """Step 5: ``|v_θ(x_0, ε) − sg(v_φ(x_0, ε))|``."""
        with torch.no_grad():
            v_teacher = flow_velocity(self.teacher, x0, FLOW_EPS, lr)
        return flow_velocity_l1_loss(self.student_velocity(x0, FLOW_EPS, lr), v_teacher)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        low, high = batch[0], batch[1]
        pair_scale(low, high)
        gen = self._generator(self.global_step)
        # 1. The start point and the times.
        lr = to_signed(low)
        x0 = flow_start(lr, tuple(high.shape[-2:]), self.sigma_p, gen)
        span = self.t_max - self.t_step - self.t_min
        t = self.t_min + span * torch.rand(x0.shape[0], generator=gen, device=gen.device).to(x0)
        # 2. The student's state at t, moved by one teacher RK2 step.
        v_t = self.student_velocity(x0, t, lr)
        x_t = x0 + t.view(-1, 1, 1, 1) * v_t.detach()
        target, v_teacher = bootstrap_velocity_target(self.teacher, lr, x0, x_t, t, self.t_step, self.rk2_r)
        # 3.-5. Bootstrapped distillation, alignment, boundary.
        terms = {
            "distil": self.distillation_loss(self.student_velocity(x0, t + self.t_step, lr), target),
            "align": self.alignment_loss(v_t, v_teacher),
        }
        if self.loss_weights["boundary"] > 0:
            terms["boundary"] = self.boundary_loss(x0, lr)
        return self.log_losses(terms)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def super_resolve(self, low: Tensor, size: tuple[int, int], t: float | None = None) -> Tensor:
        """The student's one-step SR in ``[0, 1]`` at time input ``t`` (default ``one_step_t``)."""
        lr = to_signed(low)
        x0 = flow_start(lr, size, self.sigma_p, self._generator(-1, low.device))
        return to_unit(one_step_sr(self.student, lr, x0, self.one_step_t if t is None else t))

    @torch.no_grad()
    def teacher_super_resolve(
        self, low: Tensor, size: tuple[int, int], steps: int | None = None, solver: str | None = None
    ) -> Tensor:
        """The teacher's multi-step SR in ``[0, 1]`` from the same start point as :meth:`super_resolve`."""
        lr = to_signed(low)
        x0 = flow_start(lr, size, self.sigma_p, self._generator(-1, low.device))
        x1 = flow_sample(
            self.teacher, lr, x0, steps or self.sample_steps, solver or self.sample_solver, self.rk2_r
        )
        return to_unit(x1)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """PSNR/SSIM (Y, border shaved) and RGB PSNR: the student's one step, the teacher's sampler."""
        low, high = batch[0], batch[1]
        scale = pair_scale(low, high)
        size = tuple(high.shape[-2:])
        sr = self.super_resolve(low, size) if model is self.student else self.teacher_super_resolve(low, size)
        return self.metrics(sr, high, scale=scale)

    @torch.no_grad()
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The one-step SR of a batch of LR images (``(lr, hr)`` pairs or LR alone), times the data's scale."""
        if isinstance(batch, (list, tuple)) and len(batch) > 1:
            return self.super_resolve(batch[0], tuple(batch[1].shape[-2:]))
        low = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.super_resolve(low, self._hr_size(low))

    @torch.no_grad()
    def sr_outputs(self, low: Tensor) -> dict[str, Tensor]:
        """The columns of ``SuperResolutionPictures``: the student's one step and the teacher's sampler."""
        size = self._hr_size(low)
        return {
            "student, 1 step": self.super_resolve(low, size),
            "teacher": self.teacher_super_resolve(low, size),
        }

    def _hr_size(self, low: Tensor) -> tuple[int, int]:
        scale = getattr(getattr(self.trainer, "datamodule", None), "scale", None)
        if scale is None:
            raise ValueError("SR of LR images alone needs a datamodule with a `scale` attribute.")
        return (low.shape[-2] * scale, low.shape[-1] * scale)

    # ----------------------------------------------------------------- helpers
    def _generator(self, step: int, device: torch.device | None = None) -> torch.Generator:
        """A generator seeded from ``noise_seed`` and the step (``-1``: evaluation), so resume is exact."""
        device = self.device if device is None else device
        return torch.Generator(device=device).manual_seed(self.noise_seed * 1_000_003 + step + 1)
