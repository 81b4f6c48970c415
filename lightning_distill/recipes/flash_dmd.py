"""Flash-DMD: timestep-aware DMD (distribution matching at high noise, GAN at low noise) + joint reward training.

"Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint
Reinforcement Learning" (Chen, Huang, Liu, Zhu, Qu, Chen, Cheng, Sun; arXiv 2511.20549, CVPR 2026).
No official code ("codes are coming soon"). Built on :class:`~lightning_distill.recipes.dmd2.DMD2`,
whose generator input, DM gradient, fake-score and discriminator losses, sampling and evaluation
it reuses; it changes how the generator's loss is assembled.

Algorithm (one iteration; the generator updates on every ``dfake_gen_update_ratio``-th one):

1. Generator input by backward simulation at a step ``t_k`` of the few-step chain; x̂₀ = G(x_t, t_k).
2. Timestep-aware distillation: if ``t_k >= timestep_split`` (high noise) the generator gets only
   the DM loss ``L_DM = ½‖x̂₀ − sg(x̂₀ − g)‖²``; below it (low noise) only the GAN loss
   ``L_G = softplus(−D(x̂₀))``, so the two never add their gradients on the same sample.
3. Joint reward training from ``reward_start_iteration`` on: ``L_R = −E[r(x̂₀, c)]`` (reward
   back-propagated through the generator) is added, and the distillation loss of step 2 keeps
   running as its regulariser (``distillation_regulariser: false`` drops it: plain reward tuning).
4. Fake-score turn, every iteration (DMD2): denoising on sg(x̂₀) + discriminator on real vs fake.

Generator loss: ``1[t_k >= s] w_dm L_DM + 1[t_k < s] w_G L_G + w_R L_R``; fake score ``L_fake + w_D L_D``.

==============================  ==============================  =====================================
paper                           config key (``model.init_args``) default
==============================  ==============================  =====================================
4-step student (SDXL)           ``denoising_timesteps``          ``[999, 749, 499, 249]``
high/low-noise boundary         ``timestep_split``               500 (not stated; ``null``: DMD2's sum)
pixel-space GAN on clean x̂₀     ``gan_max_timestep``             0 (clean inputs)
RL weight                       ``reward_weight``                1.0 (not stated)
Stage 2 starts                  ``reward_start_iteration``       0
distillation as regulariser     ``distillation_regulariser``     true
reward model                    ``reward_model``                 ``None`` (distillation only)
DMD2 SDXL settings              ``real_guidance_scale``, ...     8, ratio 5, ``gen_cls`` 5e-3
==============================  ==============================  =====================================
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion import Cond, NoiseSchedule
from lightning_distill.diffusion.recipe_base import check_option
from lightning_distill.losses.distribution_matching import gan_generator_loss, pseudo_target_loss
from lightning_distill.recipes.dmd2 import DMD2

__all__ = ["FlashDMD", "RegionReward"]

_IGNORE = ("student", "teacher", "schedule", "fake_score", "reward_model", "optimizer")
_IGNORE += ("fake_score_optimizer", "lr_scheduler")


class RegionReward(nn.Module):
    """A smooth differentiable reward that prefers a region: ``r(x) = exp(−‖x − center‖² / (2 scale²))``.

    The bench's stand-in for a learned reward model (aesthetic or preference score): centred on a
    mode of the mixture it prefers that mode and, less, its neighbours; a generator that maximises
    it alone collapses onto ``center`` (reward hacking). The condition, if any, is ignored.

    Args:
        center: the preferred point ``(D,)``.
        scale: the width of the preferred region, > 0.

    Raises:
        ValueError: ``scale`` <= 0 or an empty ``center``.

    Example:
        >>> reward = RegionReward(center=[4.0, 0.0], scale=2.0)
        >>> reward(torch.tensor([[4.0, 0.0], [4.0, 2.0]])).tolist()
        [1.0, 0.6065306663513184]
    """

    def __init__(self, center: Sequence[float], scale: float = 2.0) -> None:
        super().__init__()
        center_t = torch.as_tensor(center, dtype=torch.float32).reshape(-1)
        if center_t.numel() == 0:
            raise ValueError(f"`center` must be a non-empty point, got {center!r}.")
        if not scale > 0:
            raise ValueError(f"`scale` must be > 0, got {scale!r}.")
        self.register_buffer("center", center_t)
        self.scale = float(scale)

    def forward(self, x: Tensor, cond: Cond = None) -> Tensor:
        """Rewards ``(B,)`` of samples ``(B, D)`` (or ``(B, ...)`` flattening to ``D``)."""
        flat = x.float().reshape(x.shape[0], -1)
        if flat.shape[1] != self.center.numel():
            raise ValueError(
                f"RegionReward has a {self.center.numel()}-D center, got samples of shape {tuple(x.shape)}."
            )
        return torch.exp(-(flat - self.center).square().sum(1) / (2 * self.scale**2))


class FlashDMD(DMD2):
    """Flash-DMD recipe (manual optimization, two optimizers). See the module docstring.

    Arguments shared with :class:`~lightning_distill.recipes.dmd2.DMD2` mean the same there; the
    defaults are DMD2's SDXL settings (the paper distils SDXL) except the ones below.

    Args:
        reward_model: a module mapping samples ``(B, ...)`` (and the condition, when there is one)
            to rewards ``(B,)``; frozen, differentiated through. ``None``: distillation only.
        denoising_timesteps: the student's timesteps (default the 4-step ``[999, 749, 499, 249]``).
        timestep_split: student steps ``t_k >= timestep_split`` learn by distribution matching,
            lower ones by the GAN; ``None`` adds both at every step as DMD2 does.
        gan_max_timestep: discriminator inputs noised to ``t ~ U[0, gan_max_timestep)``; 0 (the
            default) shows clean samples, as the paper's pixel-space GAN sees decoded images.
        reward_weight: weight ``w_R`` of the reward loss.
        reward_start_iteration: the iteration at which joint reward training (Stage 2) starts.
        distillation_regulariser: keep the distillation loss on the generator once the reward is
            on (the paper); ``False`` tunes the generator by the reward alone (the ablation).

    Raises:
        ValueError: an argument outside its range (the message names the config key), or DMD2's.
    """

    loss_terms: ClassVar[tuple[str, ...]] = (*DMD2.loss_terms, "reward")

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
        dfake_gen_update_ratio: int = 5,
        backward_simulation: bool = True,
        gan: bool = True,
        gen_cls_loss_weight: float = 5e-3,
        guidance_cls_loss_weight: float = 1e-2,
        dm_loss_weight: float = 1.0,
        gan_max_timestep: int | None = 0,
        reward_weight: float = 1.0,
        reward_start_iteration: int = 0,
        distillation_regulariser: bool = True,
        gan_feature_path: str | None = None,
        gan_channels: int | None = None,
        null_label: int | None = None,
        max_grad_norm: float | None = 10.0,
        sample_shape: Sequence[int] | None = None,
        noise_seed: int | None = None,
        eval_teacher_steps: int = 50,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        fake_score_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        with warnings.catch_warnings():  # DMD2 saves its hyper-parameters without knowing `reward_model`
            warnings.filterwarnings("ignore", message=".*'reward_model' is an instance of `nn.Module`")
            super().__init__(
                student,
                teacher,
                schedule=schedule,
                fake_score=fake_score,
                student_init=student_init,
                student_prediction_type=student_prediction_type,
                real_guidance_scale=real_guidance_scale,
                min_step_percent=min_step_percent,
                max_step_percent=max_step_percent,
                normalise_dmd_gradient=normalise_dmd_gradient,
                dfake_gen_update_ratio=dfake_gen_update_ratio,
                denoising_timesteps=denoising_timesteps,
                backward_simulation=backward_simulation,
                gan=gan,
                gen_cls_loss_weight=gen_cls_loss_weight,
                guidance_cls_loss_weight=guidance_cls_loss_weight,
                dm_loss_weight=dm_loss_weight,
                gan_max_timestep=gan_max_timestep,
                gan_feature_path=gan_feature_path,
                gan_channels=gan_channels,
                null_label=null_label,
                max_grad_norm=max_grad_norm,
                sample_shape=sample_shape,
                noise_seed=noise_seed,
                eval_teacher_steps=eval_teacher_steps,
                optimizer=optimizer,
                fake_score_optimizer=fake_score_optimizer,
                lr_scheduler=lr_scheduler,
            )
        self.save_hyperparameters(ignore=list(_IGNORE))
        T = self.schedule.num_train_timesteps
        checks = [
            (timestep_split is None or 0 < timestep_split <= T, "timestep_split", timestep_split, f"in (0, {T}] or null"),
            (timestep_split is None or gan, "timestep_split", timestep_split, "null when `gan: false` (no GAN loss for low-noise steps)"),
            (reward_weight >= 0, "reward_weight", reward_weight, ">= 0"),
            (reward_start_iteration >= 0, "reward_start_iteration", reward_start_iteration, ">= 0"),
            (reward_model is None or isinstance(reward_model, nn.Module), "reward_model", type(reward_model).__name__, "an nn.Module or null"),
        ]  # fmt: skip
        for ok, key, value, allowed in checks:
            check_option(ok, key, value, allowed)
        self.loss_weights["reward"] = float(reward_weight)
        self.reward_model = (
            None if reward_model is None else self.register_frozen("reward_model", reward_model)
        )
        self.timestep_split = timestep_split
        self.reward_start_iteration = int(reward_start_iteration)
        self.distillation_regulariser = bool(distillation_regulariser)
        self._val_count = 0

    # ------------------------------------------------------------------ the paper, one method per equation
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

    # ------------------------------------------------------------------ training (DMD2's step with the terms above)
    def log_terms(self, terms: dict[str, Tensor]) -> None:
        """DMD2's ``train/<term>`` and, in Stage 2, ``train/mean_reward``."""
        super().log_terms(terms)
        if "reward" in terms:
            self.log("train/mean_reward", -terms["reward"].detach(), on_step=True, on_epoch=False)

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
