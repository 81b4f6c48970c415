"""MCM: a few-step video consistency model whose appearance is learned from a separate image set.

Paper: "Motion Consistency Model: Accelerating Video Diffusion with Disentangled Motion-Appearance
Distillation" (Yuanhao Zhai et al., NeurIPS 2024, arXiv 2406.06890); official code ``yhZhai/mcm`` (``main.py``).

Algorithm (one training iteration; latent consistency distillation on a skipping-step DDIM grid, N = 50):

1. Draw videos ``x₀`` with their condition, a guidance scale ``w ~ U[w_min, w_max]`` per sample, a grid
   index ``n`` and the pair ``(t_{n+k}, t_n)``.
2. Mixed start: with probability ``p`` (0.5) ``x₀`` becomes the EMA target network's one-step prediction
   from pure noise at the last grid timestep (as the official code does): trajectories from its own outputs.
3. ``z = α x₀ + σ ε`` at ``t_{n+k}``; the student's consistency output ``f_θ(z, w, c, t_{n+k})``.
4. The frozen teacher's guided DDIM step ``z → x̂_{t_n}`` with ``(1 + w) ε_c − w ε_∅``
   (:func:`~lightning_distill.diffusion.consistency.solver_step`); the EMA target ``f_θ⁻(x̂_{t_n}, w, c, t_n)``.
5. Consistency: pseudo-Huber between ``h_φ(f_θ)`` and ``h_φ⁻(f_θ⁻)``, a learnable spatial head ``h_φ`` on the
   student and its EMA on the target (zero-initialised residual convolutions per frame).
6. Adversarial (student turn): hinge ``−D(frames of f_θ)`` on 2 frames per clip of the raw output.
7. Discriminator turn: hinge loss of ``D`` on image-set stills (real) vs those frames, + 1e-5 R1 ``‖∇D(real)‖²``.
8. EMA (0.95) of the student into the target network and of the head into the target head.

Total: student turn ``consistency + 1 · adversarial``; discriminator turn ``discriminator + 1e-5 · r1``.
Sampling is LCM's multi-step consistency sampling of the raw student (no head).

Hyper-parameters -> config keys (``model.init_args.*``):

==============================================  ==============================  ===============
paper / official code                            key                             default
==============================================  ==============================  ===============
``w_min``, ``w_max``                             ``guidance_min/max``            5.0, 15.0
``num_ddim_timesteps``                           ``num_solver_steps``            50
``loss_type``, ``huber_c``                       ``loss_type``, ``huber_c``      huber, 0.001
``ema_decay``                                    ``ema_decay``                   0.95
``cd_pred_x0_portion``                           ``pred_x0_probability``         0.5
``cd_target: learn`` (spatial head)              ``spatial_head``                ``SpatialHead``
``disc_tsn_num_frames``                          ``discriminator_frames``        2
``disc_loss_weight``, ``disc_lambda_r1``         ``loss_weights``                1.0, 1e-5
``no_disc``                                      ``adversarial: false``          true
``unet_time_cond_proj_dim``                      ``embedding_dim``               256
``timestep_scaling_factor``                      ``timestep_scaling``            10.0
``max_grad_norm``                                ``max_grad_norm``               1.0
LCM sampling steps                               ``num_inference_steps``         4
==============================================  ==============================  ===============
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
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
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.consistency import pseudo_huber_loss
from lightning_distill.losses.super_resolution import hinge_discriminator_loss, hinge_generator_loss
from lightning_distill.losses.video import r1_penalty
from lightning_distill.video.heads import FrameDiscriminator, SpatialHead, sample_frames

__all__ = ["MCM"]

#: Constructor arguments that are modules or callables, not hyper-parameters.
_MODULE_ARGUMENTS = ("student", "teacher", "discriminator", "spatial_head", "schedule", "optimizer")
_MODULE_ARGUMENTS += ("discriminator_optimizer", "lr_scheduler")


class MCM(DiffusionDistillationModule):
    """MCM recipe. See the module docstring for the algorithm.

    Args:
        student: the consistency student (the teacher's architecture); wrapped in a
            :class:`~lightning_distill.diffusion.consistency.GuidanceConditioned` (the ``w`` slot) unless it is one.
        teacher: the frozen video teacher, e.g. a
            :class:`~lightning_distill.video.denoiser.LabelConditionedVideoUNet` (diffusers ``UNet3DConditionModel``).
        discriminator: frame discriminator (``None``: a small :class:`~lightning_distill.video.heads.FrameDiscriminator`).
        spatial_head: the learnable head of the consistency loss (``None``: a
            :class:`~lightning_distill.video.heads.SpatialHead` on the sample's channels).
        schedule: the noise schedule (``None``: the teacher's, else Stable Diffusion's).
        guidance_min, guidance_max: range of ``w`` (``(1 + w) cond − w uncond``).
        num_solver_steps: ``N``, the DDIM grid of the teacher's solver.
        loss_type: ``"huber"`` (pseudo-Huber) or ``"l2"``.
        huber_c: the pseudo-Huber constant.
        ema_decay: decay of the target network and the target head.
        pred_x0_probability: ``p`` of the mixed start.
        adversarial: train the discriminator and add the adversarial term (``False``: plain video LCM).
        discriminator_frames: frames per clip the discriminator sees.
        embedding_dim: size of the ``w`` slot's sinusoidal features (a UNet with ``time_cond_proj_dim`` uses its own).
        sigma_data, timestep_scaling: the boundary scalings.
        num_inference_steps: steps of the LCM sampler used by ``sample``.
        sample_guidance: ``w`` the student is sampled and evaluated with (``None``: the middle of the range).
        student_init: ``"teacher"`` copies the teacher's weights into the student; ``"random"`` keeps it.
        null_label: the null label of guidance (``None``: the teacher's ``null_label``).
        sample_shape: shape of one video ``(C, F, H, W)``; ``None``: from the data.
        max_grad_norm: gradient-norm clipping of both turns (``None``: off).
        eval_teacher_steps: DDIM steps of the teacher's evaluation samples.
        noise_seed: seed of the training noise.
        loss_weights: weights of ``consistency``, ``adversarial``, ``discriminator``, ``r1``.
        optimizer: the student's and spatial head's optimizer.
        discriminator_optimizer: the discriminator's optimizer (``None``: ``optimizer``).
        lr_scheduler: optional learning-rate scheduler of every optimizer.

    Raises:
        ValueError: a bad option, a schedule that is not VP, or ``student_init="teacher"`` with a student
            of another architecture.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("consistency", "adversarial", "discriminator", "r1")
    default_loss_weights: ClassVar[dict[str, float]] = dict(consistency=1.0, adversarial=1.0)
    default_loss_weights |= dict(discriminator=1.0, r1=1e-5)
    checkpoint_key: ClassVar[str] = "mcm"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        discriminator: nn.Module | None = None,
        spatial_head: nn.Module | None = None,
        schedule: NoiseSchedule | None = None,
        guidance_min: float = 5.0,
        guidance_max: float = 15.0,
        num_solver_steps: int = 50,
        loss_type: Literal["huber", "l2"] = "huber",
        huber_c: float = 0.001,
        ema_decay: float = 0.95,
        pred_x0_probability: float = 0.5,
        adversarial: bool = True,
        discriminator_frames: int = 2,
        embedding_dim: int = 256,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        num_inference_steps: int = 4,
        sample_guidance: float | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        null_label: int | None = None,
        sample_shape: Sequence[int] | None = None,
        max_grad_norm: float | None = 1.0,
        eval_teacher_steps: int = 50,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        discriminator_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(student, GuidanceConditioned):
            embed_into = "unet.time_embedding" if hasattr(student, "unet") else None
            student = GuidanceConditioned(student, embedding_dim, embed_into=embed_into)
        if null_label is None:
            null_label = getattr(teacher, "null_label", None)
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
        self.save_hyperparameters(ignore=list(_MODULE_ARGUMENTS))
        T = self.schedule.num_train_timesteps
        check_option(
            self.schedule.kind == "vp", "schedule", self.schedule.kind, "a VP schedule (DDPM/DDIM betas)"
        )
        check_consistency_options(
            T,
            guidance=guidance_min,
            num_solver_steps=num_solver_steps,
            skip=1,
            loss_type=loss_type,
            huber_c=huber_c,
            ema_decay=ema_decay,
            num_inference_steps=num_inference_steps,
        )
        check_option(
            guidance_max >= guidance_min, "guidance_max", guidance_max, f">= guidance_min = {guidance_min}"
        )
        check_option(
            0.0 <= pred_x0_probability <= 1.0, "pred_x0_probability", pred_x0_probability, "in [0, 1]"
        )
        check_option(
            isinstance(discriminator_frames, int) and discriminator_frames >= 1,
            "discriminator_frames",
            discriminator_frames,
            "an integer >= 1",
        )
        check_option(
            student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"
        )
        if student_init == "teacher":
            self.init_from_teacher(self.student.model)
        self.guidance_min, self.guidance_max = float(guidance_min), float(guidance_max)
        self.sample_guidance = (
            float(sample_guidance) if sample_guidance is not None else 0.5 * (guidance_min + guidance_max)
        )
        self.num_solver_steps, self.num_inference_steps = num_solver_steps, num_inference_steps
        self.loss_type, self.huber_c, self.ema_decay = loss_type, float(huber_c), float(ema_decay)
        self.pred_x0_probability, self.adversarial = float(pred_x0_probability), bool(adversarial)
        self.discriminator_frames = discriminator_frames
        self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)
        self.max_grad_norm, self.discriminator_optimizer = max_grad_norm, discriminator_optimizer
        self.grid = skipping_timesteps(T, num_solver_steps)
        channels = int(sample_shape[0]) if sample_shape is not None else 1
        self.spatial_head = (
            spatial_head if spatial_head is not None else SpatialHead(channels, hidden=16, norm_groups=4)
        )
        self.discriminator = (
            discriminator if discriminator is not None else FrameDiscriminator(channels, width=16)
        )
        self.spatial_head.requires_grad_(True)
        self.discriminator.requires_grad_(True)
        # 8. the target network and the target head: EMAs of the student and the head (EMATeacher)
        self.register_frozen("target_student", copy.deepcopy(self.student))
        self.register_frozen("target_head", copy.deepcopy(self.spatial_head))

    # ------------------------------------------------------------------ the paper's equations
    def draw_guidance(self, batch: int, generator: torch.Generator) -> Tensor:
        """Step 1: ``w ~ U[guidance_min, guidance_max]`` ``(B,)``."""
        u = torch.rand(batch, generator=generator, device=generator.device).to(self.device)
        return self.guidance_min + (self.guidance_max - self.guidance_min) * u

    @torch.no_grad()
    def mixed_start(self, x0: Tensor, cond: Cond, w: Tensor, generator: torch.Generator) -> Tensor:
        """Step 2: the target network's one-step ``x̂₀`` from pure noise at the last grid timestep ``(B, ...)``."""
        noise = randn_like(x0, generator)
        t = torch.full((x0.shape[0],), int(self.grid[-1]), dtype=torch.long, device=x0.device)
        out = self.target_student(noise, t, cond, guidance=w)
        return self.schedule.to_x0(out, noise, t).to(x0.dtype)

    def student_output(
        self, z: Tensor, t: Tensor, cond: Cond, w: Tensor, network: nn.Module | None = None
    ) -> Tensor:
        """Step 3: the consistency output ``c_skip z + c_out x̂₀`` of ``network`` (default the student) ``(B, ...)``."""
        out = (network or self.student)(z, t, cond, guidance=w)
        x0 = self.schedule.to_x0(out, z, t)
        return consistency_output(
            z, x0, t, sigma_data=self.sigma_data, timestep_scaling=self.timestep_scaling
        )

    def teacher_step(self, z: Tensor, t_start: Tensor, t_end: Tensor, cond: Cond, w: Tensor) -> Tensor:
        """Step 4: the teacher's guided DDIM step ``x_{t_{n+k}} → x̂_{t_n}`` (no grad)."""
        null = self.null_condition(cond) if cond is not None else None
        return solver_step(
            self.teacher, self.schedule, z, t_start, t_end, cond, null, w if cond is not None else 0.0
        )

    def consistency_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Step 5: ``d(h_φ(f_θ), sg(h_φ⁻(f_θ⁻)))`` with pseudo-Huber (or MSE)."""
        head_prediction = self.spatial_head(prediction)
        with torch.no_grad():
            head_target = self.target_head(target.float())
        if self.loss_type == "l2":
            return F.mse_loss(head_prediction.float(), head_target.float())
        return pseudo_huber_loss(head_prediction, head_target, c=self.huber_c)

    def adversarial_loss(self, prediction: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 6: the hinge generator loss on ``discriminator_frames`` frames per clip; returns it and the frames."""
        frames = sample_frames(prediction, self.discriminator_frames, generator)
        return hinge_generator_loss(self.discriminator(frames)), frames

    def discriminator_losses(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Step 7: hinge loss on stills (real) vs generated frames (fake), and R1 at the real stills."""
        real = real.detach().float().requires_grad_(True)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach().float())
        return {
            "discriminator": hinge_discriminator_loss(real_logits, fake_logits),
            "r1": r1_penalty(real_logits, real),
        }

    def student_losses(
        self, x0: Tensor, cond: Cond, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Steps 1-6: the student turn's terms and its raw consistency output ``(B, ...)``."""
        batch = x0.shape[0]
        w = self.draw_guidance(batch, generator)
        coin = torch.rand((), generator=generator, device=generator.device)
        if self.pred_x0_probability > 0 and float(coin) < self.pred_x0_probability:
            x0 = self.mixed_start(x0, cond, w, generator)
        _, t_start, t_end = draw_timestep_pairs(batch, self.grid, generator=generator, device=x0.device)
        z = self.schedule.add_noise(x0, randn_like(x0, generator), t_start)
        prediction = self.student_output(z, t_start, cond, w)
        x_prev = self.teacher_step(z, t_start, t_end, cond, w)
        with torch.no_grad():
            target = self.student_output(x_prev, t_end, cond, w, network=self.target_student)
        terms = {"consistency": self.consistency_loss(prediction, target)}
        if self.adversarial:
            terms["adversarial"], _ = self.adversarial_loss(prediction, generator)
        return terms, prediction

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x0, cond, stills = self.split_video_batch(batch)
        self.record_sample_shape(x0)
        generator = self.iteration_generator()
        optimizers = self.optimizers()
        student_opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        terms, prediction = self.student_losses(x0, cond, generator)
        self.update(student_opt, terms, turn="student", max_grad_norm=self.max_grad_norm)
        if self.adversarial:
            if stills is None:
                raise ValueError(
                    "MCM's discriminator needs image-set stills: serve (video, y, still) batches "
                    "(`data.init_args.stills: true`) or set `model.init_args.adversarial: false`."
                )
            fake = sample_frames(prediction.detach(), self.discriminator_frames, generator)
            self.update(
                optimizers[1],
                self.discriminator_losses(stills, fake),
                turn="discriminator",
                max_grad_norm=self.max_grad_norm,
            )
        self.iteration += 1  # the EMA target and head are averaged by EMATeacher after this step

    # ------------------------------------------------------------------ batches, evaluation and sampling
    def split_video_batch(self, batch: Any) -> tuple[Tensor, Cond, Tensor | None]:
        """``(videos (B, C, F, H, W), cond, stills (B, C, H, W) or None)`` of a ``(video, y[, still])`` batch."""
        x0, cond = self.split_batch(batch)
        stills = batch[2] if isinstance(batch, (list, tuple)) and len(batch) > 2 else None
        return x0, cond, stills

    @torch.no_grad()
    def validation_losses(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``consistency``: the student's consistency loss on the batch (no mixed start), noise seeded per batch."""
        x0, cond, _ = self.split_video_batch(batch)
        generator = torch.Generator(device=self.device).manual_seed(self.evaluation_seed + batch_idx)
        w = self.draw_guidance(x0.shape[0], generator)
        _, t_start, t_end = draw_timestep_pairs(x0.shape[0], self.grid, generator=generator, device=x0.device)
        z = self.schedule.add_noise(x0, randn_like(x0, generator), t_start)
        prediction = self.student_output(z, t_start, cond, w)
        target = self.student_output(
            self.teacher_step(z, t_start, t_end, cond, w), t_end, cond, w, self.target_student
        )
        return {"consistency": self.consistency_loss(prediction, target)}

    def consistency_function(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """The raw student's consistency function at ``w = sample_guidance`` ``(B, ...)``."""
        w = torch.full((x.shape[0],), self.sample_guidance, device=x.device)
        return self.student_output(x, t, cond, w)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator, cond: Cond = None, steps: int | None = None
    ) -> Tensor:
        """``n`` videos by ``steps`` (default ``num_inference_steps``) LCM steps (diffusers' ``LCMScheduler`` timesteps)."""
        timesteps = lcm_timesteps(self.schedule, steps or self.num_inference_steps, self.num_solver_steps)
        return consistency_sample(
            lambda x, t: self.consistency_function(x, t, cond),
            self.schedule,
            self.initial_noise(n, generator),
            timesteps,
            generator=generator,
        )

    def teacher_samples(self, noise: Tensor, labels: Tensor | None, steps: int | None = None) -> Tensor:
        """The teacher's DDIM samples (``eval_teacher_steps``) at guidance ``w = sample_guidance``."""
        scale = 1.0 + self.sample_guidance if labels is not None else 1.0
        null = self.null_condition(labels) if labels is not None else None
        return teacher_sampler(
            self.teacher, self.schedule, noise, steps or self.eval_teacher_steps, labels, null, scale
        )

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        """The student with its spatial head, then the discriminator."""
        params = self.generator_parameters() + list(self.spatial_head.parameters())
        optimizers = [self.optimizer(params)]
        if self.adversarial:
            optimizers.append(
                (self.discriminator_optimizer or self.optimizer)(self.discriminator.parameters())
            )
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    def configure_callbacks(self) -> list[EMATeacher]:
        """Step 8: ``target ← d · target + (1 − d) · online`` for the student and the spatial head."""
        return [
            EMATeacher(
                source="student", target="target_student", decay=self.ema_decay, log_name="ema/target_decay"
            ),
            EMATeacher(source="spatial_head", target="target_head", decay=self.ema_decay, log_name=None),
        ]
