"""BOOT: data-free distillation of a diffusion model into a one-step generator by bootstrapping.

Paper: "BOOT: Data-free Distillation of Denoising Diffusion Models with Bootstrapping" (Jiatao Gu,
Shuangfei Zhai, Yizhe Zhang, Lingjie Liu, Josh Susskind, arXiv 2306.05544); no official training code.

The student ``g(ε, t, c)`` predicts, for a fixed noise ``ε``, the *signal* ``y_t`` of the teacher's
probability-flow trajectory through ``x_T = ε``, written ``x_t = α_t y_t + σ_t ε``. One DDIM step of
the teacher from ``t`` to ``s < t`` is, in the signal space, ``y_s = y_t + δ (x̂₀(x_t, t) − y_t)`` with
``δ = 1 − (σ_s α_t) / (α_s σ_t)``. Training needs conditions only, never images:

1. Draw conditions ``c`` (the batch) and noise ``ε``; a grid index ``n``: ``t = grid[n]``, ``s = grid[n − 1]``
   (0 at the bottom) on an ``N``-step grid.
2. ``y_t = sg(g(ε, t, c))``, ``x_t = α_t y_t + σ_t ε``; the guided teacher's ``x̂₀(x_t, t, c)``.
3. Bootstrap loss ``‖g(ε, s, c) − sg[y_t + δ (x̂₀ − y_t)]‖² / δ²``.
4. Boundary loss at ``t = T − 1`` (``x_T ≈ ε``): ``‖g(ε, T − 1, c) − sg[x̂₀(ε, T − 1, c)]‖²``.

Sampling: one step, ``x₀ = g(ε, 0, c)``.

Total loss: ``w_bootstrap · bootstrap + w_boundary · boundary`` (``loss_weights``, 1 each).

Hyper-parameters -> config keys (``model.init_args.*``):

=============================  =====================  ==========================
paper                          key                    default
=============================  =====================  ==========================
guidance of the teacher ``w``  ``guidance``           0.0 (unverified)
time grid (step size)          ``num_steps``          50 (unverified)
optimizer                      ``optimizer``          AdamW, lr 1e-4 (unverified)
=============================  =====================  ==========================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.data.conditions import ConditionDataModule
from lightning_distill.diffusion.consistency import draw_timestep_pairs, guided_x0_eps, skipping_timesteps
from lightning_distill.diffusion.guidance import Cond, first_tensor, model_output
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option
from lightning_distill.diffusion.sampling import sample as teacher_sampler
from lightning_distill.diffusion.schedule import NoiseSchedule, broadcast_to
from lightning_distill.losses.consistency import bootstrap_loss

__all__ = ["BOOT", "ConditionDataModule", "boot_adamw"]


def boot_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4, weight decay 0 (the paper's optimizer settings were not verified)."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class BOOT(DiffusionDistillationModule):
    """BOOT recipe. See the module docstring for the algorithm.

    Args:
        student: the generator ``g(ε, t, c)``, a denoiser with the teacher's call signature whose
            output is read as the signal ``y_t`` (an x₀-like prediction).
        teacher: the frozen teacher (``AnalyticTeacher`` on the bench).
        schedule: a VP noise schedule (``None``: the teacher's).
        guidance: ``w`` of the teacher's guidance ``(1 + w) cond − w uncond``; used with a condition.
        num_steps: ``N``, the size of the time grid of the bootstrap (``t → s`` is one grid step).
        student_init: ``"random"`` or ``"teacher"`` (copy the teacher's weights).
        null_label: the null class label (``None``: from the datamodule or the teacher).
        sample_shape: shape of one sample (``None``: from the teacher, the student or the mixture;
            there are no data to read it from).
        max_grad_norm: gradient-norm clipping (``None``: off).
        eval_teacher_steps: DDIM steps of the teacher's evaluation samples.
        noise_seed: seed of the training noise (``None``: from ``seed_everything``).
        loss_weights: weights of ``bootstrap`` and ``boundary``.
        optimizer: the student's optimizer (default :func:`boot_adamw`).
        lr_scheduler: optional learning-rate scheduler.

    Raises:
        ValueError: a bad option or a flow schedule.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("bootstrap", "boundary")
    checkpoint_key: ClassVar[str] = "boot"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        guidance: float = 0.0,
        num_steps: int = 50,
        student_init: Literal["random", "teacher"] = "random",
        null_label: int | None = None,
        sample_shape: Sequence[int] | None = None,
        max_grad_norm: float | None = 1.0,
        eval_teacher_steps: int = 50,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = boot_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher,
            schedule,
            noise_seed=noise_seed,
            sample_shape=sample_shape,
            eval_teacher_steps=eval_teacher_steps,
            null_label=null_label,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.save_hyperparameters(ignore=["student", "teacher", "schedule", "optimizer", "lr_scheduler"])
        T = self.schedule.num_train_timesteps
        check_option(self.schedule.kind == "vp", "schedule", self.schedule.kind, "a VP schedule")
        check_option(guidance >= 0, "guidance", guidance, ">= 0")
        check_option(
            isinstance(num_steps, int) and 1 <= num_steps <= T,
            "num_steps",
            num_steps,
            f"an integer in [1, {T}]",
        )
        check_option(
            student_init in ("random", "teacher"), "student_init", student_init, "'random' or 'teacher'"
        )
        if student_init == "teacher":
            self.init_from_teacher(self.student)
        self.guidance, self.num_steps, self.max_grad_norm = float(guidance), num_steps, max_grad_norm
        self.grid = skipping_timesteps(T, num_steps)

    # ------------------------------------------------------------------ the paper's equations
    def signal(self, model: nn.Module, noise: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """``g(ε, t, c)`` ``(B, ...)`` float32: the student's signal for noise ``ε`` at time ``t``."""
        return model_output(model, noise, t, cond).float()

    @torch.no_grad()
    def teacher_x0(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """The guided teacher's ``x̂₀(x_t, t, c)`` (no grad)."""
        w = self.guidance if cond is not None else 0.0
        null = self.null_condition(cond) if cond is not None and w != 0 else None
        return guided_x0_eps(self.teacher, self.schedule, x_t, t, cond, null, w)[0]

    def step_size(self, t: Tensor, s: Tensor) -> Tensor:
        """``δ = 1 − (σ_s α_t) / (α_s σ_t)`` ``(B,)``: the DDIM step ``t → s`` in the signal space."""
        a_t, s_t = self.schedule.alpha_sigma(t)
        a_s, s_s = self.schedule.alpha_sigma(s)
        return 1.0 - (s_s * a_t) / (a_s * s_t)

    def bootstrap_term(self, noise: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """Steps 1-3: ``‖g(ε, s) − sg[g(ε, t) + δ (x̂₀(x_t, t) − g(ε, t))]‖² / δ²``."""
        _, t, s = draw_timestep_pairs(noise.shape[0], self.grid, generator=generator, device=noise.device)
        with torch.no_grad():
            y_t = self.signal(self.student, noise, t, cond)
            a_t, s_t = (broadcast_to(v, y_t) for v in self.schedule.alpha_sigma(t))
            x_t = (a_t * y_t + s_t * noise.float()).to(noise.dtype)
            x0 = self.teacher_x0(x_t, t, cond)
        y_s = self.signal(self.student, noise, s, cond)
        return bootstrap_loss(y_s, y_t, x0, self.step_size(t, s))

    def boundary_term(self, noise: Tensor, cond: Cond) -> Tensor:
        """Step 4: ``‖g(ε, T − 1) − sg[x̂₀(ε, T − 1)]‖²`` (``x_T ≈ ε``)."""
        t = torch.full((noise.shape[0],), self.schedule.max_timestep, device=noise.device, dtype=torch.long)
        return F.mse_loss(self.signal(self.student, noise, t, cond), self.teacher_x0(noise, t, cond).float())

    def losses(self, cond: Cond, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Both terms for ``n`` fresh noises and the conditions ``cond`` (no data)."""
        noise = self.initial_noise(n, generator)
        return {
            "bootstrap": self.bootstrap_term(noise, cond, generator),
            "boundary": self.boundary_term(noise, cond),
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        _, cond = self.split_batch(batch)
        terms = self.losses(cond, first_tensor(cond).shape[0], self.iteration_generator())
        self.update(self.optimizers(), terms, turn="student", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    # ------------------------------------------------------------------ data-free batches, evaluation, sampling
    def split_batch(self, batch: Any) -> tuple[None, Cond]:
        """``(None, cond)``: batches are conditions only (class labels or embeddings); images are refused.

        Raises:
            ValueError: a batch that carries samples (a tuple or list).
        """
        if isinstance(batch, (list, tuple)):
            raise ValueError(
                "BOOT is data-free: batches must be conditions only (a tensor of labels or embeddings), got a "
                f"{type(batch).__name__}; use lightning_distill.data.conditions.ConditionDataModule."
            )
        first_tensor(batch)
        return None, batch

    def null_condition(self, cond: Cond) -> Cond:
        """The datamodule's null condition when it serves one, else the base's rule."""
        if self.null_label is None and self._trainer is not None:
            null = getattr(getattr(self.trainer, "datamodule", None), "null_condition", None)
            if isinstance(null, Tensor):
                return null.to(first_tensor(cond).device)
        return super().null_condition(cond)

    @torch.no_grad()
    def validation_losses(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Both terms on the batch's conditions, noise seeded ``evaluation_seed + batch_idx``."""
        _, cond = self.split_batch(batch)
        generator = torch.Generator(device=self.device).manual_seed(self.evaluation_seed + batch_idx)
        return self.losses(cond, first_tensor(cond).shape[0], generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` one-step samples ``g(ε, 0, c)`` ``(n, *sample_shape)``."""
        noise = self.initial_noise(n, generator)
        return self.signal(self.student, noise, torch.zeros(n, dtype=torch.long, device=noise.device), cond)

    def evaluation_labels(self, cond: Cond) -> Tensor | None:
        """Class labels are scored class-conditionally."""
        return cond if isinstance(cond, Tensor) and not cond.is_floating_point() else None

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's guided DDIM in ``eval_teacher_steps`` steps."""
        if labels is None:
            return teacher_sampler(self.teacher, self.schedule, noise, self.eval_teacher_steps)
        null = self.null_condition(labels)
        scale = 1.0 + self.guidance
        return teacher_sampler(
            self.teacher, self.schedule, noise, self.eval_teacher_steps, labels, null, scale
        )

    def configure_optimizers(self) -> Any:
        """One optimizer: the student."""
        optimizer = self.optimizer(self.generator_parameters())
        if self.lr_scheduler is None:
            return optimizer
        return [optimizer], [self.lr_scheduler(optimizer)]
