"""SLAM: few-step generation by consistency distillation along sub-paths, with a linear approximation.

Paper: "Accelerating Image Generation with Sub-path Linear Approximation Model" (Chen Xu et al.,
ECCV 2024, arXiv 2404.13903); official code ``MCG-NJU/SPLAM`` (``splam/train_splam_distill_sd_wds.py``).

Algorithm (one training step, latent-consistency style, a skipping-step DDIM grid of N = 50):

1. Draw data ``x₀``, a grid index ``n`` and the pair ``(t_{n+k}, t_n)``; noise ``z = x_{t_{n+k}}``.
2. The frozen teacher solves one guided DDIM step ``z → x̂_{t_n}`` with a *fixed* guidance ``w``
   (``(1 + w) ε_c − w ε_∅``; the official code fixes ``w = 8`` and gives the student no w input).
3. Target: the EMA network at ``(x̂_{t_n}, t_n)`` with its extra slot at ``γ = 1``, in the consistency
   parameterisation ``c_skip x + c_out x̂₀``.
4. Sub-path linear approximation: ``γ ~ U(0, 1)``; the student sees
   ``z_γ = γ z + (1 − γ) x̂_{t_n} α_{t_{n+k}} / α_{t_n}`` at ``t_{n+k}`` with γ in the extra time
   slot (LCM's w-embedding slot, value ``10 (1 − γ)``), and reads its ε̂ with the noise level of ``z_γ``,
   ``σ_γ = γ σ_{t_{n+k}} + (1 − γ) σ_{t_n} α_{t_{n+k}} / α_{t_n}`` (the DDIM step keeps the noise
   direction of ``z``, so the two noises add linearly; the official code uses the quadrature
   ``σ_γ² = (σ_{t_n} α_{t_{n+k}} / α_{t_n})² + γ² (1 − (α_{t_{n+k}} / α_{t_n})²)``, which holds only for
   independent noises: ``sub_path_noise: quadrature``):
   ``x̂₀ = (z_γ − σ_γ ε̂) / α_{t_{n+k}}``; output ``c_skip(t_{n+k}) z_γ + c_out(t_{n+k}) x̂₀``.
5. Pseudo-Huber loss (c = 0.001) between student and target; AdamW step; EMA update (0.95).

At ``γ = 1`` the student's input and noise level are the usual ones, so sampling is LCM's multi-step
consistency sampling with the slot at ``γ = 1``.

Total loss: ``w_consistency · consistency`` (``loss_weights``, 1).

Hyper-parameters -> config keys (``model.init_args.*``):

=================================  ===============================  =======================
paper / official code               key                              default
=================================  ===============================  =======================
``w_scale`` (fixed guidance)        ``guidance``                     8.0
``num_ddim_timesteps``              ``num_solver_steps``             50
solver skip ``k``                   ``skip``                         1
``loss_type`` / ``huber_c``         ``loss_type`` / ``huber_c``      ``huber`` / 0.001
``ema_decay`` (target network)      ``ema_decay``                    0.95
γ slot value ``10 − 10 γ``          ``gamma_slot_scale``             10.0
``unet_time_cond_proj_dim``         ``embedding_dim``                256
boundary ``σ_data``, ``t / 0.1``     ``sigma_data``, ``timestep_scaling``  0.5, 10.0
``max_grad_norm``                   ``max_grad_norm``                1.0
AdamW lr 8e-6, wd 0 (launch)        ``optimizer``                    ``slam_adamw``
4-step LCM sampling                 ``num_inference_steps``          4
γ ~ U(0, 1) (False: LCM, γ = 1)     ``sub_path``                     True
σ_γ (official: quadrature)          ``sub_path_noise``               ``linear``
student starts as the teacher       ``student_init``                 ``teacher``
=================================  ===============================  =======================
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks import EMATeacher
from lightning_distill.diffusion.consistency import (
    GuidanceConditioned,
    check_consistency_options,
    consistency_output,
    consistency_sample,
    draw_timestep_pairs,
    lcm_timesteps,
    skipping_timesteps,
    solver_step,
)
from lightning_distill.diffusion.guidance import Cond
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.sampling import sample as teacher_sampler
from lightning_distill.diffusion.schedule import NoiseSchedule, broadcast_to
from lightning_distill.losses.consistency import pseudo_huber_loss

__all__ = ["SLAM", "slam_adamw"]


def slam_adamw(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The official launch's optimizer: AdamW, lr 8e-6, betas (0.9, 0.999), weight decay 0, eps 1e-8."""
    return torch.optim.AdamW(params, lr=8e-6, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)


class SLAM(DiffusionDistillationModule):
    """SLAM recipe. See the module docstring for the algorithm.

    Args:
        student: the consistency student, a denoiser with the teacher's call signature; wrapped in a
            :class:`~lightning_distill.diffusion.consistency.GuidanceConditioned` (the γ slot) unless it is one.
        teacher: the frozen teacher (a diffusers UNet, or ``AnalyticTeacher`` on the bench).
        schedule: the noise schedule (``None``: the teacher's, else Stable Diffusion's).
        guidance: the fixed guidance ``w`` of the teacher's solver step (``(1 + w) cond − w uncond``);
            used only with a condition.
        num_solver_steps: ``N``, the DDIM grid of the teacher's solver.
        skip: grid points per solver step ``k``.
        loss_type: ``"huber"`` (pseudo-Huber, the launch script) or ``"l2"`` (the argparse default).
        huber_c: the pseudo-Huber constant.
        ema_decay: decay of the target network, an EMA of the student.
        gamma_slot_scale: the slot receives ``gamma_slot_scale · (1 − γ)`` (official: 10).
        embedding_dim: size of the slot's sinusoidal features (a UNet with ``time_cond_proj_dim`` uses its own).
        sigma_data: ``σ_d`` of the boundary scalings.
        timestep_scaling: the boundary scalings' timestep multiplier.
        num_inference_steps: steps of the LCM sampler used by ``sample``.
        sub_path: ``True``: γ ~ U(0, 1) (SLAM); ``False``: γ = 1 always, which is plain latent consistency
            distillation (LCM with a fixed ``w``), the baseline SLAM improves on.
        sub_path_noise: the student's noise level σ_γ at ``z_γ``: ``"linear"`` (the noise of ``z_γ``, since the
            teacher's DDIM step keeps the noise direction of ``z``) or ``"quadrature"`` (the official code's
            ``predicted_origin_splam``, exact only if the two end points had independent noises).
        student_init: ``"teacher"`` copies the teacher's weights into the student (the paper);
            ``"random"`` keeps it as built (a teacher without weights).
        null_label: the null class label of guidance (``None``: the teacher's).
        sample_shape: shape of one sample; ``None``: from the data or the models.
        max_grad_norm: gradient-norm clipping (``None``: off).
        eval_teacher_steps: DDIM steps of the teacher's evaluation samples.
        noise_seed: seed of the training noise (``None``: from ``seed_everything``).
        loss_weights: weight of ``consistency``.
        optimizer: the student's optimizer (default :func:`slam_adamw`).
        lr_scheduler: optional learning-rate scheduler.

    Raises:
        ValueError: a bad option, a schedule that is not VP, a teacher/student prediction type
            other than ε or x₀, or ``student_init="teacher"`` with a teacher of another architecture.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("consistency",)
    checkpoint_key: ClassVar[str] = "slam"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        guidance: float = 8.0,
        num_solver_steps: int = 50,
        skip: int = 1,
        loss_type: Literal["huber", "l2"] = "huber",
        huber_c: float = 0.001,
        ema_decay: float = 0.95,
        gamma_slot_scale: float = 10.0,
        embedding_dim: int = 256,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        num_inference_steps: int = 4,
        sub_path: bool = True,
        sub_path_noise: Literal["linear", "quadrature"] = "linear",
        student_init: Literal["teacher", "random"] = "teacher",
        null_label: int | None = None,
        sample_shape: Sequence[int] | None = None,
        max_grad_norm: float | None = 1.0,
        eval_teacher_steps: int = 50,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = slam_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(student, GuidanceConditioned):
            student = GuidanceConditioned(student, embedding_dim)
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
        check_option(
            self.schedule.kind == "vp", "schedule", self.schedule.kind, "a VP schedule (DDPM/DDIM betas)"
        )
        check_option(
            self.schedule.prediction_type in ("epsilon", "sample"),
            "schedule",
            self.schedule.prediction_type,
            "a schedule whose models predict 'epsilon' (official) or 'sample'",
        )
        check_consistency_options(
            T,
            guidance=guidance,
            num_solver_steps=num_solver_steps,
            skip=skip,
            loss_type=loss_type,
            huber_c=huber_c,
            ema_decay=ema_decay,
            num_inference_steps=num_inference_steps,
        )
        check_option(gamma_slot_scale > 0, "gamma_slot_scale", gamma_slot_scale, "> 0")
        check_option(
            sub_path_noise in ("linear", "quadrature"),
            "sub_path_noise",
            sub_path_noise,
            "'linear' or 'quadrature'",
        )
        check_option(
            student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"
        )
        if student_init == "teacher":
            self.init_from_teacher(self.student.model)
        self.guidance, self.skip = float(guidance), skip
        self.num_solver_steps, self.num_inference_steps = num_solver_steps, num_inference_steps
        self.loss_type, self.huber_c, self.ema_decay = loss_type, float(huber_c), float(ema_decay)
        self.gamma_slot_scale = float(gamma_slot_scale)
        self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)
        self.max_grad_norm = max_grad_norm
        self.sub_path, self.sub_path_noise = bool(sub_path), sub_path_noise
        self.grid = skipping_timesteps(T, num_solver_steps)
        # 3. the target network: an EMA of the student (EMATeacher averages it after every step)
        self.register_frozen("target_student", copy.deepcopy(self.student))

    # ------------------------------------------------------------------ the paper's equations
    def teacher_step(self, z: Tensor, t_start: Tensor, t_end: Tensor, cond: Cond) -> Tensor:
        """Step 2: the teacher's guided DDIM step ``x_{t_{n+k}} → x̂_{t_n}`` (no grad)."""
        w = self.guidance if cond is not None else 0.0
        null = self.null_condition(cond) if cond is not None and w != 0 else None
        return solver_step(self.teacher, self.schedule, z, t_start, t_end, cond, null, w)

    @torch.no_grad()
    def target(self, x_prev: Tensor, t_end: Tensor, cond: Cond) -> Tensor:
        """Step 3: ``c_skip(t_n) x̂_{t_n} + c_out(t_n) x̂₀`` of the EMA network at γ = 1 (slot 0)."""
        out = self.target_student(x_prev, t_end, cond, guidance=torch.zeros_like(t_end, dtype=torch.float32))
        x0 = self.schedule.to_x0(out, x_prev, t_end)
        return self._boundary(x_prev, x0, t_end)

    def draw_gamma(self, batch: int, generator: torch.Generator) -> Tensor:
        """Step 4: ``γ ~ U(0, 1)`` per sample ``(B,)``; all ones without ``sub_path`` (LCM: z at its own level)."""
        gamma = torch.rand(batch, generator=generator, device=generator.device)
        return gamma if self.sub_path else torch.ones_like(gamma)

    def interpolate(self, z: Tensor, x_prev: Tensor, t_start: Tensor, t_end: Tensor, gamma: Tensor) -> Tensor:
        """Step 4: ``z_γ = γ z + (1 − γ) x̂_{t_n} α_{t_{n+k}} / α_{t_n}`` ``(B, ...)``."""
        ratio = self.schedule.alpha_sigma(t_start)[0] / self.schedule.alpha_sigma(t_end)[0]
        g = broadcast_to(gamma, z)
        return g * z.float() + (1 - g) * x_prev.float() * broadcast_to(ratio, z)

    def student_x0(
        self, out: Tensor, z_gamma: Tensor, t_start: Tensor, t_end: Tensor, gamma: Tensor
    ) -> Tensor:
        """Step 4: ``x̂₀ = (z_γ − σ_γ ε̂) / α_{t_{n+k}}`` with the interpolated noise level σ_γ (``sub_path_noise``)."""
        if self.schedule.prediction_type == "sample":
            return out.float()
        a_start, s_start = self.schedule.alpha_sigma(t_start)
        a_end, s_end = self.schedule.alpha_sigma(t_end)
        ratio = a_start / a_end
        if self.sub_path_noise == "linear":
            sigma_gamma = gamma * s_start + (1 - gamma) * s_end * ratio
        else:
            sigma_gamma = ((s_end * ratio) ** 2 + gamma**2 * (1 - ratio**2)).sqrt()
        return (z_gamma.float() - broadcast_to(sigma_gamma, out) * out.float()) / broadcast_to(a_start, out)

    def consistency_loss(self, x0_data: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """Steps 1-5: the pseudo-Huber (or MSE) distance between the sub-path student and the EMA target."""
        batch = x0_data.shape[0]
        # 1. grid pair and the noisier point
        _, t_start, t_end = draw_timestep_pairs(
            batch, self.grid, skip=self.skip, generator=generator, device=x0_data.device
        )
        z = self.schedule.add_noise(x0_data, randn_like(x0_data, generator), t_start)
        # 2. the teacher's solver step; 3. the target
        x_prev = self.teacher_step(z, t_start, t_end, cond)
        target = self.target(x_prev, t_end, cond)
        # 4. the sub-path input and the student's prediction
        gamma = self.draw_gamma(batch, generator).to(x0_data.device)
        z_gamma = self.interpolate(z, x_prev, t_start, t_end, gamma).to(x0_data.dtype)
        out = self.student(z_gamma, t_start, cond, guidance=self.gamma_slot_scale * (1 - gamma))
        prediction = self._boundary(z_gamma, self.student_x0(out, z_gamma, t_start, t_end, gamma), t_start)
        # 5. the distance
        if self.loss_type == "l2":
            return F.mse_loss(prediction, target)
        return pseudo_huber_loss(prediction, target, c=self.huber_c)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x0, cond = self.split_batch(batch)
        self.record_sample_shape(x0)
        generator = self.iteration_generator()
        loss = self.consistency_loss(x0, cond, generator)
        self.update(
            self.optimizers(), {"consistency": loss}, turn="student", max_grad_norm=self.max_grad_norm
        )
        self.iteration += 1  # the EMA target is averaged by EMATeacher after this optimizer step

    # ------------------------------------------------------------------ evaluation and sampling
    @torch.no_grad()
    def validation_losses(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``consistency``: the training loss on the batch, with noise seeded ``evaluation_seed + batch_idx``."""
        x0, cond = self.split_batch(batch)
        generator = torch.Generator(device=self.device).manual_seed(self.evaluation_seed + batch_idx)
        return {"consistency": self.consistency_loss(x0, cond, generator)}

    def consistency_function(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """The student's consistency function at γ = 1: ``f(x, t) = c_skip x + c_out x̂₀`` ``(B, ...)``."""
        out = self.student(x, t, cond, guidance=torch.zeros(x.shape[0], device=x.device))
        return self._boundary(x, self.schedule.to_x0(out, x, t), t)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` samples by ``num_inference_steps``-step LCM sampling (timesteps of diffusers' ``LCMScheduler``)."""
        steps = lcm_timesteps(self.schedule, self.num_inference_steps, self.num_solver_steps)
        return consistency_sample(
            lambda x, t: self.consistency_function(x, t, cond),
            self.schedule,
            self.initial_noise(n, generator),
            steps,
            generator=generator,
        )

    def evaluation_labels(self, cond: Cond) -> Tensor | None:
        """Class labels are scored class-conditionally (the student is guided for its label)."""
        return cond if isinstance(cond, Tensor) and not cond.is_floating_point() else None

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's ``eval_teacher_steps``-step DDIM samples at the same guidance ``w``."""
        scale = 1.0 + self.guidance if labels is not None else 1.0
        null = self.null_condition(labels) if labels is not None else None
        return teacher_sampler(
            self.teacher, self.schedule, noise, self.eval_teacher_steps, labels, null, scale
        )

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        """One optimizer: the student (and its slot's projection)."""
        optimizer = self.optimizer(self.generator_parameters())
        if self.lr_scheduler is None:
            return optimizer
        return [optimizer], [self.lr_scheduler(optimizer)]

    def configure_callbacks(self) -> list[EMATeacher]:
        """The target network: ``target_student ← d · target_student + (1 − d) · student`` after each step.

        Lightning lets a module's callbacks replace trainer callbacks of the same type, so an
        evaluation ``EMATeacher`` in ``trainer.callbacks`` would be dropped; evaluate the target network
        (``target_student``) instead.
        """
        return [
            EMATeacher(
                source="student", target="target_student", decay=self.ema_decay, log_name="ema/target_decay"
            )
        ]

    # ------------------------------------------------------------------ helpers
    def _boundary(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        return consistency_output(
            x_t, x0, t, sigma_data=self.sigma_data, timestep_scaling=self.timestep_scaling
        )
