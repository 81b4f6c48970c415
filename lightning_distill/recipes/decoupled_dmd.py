"""Decoupled DMD: CFG augmentation and distribution matching with their own re-noising schedules.

Liu et al., "Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield"
(arXiv 2511.22677, ICLR 2026; used for Z-Image-Turbo, no official code). With a CFG-guided real
score ``s_cfg = s_u + a (s_c - s_u)`` the DMD generator gradient splits into two terms (Eq. 6)::

    s_cfg - s_fake,c = (s_real,c - s_fake,c)      [DM: distribution matching, the "shield"]
                     + (a - 1)(s_real,c - s_real,u)  [CA: CFG augmentation, the "engine"]

and d-DMD (Eq. 8) evaluates each term on its own re-noised copy of the generator sample. One
iteration (Algorithm 1; x0-space, as DMD2 and the Z-Image issues write it):

1. Pick a step ``t`` of the few-step chain; its input ``z_t`` comes from backward simulation.
2. ``x0 = G(z_t, t, c)``.
3. CA: ``tau_CA`` cleaner than ``t`` (paper ``tau_CA > t`` with t = 0 = noise; here a timestep
   index below ``t``); ``g_CA = (a - 1)(x0_real,u - x0_real,c) / n`` at ``x_tau_CA``.
4. DM: ``tau_DM`` over the full range; ``g_DM = (x0_fake,c - x0_real,c) / n`` at ``x_tau_DM``.
5. Generator: ``w_ca ½||x0 - sg(x0 - g_CA)||² + w_dm ½||x0 - sg(x0 - g_DM)||²`` every
   ``generator_update_every`` iterations.
6. Fake score: denoising loss on ``sg(x0)`` at ``tau' ~ U[0, T)``, every iteration.

``n`` is DMD2's per-sample normaliser ``mean|x0 - x0_real,cfg(x_tau)|`` at each term's own
``tau`` (``normalise: false`` drops it). With one shared ``tau`` and noise, ``g_CA + g_DM`` is
exactly DMD2's gradient ``(x0_fake,c - x0_real,cfg) / n``.

Hyper-parameters -> config keys (``model.init_args.*``):

=======================================  ===========================  =========================
paper                                    key                          default
=======================================  ===========================  =========================
CFG scale alpha (Eq. 4)                  ``guidance_scale``           8.0 (DMD2 SDXL)
CA schedule ``tau_CA > t`` / full        ``ca_schedule``              ``constrained``
DM schedule full / ``tau_DM > t``        ``dm_schedule``              ``full``
coupled DMD (one tau, one noise)         ``shared_timestep``          false
re-noising range (fractions of T)        ``timestep_range``           (0.02, 0.98) (DMD2)
weights of the two terms, fake loss      ``loss_weights``             ca 1, dm 1, fake 1
few-step generator (Table 1: 4 steps)    ``num_generator_steps``      4
fake updates per generator update        ``generator_update_every``   5 (DMD2 SDXL)
DMD2 normaliser                          ``normalise``                true
G and s_fake start from the teacher      ``student_init``             ``teacher``
=======================================  ===========================  =========================

Ablations: CA only ``loss_weights: {dm: 0}``, DM only ``{ca: 0}`` (a term with weight 0 is not
computed); the paper's schedules 1-4 are ``shared_timestep: true`` (1), ``ca_schedule: full`` (2),
``dm_schedule: constrained`` (3) and the defaults (4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion import (
    Cond,
    FakeScore,
    NoiseSchedule,
    backward_simulation,
    cfg,
    evenly_spaced_timesteps,
    few_step_sample,
    model_output,
    one_step_generate,
    uniform_timesteps,
)
from lightning_distill.diffusion import sample as teacher_sample
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.diffusion.metrics import mode_assignment, mode_coverage, rbf_mmd2, sliced_wasserstein
from lightning_distill.losses import pseudo_target_loss
from lightning_distill.module import DistillationModule

__all__ = ["DecoupledDMD", "cfg_augmentation_gradient", "distribution_matching_gradient", "dmd_normaliser"]

Schedule = Literal["constrained", "full"]


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def dmd_normaliser(x0: Tensor, x0_real_guided: Tensor) -> Tensor:
    """DMD2's per-sample normaliser ``mean_{c,h,w} |x0 - x0_real,cfg|``, shape ``(B,)``, float32.

    Example:
        >>> dmd_normaliser(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]))
        tensor([1.5000])
    """
    return (x0.detach().float() - x0_real_guided.float()).abs().reshape(x0.shape[0], -1).mean(dim=1)


def cfg_augmentation_gradient(
    x0_real_cond: Tensor, x0_real_uncond: Tensor, guidance_scale: float, scale: Tensor | None = None
) -> Tensor:
    """The CA term in x0 space: ``g_CA = (a - 1)(x0_real,u - x0_real,c) / scale`` ``(B, ...)``.

    Descending along ``g_CA`` moves the sample by ``(a - 1)(x0_real,c - x0_real,u)``: the CFG
    direction (the score-space term ``(a - 1)(s_real,c - s_real,u)`` of Eq. 6, up to the positive
    factor ``alpha_tau / sigma_tau^2``). Non-finite entries become 0.

    Args:
        x0_real_cond: the teacher's conditional x0 prediction ``(B, ...)``.
        x0_real_uncond: its unconditional x0 prediction, same shape.
        guidance_scale: ``a`` of ``uncond + a (cond - uncond)``.
        scale: per-sample normaliser ``(B,)`` (:func:`dmd_normaliser`), or ``None``.

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> cfg_augmentation_gradient(torch.tensor([[2.0]]), torch.tensor([[1.0]]), 3.0)
        tensor([[-2.]])
    """
    if x0_real_cond.shape != x0_real_uncond.shape:
        raise ValueError(
            f"`x0_real_cond` and `x0_real_uncond` must have the same shape, got {tuple(x0_real_cond.shape)} "
            f"and {tuple(x0_real_uncond.shape)}."
        )
    grad = (guidance_scale - 1.0) * (x0_real_uncond.detach().float() - x0_real_cond.detach().float())
    if scale is not None:
        grad = grad / _per_sample(scale, grad)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def distribution_matching_gradient(
    x0_fake_cond: Tensor, x0_real_cond: Tensor, scale: Tensor | None = None
) -> Tensor:
    """The DM term in x0 space: ``g_DM = (x0_fake,c - x0_real,c) / scale`` ``(B, ...)``; non-finite -> 0.

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> distribution_matching_gradient(torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([2.0]))
        tensor([[-1.]])
    """
    if x0_fake_cond.shape != x0_real_cond.shape:
        raise ValueError(
            f"`x0_fake_cond` and `x0_real_cond` must have the same shape, got {tuple(x0_fake_cond.shape)} "
            f"and {tuple(x0_real_cond.shape)}."
        )
    grad = x0_fake_cond.detach().float() - x0_real_cond.detach().float()
    if scale is not None:
        grad = grad / _per_sample(scale, grad)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


class DecoupledDMD(DistillationModule):
    """Decoupled DMD recipe; see the module docstring for the algorithm and the config keys.

    Args:
        student: the few-step generator, called like the teacher (``G(z_t, t, c)``).
        teacher: the frozen real score (any module with the diffusers call signature).
        schedule: the noise schedule of teacher and fake score (``ddpm_schedule``/``flow_schedule``).
        fake_score: the fake score; ``None`` = a trainable copy of the teacher. A plain module is
            wrapped in :class:`FakeScore` (all its parameters train).
        num_classes: classes of the condition; label ``num_classes`` is the null label of CFG.
        guidance_scale: CFG scale ``a`` of the real score (``uncond + a (cond - uncond)``).
        ca_schedule / dm_schedule: ``"constrained"`` (cleaner than the generator's input) or ``"full"``.
        shared_timestep: one ``tau`` and one noise for both terms (coupled DMD).
        timestep_range: ``(low, high)`` fractions of ``T`` for the re-noising timesteps.
        num_generator_steps: steps of the generator (timesteps ``T-1, T-1-T/K, ...``).
        generator_timesteps: explicit decreasing generator timesteps (overrides ``num_generator_steps``).
        generator_update_every: fake-score updates per generator update.
        normalise: divide each term by DMD2's normaliser at its own ``tau``.
        student_init: ``"teacher"`` copies the teacher's weights into the student; ``"random"``
            keeps the student as built.
        student_prediction_type: what the student predicts (default: the schedule's).
        max_grad_norm: gradient clipping of both updates (``None``: none).
        teacher_eval_steps: sampler steps of the (guided) teacher in validation.
        noise_seed: seed of the per-iteration random draws (``None``: ``torch.initial_seed()``).
        sample_shape: shape of one sample (default: the mixture's dimension or the first batch's).
        loss_weights: ``{"ca": ..., "dm": ..., "fake": ...}``.
        optimizer: optimizer of the student; ``fake_optimizer`` that of the fake score (default: the same).

    Raises:
        ValueError: for an invalid option (the message names the config key), or a fake score
            without trainable parameters.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ca", "dm", "fake")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule,
        fake_score: nn.Module | None = None,
        num_classes: int | None = None,
        guidance_scale: float = 8.0,
        ca_schedule: Schedule = "constrained",
        dm_schedule: Schedule = "full",
        shared_timestep: bool = False,
        timestep_range: tuple[float, float] = (0.02, 0.98),
        num_generator_steps: int = 4,
        generator_timesteps: Sequence[int] | None = None,
        generator_update_every: int = 5,
        normalise: bool = True,
        student_init: Literal["teacher", "random"] = "teacher",
        student_prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] | None = None,
        max_grad_norm: float | None = 10.0,
        teacher_eval_steps: int = 50,
        noise_seed: int | None = None,
        sample_shape: Sequence[int] | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        fake_optimizer: OptimizerCallable | None = None,
    ) -> None:
        super().__init__(student, teacher=teacher, loss_weights=loss_weights, optimizer=optimizer)
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(
                f"`schedule` must be a NoiseSchedule, got {type(schedule).__name__}; set `model.init_args.schedule`."
            )
        for key, value in (("ca_schedule", ca_schedule), ("dm_schedule", dm_schedule)):
            if value not in ("constrained", "full"):
                raise ValueError(
                    f"`{key}` must be 'constrained' or 'full', got {value!r}; set `model.init_args.{key}`."
                )
        if shared_timestep and ca_schedule != dm_schedule:
            raise ValueError(
                f"`shared_timestep: true` draws one tau for both terms, so `ca_schedule` ({ca_schedule!r}) and "
                f"`dm_schedule` ({dm_schedule!r}) must agree; set both in `model.init_args`."
            )
        if guidance_scale < 1.0 or (guidance_scale != 1.0 and num_classes is None):
            raise ValueError(
                f"`guidance_scale` must be >= 1 and, when > 1, needs `num_classes` (CFG needs a null label); got "
                f"guidance_scale={guidance_scale}, num_classes={num_classes}; set `model.init_args.*`."
            )
        T = schedule.num_train_timesteps
        low, high = (int(f * T) for f in timestep_range)
        if not 0 <= low < high <= T:
            raise ValueError(
                f"`timestep_range` must be 0 <= low < high <= 1, got {timestep_range}; set `model.init_args.timestep_range`."
            )
        steps = (
            tuple(generator_timesteps)
            if generator_timesteps
            else evenly_spaced_timesteps(num_generator_steps, T)
        )
        if any(a <= b for a, b in zip(steps[:-1], steps[1:])) or min(steps) <= low:
            raise ValueError(
                f"Generator timesteps {steps} must decrease and stay above the re-noising floor {low} (so that "
                "the constrained schedule is not empty); set `model.init_args.generator_timesteps`."
            )
        if generator_update_every < 1 or teacher_eval_steps < 1:
            raise ValueError(
                "`generator_update_every` and `teacher_eval_steps` must be >= 1; set `model.init_args.*`."
            )
        if self.loss_weights["ca"] == 0 and self.loss_weights["dm"] == 0:
            raise ValueError(
                "`loss_weights` gives both `ca` and `dm` weight 0: nothing trains the generator."
            )
        if student_init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        elif student_init != "random":
            raise ValueError(
                f"`student_init` must be 'teacher' or 'random', got {student_init!r}; set `model.init_args.student_init`."
            )
        if fake_score is None:
            fake_score = FakeScore.copy_of(self.teacher, schedule)
        elif not isinstance(fake_score, FakeScore):
            fake_score = FakeScore(fake_score, schedule)
        if not fake_score.trainable_parameters():
            raise ValueError(
                "The fake score has no trainable parameters (a copy of a parameter-free teacher such as "
                "AnalyticTeacher); give one with `model.init_args.fake_score` (e.g. an MLPDenoiser)."
            )
        self.save_hyperparameters(
            ignore=["student", "teacher", "schedule", "fake_score", "optimizer", "fake_optimizer"]
        )
        self.automatic_optimization = False
        self.fake_score = fake_score
        self.schedule = schedule
        self.num_classes = num_classes
        self.guidance_scale = float(guidance_scale)
        self.ca_schedule, self.dm_schedule, self.shared_timestep = ca_schedule, dm_schedule, shared_timestep
        self.timestep_bounds = (low, high)
        self.generator_timesteps = steps
        self.generator_update_every = generator_update_every
        self.normalise = normalise
        self.student_prediction_type = student_prediction_type
        self.max_grad_norm = max_grad_norm
        self.teacher_eval_steps = teacher_eval_steps
        self.noise_seed = int(torch.initial_seed() if noise_seed is None else noise_seed)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.fake_optimizer = fake_optimizer or optimizer
        self.iteration = 0
        self._eval_seed = 0

    # ------------------------------------------------------------------ the paper
    def conditions(self, labels: Tensor | None) -> tuple[Cond, Cond]:
        """``(cond, null_cond)`` of a batch: the class labels and the null label ``num_classes``.

        Override for other conditions (e.g. text embeddings and the empty-prompt embedding).
        """
        if self.num_classes is None:
            return None, None
        if labels is None or (labels < 0).any() or (labels >= self.num_classes).any():
            raise ValueError(
                f"Class labels must be in [0, {self.num_classes}); got {labels if labels is None else labels.unique().tolist()}. "
                "Use conditional data (e.g. `data.init_args.conditional: true`)."
            )
        return labels, torch.full_like(labels, self.num_classes)

    def generator_input(self, noise: Tensor, cond: Cond, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 1: ``(z_t, t)`` at a random step of the chain, by backward simulation (no grad)."""
        return backward_simulation(
            self.student,
            self.schedule,
            noise,
            self.generator_timesteps,
            cond,
            generator=generator,
            prediction_type=self.student_prediction_type,
        )

    def renoising_timesteps(self, t_gen: Tensor, schedule: Schedule, generator: torch.Generator) -> Tensor:
        """``tau`` ``(B,)`` uniform on the range; ``"constrained"`` keeps it below (cleaner than) ``t_gen``."""
        low, high = self.timestep_bounds
        if schedule == "constrained":
            high = min(high, int(t_gen.max()))
        return uniform_timesteps(
            t_gen.shape[0],
            low,
            high,
            num_train_timesteps=self.schedule.num_train_timesteps,
            generator=generator,
            device=t_gen.device,
        )

    @torch.no_grad()
    def real_x0(
        self, x_t: Tensor, t: Tensor, cond: Cond, null_cond: Cond, *, uncond: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The teacher's conditional (and, if asked, unconditional) x0 predictions at ``x_t``."""
        x0_c = self.schedule.to_x0(model_output(self.teacher, x_t, t, cond), x_t, t)
        if not uncond:
            return x0_c, None
        return x0_c, self.schedule.to_x0(model_output(self.teacher, x_t, t, null_cond), x_t, t)

    def ca_gradient(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """Eq. 8, CA term: ``(a - 1)(x0_real,u - x0_real,c)`` at ``x_tau = add_noise(sg(x0), noise, tau)``."""
        x_tau = self.schedule.add_noise(x0.detach(), noise, tau)
        x0_c, x0_u = self.real_x0(x_tau, tau, cond, null_cond, uncond=True)
        scale = dmd_normaliser(x0, cfg(x0_c, x0_u, self.guidance_scale)) if self.normalise else None
        return cfg_augmentation_gradient(x0_c, x0_u, self.guidance_scale, scale)

    def dm_gradient(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """Eq. 8, DM term: ``x0_fake,c - x0_real,c`` at ``x_tau`` (the normaliser uses the guided real x0)."""
        x_tau = self.schedule.add_noise(x0.detach(), noise, tau)
        with_uncond = self.normalise and self.guidance_scale != 1.0
        x0_c, x0_u = self.real_x0(x_tau, tau, cond, null_cond, uncond=with_uncond)
        with torch.no_grad():
            x0_fake = self.schedule.to_x0(model_output(self.fake_score, x_tau, tau, cond), x_tau, tau)
        guided = cfg(x0_c, x0_u, self.guidance_scale) if with_uncond else x0_c
        return distribution_matching_gradient(
            x0_fake, x0_c, dmd_normaliser(x0, guided) if self.normalise else None
        )

    def ca_term(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """``½||x0 - sg(x0 - g_CA)||²`` (its gradient w.r.t. ``x0`` is ``g_CA / x0.numel()``)."""
        return pseudo_target_loss(x0, self.ca_gradient(x0, tau, noise, cond, null_cond))

    def dm_term(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """``½||x0 - sg(x0 - g_DM)||²``."""
        return pseudo_target_loss(x0, self.dm_gradient(x0, tau, noise, cond, null_cond))

    def generator_terms(
        self, x0: Tensor, t_gen: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Steps 3-4: draw ``tau`` and noise per term (one of each when ``shared_timestep``); the terms with weight > 0."""
        draws: dict[str, tuple[Tensor, Tensor]] = {}
        for name, schedule in (("ca", self.ca_schedule), ("dm", self.dm_schedule)):
            if self.shared_timestep and draws:
                draws[name] = next(iter(draws.values()))
            else:
                tau = self.renoising_timesteps(t_gen, schedule, generator)
                draws[name] = (tau, _randn_like(x0, generator))
        methods = {"ca": self.ca_term, "dm": self.dm_term}
        return {
            name: methods[name](x0, *draws[name], cond, null_cond)
            for name in methods
            if self.loss_weights[name] > 0
        }

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """Step 6: denoising loss of the fake score on ``sg(x0)`` at ``tau' ~ U[0, T)``."""
        tau = uniform_timesteps(
            x0.shape[0],
            0,
            self.schedule.num_train_timesteps,
            num_train_timesteps=self.schedule.num_train_timesteps,
            generator=generator,
            device=x0.device,
        )
        return self.fake_score.denoising_loss(x0.detach(), tau, _randn_like(x0, generator), cond)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_student, opt_fake = self.optimizers()
        x, labels = batch[0], batch[1] if len(batch) > 1 else None
        if self.sample_shape is None:
            self.sample_shape = tuple(x.shape[1:])
        gen = self._iteration_generator()
        cond, null_cond = self.conditions(labels)
        # 1. The generator's input at a random step of its chain (backward simulation).
        z_t, t_gen = self.generator_input(_randn_like(x, gen), cond, gen)
        update_generator = self.is_update_step(self.iteration, self.generator_update_every)
        # 2. x0 = G(z_t, t, c), with grad only when the generator learns this iteration.
        with torch.set_grad_enabled(update_generator):
            x0 = one_step_generate(
                self.student, self.schedule, z_t, t_gen, cond, prediction_type=self.student_prediction_type
            )
        terms: dict[str, Tensor] = {}
        if update_generator:
            # 3.-5. CA and DM terms on their own re-noised copies; weighted sum; generator step.
            terms = self.generator_terms(x0, t_gen, cond, null_cond, gen)
            loss = sum(self.loss_weights[name] * value for name, value in terms.items())
            self.manual_update(loss, opt_student, clip_grad_norm=self.max_grad_norm)
        # 6. Fake score: denoising on the detached sample.
        terms["fake"] = self.fake_score_loss(x0, cond, gen)
        self.manual_update(
            self.loss_weights["fake"] * terms["fake"], opt_fake, clip_grad_norm=self.max_grad_norm
        )
        self.iteration += 1
        self.log_losses({name: value.detach() for name, value in terms.items()})

    # ------------------------------------------------------------------ sampling and evaluation
    @property
    def reference_mixture(self) -> GaussianMixture | None:
        """The data mixture when known: the analytic teacher's, else the datamodule's ``mixture``."""
        if isinstance(self.teacher, AnalyticTeacher):
            return self.teacher.gmm
        mixture = getattr(getattr(self._trainer, "datamodule", None), "mixture", None)
        return mixture if isinstance(mixture, GaussianMixture) else None

    @torch.no_grad()
    def generate(self, model: nn.Module, labels: Tensor | None, n: int, generator: torch.Generator) -> Tensor:
        """``n`` samples of the student (its few-step chain) or of the teacher (``teacher_eval_steps``, CFG)."""
        shape = self.sample_shape or (self.reference_mixture.dim,)
        noise = torch.randn((n, *shape), generator=generator, device=generator.device).to(self.device)
        cond, null_cond = self.conditions(labels)
        if model is self.student:
            return few_step_sample(
                self.student,
                self.schedule,
                noise,
                self.generator_timesteps,
                cond,
                generator=generator,
                prediction_type=self.student_prediction_type,
            )
        return teacher_sample(
            model, self.schedule, noise, self.teacher_eval_steps, cond, null_cond, self.guidance_scale
        )

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` student samples ``(n, *sample_shape)``, labels drawn from the mixture's class weights (SampleLogger)."""
        labels = None
        gmm = self.reference_mixture
        if self.num_classes is not None:
            if gmm is not None and gmm.num_classes == self.num_classes:
                prior = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(
                    0, gmm.class_of_mode.cpu(), gmm.weights.cpu().double()
                )
            else:
                prior = torch.ones(self.num_classes, dtype=torch.float64)
            labels = torch.multinomial(
                prior.to(generator.device), n, replacement=True, generator=generator
            ).to(self.device)
        return self.generate(self.student, labels, n, generator)

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """SWD, MMD, mode coverage and the share of samples on a mode of their class, against the batch."""
        gmm = self.reference_mixture
        if gmm is None:
            return {}
        x, labels = batch[0], batch[1] if self.num_classes is not None else None
        generator = torch.Generator(device=self.device).manual_seed(self._eval_seed)
        samples = self.generate(model, labels, x.shape[0], generator)
        return sample_metrics(samples.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1), labels, gmm)

    def _evaluate_stage(self, batch: Any, batch_idx: int, stage: str) -> None:
        self._eval_seed = self.noise_seed + 7919 * (batch_idx + 1)
        first = self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking
        self._evaluation_step(batch, stage)
        gmm = self.reference_mixture
        if first and gmm is not None:  # the noise floor: a second data sample with the same labels
            x, labels = batch[0], batch[1] if self.num_classes is not None else None
            other = gmm.sample(
                x.shape[0],
                torch.Generator().manual_seed(self._eval_seed),
                labels.cpu() if labels is not None else None,
            )
            floor = sample_metrics(other.to(x), x.reshape(x.shape[0], -1), labels, gmm)
            self.log_dict(
                {f"{stage}/{k}_floor": v for k, v in floor.items()}, on_epoch=True, batch_size=x.shape[0]
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate_stage(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate_stage(batch, batch_idx, "test")

    # ------------------------------------------------------------------ optimizers, checkpoints, helpers
    def configure_optimizers(self) -> Any:
        student = [p for p in self.student.parameters() if p.requires_grad]
        return self.optimizer(student), self.fake_optimizer(self.fake_score.trainable_parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["decoupled_dmd"] = {"iteration": self.iteration, "sample_shape": self.sample_shape}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("decoupled_dmd", {})
        self.iteration = int(state.get("iteration", 0))
        if state.get("sample_shape") is not None:
            self.sample_shape = tuple(state["sample_shape"])

    def _iteration_generator(self) -> torch.Generator:
        """The only random source of an iteration: a pure function of (seed, iteration, rank), so resume is exact."""
        rank = self.global_rank if self._trainer is not None else 0
        seed = int(np.random.SeedSequence([self.noise_seed, self.iteration, rank]).generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(seed)


def _randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        x.device, x.dtype
    )


def sample_metrics(
    samples: Tensor, data: Tensor, labels: Tensor | None, gmm: GaussianMixture
) -> dict[str, Tensor]:
    """Bench metrics of ``samples`` ``(N, D)`` against a data sample ``(N, D)`` with the same labels."""
    samples, data = samples.detach().float().cpu(), data.detach().float().cpu()
    metrics = {
        "swd": sliced_wasserstein(samples, data),
        "mmd": rbf_mmd2(samples, data),
        "mode_coverage": mode_coverage(samples, gmm),
    }
    if labels is not None and gmm.num_classes:
        modes = mode_assignment(samples, gmm)
        classes = torch.cat([gmm.class_of_mode.cpu(), torch.tensor([-1])])[modes]
        metrics["on_class"] = (classes == labels.cpu()).double().mean()
    return {k: v.float() for k, v in metrics.items()}
