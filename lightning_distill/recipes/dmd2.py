"""DMD2: distribution matching, a fake score trained faster than the generator, and a GAN on real data.

"Improved Distribution Matching Distillation for Fast Image Synthesis" (Yin, Gharbi, Park, Zhang,
Shechtman, Durand, Freeman; arXiv 2405.14867). Official code: tianweiy/DMD2 (``main/sd_guidance.py``,
``main/sd_unified_model.py``, ``main/train_sd.py``, ``main/edm/edm_guidance.py``).

Algorithm (one iteration; the generator updates on every ``generator_update_every``-th one):

1. Generator input: pure noise at ``T - 1`` (one step), or the student's own sample after ``k``
   of its steps re-noised to ``t_k`` (backward simulation, few steps); x̂₀ = G(x_t, t).
2. Generator turn: noise x̂₀ at t ~ U[0.02 T, 0.98 T]; real x̂₀ from the frozen teacher with CFG,
   fake x̂₀ from the fake score without CFG; g = (x̂_fake − x̂_real) / mean|x̂₀ − x̂_real|;
   L_DM = ½‖x̂₀ − sg(x̂₀ − g)‖²; plus L_G = softplus(−D(x̂₀ noised)) through the fake score.
3. Fake-score turn (every iteration, on the same detached x̂₀): denoising loss at t ~ U[0, T),
   plus the discriminator loss softplus(D(fake)) + softplus(−D(real)) on real data.

Losses: generator ``w_dm L_DM + w_gen_cls L_G``; fake score ``w_fake L_fake + w_guidance_cls L_D``.
The steps are the parts of :mod:`lightning_distill.diffusion.dmd`.

==============================  ==========================================  =====================
paper / official code           config key (``model.init_args``)            default (SD1.5)
==============================  ==========================================  =====================
``real_guidance_scale``         ``real_guidance_scale``                     1.75 (SDXL 8)
``min/max_step_percent``        ``min_step_percent``, ``max_step_percent``  0.02, 0.98
``dfake_gen_update_ratio``      ``generator_update_every``                  10 (SDXL, ImageNet 5)
``gen_cls_loss_weight``         ``loss_weights.gen_cls``                    1e-3 (SDXL 5e-3)
``guidance_cls_loss_weight``    ``loss_weights.guidance_cls``               1e-2
``dm_loss_weight``              ``loss_weights.dm``                         1.0
``cls_on_clean_image``          ``gan``                                     true
``diffusion_gan_max_timestep``  ``gan_max_timestep``                        T (0: clean, t = 0)
``num_denoising_step``          ``denoising_timesteps``                     one step at T - 1
``backward_simulation``         ``backward_simulation``                     true
``max_grad_norm``               ``max_grad_norm``                           10.0
AdamW lr 5e-7, wd 0.01 (both)   ``optimizer``, ``fake_score_optimizer``     ``dmd2_adamw`` (both)
==============================  ==========================================  =====================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks.feature_hooks import FeatureHooks
from lightning_distill.diffusion import dmd
from lightning_distill.diffusion.denoisers import bottleneck_channels, feature_path
from lightning_distill.diffusion.gan_head import GANHead, discriminator_logits
from lightning_distill.diffusion.guidance import Cond
from lightning_distill.diffusion.optimizers import dmd2_adamw
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option, derive_seed
from lightning_distill.diffusion.sampling import few_step_sample, one_step_generate
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.distribution_matching import (
    gan_discriminator_loss,
    gan_generator_loss,
    pseudo_target_loss,
)
from lightning_distill.utils.sharding import keep_every_key, shard_blocks

__all__ = ["DMD2"]

_TAP = "bottleneck"
_MODULE_ARGS = "student teacher schedule fake_score optimizer fake_score_optimizer lr_scheduler".split()


class DMD2(DiffusionDistillationModule):
    """DMD2 recipe (manual optimization, two optimizers). See the module docstring for the algorithm.

    Args:
        student: the generator, a denoiser called ``student(x_t, t[, cond])``.
        teacher: the frozen real score (diffusers UNet, :class:`AnalyticTeacher`, ...), predicting
            ``schedule.prediction_type``.
        schedule: the noise schedule; ``None`` takes ``teacher.schedule`` when the teacher has one,
            else Stable Diffusion's (``NoiseSchedule.ddpm()``: scaled-linear betas, ε).
        fake_score: the fake score's network; ``None`` is a trainable copy of the teacher (the paper).
        student_init: ``"teacher"`` loads the teacher's weights into the student (the paper);
            ``"random"`` keeps the student as given.
        student_prediction_type: what the student predicts; ``None`` is the schedule's.
        real_guidance_scale: CFG scale of the real (teacher) score; the fake score has none.
        min_step_percent: lowest timestep of the DM loss, as a fraction of ``T``.
        max_step_percent: highest timestep of the DM loss (included), as a fraction of ``T``.
        normalise_dmd_gradient: divide g by mean|x̂₀ − x̂_real| per sample (DMD2); False: raw difference.
        generator_update_every: the generator updates on every k-th iteration, the fake score on
            every one (the official ``dfake_gen_update_ratio``, two time-scale rule).
        denoising_timesteps: the student's timesteps, e.g. ``[999, 749, 499, 249]``; ``None`` is one
            step at ``schedule.max_timestep``; a single value is a one-step generator conditioned on it.
        backward_simulation: few-step training inputs come from the student's own ``k``-step
            samples (True, the paper) or from noised real data (False).
        gan: train a discriminator head on fake-score features against real data (DMD2's GAN term).
        gan_max_timestep: the discriminator sees inputs noised at t ~ U[0, gan_max_timestep);
            ``None`` is ``T``; 0 shows clean inputs at t = 0.
        gan_feature_path: module path of the tapped features (default: the fake score's bottleneck).
        gan_channels: channels of those features (default: read from the fake score's architecture).
        null_label: the unconditional class label for CFG (default: the teacher's ``num_classes``).
        max_grad_norm: gradient-norm clipping of both networks; ``None`` disables it.
        sample_shape: shape of one sample, e.g. ``(4, 64, 64)``; default from the data or the teacher.
        noise_seed: seed of the training noise (per iteration and rank); ``None``: ``torch.initial_seed()``.
        eval_teacher_steps: sampler steps of the teacher's validation samples (exact bench only).
        loss_weights: weights of ``dm``, ``gen_cls`` (generator), ``fake``, ``guidance_cls`` (fake
            score); the defaults are the paper's (``default_loss_weights``).
        optimizer: optimizer of the generator, and of the fake score unless ``fake_score_optimizer``
            (default :func:`~lightning_distill.diffusion.optimizers.dmd2_adamw`, the official
            AdamW at SD1.5's lr 5e-7, the same for both networks).
        fake_score_optimizer: optimizer of the fake score and the discriminator head.
        lr_scheduler: optional scheduler for each optimizer, stepped on each of its updates.

    Raises:
        ValueError: an argument outside its range (the message names the config key), or a teacher
            whose prediction type differs from the schedule's.
        TypeError: a ``schedule`` that is not a ``NoiseSchedule``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("dm", "gen_cls", "fake", "guidance_cls")
    default_loss_weights: ClassVar[dict[str, float]] = {"dm": 1.0, "gen_cls": 1e-3, "guidance_cls": 1e-2}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        fake_score: nn.Module | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        student_prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] | None = None,
        real_guidance_scale: float = 1.75,
        min_step_percent: float = 0.02,
        max_step_percent: float = 0.98,
        normalise_dmd_gradient: bool = True,
        generator_update_every: int = 10,
        denoising_timesteps: Sequence[int] | None = None,
        backward_simulation: bool = True,
        gan: bool = True,
        gan_max_timestep: int | None = None,
        gan_feature_path: str | None = None,
        gan_channels: int | None = None,
        null_label: int | None = None,
        max_grad_norm: float | None = 10.0,
        sample_shape: Sequence[int] | None = None,
        noise_seed: int | None = None,
        eval_teacher_steps: int = 50,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = dmd2_adamw,
        fake_score_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student, teacher, schedule, noise_seed=noise_seed, sample_shape=sample_shape,
            eval_teacher_steps=eval_teacher_steps, null_label=null_label, loss_weights=loss_weights,
            optimizer=optimizer, fake_score_optimizer=fake_score_optimizer, lr_scheduler=lr_scheduler,
        )  # fmt: skip
        self.save_hyperparameters(ignore=_MODULE_ARGS)
        check_option(
            student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"
        )
        check_option(
            generator_update_every >= 1, "generator_update_every", generator_update_every, "an integer >= 1"
        )
        check_option(
            max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"
        )
        self.denoising_timesteps, self.dm_steps, self.gan_max_timestep = dmd.dmd2_settings(
            self.schedule, min_step_percent=min_step_percent, max_step_percent=max_step_percent,
            denoising_timesteps=denoising_timesteps, gan_max_timestep=gan_max_timestep,
        )  # fmt: skip
        if student_init == "teacher":
            self.init_from_teacher(student)
        self.fake_score = self.build_fake_score(fake_score).requires_grad_(True).train()
        self.gan_hooks: FeatureHooks | None = None
        self.gan_head: GANHead | None = None
        if gan:
            tap = gan_feature_path or f"fake_score.{feature_path(self.fake_score)}"
            self.gan_hooks = FeatureHooks({_TAP: tap})
            self.gan_head = GANHead(gan_channels or bottleneck_channels(self.fake_score.model))
        self.student_prediction_type = student_prediction_type
        self.real_guidance_scale = float(real_guidance_scale)
        self.normalise_dmd_gradient = normalise_dmd_gradient
        self.generator_update_every = generator_update_every
        self.backward_simulation = backward_simulation
        self.max_grad_norm = max_grad_norm

    # ------------------------------------------------------------------ the paper, one method per equation
    def generate(self, x_t: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x̂₀ = G(x_t, t, c) ``(B, ...)`` in float32, converted from what the student predicts; keeps the grad mode."""
        return one_step_generate(
            self.student, self.schedule, x_t, t, cond, prediction_type=self.student_prediction_type
        )

    def generator_input(self, real: Tensor, cond: Cond, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 1: the student's input ``(x_t (B, ...), t (B,))``: :func:`~lightning_distill.diffusion.dmd.generator_input`."""
        return dmd.generator_input(
            self.student, self.schedule, real, cond, generator, timesteps=self.denoising_timesteps,
            backward_simulation_on=self.backward_simulation, step_generator=self._shared_generator(),
            prediction_type=self.student_prediction_type,
        )  # fmt: skip

    def distribution_matching_gradient(
        self, x0: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> Tensor:
        """g = (x̂_fake − x̂_real) / mean|x̂₀ − x̂_real| at x_t = α_t x̂₀ + σ_t ε, t ~ U[0.02T, 0.98T]; ``(B, ...)``.

        The real prediction carries CFG (``real_guidance_scale``), the fake one none. Non-finite
        entries become 0 (the NaN guard).
        """
        return dmd.distribution_matching_gradient(
            self.teacher, self.fake_score, self.schedule, x0, cond, null_cond, timestep_range=self.dm_steps,
            guidance_scale=self.real_guidance_scale, normalise=self.normalise_dmd_gradient, generator=generator,
        )  # fmt: skip

    def distribution_matching_loss(
        self, x0: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> Tensor:
        """L_DM = ½ mean (x̂₀ − sg(x̂₀ − g))²; its gradient w.r.t. x̂₀ is ``g / x0.numel()``."""
        return pseudo_target_loss(x0, self.distribution_matching_gradient(x0, cond, null_cond, generator))

    def discriminator_input(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x_t, t)``: ``x`` noised to t ~ U[0, gan_max_timestep) (clean at t = 0 when it is 0); attaches the taps.

        Raises:
            RuntimeError: the GAN branch is off (``gan: false``).
        """
        if self.gan_hooks is None or self.gan_head is None:
            raise RuntimeError("The GAN branch is off (`gan: false`); there is no discriminator.")
        if not self.gan_hooks.is_attached:  # outside a Trainer; inside one the callback attaches in `setup`
            self.gan_hooks.attach(self)
        return dmd.discriminator_input(self.schedule, x, self.gan_max_timestep, generator)

    def discriminator_logits(self, x: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """D(x) ``(B,)``: the GAN head on the fake score's tapped features at :meth:`discriminator_input`."""
        x, t = self.discriminator_input(x, generator)
        return discriminator_logits(self.fake_score, self.gan_head, self.gan_hooks, _TAP, x, t, cond)

    def generator_gan_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_G = mean softplus(−D(x̂₀)), differentiated through the fake score into x̂₀."""
        return gan_generator_loss(self.discriminator_logits(x0, cond, generator))

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_fake = mean ‖f_φ(x_t, t) − y‖², x_t = α_t sg(x̂₀) + σ_t ε, t ~ U[0, T), y the schedule's target (ε)."""
        return dmd.fake_score_denoising_loss(self.fake_score, x0, cond, generator)

    def guidance_cls_loss(
        self,
        real: Tensor,
        fake: Tensor,
        real_cond: Cond,
        fake_cond: Cond,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """L_D = mean softplus(−D(real)) + mean softplus(D(sg(fake))), and the logits ``(B_real,)``, ``(B_fake,)``."""
        real_logits, fake_logits = dmd.paired_logits(
            self.discriminator_logits, real, fake, real_cond, fake_cond, generator
        )
        return gan_discriminator_loss(real_logits, fake_logits), real_logits, fake_logits

    def generator_terms(
        self, x0: Tensor, t: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Step 2: the generator's terms ``{"dm": L_DM, "gen_cls": L_G}`` (``t``, its step, is for subclasses)."""
        terms = {"dm": self.distribution_matching_loss(x0, cond, null_cond, generator)}
        if self.gan_head is not None:
            terms["gen_cls"] = self.generator_gan_loss(x0, cond, generator)
        return terms

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_gen, opt_fake = self.optimizers()
        real, cond = self.split_batch(batch)
        null_cond = self.null_condition(cond)
        self.record_sample_shape(real)
        rng = self.iteration_generator()
        generator_turn = self._is_generator_step(self.iteration)
        # 1. The generator's samples (with grad on its turns only); the fake-score turn reuses them.
        x_t, t = self.generator_input(real, cond, rng)
        with torch.set_grad_enabled(generator_turn):
            x0 = self.generate(x_t, t, cond)
        # 2. Generator turn: distribution matching + GAN through the fake score (frozen by the toggle).
        if generator_turn:
            terms = self.generator_terms(x0, t, cond, null_cond, rng)
            if terms:
                self.update(opt_gen, terms, turn="generator", max_grad_norm=self.max_grad_norm)
        # 3. Fake-score turn, every iteration: denoising on the detached samples + discriminator.
        fake_terms = {"fake": self.fake_score_loss(x0, cond, rng)}
        if self.gan_head is not None:
            fake_terms["guidance_cls"], real_logits, fake_logits = self.guidance_cls_loss(
                real, x0, cond, cond, rng
            )
            self.log_diagnostics(
                {
                    "pred_realism_real": real_logits.sigmoid().mean(),
                    "pred_realism_fake": fake_logits.sigmoid().mean(),
                }
            )
        self.update(opt_fake, fake_terms, turn="fake_score", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    def fake_score_parameters(self) -> list[nn.Parameter]:
        """The fake score's trainable parameters and the discriminator head's (the second optimizer)."""
        head = [] if self.gan_head is None else list(self.gan_head.parameters())
        return self.fake_score.trainable_parameters() + head

    def configure_callbacks(self) -> list[Any]:
        return [] if self.gan_hooks is None else [self.gan_hooks]

    def shard(self, mesh: Any) -> None:
        """FSDP2 plan under ``ModelParallelStrategy`` (docs/strategies.md, "Sharding").

        The generator, the fake score and the GAN head are ``fully_shard``-ed block by block on the
        data-parallel ``mesh``: each is run through its forward, so FSDP2 gathers it there and
        averages its gradients over the ranks in the backward of the turn that trains it. The
        teacher stays a plain frozen replica (no gradient to average; its fingerprint stays that
        of its weights). The discriminator reads the fake score's tapped features and discards its
        output, so no backward hook on that output would gather the fake score again: it stays
        gathered from its forward to its backward (``reshard_after_forward=False``).
        """
        shard_blocks(self.student, mesh)
        shard_blocks(self.fake_score, mesh, reshard_after_forward=False)
        if self.gan_head is not None:
            shard_blocks(self.gan_head, mesh)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        full = checkpoint.get("state_dict")
        super().on_save_checkpoint(checkpoint)
        if (
            self._trainer is not None
        ):  # a sharded (distributed) checkpoint keeps the teacher: it loads every key
            keep_every_key(checkpoint, full, self.trainer.strategy)

    def null_condition(self, cond: Cond) -> Cond:
        """The null condition of the teacher's CFG (``None`` when the scale is 1); see the base's for the rules.

        Raises:
            ValueError: CFG asked for without a condition, a known null label, or with a mapping condition.
        """
        return dmd.guidance_null_condition(cond, self.real_guidance_scale, super().null_condition)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` samples ``(n, *sample_shape)`` by the inference path: :func:`few_step_sample` on ``denoising_timesteps``."""
        return few_step_sample(
            self.student,
            self.schedule,
            self.initial_noise(n, generator),
            self.denoising_timesteps,
            cond,
            generator=generator,
            prediction_type=self.student_prediction_type,
        )

    # ------------------------------------------------------------------ helpers
    def _is_generator_step(self, iteration: int) -> bool:
        """The generator learns on iterations 0, k, 2k, ... (``k = generator_update_every``)."""
        return self.is_update_step(iteration, self.generator_update_every)

    def _shared_generator(self) -> torch.Generator:
        """The same on every rank (DMD2 broadcasts the backward-simulation step from rank 0)."""
        return torch.Generator().manual_seed(derive_seed([self.noise_seed, self.iteration, 2**31], words=1))
