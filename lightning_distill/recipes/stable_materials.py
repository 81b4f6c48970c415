"""StableMaterials: a four-step consistency sampler for material maps with a semi-supervised adversarial term.

Paper: "StableMaterials: Enhancing Diversity in Material Generation via Semi-Supervised Learning"
(Giuseppe Vecchio, arXiv 2406.09293). No official training code (the released pipeline samples the
LDM and LCM UNets). What could be read of the paper (the abstract and summaries) says: a latent
diffusion model of PBR maps, trained on annotated materials plus unannotated SDXL textures through
an adversarial term that aligns generated materials with the texture distribution ("semi-supervised
adversarial distillation"), then distilled into a latent consistency model for four-step sampling,
with feature rolling for tileability. recipes/stable_materials/README.md lists what could not be
verified and the choices made.

Algorithm (one training step; the batch carries annotated maps ``(x₀, c)`` and unannotated textures
``(τ, c_τ)``, which have only the albedo channels, for conditions annotated or novel):

1. Consistency (LCM): a grid pair ``(t_{n+k}, t_n)`` of the ``N``-step DDIM grid, ``z = x_{t_{n+k}}``;
   the frozen teacher's DDIM step ``z → x̂_{t_n}`` (guided with ``w`` when ``w > 0``); target
   ``f_{θ⁻}(x̂_{t_n}, t_n)`` of the EMA network; ``consistency = pseudo-Huber(f_θ(z, t_{n+k}), target)``,
   with ``f(x, t) = c_skip(t) x + c_out(t) x̂₀(x, t)``.
2. Semi-supervised adversarial term: the student's one-step sample for the textures' conditions,
   ``x̃ = f_θ(ε, τ₀, c_τ)`` at the first sampling timestep ``τ₀``; its albedo view ``x̃[:, view]`` is
   scored by a discriminator ``D``: ``adversarial = softplus(−D(x̃_view, c_τ))`` (non-saturating).
3. Student turn: ``w_consistency · consistency + w_adversarial · adversarial``; EMA update.
4. Discriminator turn: ``discriminator = softplus(−D(τ, c_τ)) + softplus(D(x̃_view.detach(), c_τ))``:
   real textures against the student's maps for the same conditions.

Sampling: LCM's multi-step consistency sampling (4 steps), each step on a randomly rolled input
(:func:`~lightning_distill.diffusion.materials.rolled`) when ``tile_rolling``.

Hyper-parameters -> config keys (``model.init_args.*``); the paper states none of the training values:

=================================  ===============================  =======================
meaning                             key                              default
=================================  ===============================  =======================
teacher guidance w (solver)         ``guidance``                     0.0
DDIM grid of the solver             ``num_solver_steps`` / ``skip``  50 / 1
distance (LCM code)                 ``loss_type`` / ``huber_c``      ``huber`` / 0.001
EMA target network                  ``ema_decay``                    0.95
boundary ``σ_data``, ``t / 0.1``     ``sigma_data``, ``timestep_scaling``  0.5, 10.0
channels the discriminator sees     ``adversarial_channels``         ``[0, 1, 2]`` (albedo)
four-step sampling                  ``num_inference_steps``          4
rolling at sampling                 ``tile_rolling``                 True
weights                             ``loss_weights``                 1 / 0.1 / 1
=================================  ===============================  =======================
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
    check_consistency_options,
    consistency_output,
    consistency_sample,
    draw_timestep_pairs,
    lcm_timesteps,
    skipping_timesteps,
    solver_step,
)
from lightning_distill.diffusion.guidance import Cond, model_output
from lightning_distill.diffusion.materials import MapDiscriminator, rolled
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.sampling import sample as teacher_sampler
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.consistency import pseudo_huber_loss
from lightning_distill.losses.distribution_matching import gan_discriminator_loss, gan_generator_loss

__all__ = ["StableMaterials"]


class StableMaterials(DiffusionDistillationModule):
    """StableMaterials recipe. See the module docstring for the algorithm.

    Args:
        student: the consistency student, a denoiser with the teacher's call signature (``model(x, t, labels)``).
        teacher: the frozen class-conditional teacher (e.g. ``trained_denoiser`` of a ``tiny_unet``).
        discriminator: ``D(maps_view, labels) -> (B,)``; ``None``: a :class:`MapDiscriminator` on
            ``adversarial_channels`` conditioned on ``num_classes`` labels.
        schedule: the noise schedule (``None``: the teacher's, else Stable Diffusion's).
        guidance: ``w`` of the teacher's solver step (``(1 + w) cond − w uncond``); 0: no guidance
            (a teacher trained without label dropout has no null label to guide with).
        num_solver_steps: ``N``, the DDIM grid of the teacher's solver.
        skip: grid points per solver step ``k``.
        loss_type: ``"huber"`` (pseudo-Huber) or ``"l2"``.
        huber_c: the pseudo-Huber constant.
        ema_decay: decay of the target network, an EMA of the student.
        sigma_data: ``σ_d`` of the boundary scalings.
        timestep_scaling: the boundary scalings' timestep multiplier.
        num_inference_steps: steps of the consistency sampler used by ``sample``.
        adversarial_channels: the map channels the discriminator sees (the textures' channels, in order).
        num_classes: condition labels of the default discriminator (``None``: unconditional).
        tile_rolling: roll the input by a random shift at every sampling step (tileable samples).
        student_init: ``"teacher"`` copies the teacher's weights into the student; ``"random"`` keeps it.
        null_label: the null class label of guidance (``None``: the teacher's).
        sample_shape: shape of one sample; ``None``: from the data or the models.
        max_grad_norm: gradient-norm clipping of both turns (``None``: off).
        eval_teacher_steps: DDIM steps of the teacher's evaluation samples.
        noise_seed: seed of the training noise (``None``: from ``seed_everything``).
        loss_weights: weights of ``consistency``, ``adversarial`` and ``discriminator``.
        optimizer: the student's optimizer.
        discriminator_optimizer: the discriminator's (``None``: ``optimizer``).
        lr_scheduler: optional learning-rate scheduler of both.

    Raises:
        ValueError: a bad option, a schedule that is not VP or predicts v, or ``student_init="teacher"``
            with a student of another architecture.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("consistency", "adversarial", "discriminator")
    default_loss_weights: ClassVar[dict[str, float]] = {
        "consistency": 1.0,
        "adversarial": 0.1,
        "discriminator": 1.0,
    }
    checkpoint_key: ClassVar[str] = "stable_materials"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        discriminator: nn.Module | None = None,
        schedule: NoiseSchedule | None = None,
        guidance: float = 0.0,
        num_solver_steps: int = 50,
        skip: int = 1,
        loss_type: Literal["huber", "l2"] = "huber",
        huber_c: float = 0.001,
        ema_decay: float = 0.95,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        num_inference_steps: int = 4,
        adversarial_channels: Sequence[int] = (0, 1, 2),
        num_classes: int | None = None,
        tile_rolling: bool = True,
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
        self.save_hyperparameters(
            ignore=[
                "student",
                "teacher",
                "discriminator",
                "schedule",
                "optimizer",
                "discriminator_optimizer",
                "lr_scheduler",
            ]
        )
        T = self.schedule.num_train_timesteps
        check_option(
            self.schedule.kind == "vp", "schedule", self.schedule.kind, "a VP schedule (DDPM/DDIM betas)"
        )
        check_option(
            self.schedule.prediction_type in ("epsilon", "sample"),
            "schedule",
            self.schedule.prediction_type,
            "a schedule whose models predict 'epsilon' or 'sample'",
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
        channels = [int(c) for c in adversarial_channels]
        check_option(
            len(channels) > 0 and all(c >= 0 for c in channels) and len(set(channels)) == len(channels),
            "adversarial_channels",
            adversarial_channels,
            "distinct non-negative channel indices",
        )
        check_option(
            student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"
        )
        if student_init == "teacher":
            self.init_from_teacher(self.student)
        self.guidance, self.skip = float(guidance), skip
        self.num_solver_steps, self.num_inference_steps = num_solver_steps, num_inference_steps
        self.loss_type, self.huber_c, self.ema_decay = loss_type, float(huber_c), float(ema_decay)
        self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)
        self.adversarial_channels = channels
        self.tile_rolling, self.max_grad_norm = bool(tile_rolling), max_grad_norm
        self.discriminator_optimizer = discriminator_optimizer
        self.grid = skipping_timesteps(T, num_solver_steps)
        self.discriminator = (
            discriminator if discriminator is not None else MapDiscriminator(len(channels), num_classes)
        ).requires_grad_(True)
        self.register_frozen("target_student", copy.deepcopy(self.student))

    # ------------------------------------------------------------------ the paper's terms
    def consistency_function(
        self, x: Tensor, t: Tensor, cond: Cond = None, *, network: nn.Module | None = None
    ) -> Tensor:
        """``f(x, t) = c_skip(t) x + c_out(t) x̂₀`` ``(B, ...)`` of the student (or ``network``)."""
        out = model_output(self.student if network is None else network, x, t, cond)
        x0 = self.schedule.to_x0(out, x, t)
        return consistency_output(
            x, x0, t, sigma_data=self.sigma_data, timestep_scaling=self.timestep_scaling
        )

    def consistency_loss(self, x0_data: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """Step 1: the pseudo-Huber (or MSE) distance between the student and the EMA target one solver step on."""
        _, t_start, t_end = draw_timestep_pairs(
            x0_data.shape[0], self.grid, skip=self.skip, generator=generator, device=x0_data.device
        )
        z = self.schedule.add_noise(x0_data, randn_like(x0_data, generator), t_start)
        w = self.guidance if cond is not None else 0.0
        null = self.null_condition(cond) if w != 0 else None
        x_prev = solver_step(self.teacher, self.schedule, z, t_start, t_end, cond, null, w)
        with torch.no_grad():
            target = self.consistency_function(x_prev, t_end, cond, network=self.target_student)
        prediction = self.consistency_function(z, t_start, cond)
        if self.loss_type == "l2":
            return F.mse_loss(prediction, target)
        return pseudo_huber_loss(prediction, target, c=self.huber_c)

    def one_step_view(self, labels: Tensor, generator: torch.Generator, like: Tensor) -> Tensor:
        """Step 2: the student's one-step maps for ``labels`` at the first sampling timestep, channels ``view``."""
        shape = (labels.shape[0], *self.resolve_sample_shape())
        noise = torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)
        t0 = lcm_timesteps(self.schedule, self.num_inference_steps, self.num_solver_steps)[0]
        t = torch.full((labels.shape[0],), t0, dtype=torch.long, device=like.device)
        return self.consistency_function(noise, t, labels)[:, self.adversarial_channels]

    def split_textures(self, batch: Any) -> tuple[Tensor | None, Tensor | None]:
        """``(textures (B, V, H, W), texture_labels (B,))`` of a 4-item batch, else ``(None, None)``.

        Raises:
            ValueError: textures whose channels are not ``len(adversarial_channels)``.
        """
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 4):
            return None, None
        textures, labels = batch[2], batch[3]
        if textures.ndim != 4 or textures.shape[1] != len(self.adversarial_channels):
            raise ValueError(
                f"`textures` (batch item 2) must have shape (B, {len(self.adversarial_channels)}, H, W) to match "
                f"`adversarial_channels` {self.adversarial_channels}, got {tuple(textures.shape)}."
            )
        return textures, labels

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x0, cond = self.split_batch(batch[:2] if isinstance(batch, (list, tuple)) else batch)
        textures, texture_labels = self.split_textures(batch)
        self.record_sample_shape(x0)
        if max(self.adversarial_channels) >= x0.shape[1]:
            raise ValueError(
                f"`adversarial_channels` {self.adversarial_channels} name channels the maps ({x0.shape[1]}) lack."
            )
        generator = self.iteration_generator()
        opt_student, opt_disc = self.optimizers()
        terms = {"consistency": self.consistency_loss(x0, cond, generator)}
        fake = None
        if textures is not None:
            fake = self.one_step_view(texture_labels, generator, x0)
            terms["adversarial"] = gan_generator_loss(self.discriminator(fake, texture_labels))
        self.update(opt_student, terms, turn="student", max_grad_norm=self.max_grad_norm)
        if fake is not None:
            d_loss = gan_discriminator_loss(
                self.discriminator(textures, texture_labels),
                self.discriminator(fake.detach(), texture_labels),
            )
            self.update(
                opt_disc, {"discriminator": d_loss}, turn="discriminator", max_grad_norm=self.max_grad_norm
            )
        self.iteration += 1

    # ------------------------------------------------------------------ evaluation and sampling
    @torch.no_grad()
    def validation_losses(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``consistency`` on the batch's maps, with noise seeded ``evaluation_seed + batch_idx``."""
        x0, cond = self.split_batch(batch[:2] if isinstance(batch, (list, tuple)) else batch)
        generator = torch.Generator(device=self.device).manual_seed(self.evaluation_seed + batch_idx)
        return {"consistency": self.consistency_loss(x0, cond, generator)}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` maps by ``num_inference_steps``-step consistency sampling, rolled at every step if ``tile_rolling``."""
        steps = lcm_timesteps(self.schedule, self.num_inference_steps, self.num_solver_steps)

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return self.consistency_function(x, t, cond)

        return consistency_sample(
            rolled(fn, generator) if self.tile_rolling else fn,
            self.schedule,
            self.initial_noise(n, generator),
            steps,
            generator=generator,
        )

    def evaluation_labels(self, cond: Cond) -> Tensor | None:
        """Class labels are scored class-conditionally."""
        return cond if isinstance(cond, Tensor) and not cond.is_floating_point() else None

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's ``eval_teacher_steps``-step DDIM samples at the same guidance ``w``."""
        scale = 1.0 + self.guidance if labels is not None else 1.0
        null = self.null_condition(labels) if labels is not None and self.guidance != 0 else None
        return teacher_sampler(
            self.teacher, self.schedule, noise, self.eval_teacher_steps, labels, null, scale
        )

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        """Two optimizers: the student, then the discriminator."""
        optimizers = [
            self.optimizer(self.generator_parameters()),
            (self.discriminator_optimizer or self.optimizer)(self.discriminator.parameters()),
        ]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    def configure_callbacks(self) -> list[EMATeacher]:
        """The target network: ``target_student ← d · target_student + (1 − d) · student`` after each step."""
        return [
            EMATeacher(
                source="student", target="target_student", decay=self.ema_decay, log_name="ema/target_decay"
            )
        ]
