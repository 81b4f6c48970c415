"""SwiftBrush: one-step text-to-image generation by variational score distillation, without images.

Paper: "SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational Score Distillation"
(Thuan Hoang Nguyen and Anh Tran, CVPR 2024, arXiv 2312.05239); official code
``VinAIResearch/SwiftBrush`` (``train_swiftbrush.py``).

Algorithm (one training step; only conditions are used, never images):

1. Draw pure noise ``z`` and run the student once at ``t = T - 1``: it predicts ε (the official
   student is the SD UNet), converted with the schedule's ``(α_T, σ_T)``: ``x̂₀ = (z - σ_T ε̂) / α_T``
   (ᾱ_T = 0.0047 for SD, from the scheduler; ``student_prediction_type`` picks another output).
2. Noise the sample, ``x_t = α_t x̂₀ + σ_t ε`` with ``t ~ U[min_step, max_step)``.
3. Teacher and fake score predict ε at ``x_t``, both with classifier-free guidance (scale 4.5).
4. VSD gradient ``g = w(t) (ε_teacher - ε_fake)`` with ``w(t) = σ_t²``; update the student with
   ``½‖x̂₀ - sg(x̂₀ - g)‖²`` (its gradient w.r.t. ``x̂₀`` is ``g``).
5. Update the fake score (LoRA on the teacher) by denoising ``sg(x̂₀)`` at ``t ~ U[0, T)``: ε-MSE
   weighted by ``α_t²``, 10 % of the conditions replaced by the null condition.

Total loss: none is summed; the student minimises ``w_vsd vsd`` and the fake score
``w_fake_score fake_score`` (``loss_weights``, 1 each), with two Adam optimizers updated 1:1
(manual optimization).

Hyper-parameters -> config keys (``model.init_args.*``):

====================================  ========================================================  =====================
paper / official code                 key                                                       default
====================================  ========================================================  =====================
CFG scale of both scores              ``guidance_scale``                                        4.5
VSD timesteps ``[0.02 T, 0.981 T)``   ``min_step``, ``max_step``                                20, 981
VSD weight ``w(t)``                   ``vsd_weighting``                                         ``sigma_squared``
fake-score loss weight ``α_t²``       ``fake_score_weighting``                                  ``alpha_squared``
null prompts in the LoRA update       ``condition_dropout``                                     0.1
fake score = LoRA on the teacher      ``fake_score_mode``                                       ``lora``
LoRA rank / alpha / layers            ``lora_rank``, ``lora_alpha``, ``lora_target_modules``    64 / 108 / to_q, to_v
student / LoRA optimizer (Adam, lr)   ``optimizer``, ``fake_score_optimizer``                   1e-6 / 1e-3 (``swiftbrush_student_adam`` / ``swiftbrush_lora_adam``)
gradient clipping (both)              ``max_grad_norm``                                         1.0
student starts as the teacher         ``student_init``                                          ``teacher``
student predicts ε (the SD UNet)      ``student_prediction_type``                               ``None`` (schedule's)
====================================  ========================================================  =====================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_distill.data.conditions import ConditionDataModule
from lightning_distill.diffusion import (
    FakeScore,
    NoiseSchedule,
    drop_condition,
    guided_output,
    one_step_generate,
    sample,
)
from lightning_distill.diffusion.fake_score import ResidualScore
from lightning_distill.diffusion.optimizers import swiftbrush_lora_adam, swiftbrush_student_adam
from lightning_distill.diffusion.recipe_base import (
    DiffusionDistillationModule,
    check_option,
    check_teacher_schedule,
    first_tensor,
)
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.schedule import PREDICTION_TYPES
from lightning_distill.losses.distribution_matching import pseudo_target_loss, vsd_gradient

__all__ = ["ConditionDataModule", "ResidualScore", "SwiftBrush", "fake_score_adam", "student_adam"]


#: Earlier names of the official optimizers (now in :mod:`lightning_distill.diffusion.optimizers`).
student_adam = swiftbrush_student_adam
fake_score_adam = swiftbrush_lora_adam


class SwiftBrush(DiffusionDistillationModule):
    """SwiftBrush recipe. See the module docstring for the algorithm.

    Args:
        student: the one-step generator, a denoiser called ``student(z, T - 1, cond)`` (a diffusers
            UNet, or an ``MLPDenoiser`` on the bench); it predicts in the schedule's parameterisation.
        teacher: the frozen teacher with the same call signature (``AnalyticTeacher`` on the bench).
        schedule: the teacher's noise schedule (default: Stable Diffusion's, ``scaled_linear`` ε).
        fake_score_mode: ``"lora"`` (LoRA adapters on a copy of the teacher, the paper),
            ``"residual"`` (teacher + gated trainable ``fake_score``, the LoRA analogue for a teacher
            without parameters) or ``"separate"`` (``fake_score`` alone, from its own initialisation).
        fake_score: the trainable model of the ``"residual"`` and ``"separate"`` modes.
        lora_rank: LoRA rank (``"lora"`` mode).
        lora_alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
        lora_target_modules: names of the adapted layers.
        guidance_scale: CFG scale ``s`` of both scores (``uncond + s (cond - uncond)``); 1 disables it.
        min_step: first timestep of the VSD gradient (included).
        max_step: last timestep of the VSD gradient (excluded).
        vsd_weighting: ``w(t)``: ``"sigma_squared"`` (σ_t², the official code) or ``"none"`` (1).
        fake_score_weighting: weight of the fake score's ε-MSE: ``"alpha_squared"`` (official) or ``"none"``.
        condition_dropout: share of conditions replaced by the null condition in the fake-score update.
        null_condition: the null condition: a class label (the ``num_classes`` of the models), a tensor
            (a null-prompt embedding, batch 1), or ``None`` to take ``trainer.datamodule.null_condition``.
        student_init: ``"teacher"`` copies the teacher's weights into the student (the paper);
            ``"random"`` keeps the student as built.
        student_prediction_type: what the student predicts at ``t = T - 1``; ``None`` is the
            schedule's (ε for SD, the paper). ``"sample"`` avoids the ``1 / α_T`` amplification of the
            student's error when ``x̂₀ = (z - σ_T ε̂) / α_T`` (DMD2's bench choice).
        sample_shape: shape of one sample, e.g. ``(4, 64, 64)``; ``None`` infers it from the models.
        max_grad_norm: gradient-norm clipping of both updates (``None`` disables it).
        eval_steps: DDIM steps of the teacher's reference samples in validation (logged once).
        noise_seed: seed of the training noise, timesteps and dropout (``None``: from ``seed_everything``);
            each step draws from ``(seed, rank, iteration)``.
        loss_weights: weights of ``vsd`` (student) and ``fake_score`` (fake score), 1 each.
        optimizer: student optimizer (default
            :func:`~lightning_distill.diffusion.optimizers.swiftbrush_student_adam`: Adam, lr 1e-6).
        fake_score_optimizer: fake-score optimizer (default
            :func:`~lightning_distill.diffusion.optimizers.swiftbrush_lora_adam`: Adam, lr 1e-3).

    Raises:
        ValueError: an unknown mode, a missing or superfluous ``fake_score``, a bad range or scale,
            ``student_init="teacher"`` with a teacher without parameters, an unknown sample shape, or
            a teacher whose schedule differs from ``schedule``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("vsd", "fake_score")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        fake_score_mode: Literal["lora", "residual", "separate"] = "lora",
        fake_score: nn.Module | None = None,
        lora_rank: int = 64,
        lora_alpha: float = 108.0,
        lora_target_modules: Sequence[str] = ("to_q", "to_v"),
        guidance_scale: float = 4.5,
        min_step: int = 20,
        max_step: int = 981,
        vsd_weighting: Literal["sigma_squared", "none"] = "sigma_squared",
        fake_score_weighting: Literal["alpha_squared", "none"] = "alpha_squared",
        condition_dropout: float = 0.1,
        null_condition: int | Tensor | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        student_prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] | None = None,
        sample_shape: Sequence[int] | None = None,
        max_grad_norm: float | None = 1.0,
        eval_steps: int = 50,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = swiftbrush_student_adam,
        fake_score_optimizer: OptimizerCallable = swiftbrush_lora_adam,
    ) -> None:
        check_option(
            isinstance(eval_steps, int) and not isinstance(eval_steps, bool) and eval_steps >= 1,
            "eval_steps",
            eval_steps,
            "an integer >= 1",
        )
        super().__init__(
            student,
            teacher,
            schedule,
            noise_seed=noise_seed,
            sample_shape=sample_shape,
            eval_teacher_steps=eval_steps,
            loss_weights=loss_weights,
            optimizer=optimizer,
            fake_score_optimizer=fake_score_optimizer,
        )
        self.save_hyperparameters(
            ignore=[
                "student",
                "teacher",
                "fake_score",
                "schedule",
                "null_condition",
                "optimizer",
                "fake_score_optimizer",
            ]
        )
        check_teacher_schedule(teacher, self.schedule)
        T = self.schedule.num_train_timesteps
        for key, value, allowed in (
            ("fake_score_mode", fake_score_mode, ("lora", "residual", "separate")),
            ("vsd_weighting", vsd_weighting, ("sigma_squared", "none")),
            ("fake_score_weighting", fake_score_weighting, ("alpha_squared", "none")),
            ("student_init", student_init, ("teacher", "random")),
            ("student_prediction_type", student_prediction_type, (None, *PREDICTION_TYPES)),
        ):
            check_option(value in allowed, key, value, f"one of {allowed}")
        if student_init == "teacher" and student_prediction_type not in (None, self.schedule.prediction_type):
            raise ValueError(
                f"`student_init: teacher` copies a teacher that predicts {self.schedule.prediction_type!r} into a "
                f"student read as {student_prediction_type!r}; set `model.init_args.student_prediction_type: null` "
                "or `student_init: random`."
            )
        if not (isinstance(min_step, int) and isinstance(max_step, int) and 0 <= min_step < max_step <= T):
            raise ValueError(
                f"`min_step` and `max_step` must be integers with 0 <= min_step < max_step <= {T}, got "
                f"{min_step!r} and {max_step!r}; set `model.init_args.min_step` / `max_step`."
            )
        check_option(guidance_scale >= 0, "guidance_scale", guidance_scale, ">= 0")
        check_option(0.0 <= condition_dropout <= 1.0, "condition_dropout", condition_dropout, "in [0, 1]")
        if student_init == "teacher":
            self.init_from_teacher(self.student)
        if fake_score_mode == "lora":
            if fake_score is not None:
                raise ValueError(
                    "`fake_score` is used by the 'residual' and 'separate' modes only; remove it or set "
                    "`model.init_args.fake_score_mode`."
                )
            if next(teacher.parameters(), None) is None:
                raise ValueError(
                    f"LoRA needs a teacher with parameters, {type(teacher).__name__} has none; set "
                    "`model.init_args.fake_score_mode: residual` and give `model.init_args.fake_score`."
                )
            self.fake_score = FakeScore.lora_on(
                self.teacher,
                self.schedule,
                rank=lora_rank,
                alpha=lora_alpha,
                target_modules=tuple(lora_target_modules),
            )
        else:
            if not isinstance(fake_score, nn.Module):
                raise ValueError(
                    f"`fake_score_mode={fake_score_mode!r}` needs a trainable `fake_score` module (e.g. an "
                    "MLPDenoiser); set `model.init_args.fake_score`."
                )
            residual = fake_score_mode == "residual"
            self.fake_score = self.build_fake_score(
                ResidualScore(self.teacher, fake_score) if residual else fake_score
            )
        self.guidance_scale = float(guidance_scale)
        self.min_step, self.max_step = min_step, max_step
        self.vsd_weighting, self.fake_score_weighting = vsd_weighting, fake_score_weighting
        self.condition_dropout = float(condition_dropout)
        self.student_prediction_type = student_prediction_type
        self.null_cond = torch.tensor([null_condition]) if isinstance(null_condition, int) else null_condition
        self.sample_shape = self.resolve_sample_shape()
        self.max_grad_norm = max_grad_norm
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ the paper's equations
    def generate(self, noise: Tensor, cond: Any) -> Tensor:
        """Step 1: ``x̂₀ = (z - σ_T ε̂(z, T - 1, c)) / α_T`` in the schedule's algebra; keeps grad. ``(B, ...)`` float32."""
        return one_step_generate(
            self.student,
            self.schedule,
            noise,
            self.schedule.max_timestep,
            cond,
            prediction_type=self.student_prediction_type,
        )

    def guided_eps(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        """Step 3: the CFG prediction ``uncond + s (cond - uncond)`` of ``model``, as ε ``(B, ...)`` float32."""
        null = self.null_condition(cond) if self.guidance_scale != 1 else None
        out = guided_output(model, x_t, t, cond, null, self.guidance_scale)
        return self.schedule.to_eps(out, x_t, t)

    def vsd_weight(self, t: Tensor) -> Tensor:
        """``w(t)``: σ_t² (official) or 1, ``(B,)``."""
        sigma = self.schedule.alpha_sigma(t)[1]
        return sigma**2 if self.vsd_weighting == "sigma_squared" else torch.ones_like(sigma)

    def vsd_loss(self, x0: Tensor, cond: Any) -> Tensor:
        """Steps 2-4: ``½‖x̂₀ - sg(x̂₀ - g)‖²`` with ``g = w(t)(ε_teacher - ε_fake)`` at ``x_t`` from ``sg(x̂₀)``."""
        gen = self._rng()
        t = self.timesteps_like(x0, self.min_step, self.max_step, gen)
        x_t = self.schedule.add_noise(x0.detach(), randn_like(x0, gen), t)
        with torch.no_grad():
            eps_teacher = self.guided_eps(self.teacher, x_t, t, cond)
            eps_fake = self.guided_eps(self.fake_score, x_t, t, cond)
        return pseudo_target_loss(x0, vsd_gradient(eps_teacher, eps_fake, self.vsd_weight(t)))

    def fake_score_loss(self, x0: Tensor, cond: Any) -> Tensor:
        """Step 5: ``α_t² ‖ε_fake(x_t, t, c') - ε‖²`` on ``sg(x̂₀)``, ``t ~ U[0, T)``, ``c'`` = ``c`` with some nulls."""
        gen = self._rng()
        t = self.timesteps_like(x0, 0, self.schedule.num_train_timesteps, gen)
        noise = randn_like(x0, gen)
        if self.condition_dropout > 0:
            cond = drop_condition(cond, self.null_condition(cond), self.condition_dropout, generator=gen)
        weight = (
            self.schedule.alpha_sigma(t)[0] ** 2 if self.fake_score_weighting == "alpha_squared" else None
        )
        return self.fake_score.denoising_loss(x0.detach(), t, noise, cond, weighting=weight)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        cond = _check_batch(batch)
        opt_student, opt_fake = self.optimizers()
        self._reseed()
        gen = self._rng()
        # 1. one step from pure noise at t = T - 1
        x0 = self.generate(self.initial_noise(first_tensor(cond).shape[0], gen), cond)
        # 2-4. VSD gradient through the pseudo-target loss; the student's update
        self.update(
            opt_student, {"vsd": self.vsd_loss(x0, cond)}, turn="generator", max_grad_norm=self.max_grad_norm
        )
        # 5. the fake score learns the (pre-update) student samples
        fake = self.fake_score_loss(x0.detach(), cond)
        self.update(opt_fake, {"fake_score": fake}, turn="fake_score", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    # ------------------------------------------------------------------ sampling and conditions
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: Any = None) -> Tensor:
        """``n`` one-step samples ``(n, *sample_shape)``; conditions drawn with ``generator`` when not given.

        Conditions come from ``trainer.datamodule.draw_conditions`` if it exists, else uniform class
        labels below an integer null label.

        Raises:
            ValueError: no conditions given and none can be drawn.
        """
        if cond is None:
            cond = self._draw_conditions(n, generator)
        return self.generate(self.initial_noise(n, generator), _to_device(cond, self.device))

    def split_batch(self, batch: Any) -> tuple[None, Any]:
        """``(None, cond)``: image-free batches are conditions only (a tensor or a mapping of tensors)."""
        return None, _check_batch(batch)

    def null_condition(self, cond: Any) -> Any:
        """The null condition (batch 1) on ``cond``'s device: the ``null_condition`` argument, else the datamodule's.

        Raises:
            ValueError: neither is known.
        """
        if self.null_cond is None and self._trainer is not None:
            self.null_cond = getattr(self.trainer.datamodule, "null_condition", None)
        if self.null_cond is None:
            raise ValueError(
                "CFG and condition dropout need the null condition; set `model.init_args.null_condition` (the null "
                "class label) or serve it as `null_condition` from the datamodule."
            )
        return _to_device(self.null_cond, first_tensor(cond).device)

    def evaluation_labels(self, cond: Any) -> Tensor | None:
        """Class labels are scored class-conditionally; embeddings are not scored (no mixture to compare with)."""
        return cond if isinstance(cond, Tensor) and not cond.is_floating_point() else None

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's ``eval_steps``-step DDIM samples with CFG at ``guidance_scale``."""
        null = None if labels is None else self.null_condition(labels)
        return sample(
            self.teacher, self.schedule, noise, self.eval_teacher_steps, labels, null, self.guidance_scale
        )

    # ------------------------------------------------------------------ randomness
    def iteration_seed(self, iteration: int | None = None, stream: Sequence[int] = ()) -> int:
        """SwiftBrush's derivation from ``(seed, rank, iteration)``: two ``SeedSequence`` words, xor-combined."""
        iteration = self.iteration if iteration is None else iteration
        words = np.random.SeedSequence(
            [self.noise_seed, self.global_rank, iteration, *stream]
        ).generate_state(2)
        return int(words[0]) << 31 ^ int(words[1])

    def _rng(self) -> torch.Generator:
        """The generator of all training randomness of a step (noise, timesteps, dropout), reseeded by :meth:`_reseed`."""
        if self._generator is None or self._generator.device != self.device:
            self._reseed()
        return self._generator

    def _reseed(self) -> None:
        self._generator = self.iteration_generator()

    def _draw_conditions(self, n: int, generator: torch.Generator | None) -> Tensor:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if callable(getattr(datamodule, "draw_conditions", None)):
            return datamodule.draw_conditions(n, generator)
        null = self.null_cond
        if isinstance(null, Tensor) and null.numel() == 1 and not null.is_floating_point():
            device = generator.device if generator is not None else self.device
            return torch.randint(0, int(null), (n,), generator=generator, device=device)
        raise ValueError(
            "`sample` needs `cond`: no datamodule with `draw_conditions` and no integer null label."
        )


def _check_batch(batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        raise ValueError(
            "SwiftBrush is image-free: batches must be conditions only (a tensor of labels or embeddings, or a mapping), "
            f"got a {type(batch).__name__}; use lightning_distill.recipes.swiftbrush.ConditionDataModule."
        )
    first_tensor(batch)
    return batch


def _to_device(cond: Any, device: torch.device) -> Any:
    if isinstance(cond, Tensor):
        return cond.to(device)
    if isinstance(cond, Mapping):
        return {k: _to_device(v, device) for k, v in cond.items()}
    return cond
