"""Phased DMD: few-step distribution matching by SNR phases (Fan et al., arXiv 2510.27684).

"Phased DMD: Few-step Distribution Matching Distillation via Score Matching within
Subintervals". No official code; written from the paper. The timestep range is split at
``T = t_0 > t_1 > ... > t_K = 0``; the few-step generator is a mixture of experts
(:class:`PhasedGenerator`, one module per phase), expert ``k`` mapping ``x_{t_k}`` to
``x_{t_{k+1}}`` (one step each, the last one to ``x_0``). Phases (0-indexed here) train one
expert after the other:

1. Backward simulation: noise -> experts ``0..k-1`` (frozen, no grad) -> ``x_{t_k}``; expert ``k``
   predicts x̂₀ and a DDIM/Euler step gives its sample ``x_s``, ``s = t_{k+1}``.
2. Noise it *within the subinterval*: ``t ~ U(s, T]``, ``x_t = a x_s + b ε`` with ``a = α_t/α_s``
   and ``b² = σ_t² - a² σ_s²`` (the forward process restarted at ``s``).
3. Fake-score step (5 of every 6 iterations): regress the fake score on the *unbiased subinterval
   target* (:func:`subinterval_target`; its denoising target is ``x_s``, not ``x_0``) with the
   weight ``1 / min(σ_t²/b², clamp)``.
4. Generator step: ``g = (a/σ_t)(ε_real - ε_fake) = a (s_fake - s_real)`` (the exact KL gradient
   w.r.t. ``x_s``) through the pseudo-target loss ``½‖x_s - sg(x_s - g)‖²``.
5. At each phase boundary (``ProgressiveSchedule`` stages call :meth:`PhasedDMD.on_stage_change`)
   the fake score is re-initialised from the teacher and its optimizer state cleared.

Total loss: ``w_fake fake`` on fake-score iterations, ``w_dm dm`` on generator iterations (never
summed; ``loss_weights``, 1 each).
The last phase (``s = 0``) is plain DMD: the target and weight reduce to the standard ones.

=================================== =============================== ===================
paper                               config key (model.init_args.*)  default
=================================== =============================== ===================
phase boundaries t_k / T            ``phase_boundaries``            (1.0, 0.5, 0.0)
iterations at which phases advance  ``phase_steps``                 None (set ``phase``)
fake updates per generator update   ``fake_updates_per_generator``  5
t ~ (t_{k+1}, T] or (t_{k+1}, t_k]  ``timestep_range``              "to_noise"
subinterval target (ablation)       ``subinterval_target``          "unbiased"
clamp of the fake-loss weight       ``fake_loss_clamp``             10.0
DMD2 normaliser instead of KL w     ``normalise_gradient``          False
generator / fake-score lr           ``generator_lr`` / ``fake_lr``  5e-5 / 4e-7
expert / fake-score initialisation  ``expert_init`` / ``fake_reset`` "teacher" / "teacher"
=================================== =============================== ===================
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks.progressive_schedule import ProgressiveSchedule
from lightning_distill.diffusion import NoiseSchedule, broadcast_to, guided_output, model_output
from lightning_distill.diffusion.phases import (
    PhasedGenerator,
    subinterval_coefficients,
    subinterval_noise,
    subinterval_target,
)
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule
from lightning_distill.losses.distribution_matching import denoising_loss, dmd_gradient, pseudo_target_loss

__all__ = [
    "PhasedDMD",
    "PhasedGenerator",
    "subinterval_coefficients",
    "subinterval_noise",
    "subinterval_target",
]


class PhasedDMD(DiffusionDistillationModule):
    """Phased DMD (see the module docstring); the student is the template of every expert.

    Args:
        student: the expert architecture (diffusers call convention); copied once per phase.
        teacher: the frozen real score, predicting ``schedule.prediction_type``.
        schedule: the noise schedule of teacher, experts and fake score.
        fake_score: the fake-score network; ``None`` copies the teacher.
        phase_boundaries: ``t_k / T`` from 1.0 down to 0.0, strictly decreasing (``K`` phases).
        phase_steps: the ``K - 1`` training iterations at which the phase advances; the recipe
            then adds a ``ProgressiveSchedule`` for ``phase``. ``None``: drive ``phase`` yourself.
        fake_updates_per_generator: fake-score iterations per generator iteration (each iteration
            takes exactly one optimizer step, so ``global_step`` counts iterations).
        subinterval_target: ``"unbiased"`` (the paper) or ``"biased"`` (``x_s`` treated as clean data).
        timestep_range: ``"to_noise"``: ``t ~ U(t_{k+1}, T]`` (the paper); ``"phase"``: ``U(t_{k+1}, t_k]``.
        timestep_limits: fractions of ``T`` that bound every draw of ``t`` (DMD2's 0.02 and 0.98).
        fake_loss_clamp: the cap ``c`` of the fake-loss weight ``1 / min(σ_t²/σ_{t|s}², c)``.
        normalise_gradient: divide the gradient by ``mean|x_s - x̂_s^real|`` (DMD2's normaliser
            moved to ``s``) instead of the exact KL weight.
        expert_init: ``"teacher"`` (copy the teacher's weights), ``"student"`` (copies of
            ``student``), ``"previous"`` (expert ``k`` starts from expert ``k-1`` at its phase).
        fake_reset: at a phase change, reload the fake score from ``"teacher"`` or from its
            ``"initial"`` weights (for parameter-free teachers such as ``AnalyticTeacher``).
        generator_lr, fake_lr: learning rates of the two optimizers.
        conditional: pass ``batch[1]`` as the condition to every network.
        guidance_scale: CFG scale of the teacher (real score) only.
        null_label: the null condition for CFG (an int label; ``None``: zeros like the condition).
        max_grad_norm: gradient clipping of both updates (``None``: off).
        noise_seed: seed of the training noise (``None``: ``torch.initial_seed()`` at setup).
        optimizer: ``params -> Optimizer``, used for both optimizers with their own lr.
        loss_weights: weights of ``dm`` and ``fake``.

    Raises:
        ValueError: for invalid arguments; the message names the config key.
    """

    loss_terms = ("dm", "fake")
    checkpoint_key: ClassVar[str] = "phased_dmd"
    seed_words: ClassVar[int] = 1  # one 32-bit SeedSequence word per iteration seed

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule,
        fake_score: nn.Module | None = None,
        phase_boundaries: Sequence[float] = (1.0, 0.5, 0.0),
        phase_steps: Sequence[int] | None = None,
        fake_updates_per_generator: int = 5,
        subinterval_target: Literal["unbiased", "biased"] = "unbiased",
        timestep_range: Literal["to_noise", "phase"] = "to_noise",
        timestep_limits: tuple[float, float] = (0.02, 0.98),
        fake_loss_clamp: float = 10.0,
        normalise_gradient: bool = False,
        expert_init: Literal["teacher", "student", "previous"] = "teacher",
        fake_reset: Literal["teacher", "initial"] = "teacher",
        generator_lr: float = 5e-5,
        fake_lr: float = 4e-7,
        conditional: bool = False,
        guidance_scale: float = 1.0,
        null_label: int | None = None,
        max_grad_norm: float | None = None,
        noise_seed: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        loss_weights: dict[str, float] | None = None,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"`schedule` must be a NoiseSchedule, got {type(schedule).__name__}; set `model.init_args.schedule`."
            )
        super().__init__(
            student, teacher, schedule, noise_seed=noise_seed, null_label=null_label, loss_weights=loss_weights,
            optimizer=optimizer,
        )  # fmt: skip
        _validate(
            phase_boundaries=phase_boundaries,
            phase_steps=phase_steps,
            fake_updates_per_generator=fake_updates_per_generator,
            subinterval_target=subinterval_target,
            timestep_range=timestep_range,
            timestep_limits=timestep_limits,
            fake_loss_clamp=fake_loss_clamp,
            expert_init=expert_init,
            fake_reset=fake_reset,
        )
        self.save_hyperparameters(ignore=["student", "teacher", "fake_score", "schedule", "optimizer"])
        self.num_phases = len(phase_boundaries) - 1
        self.phase_steps = None if phase_steps is None else list(phase_steps)
        self.fake_updates_per_generator = fake_updates_per_generator
        self.subinterval_target = subinterval_target
        self.timestep_range = timestep_range
        self.timestep_limits = tuple(timestep_limits)
        self.fake_loss_clamp = float(fake_loss_clamp)
        self.normalise_gradient = normalise_gradient
        self.expert_init, self.fake_reset = expert_init, fake_reset
        self.generator_lr, self.fake_lr, self.max_grad_norm = generator_lr, fake_lr, max_grad_norm
        self.conditional, self.guidance_scale, self.phase = conditional, guidance_scale, 0
        self.timesteps = [self._to_timestep(float(b)) for b in phase_boundaries]
        for k in range(self.num_phases):
            self._timestep_bounds(k)  # raises for an empty range
        self.fake_score = self.build_fake_score(fake_score)
        if fake_reset == "initial":
            self.register_frozen("fake_initial", copy.deepcopy(self.fake_score.model))
        elif not self.fake_score.is_lora:
            _check_loadable(self.fake_score.model, teacher, "fake_reset")
        experts = [copy.deepcopy(student) for _ in range(self.num_phases)]
        for expert in experts:
            if expert_init == "teacher":
                _check_loadable(expert, teacher, "expert_init")
                expert.load_state_dict(teacher.state_dict())
            expert.requires_grad_(True).train()
        self.student = PhasedGenerator(experts, schedule, self.timesteps[:-1])

    # ------------------------------------------------------------------ the paper's equations
    def fake_score_loss(self, x_s: Tensor, phase: int, cond: Any, gen: torch.Generator) -> Tensor:
        """Subinterval score matching: ``w ‖F(x_t, t) - target(x_s, ε)‖²`` with ``w = 1/min(σ_t²/σ_{t|s}², c)``."""
        t, (a_s, s_s), (a_t, s_t), noise = self._draw(x_s, phase, gen)
        x_t = subinterval_noise(x_s.detach(), noise, a_s, s_s, a_t, s_t).to(x_s.dtype)
        x0_target, eps_target = subinterval_target(x_s.detach(), noise, a_s, s_s, a_t, s_t)
        target = self.schedule.target(x0_target, eps_target, t)
        sigma_ts = subinterval_coefficients(a_s, s_s, a_t, s_t)[1]
        weight = 1.0 / torch.clamp(s_t.float() ** 2 / sigma_ts**2, max=self.fake_loss_clamp)
        return denoising_loss(model_output(self.fake_score, x_t, t, cond), target, weighting=weight)

    def distribution_matching_loss(self, x_s: Tensor, phase: int, cond: Any, gen: torch.Generator) -> Tensor:
        """``½‖x_s - sg(x_s - g)‖²`` with ``g = (α_{t|s}/σ_t)(ε_real - ε_fake)``, or DMD2-normalised at ``s``."""
        t, (a_s, s_s), (a_t, s_t), noise = self._draw(x_s, phase, gen)
        x_t = subinterval_noise(x_s.detach(), noise, a_s, s_s, a_t, s_t).to(x_s.dtype)
        with torch.no_grad():
            eps_real = self.schedule.to_eps(self._real_output(x_t, t, cond), x_t, t)
            eps_fake = self.schedule.to_eps(model_output(self.fake_score, x_t, t, cond), x_t, t)
        a_ts, s_ts = (broadcast_to(c, x_s) for c in subinterval_coefficients(a_s, s_s, a_t, s_t))
        s_t = broadcast_to(s_t.float(), x_s)
        if self.normalise_gradient:  # x̂_s = E[x_s | x_t] under each score, compared as DMD2 compares x̂₀
            x_s_real, x_s_fake = ((x_t.float() - s_ts**2 / s_t * e) / a_ts for e in (eps_real, eps_fake))
            grad = dmd_gradient(x_s_fake, x_s_real, x_s)
        else:
            grad = a_ts / s_t * (eps_real - eps_fake)
        return pseudo_target_loss(x_s, grad)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_generator, opt_fake = self.optimizers()
        phase = self._check_phase()
        x, cond = self.split_batch(batch)
        self.record_sample_shape(x)
        gen = self.iteration_generator(device=x.device)
        # 1. Backward simulation to x_{t_phase}, then expert `phase` (with grad on generator steps only).
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        generator_step = self._is_generator_step(self.iteration)
        x_s = self.student.generate(noise, cond, last=phase, grad=generator_step)
        # 2-4. One update: the fake score on subinterval targets, or the generator on the DM gradient.
        if generator_step:
            terms = {"dm": self.distribution_matching_loss(x_s, phase, cond, gen)}
            self.update(opt_generator, terms, turn="generator", max_grad_norm=self.max_grad_norm)
        else:
            terms = {"fake": self.fake_score_loss(x_s.detach(), phase, cond, gen)}
            self.update(opt_fake, terms, turn="fake_score", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    def on_stage_change(self, name: str, old: Any, new: Any) -> None:
        """5. A new phase: reset the fake score (and its optimizer state); ``"previous"`` experts start from the last one."""
        if name != "phase":
            return
        with torch.no_grad():
            if self.fake_reset == "teacher":
                self.fake_score.reset_from(self.teacher)
            else:
                self.fake_score.model.load_state_dict(self.fake_initial.state_dict())
            if self.expert_init == "previous":
                for k in range(int(old) + 1, int(new) + 1):
                    self.student.experts[k].load_state_dict(self.student.experts[k - 1].state_dict())
        if self._trainer is not None and len(self.trainer.optimizers) == 2:
            self.trainer.optimizers[1].state.clear()

    def configure_optimizers(self) -> Any:
        generator = self.optimizer([{"params": list(self.student.parameters()), "lr": self.generator_lr}])
        fake = self.optimizer([{"params": self.fake_score.trainable_parameters(), "lr": self.fake_lr}])
        return generator, fake

    def configure_callbacks(self) -> list:
        if self.phase_steps is None:
            return []
        stages = {"kind": "stages", "boundaries": self.phase_steps, "values": list(range(self.num_phases))}
        return [ProgressiveSchedule({"phase": stages})]

    # ------------------------------------------------------------------ sampling, batches, checkpoints
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        """``n`` samples of the full K-step generator from noise drawn with ``generator``."""
        return self.student.generate(self.initial_noise(n, generator), cond)

    def split_batch(self, batch: Any) -> tuple[Tensor, Any]:
        """``(x, labels)`` with ``conditional``, else ``(x, None)``."""
        x, cond = super().split_batch(batch)
        return x, cond if self.conditional else None

    @property
    def evaluation_seed(self) -> int:
        """Validation samples are drawn from seed 0 (the floor from seed 1), whatever ``noise_seed``."""
        return 0

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "phase": self.phase}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        legacy = {} if state.get("seed") is None else {"noise_seed": state["seed"]}  # older checkpoints
        super().load_checkpoint_state({**legacy, **state})
        self.phase = state.get("phase", 0)

    # ------------------------------------------------------------------ helpers
    def _is_generator_step(self, iteration: int) -> bool:
        return self.is_update_step(
            iteration, self.fake_updates_per_generator + 1, offset=self.fake_updates_per_generator
        )

    def _check_phase(self) -> int:
        if (
            isinstance(self.phase, bool)
            or not isinstance(self.phase, int)
            or not 0 <= self.phase < self.num_phases
        ):
            raise ValueError(
                f"`phase` must be an int in [0, {self.num_phases}), got {self.phase!r}; check `model.init_args.phase_steps` or the schedule that sets `phase`."
            )
        return self.phase

    def _to_timestep(self, fraction: float) -> int | float:
        if fraction == 1.0:
            return self.schedule.max_timestep
        return (
            int(fraction * self.schedule.num_train_timesteps)
            if self.schedule.kind == "vp"
            else fraction * self.schedule.num_train_timesteps
        )

    def _timestep_bounds(self, phase: int) -> tuple[float, float]:
        T = self.schedule.num_train_timesteps
        low = max(float(self.timesteps[phase + 1]), self.timestep_limits[0] * T)
        high = min(
            float(self.timesteps[0 if self.timestep_range == "to_noise" else phase]),
            self.timestep_limits[1] * T,
        )
        if self.schedule.kind == "vp":
            low, high = int(low), int(high)
        if low >= high:
            raise ValueError(
                f"Phase {phase} leaves no timesteps in ({low}, {high}]; widen `model.init_args.timestep_limits` or move `phase_boundaries`."
            )
        return low, high

    def _draw(
        self, x_s: Tensor, phase: int, gen: torch.Generator
    ) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor]:
        """``t ~ U(low, high]`` per sample, ``(α_s, σ_s)`` of the phase end (``(1, 0)`` when clean or biased), ``(α_t, σ_t)``, ε."""
        low, high = self._timestep_bounds(phase)
        n, device = x_s.shape[0], x_s.device
        if self.schedule.kind == "vp":
            t = torch.randint(int(low) + 1, int(high) + 1, (n,), generator=gen, device=device)
        else:
            t = low + (high - low) * (1.0 - torch.rand((n,), generator=gen, device=device))
        noise = torch.randn(x_s.shape, generator=gen, device=device, dtype=x_s.dtype)
        if phase + 1 == self.num_phases or self.subinterval_target == "biased":
            end = (torch.ones((), device=device), torch.zeros((), device=device))
        else:
            end = self.schedule.alpha_sigma(torch.tensor(self.timesteps[phase + 1], device=device))
        return t, end, self.schedule.alpha_sigma(t), noise

    def _real_output(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        if cond is None or self.guidance_scale == 1.0:
            return model_output(self.teacher, x_t, t, cond)
        null = (
            torch.full_like(cond, self.null_label) if self.null_label is not None else torch.zeros_like(cond)
        )
        return guided_output(self.teacher, x_t, t, cond, null, self.guidance_scale)


def _check_loadable(module: nn.Module, teacher: nn.Module, key: str) -> None:
    own, source = module.state_dict(), teacher.state_dict()
    if set(own) != set(source) or any(own[k].shape != source[k].shape for k in own):
        raise ValueError(
            f"`{key}` needs a module with the teacher's architecture ({type(teacher).__name__}, "
            f"{len(source)} tensors), got {type(module).__name__} ({len(own)} tensors); set "
            f"`model.init_args.{key}` to {'student' if key == 'expert_init' else 'initial'}."
        )


def _validate(**arguments: Any) -> None:
    """Raise ``ValueError`` naming the config key for the first invalid constructor argument."""
    bounds, steps = [float(b) for b in arguments["phase_boundaries"]], arguments["phase_steps"]
    choices = {
        "subinterval_target": ("unbiased", "biased"),
        "timestep_range": ("to_noise", "phase"),
        "expert_init": ("teacher", "student", "previous"),
        "fake_reset": ("teacher", "initial"),
    }
    low, high = arguments["timestep_limits"]
    ratio = arguments["fake_updates_per_generator"]
    problems = {
        "phase_boundaries": (len(bounds) < 2 or bounds[0] != 1.0 or bounds[-1] != 0.0
                             or any(a <= b for a, b in zip(bounds, bounds[1:])), "must decrease strictly from 1.0 to 0.0"),
        "phase_steps": (steps is not None and (len(steps) != len(bounds) - 2 or list(steps) != sorted(set(steps))
                        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps)),
                        f"must be {len(bounds) - 2} increasing positive ints (one per phase change) or null"),
        "fake_updates_per_generator": (isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 0, "must be an int >= 0"),
        "timestep_limits": (not 0.0 <= low < high <= 1.0, "must be two fractions of T with 0 <= low < high <= 1"),
        "fake_loss_clamp": (not arguments["fake_loss_clamp"] >= 1.0, "must be >= 1"),
        **{key: (arguments[key] not in allowed, f"must be one of {allowed}") for key, allowed in choices.items()},
    }  # fmt: skip
    for key, (bad, rule) in problems.items():
        if bad:
            raise ValueError(f"`{key}` {rule}, got {arguments[key]!r}; set `model.init_args.{key}`.")
