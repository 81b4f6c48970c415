"""VDOT: few-step video generation by distribution matching with optimal transport and a relativistic GAN.

Paper: "VDOT: Efficient Unified Video Creation via Optimal Transport Distillation" (Yutong Wang et al.,
CVPR 2026, arXiv 2512.06802). No official code: what the paper text does not pin down is marked
"ours" below and in ``recipes/vdot/README.md``.

Algorithm (one iteration; the generator updates on every ``generator_update_every``-th one, the fake score
and the critic on every one: critic update ratio 5):

1. Generator input ``(x_t, t)``: pure noise at ``t = 999`` or, few-step, the student's own sample after
   ``k`` of its steps re-noised (DMD2's backward simulation); ``x̂₀ = G(x_t, t, c)``.
2. Generator turn, even generator updates: noise ``x̂₀`` at ``t' ~ U[0.02 T, 0.98 T]``; the real score
   (teacher, CFG) and the fake score predict ``x̂_real``, ``x̂_fake``.
   ``∇_OT``: a Sinkhorn plan between the patch tokens of ``x̂_fake`` and ``x̂_real`` (``ot_target: real_score``;
   ``data``: between ``x̂₀`` and the batch's real videos), each token minus its barycentric image;
   ``∇_DMD = (x̂_fake − x̂_real)``; both divided per sample by ``mean|x̂₀ − x̂_real|`` (DMD2's normaliser; ours
   for ∇_OT). ``L = ½‖x̂₀ − sg(x̂₀ − ∇_OT)‖² + λ ½‖x̂₀ − sg(x̂₀ − ∇_DMD)‖²``.
3. Generator turn, odd generator updates: relativistic GAN ``softplus(D(x) − D(x̂₀))`` against the paired real video.
4. Fake-score turn (every iteration): denoising loss on ``sg(x̂₀)``, ``t ~ U[0, T)`` (as DMD).
5. Critic turn (every iteration): ``softplus(D(sg(x̂₀)) − D(x))`` on (real, generated) pairs of one condition.

Total: generator ``ot + λ·dm`` or ``gan``; fake score ``fake``; critic ``critic``.

=====================================  =====================================  ==================
paper                                  config key (``model.init_args``)       default
=====================================  =====================================  ==================
λ (DMD weight next to OT)              ``loss_weights.dm``                    1.0 (not verified)
OT term, GAN term                      ``loss_weights.ot``, ``.gan``          1.0, 1.0
critic update ratio                    ``generator_update_every``             5
4-step generator                       ``denoising_timesteps``                [999, 749, 499, 249]
Sinkhorn ε (relative to mean cost)     ``ot_epsilon``                         0.05 (ours)
tokens                                 ``ot_patch_size``                      2 (a DiT's 1x2x2)
real-score CFG                         ``real_guidance_scale``                5.0 (Wan's; not verified)
DM timestep range                      ``min/max_step_percent``               0.02, 0.98 (DMD2)
ablations: OT alone, DMD alone, GAN    ``ot``, ``dmd``, ``gan``               true, true, true
=====================================  =====================================  ==================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion import dmd as dmd_parts
from lightning_distill.diffusion.guidance import Cond, guided_output, model_output
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option, derive_seed
from lightning_distill.diffusion.sampling import few_step_sample, one_step_generate, randn_like
from lightning_distill.diffusion.sampling import sample as teacher_sampler
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.distribution_matching import dmd_gradient, dmd_normaliser, pseudo_target_loss
from lightning_distill.losses.video import relativistic_critic_loss, relativistic_generator_loss
from lightning_distill.video.critic import VideoCritic
from lightning_distill.video.ot import ot_gradient

__all__ = ["VDOT"]

_MODULE_ARGS = "student teacher schedule fake_score critic optimizer fake_score_optimizer".split()
_MODULE_ARGS += ["critic_optimizer", "lr_scheduler"]


class VDOT(DiffusionDistillationModule):
    """VDOT recipe (manual optimization, three optimizers). See the module docstring for the algorithm.

    Args:
        student: the few-step generator (the teacher's architecture), called ``student(x_t, t, labels)``.
        teacher: the frozen real score, e.g. a :class:`~lightning_distill.video.denoiser.LabelConditionedVideoUNet`.
        schedule: the noise schedule (``None``: the teacher's, else Stable Diffusion's).
        fake_score: the fake score's network (``None``: a trainable copy of the teacher, as DMD).
        critic: the discriminator ``critic(video, labels) -> (B,)`` (``None``: a :class:`~lightning_distill.video.critic.VideoCritic`).
        student_init: ``"teacher"`` copies the teacher's weights into the student; ``"random"`` keeps it.
        ot: use the OT term; dmd: use the DMD term (at least one); gan: alternate with the GAN turn.
        ot_target: ``"real_score"`` (tokens of the real score's x̂₀ prediction) or ``"data"`` (real videos).
        ot_patch_size: side of the per-frame square patch that makes one token.
        ot_epsilon: Sinkhorn's entropic regularisation, relative to the mean token cost.
        ot_max_iter: Sinkhorn iterations at most.
        real_guidance_scale: CFG scale of the real score (and of the teacher's evaluation samples).
        min_step_percent, max_step_percent: range of the distribution-matching timesteps, fractions of ``T``.
        generator_update_every: the generator updates on every k-th iteration, fake score and critic on each.
        denoising_timesteps: the student's timesteps (DMD2's few-step generator).
        backward_simulation: few-step inputs from the student's own samples (True) or noised real data.
        null_label: the null label of guidance (``None``: the teacher's).
        max_grad_norm: gradient-norm clipping of every turn (``None``: off).
        sample_shape: shape of one video ``(C, F, H, W)``; ``None``: from the data.
        noise_seed: seed of the training noise.
        eval_teacher_steps: DDIM steps of the teacher's evaluation samples.
        loss_weights: weights of ``ot``, ``dm`` (λ), ``gan``, ``fake``, ``critic``.
        optimizer: the generator's optimizer (and the others' unless given).
        fake_score_optimizer, critic_optimizer: the fake score's and the critic's optimizers.
        lr_scheduler: optional scheduler of every optimizer.

    Raises:
        ValueError: a bad option (the message names the config key).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ot", "dm", "gan", "fake", "critic")
    default_loss_weights: ClassVar[dict[str, float]] = dict(ot=1.0, dm=1.0, gan=1.0, fake=1.0, critic=1.0)
    checkpoint_key: ClassVar[str] = "vdot"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        fake_score: nn.Module | None = None,
        critic: nn.Module | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        ot: bool = True,
        dmd: bool = True,
        gan: bool = True,
        ot_target: Literal["real_score", "data"] = "real_score",
        ot_patch_size: int = 2,
        ot_epsilon: float = 0.05,
        ot_max_iter: int = 200,
        real_guidance_scale: float = 5.0,
        min_step_percent: float = 0.02,
        max_step_percent: float = 0.98,
        generator_update_every: int = 5,
        denoising_timesteps: Sequence[int] | None = (999, 749, 499, 249),
        backward_simulation: bool = True,
        null_label: int | None = None,
        max_grad_norm: float | None = 10.0,
        sample_shape: Sequence[int] | None = None,
        noise_seed: int | None = None,
        eval_teacher_steps: int = 50,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        fake_score_optimizer: OptimizerCallable | None = None,
        critic_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if null_label is None:
            null_label = getattr(teacher, "null_label", None)
        super().__init__(
            student, teacher, schedule, noise_seed=noise_seed, sample_shape=sample_shape,
            eval_teacher_steps=eval_teacher_steps, null_label=null_label, loss_weights=loss_weights,
            optimizer=optimizer, fake_score_optimizer=fake_score_optimizer, lr_scheduler=lr_scheduler,
        )  # fmt: skip
        self.save_hyperparameters(ignore=_MODULE_ARGS)
        checks = [
            (student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"),
            (ot or dmd, "ot", ot, "true, or `dmd: true` (the generator needs a distribution-matching term)"),
            (ot_target in ("real_score", "data"), "ot_target", ot_target, "'real_score' or 'data'"),
            (isinstance(ot_patch_size, int) and ot_patch_size >= 1, "ot_patch_size", ot_patch_size, "an integer >= 1"),
            (ot_epsilon > 0, "ot_epsilon", ot_epsilon, "> 0"),
            (isinstance(ot_max_iter, int) and ot_max_iter >= 1, "ot_max_iter", ot_max_iter, "an integer >= 1"),
            (generator_update_every >= 1, "generator_update_every", generator_update_every, "an integer >= 1"),
            (max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"),
        ]  # fmt: skip
        for ok, key, value, allowed in checks:
            check_option(bool(ok), key, value, allowed)
        self.denoising_timesteps, self.dm_steps, _ = dmd_parts.dmd2_settings(
            self.schedule, min_step_percent=min_step_percent, max_step_percent=max_step_percent,
            denoising_timesteps=denoising_timesteps, gan_max_timestep=None,
        )  # fmt: skip
        if student_init == "teacher":
            self.init_from_teacher(student)
        self.fake_score = self.build_fake_score(fake_score).requires_grad_(True).train()
        channels = int(sample_shape[0]) if sample_shape is not None else 1
        self.critic = (critic if critic is not None else VideoCritic(channels)).requires_grad_(True)
        self.use_ot, self.use_dmd, self.use_gan = bool(ot), bool(dmd), bool(gan)
        self.ot_target, self.ot_patch_size = ot_target, ot_patch_size
        self.ot_epsilon, self.ot_max_iter = float(ot_epsilon), ot_max_iter
        self.real_guidance_scale = float(real_guidance_scale)
        self.generator_update_every, self.backward_simulation = generator_update_every, backward_simulation
        self.max_grad_norm, self.critic_optimizer = max_grad_norm, critic_optimizer
        self.generator_updates = 0  # the even/odd alternation of the generator's turns

    # ------------------------------------------------------------------ the paper, one method per equation
    def generator_input(self, real: Tensor, cond: Cond, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 1: ``(x_t, t)`` by :func:`~lightning_distill.diffusion.dmd.generator_input` (backward simulation)."""
        step_generator = torch.Generator().manual_seed(
            derive_seed([self.noise_seed, self.iteration, 2**31], words=1)
        )
        return dmd_parts.generator_input(
            self.student, self.schedule, real, cond, generator, timesteps=self.denoising_timesteps,
            backward_simulation_on=self.backward_simulation, step_generator=step_generator,
        )  # fmt: skip

    def generate(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """``x̂₀ = G(x_t, t, c)`` ``(B, C, F, H, W)`` in float32; keeps the caller's grad mode."""
        return one_step_generate(self.student, self.schedule, x_t, t, cond)

    @torch.no_grad()
    def score_predictions(
        self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Step 2: ``(x̂_fake, x̂_real)`` at ``x_t = α sg(x̂₀) + σ ε``, ``t ~ U[dm range)``; the real one with CFG."""
        t = dmd_parts.timesteps_in(x0, *self.dm_steps, self.schedule, generator)
        x_t = self.schedule.add_noise(x0.detach(), randn_like(x0, generator), t)
        null = self.null_condition(cond) if cond is not None and self.real_guidance_scale != 1.0 else None
        scale = self.real_guidance_scale if null is not None else 1.0
        training = self.fake_score.training  # read without dropout (UNet3D's temporal convs carry 0.1)
        try:
            fake = self.schedule.to_x0(model_output(self.fake_score.eval(), x_t, t, cond), x_t, t)
        finally:
            self.fake_score.train(training)
        real = self.schedule.to_x0(guided_output(self.teacher, x_t, t, cond, null, scale), x_t, t)
        return fake.float(), real.float()

    def ot_gradient(self, x0: Tensor, fake: Tensor, real: Tensor, data: Tensor) -> Tensor:
        """``∇_OT`` ``(B, ...)``: tokens of ``x̂_fake`` minus their Sinkhorn barycentres in ``x̂_real`` (normalised
        per sample by ``mean|x̂₀ − x̂_real|``), or, ``ot_target: data``, tokens of ``x̂₀`` minus theirs in the real videos."""
        options = dict(patch_size=self.ot_patch_size, epsilon=self.ot_epsilon, max_iter=self.ot_max_iter)
        if self.ot_target == "data":
            return ot_gradient(x0.detach().float(), data.detach().float(), **options)
        grad = ot_gradient(fake, real, **options)
        return grad / (dmd_normaliser(x0, real) + 1e-8).view(-1, *[1] * (x0.ndim - 1))

    def distribution_terms(
        self, x0: Tensor, cond: Cond, data: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Step 2: ``{"ot": ½‖x̂₀ − sg(x̂₀ − ∇_OT)‖², "dm": ½‖x̂₀ − sg(x̂₀ − ∇_DMD)‖²}`` (the enabled ones)."""
        fake, real = self.score_predictions(x0, cond, generator)
        terms = {}
        if self.use_ot:
            terms["ot"] = pseudo_target_loss(x0, self.ot_gradient(x0, fake, real, data))
        if self.use_dmd:
            terms["dm"] = pseudo_target_loss(x0, dmd_gradient(fake, real, x0))
        return terms

    def generator_gan_loss(self, x0: Tensor, real: Tensor, cond: Cond) -> Tensor:
        """Step 3: ``mean softplus(D(x) − D(x̂₀))``, the gradient reaching ``x̂₀`` through the critic."""
        return relativistic_generator_loss(self.critic(real.detach(), cond), self.critic(x0, cond))

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """Step 4: ``‖f_φ(x_t, t) − ε‖²`` at ``x_t = α sg(x̂₀) + σ ε``, ``t ~ U[0, T)``."""
        return dmd_parts.fake_score_denoising_loss(self.fake_score, x0, cond, generator)

    def critic_loss(self, real: Tensor, x0: Tensor, cond: Cond) -> tuple[Tensor, Tensor, Tensor]:
        """Step 5: ``mean softplus(D(sg(x̂₀)) − D(x))`` and the logits ``(B,)`` of real and fake."""
        real_logits, fake_logits = self.critic(real.detach(), cond), self.critic(x0.detach(), cond)
        return relativistic_critic_loss(real_logits, fake_logits), real_logits, fake_logits

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_gen, opt_fake, opt_critic = self.optimizers()
        real, cond = self.split_batch(batch)
        self.record_sample_shape(real)
        rng = self.iteration_generator()
        generator_turn = self._is_generator_step(self.iteration)
        # 1. The generator's videos (with grad on its turns only); the other turns reuse them detached.
        x_t, t = self.generator_input(real, cond, rng)
        with torch.set_grad_enabled(generator_turn):
            x0 = self.generate(x_t, t, cond)
        # 2-3. Generator turn: OT + λ DMD on even generator updates, the relativistic GAN on odd ones.
        if generator_turn:
            if self.use_gan and self.generator_updates % 2 == 1:
                terms = {"gan": self.generator_gan_loss(x0, real, cond)}
            else:
                terms = self.distribution_terms(x0, cond, real, rng)
            self.update(opt_gen, terms, turn="generator", max_grad_norm=self.max_grad_norm)
            self.generator_updates += 1
        # 4. Fake-score turn, every iteration.
        fake_terms = {"fake": self.fake_score_loss(x0, cond, rng)}
        self.update(opt_fake, fake_terms, turn="fake_score", max_grad_norm=self.max_grad_norm)
        # 5. Critic turn, every iteration (generator_update_every critic updates per generator update).
        if self.use_gan:
            loss, real_logits, fake_logits = self.critic_loss(real, x0, cond)
            self.update(opt_critic, {"critic": loss}, turn="critic", max_grad_norm=self.max_grad_norm)
            self.log_diagnostics({"critic_margin": (real_logits - fake_logits).mean()})
        self.iteration += 1

    # ------------------------------------------------------------------ sampling and evaluation
    def sample_timesteps(self, steps: int | None = None) -> tuple[int, ...]:
        """``steps`` of the student's timesteps, evenly spaced from the first (``None``: all of them).

        Raises:
            ValueError: ``steps`` not in ``[1, len(denoising_timesteps)]``.
        """
        k = len(self.denoising_timesteps)
        steps = k if steps is None else steps
        check_option(1 <= steps <= k, "steps", steps, f"in [1, {k}] (the student's timesteps)")
        return tuple(self.denoising_timesteps[(i * k) // steps] for i in range(steps))

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator, cond: Cond = None, steps: int | None = None
    ) -> Tensor:
        """``n`` videos by DMD2's few-step sampler on :meth:`sample_timesteps` (``steps``: 1, 2, 4 of the 4)."""
        return few_step_sample(
            self.student, self.schedule, self.initial_noise(n, generator), self.sample_timesteps(steps), cond,
            generator=generator,
        )  # fmt: skip

    def teacher_samples(self, noise: Tensor, labels: Tensor | None, steps: int | None = None) -> Tensor:
        """The teacher's DDIM samples (``eval_teacher_steps``) with CFG at ``real_guidance_scale``."""
        null = self.null_condition(labels) if labels is not None else None
        scale = self.real_guidance_scale if labels is not None else 1.0
        return teacher_sampler(
            self.teacher, self.schedule, noise, steps or self.eval_teacher_steps, labels, null, scale
        )

    # ------------------------------------------------------------------ optimization and state
    def configure_optimizers(self) -> Any:
        """Generator, fake score, critic (each with ``lr_scheduler`` when given)."""
        optimizers = [
            self.optimizer(self.generator_parameters()),
            (self.fake_score_optimizer or self.optimizer)(self.fake_score_parameters()),
            (self.critic_optimizer or self.optimizer)(self.critic.parameters()),
        ]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    def checkpoint_state(self) -> dict[str, Any]:
        return super().checkpoint_state() | {"generator_updates": self.generator_updates}

    def load_checkpoint_state(self, state: Any) -> None:
        super().load_checkpoint_state(state)
        self.generator_updates = int(state.get("generator_updates", 0))

    def _is_generator_step(self, iteration: int) -> bool:
        """The generator learns on iterations 0, k, 2k, ... (``k = generator_update_every``)."""
        return self.is_update_step(iteration, self.generator_update_every)
