"""Flash-DMD: timestep-aware DMD (distribution matching at high noise, GAN at low noise) + joint reward training.

"Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint
Reinforcement Learning" (Chen, Huang, Liu, Zhu, Qu, Chen, Cheng, Sun; arXiv 2511.20549, CVPR 2026).
No official code ("codes are coming soon"). Built from DMD2's steps (the parts of
:mod:`lightning_distill.diffusion.dmd`: generator input, DM gradient, fake-score and discriminator
losses); it changes how the generator's loss is assembled.

Algorithm (one iteration; the generator updates on every ``generator_update_every``-th one):

1. Generator input by backward simulation at a step ``t_k`` of the few-step chain; x̂₀ = G(x_t, t_k).
2. Timestep-aware distillation: if ``t_k >= timestep_split`` (high noise) the generator gets only
   the DM loss ``L_DM = ½‖x̂₀ − sg(x̂₀ − g)‖²``; below it (low noise) only the GAN loss
   ``L_G = softplus(−D(x̂₀))``, so the two never add their gradients on the same sample.
3. Joint reward training from ``reward_start_iteration`` on: ``L_R = −E[r(x̂₀, c)]`` (reward
   back-propagated through the generator) is added, and the distillation loss of step 2 keeps
   running as its regulariser (``distillation_regulariser: false`` drops it: plain reward tuning).
4. Fake-score turn, every iteration (DMD2): denoising on sg(x̂₀) + discriminator on real vs fake.

Generator loss: ``1[t_k >= s] w_dm L_DM + 1[t_k < s] w_G L_G + w_R L_R``; fake score ``L_fake + w_D L_D``.

==============================  ===================================  =====================================
paper                           config key (``model.init_args``)     default
==============================  ===================================  =====================================
4-step student (SDXL)           ``denoising_timesteps``              ``[999, 749, 499, 249]``
high/low-noise boundary         ``timestep_split``                   500 (not stated; ``null``: DMD2's sum)
pixel-space GAN on clean x̂₀     ``gan_max_timestep``                 0 (clean inputs)
RL weight                       ``loss_weights.reward``              1.0 (not stated)
Stage 2 starts                  ``reward_start_iteration``           0
distillation as regulariser     ``distillation_regulariser``         true
reward model                    ``reward_model``                     ``None`` (distillation only)
DMD2 SDXL settings              ``real_guidance_scale``, ...         8, every 5th, ``loss_weights.gen_cls`` 5e-3
==============================  ===================================  =====================================
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
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option, derive_seed
from lightning_distill.diffusion.rewards import RegionReward
from lightning_distill.diffusion.sampling import few_step_sample, one_step_generate
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.distribution_matching import (
    gan_discriminator_loss,
    gan_generator_loss,
    pseudo_target_loss,
)

__all__ = ["FlashDMD", "RegionReward"]

_TAP = "bottleneck"
_MODULE_ARGS = (
    "student teacher schedule fake_score reward_model optimizer fake_score_optimizer lr_scheduler".split()
)


class FlashDMD(DiffusionDistillationModule):
    """Flash-DMD recipe (manual optimization, two optimizers). See the module docstring.

    Arguments shared with :class:`~lightning_distill.recipes.dmd2.DMD2` mean the same there; the
    loss and schedule defaults are DMD2's SDXL settings (the paper distils SDXL) except the ones
    below. Flash-DMD publishes no optimizer, so ``optimizer`` stays torch's AdamW; DMD2's official
    one is ``lightning_distill.diffusion.dmd2_adamw``.

    Args:
        reward_model: a module mapping samples ``(B, ...)`` (and the condition, when there is one)
            to rewards ``(B,)``; frozen, differentiated through. ``None``: distillation only.
        denoising_timesteps: the student's timesteps (default the 4-step ``[999, 749, 499, 249]``).
        timestep_split: student steps ``t_k >= timestep_split`` learn by distribution matching,
            lower ones by the GAN; ``None`` adds both at every step as DMD2 does.
        gan_max_timestep: discriminator inputs noised to ``t ~ U[0, gan_max_timestep)``; 0 (the
            default) shows clean samples, as the paper's pixel-space GAN sees decoded images.
        reward_start_iteration: the iteration at which joint reward training (Stage 2) starts.
        distillation_regulariser: keep the distillation loss on the generator once the reward is
            on (the paper); ``False`` tunes the generator by the reward alone (the ablation).
        loss_weights: weights of ``dm``, ``gen_cls``, ``reward`` (generator), ``fake``,
            ``guidance_cls`` (fake score); defaults in ``default_loss_weights``.

    Raises:
        ValueError: an argument outside its range (the message names the config key).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("dm", "gen_cls", "fake", "guidance_cls", "reward")
    default_loss_weights: ClassVar[dict[str, float]] = {
        "dm": 1.0,
        "gen_cls": 5e-3,
        "guidance_cls": 1e-2,
        "reward": 1.0,
    }

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        fake_score: nn.Module | None = None,
        reward_model: nn.Module | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        student_prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] | None = None,
        denoising_timesteps: Sequence[int] | None = (999, 749, 499, 249),
        timestep_split: int | None = 500,
        real_guidance_scale: float = 8.0,
        min_step_percent: float = 0.02,
        max_step_percent: float = 0.98,
        normalise_dmd_gradient: bool = True,
        generator_update_every: int = 5,
        backward_simulation: bool = True,
        gan: bool = True,
        gan_max_timestep: int | None = 0,
        reward_start_iteration: int = 0,
        distillation_regulariser: bool = True,
        gan_feature_path: str | None = None,
        gan_channels: int | None = None,
        null_label: int | None = None,
        max_grad_norm: float | None = 10.0,
        sample_shape: Sequence[int] | None = None,
        noise_seed: int | None = None,
        eval_teacher_steps: int = 50,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        fake_score_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student, teacher, schedule, noise_seed=noise_seed, sample_shape=sample_shape,
            eval_teacher_steps=eval_teacher_steps, null_label=null_label, loss_weights=loss_weights,
            optimizer=optimizer, fake_score_optimizer=fake_score_optimizer, lr_scheduler=lr_scheduler,
        )  # fmt: skip
        self.save_hyperparameters(ignore=_MODULE_ARGS)
        T = self.schedule.num_train_timesteps
        checks = [
            (student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"),
            (generator_update_every >= 1, "generator_update_every", generator_update_every, "an integer >= 1"),
            (max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"),
            (timestep_split is None or 0 < timestep_split <= T, "timestep_split", timestep_split, f"in (0, {T}] or null"),
            (timestep_split is None or gan, "timestep_split", timestep_split, "null when `gan: false` (no GAN loss for low-noise steps)"),
            (reward_start_iteration >= 0, "reward_start_iteration", reward_start_iteration, ">= 0"),
            (reward_model is None or isinstance(reward_model, nn.Module), "reward_model", type(reward_model).__name__, "an nn.Module or null"),
        ]  # fmt: skip
        for ok, key, value, allowed in checks:
            check_option(ok, key, value, allowed)
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
        self.generator_update_every, self.backward_simulation = generator_update_every, backward_simulation
        self.max_grad_norm = max_grad_norm
        self.reward_model = (
            None if reward_model is None else self.register_frozen("reward_model", reward_model)
        )
        self.timestep_split = timestep_split
        self.reward_start_iteration = int(reward_start_iteration)
        self.distillation_regulariser = bool(distillation_regulariser)
        self._val_count = 0

    # ------------------------------------------------------------------ the paper, one method per equation
    def generate(self, x_t: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x̂₀ = G(x_t, t, c) ``(B, ...)`` in float32; keeps the grad mode."""
        return one_step_generate(
            self.student, self.schedule, x_t, t, cond, prediction_type=self.student_prediction_type
        )

    def generator_input(self, real: Tensor, cond: Cond, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 1: ``(x_t, t_k)`` by backward simulation (DMD2's :func:`~lightning_distill.diffusion.dmd.generator_input`)."""
        return dmd.generator_input(
            self.student, self.schedule, real, cond, generator, timesteps=self.denoising_timesteps,
            backward_simulation_on=self.backward_simulation, step_generator=self._shared_generator(),
            prediction_type=self.student_prediction_type,
        )  # fmt: skip

    def distribution_matching_gradient(
        self, x0: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> Tensor:
        """DMD2's g = (x̂_fake − x̂_real) / mean|x̂₀ − x̂_real| ``(B, ...)`` at a re-noised copy of x̂₀."""
        return dmd.distribution_matching_gradient(
            self.teacher, self.fake_score, self.schedule, x0, cond, null_cond, timestep_range=self.dm_steps,
            guidance_scale=self.real_guidance_scale, normalise=self.normalise_dmd_gradient, generator=generator,
        )  # fmt: skip

    def discriminator_logits(self, x: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """D(x) ``(B,)``: the GAN head on the fake score's tapped features at x noised to t ~ U[0, gan_max_timestep)."""
        if not self.gan_hooks.is_attached:  # outside a Trainer; inside one the callback attaches in `setup`
            self.gan_hooks.attach(self)
        x, t = dmd.discriminator_input(self.schedule, x, self.gan_max_timestep, generator)
        return discriminator_logits(self.fake_score, self.gan_head, self.gan_hooks, _TAP, x, t, cond)

    def timestep_masks(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Which samples learn by distribution matching and which by the GAN: two bool masks ``(B,)``.

        High noise ``t >= timestep_split`` → DM only; low noise → GAN only; with ``timestep_split``
        ``None`` every sample gets both (DMD2). The GAN mask is all False when there is no GAN.
        """
        if self.timestep_split is None:
            return torch.ones_like(t, dtype=torch.bool), torch.full_like(
                t, self.gan_head is not None, dtype=torch.bool
            )
        high = t >= self.timestep_split
        return high, ~high

    def distillation_terms(
        self, x0: Tensor, t: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Timestep-aware distillation: ``{"dm": L_DM, "gen_cls": L_G}``, each averaged over the whole batch.

        ``L_DM = (1/B) Σ_{i: t_i >= s} ½ mean_j (x̂₀ − sg(x̂₀ − g))²_ij`` and ``L_G = (1/B) Σ_{i: t_i < s}
        softplus(−D(x̂₀_i))``; a term with no sample is left out (not computed). With every sample
        in one mask this is DMD2's ``distribution_matching_loss`` / ``generator_gan_loss``.
        """
        dm_mask, gan_mask = self.timestep_masks(t)
        terms: dict[str, Tensor] = {}
        if bool(dm_mask.any()):
            g = self.distribution_matching_gradient(x0, cond, null_cond, generator)
            per_sample = pseudo_target_loss(x0, g, reduction="none")
            terms["dm"] = (per_sample * dm_mask).sum() / x0.shape[0]
        if bool(gan_mask.any()):
            per_sample = gan_generator_loss(self.discriminator_logits(x0, cond, generator), reduction="none")
            terms["gen_cls"] = (per_sample * gan_mask).sum() / x0.shape[0]
        return terms

    def reward(self, x0: Tensor, cond: Cond = None) -> Tensor:
        """r(x̂₀, c) ``(B,)`` in float32, differentiable w.r.t. ``x0``.

        Raises:
            RuntimeError: no ``reward_model``.
            ValueError: the reward model returns another shape than ``(B,)``.
        """
        if self.reward_model is None:
            raise RuntimeError("No reward model; set `model.init_args.reward_model`.")
        out = self.reward_model(x0) if cond is None else self.reward_model(x0, cond)
        if not isinstance(out, Tensor) or out.shape != (x0.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"The reward model must return one value per sample ({x0.shape[0]},), got {shape}."
            )
        return out.float()

    def reward_loss(self, x0: Tensor, cond: Cond = None) -> Tensor:
        """L_R = −mean r(x̂₀, c): direct reward back-propagation through the generator."""
        return -self.reward(x0, cond).mean()

    def reward_active(self, iteration: int | None = None) -> bool:
        """Whether joint reward training (Stage 2) is on at ``iteration`` (default: the current one)."""
        iteration = self.iteration if iteration is None else iteration
        return self.reward_model is not None and iteration >= self.reward_start_iteration

    def generator_terms(
        self, x0: Tensor, t: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Steps 2-3: the generator's named loss terms for this iteration."""
        reward_on = self.reward_active()
        terms = {}
        if self.distillation_regulariser or not reward_on:
            terms.update(self.distillation_terms(x0, t, cond, null_cond, generator))
        if reward_on:
            terms["reward"] = self.reward_loss(x0, cond)
        return terms

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_fake: DMD2's denoising loss of the fake score on sg(x̂₀), t ~ U[0, T)."""
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
        logits = self.discriminator_logits
        real_logits, fake_logits = dmd.paired_logits(logits, real, fake, real_cond, fake_cond, generator)
        return gan_discriminator_loss(real_logits, fake_logits), real_logits, fake_logits

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_gen, opt_fake = self.optimizers()
        real, cond = self.split_batch(batch)
        null_cond = self.null_condition(cond)
        self.record_sample_shape(real)
        rng = self.iteration_generator()
        generator_turn = self.is_update_step(self.iteration, self.generator_update_every)
        # 1. The generator's samples at step t_k of its chain (with grad on its turns only).
        x_t, t = self.generator_input(real, cond, rng)
        with torch.set_grad_enabled(generator_turn):
            x0 = self.generate(x_t, t, cond)
        # 2-3. Generator turn: timestep-aware distillation (+ the reward in Stage 2).
        if generator_turn:
            terms = self.generator_terms(x0, t, cond, null_cond, rng)
            if "reward" in terms:
                self.log_diagnostics({"mean_reward": -terms["reward"]})
            if terms:
                self.update(opt_gen, terms, turn="generator", max_grad_norm=self.max_grad_norm)
        # 4. Fake-score turn, every iteration (DMD2).
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

    def null_condition(self, cond: Cond) -> Cond:
        """The null condition of the teacher's CFG (``None`` when the scale is 1)."""
        return dmd.guidance_null_condition(cond, self.real_guidance_scale, super().null_condition)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` samples ``(n, *sample_shape)``: the student's chain on ``denoising_timesteps``."""
        noise = self.initial_noise(n, generator)
        return few_step_sample(
            self.student, self.schedule, noise, self.denoising_timesteps, cond,
            generator=generator, prediction_type=self.student_prediction_type,
        )  # fmt: skip

    def _shared_generator(self) -> torch.Generator:
        """The same on every rank (the backward-simulation step is one value for all ranks)."""
        return torch.Generator().manual_seed(derive_seed([self.noise_seed, self.iteration, 2**31], words=1))

    # ------------------------------------------------------------------ evaluation: the reward of the samples
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._val_count += self.split_batch(batch)[0].shape[0]

    def on_validation_epoch_end(self) -> None:
        self._log_reward("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_reward("test")
        super().on_test_epoch_end()

    @torch.no_grad()
    def _log_reward(self, stage: str) -> None:
        """``<stage>/reward``: the mean reward of as many samples as evaluation points (unconditional)."""
        n, self._val_count = self._val_count, 0
        if self.reward_model is None or n == 0 or self.trainer.sanity_checking:
            return
        generator = torch.Generator(device=self.device).manual_seed(self.noise_seed)
        self.log(
            f"{stage}/reward", self.reward(self.sample(n, generator)).mean(), on_epoch=True, sync_dist=True
        )
