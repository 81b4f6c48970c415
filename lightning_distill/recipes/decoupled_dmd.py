"""Decoupled DMD: CFG augmentation and distribution matching with their own re-noising schedules.

Liu et al., "Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield"
(arXiv 2511.22677, ICLR 2026; used for Z-Image-Turbo, no official code). With a CFG-guided real
score ``s_cfg = s_u + a (s_c - s_u)`` the DMD generator gradient splits in two (Eq. 6)::

    s_cfg - s_fake,c = (s_real,c - s_fake,c)         DM, distribution matching: the "shield"
                     + (a - 1)(s_real,c - s_real,u)  CA, CFG augmentation: the "engine"

and d-DMD (Eq. 8) evaluates each term on its own re-noised copy of the sample (Algorithm 1,
written in x0 space as DMD2 and the Z-Image issues #56/#78 do):

1. Pick a step ``t`` of the few-step chain; its input ``z_t`` comes from backward simulation.
2. ``x0 = G(z_t, t, c)``.
3. CA at ``tau_CA`` cleaner than ``t`` (the paper's ``tau_CA > t`` counts t = 0 as noise; here
   it is a timestep index below ``t``): ``g_CA = (a - 1)(x0_real,u - x0_real,c) / n``.
4. DM at ``tau_DM`` over the full range: ``g_DM = (x0_fake,c - x0_real,c) / n``.
5. Every ``generator_update_every`` iterations the generator minimises
   ``w_ca ½||x0 - sg(x0 - g_CA)||² + w_dm ½||x0 - sg(x0 - g_DM)||²``.
6. Every iteration the fake score minimises its denoising loss on ``sg(x0)``, ``tau' ~ U[0, T)``.

``n`` is DMD2's per-sample normaliser ``mean|x0 - x0_real,cfg(x_tau)|`` at each term's own
``tau`` (``normalise: false`` drops it). With one shared ``tau`` and noise, ``g_CA + g_DM`` is
DMD2's gradient ``(x0_fake,c - x0_real,cfg) / n`` exactly.

=====================================  ===========================  =========================
paper                                  key (``model.init_args``)    default
=====================================  ===========================  =========================
CFG scale alpha (Eq. 4)                ``guidance_scale``           8.0 (DMD2's SDXL value)
CA schedule: ``tau_CA > t`` / full     ``ca_schedule``              ``constrained``
DM schedule: full / ``tau_DM > t``     ``dm_schedule``              ``full``
coupled DMD (one tau, one noise)       ``shared_timestep``          false
re-noising range, fractions of T       ``timestep_range``           (0.02, 0.98) (DMD2)
term weights (CA, DM, fake loss)       ``loss_weights``             ca 1, dm 1, fake 1
generator steps (Table 1: 4)           ``num_generator_steps``      4
fake updates per generator update      ``generator_update_every``   5 (DMD2 SDXL)
DMD2 normaliser                        ``normalise``                true
G, s_fake <- s_real                    ``student_init``             ``teacher``
=====================================  ===========================  =========================

Ablations: CA only ``loss_weights: {dm: 0}``, DM only ``{ca: 0}`` (a term of weight 0 is not
computed). The paper's schedules: (1) ``shared_timestep: true, ca_schedule: full``, (2)
``ca_schedule: full``, (3) ``dm_schedule: constrained``, (4) the defaults.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion import (
    Cond,
    NoiseSchedule,
    backward_simulation,
    cfg,
    evenly_spaced_timesteps,
    few_step_sample,
    model_output,
    one_step_generate,
)
from lightning_distill.diffusion import sample as teacher_sample
from lightning_distill.diffusion.metrics import sample_metrics
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option, fit_to_teacher
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.losses.distribution_matching import (
    cfg_augmentation_gradient,
    distribution_matching_gradient,
    dmd_normaliser,
    pseudo_target_loss,
)

__all__ = [
    "DecoupledDMD",
    "cfg_augmentation_gradient",
    "distribution_matching_gradient",
    "dmd_normaliser",
    "fit_to_teacher",
    "sample_metrics",
]

Schedule = Literal["constrained", "full"]


class DecoupledDMD(DiffusionDistillationModule):
    """Decoupled DMD; the module docstring has the algorithm and the config keys.

    Args:
        student: the few-step generator, called like the teacher, ``G(z_t, t, c)``.
        teacher: the frozen real score (any module with the diffusers call signature).
        schedule: the noise schedule of teacher and fake score (``ddpm_schedule``/``flow_schedule``).
        fake_score: ``None``: a trainable copy of the teacher; a module is wrapped in :class:`FakeScore`.
        num_classes: number of classes; label ``num_classes`` is CFG's null label.
        guidance_scale, ca_schedule, dm_schedule, shared_timestep, timestep_range,
            num_generator_steps, generator_update_every, normalise: see the table above.
        generator_timesteps: explicit decreasing generator timesteps (instead of ``num_generator_steps``).
        student_init: ``"teacher"`` copies the teacher's weights into the student; ``"regress"``
            fits student and fake score to the teacher's outputs at the start of fit
            (:func:`fit_to_teacher`, ``init_steps`` steps; for a parameter-free teacher);
            ``"random"`` keeps them as built.
        init_steps: regression steps of ``student_init: regress``.
        student_prediction_type: what the student predicts (default: the schedule's).
        max_grad_norm: gradient clipping of both updates (``None``: none).
        teacher_eval_steps: steps of the guided teacher sampler in validation.
        noise_seed: seed of all training draws (``None``: ``torch.initial_seed()``).
        sample_shape: shape of one sample (default: the first batch's, else the teacher's or the mixture's).
        loss_weights: ``{"ca": ..., "dm": ..., "fake": ...}``.
        optimizer, fake_score_optimizer: of the student and of the fake score (default: the same).

    Raises:
        ValueError: an invalid option (the message names the config key), a teacher whose weights
            do not fit the student with ``student_init: teacher``, or a fake score without parameters.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ca", "dm", "fake")
    checkpoint_key: ClassVar[str] = "decoupled_dmd"
    seed_words: ClassVar[int] = 1  # one 32-bit SeedSequence word per iteration seed

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
        student_init: Literal["teacher", "regress", "random"] = "teacher",
        init_steps: int = 2000,
        student_prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] | None = None,
        max_grad_norm: float | None = 10.0,
        teacher_eval_steps: int = 50,
        noise_seed: int | None = None,
        sample_shape: Sequence[int] | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        fake_score_optimizer: OptimizerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher,
            schedule,
            noise_seed=noise_seed,
            sample_shape=sample_shape,
            eval_teacher_steps=teacher_eval_steps,
            null_label=num_classes,
            loss_weights=loss_weights,
            optimizer=optimizer,
            fake_score_optimizer=fake_score_optimizer,
        )
        T = schedule.num_train_timesteps
        low, high = (int(f * T) for f in timestep_range)
        steps = tuple(generator_timesteps or evenly_spaced_timesteps(num_generator_steps, T))
        conditional = num_classes is not None or type(self).conditions is not DecoupledDMD.conditions
        weights = self.loss_weights
        checks = [
            (ca_schedule in ("constrained", "full"), "ca_schedule", ca_schedule, "'constrained' or 'full'"),
            (dm_schedule in ("constrained", "full"), "dm_schedule", dm_schedule, "'constrained' or 'full'"),
            (not shared_timestep or ca_schedule == dm_schedule, "shared_timestep", shared_timestep,
             "false unless `ca_schedule` equals `dm_schedule` (one tau serves both terms)"),
            (guidance_scale >= 1 and (guidance_scale == 1 or conditional), "guidance_scale", guidance_scale,
             ">= 1, and 1 without `num_classes` or a `conditions` override (CFG needs a null condition)"),
            (0 <= low < high <= T, "timestep_range", timestep_range, "fractions 0 <= low < high <= 1"),
            (all(a > b for a, b in zip(steps, steps[1:])) and min(steps) > low, "generator_timesteps", steps,
             f"decreasing timesteps above the re-noising floor {low}"),
            (generator_update_every >= 1, "generator_update_every", generator_update_every, "an integer >= 1"),
            (student_init in ("teacher", "regress", "random"), "student_init", student_init,
             "'teacher', 'regress' or 'random'"),
            (weights["ca"] > 0 or weights["dm"] > 0, "loss_weights", weights,
             "a weight > 0 for `ca` or `dm` (else nothing trains the generator)"),
        ]  # fmt: skip
        for ok, key, value, allowed in checks:
            check_option(ok, key, value, allowed)
        if student_init == "teacher":
            self.init_from_teacher(self.student)
        fake_score = self.build_fake_score(fake_score)
        check_option(
            bool(fake_score.trainable_parameters()),
            "fake_score",
            type(fake_score.model).__name__,
            "a module with trainable parameters (e.g. an MLPDenoiser for the analytic teacher)",
        )
        self.save_hyperparameters(
            ignore=["student", "teacher", "schedule", "fake_score", "optimizer", "fake_score_optimizer"]
        )
        self.fake_score, self.num_classes = fake_score, num_classes
        self.guidance_scale = float(guidance_scale)
        self.ca_schedule, self.dm_schedule, self.shared_timestep = ca_schedule, dm_schedule, shared_timestep
        self.timestep_bounds, self.generator_timesteps = (low, high), steps
        self.generator_update_every, self.normalise = generator_update_every, normalise
        self.student_init, self.init_steps = student_init, init_steps
        self.student_prediction_type, self.max_grad_norm = student_prediction_type, max_grad_norm

    # ------------------------------------------------------------------ the paper
    def conditions(self, labels: Tensor | None) -> tuple[Cond, Cond]:
        """``(cond, null_cond)`` of the batch's second item: class labels and the null label ``num_classes``.

        Override for other conditions, e.g. text embeddings and the empty-prompt embedding (then
        ``num_classes`` is not needed; override :meth:`sample` too for ``SampleLogger``).
        """
        if self.num_classes is None:
            return None, None
        if labels is None or bool((labels < 0).any() or (labels >= self.num_classes).any()):
            found = None if labels is None else labels.unique().tolist()
            raise ValueError(
                f"Class labels must be in [0, {self.num_classes}), got {found}; use conditional "
                "data (e.g. `data.init_args.conditional: true`)."
            )
        return labels, self.null_condition(labels)

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
        """``tau`` ``(B,)`` uniform on ``timestep_range``; ``"constrained"`` also keeps it below ``t_gen``."""
        low, high = self.timestep_bounds
        high = min(high, int(t_gen.max())) if schedule == "constrained" else high
        return self.timesteps_like(t_gen, low, high, generator)

    @torch.no_grad()
    def real_x0(
        self, x_t: Tensor, t: Tensor, cond: Cond, null_cond: Cond | None
    ) -> tuple[Tensor, Tensor | None]:
        """The teacher's conditional x0 prediction and, if ``null_cond`` is given, its unconditional one."""
        x0_c = self.schedule.to_x0(model_output(self.teacher, x_t, t, cond), x_t, t)
        if null_cond is None:
            return x0_c, None
        return x0_c, self.schedule.to_x0(model_output(self.teacher, x_t, t, null_cond), x_t, t)

    def ca_gradient(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """Eq. 8, CA: ``(a - 1)(x0_real,u - x0_real,c)`` at ``x_tau = alpha sg(x0) + sigma noise``."""
        x_tau = self.schedule.add_noise(x0.detach(), noise, tau)
        x0_c, x0_u = self.real_x0(x_tau, tau, cond, null_cond)
        scale = dmd_normaliser(x0, cfg(x0_c, x0_u, self.guidance_scale)) if self.normalise else None
        return cfg_augmentation_gradient(x0_c, x0_u, self.guidance_scale, scale)

    def dm_gradient(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """Eq. 8, DM: ``x0_fake,c - x0_real,c`` at ``x_tau`` (the normaliser needs the guided real x0)."""
        x_tau = self.schedule.add_noise(x0.detach(), noise, tau)
        guided = self.normalise and self.guidance_scale != 1.0
        x0_c, x0_u = self.real_x0(x_tau, tau, cond, null_cond if guided else None)
        with torch.no_grad():
            x0_fake = self.schedule.to_x0(model_output(self.fake_score, x_tau, tau, cond), x_tau, tau)
        scale = dmd_normaliser(x0, cfg(x0_c, x0_u, self.guidance_scale) if guided else x0_c)
        return distribution_matching_gradient(x0_fake, x0_c, scale if self.normalise else None)

    def ca_term(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """``½||x0 - sg(x0 - g_CA)||²``, whose gradient w.r.t. ``x0`` is ``g_CA / x0.numel()``."""
        return pseudo_target_loss(x0, self.ca_gradient(x0, tau, noise, cond, null_cond))

    def dm_term(self, x0: Tensor, tau: Tensor, noise: Tensor, cond: Cond, null_cond: Cond) -> Tensor:
        """``½||x0 - sg(x0 - g_DM)||²``."""
        return pseudo_target_loss(x0, self.dm_gradient(x0, tau, noise, cond, null_cond))

    def generator_terms(
        self, x0: Tensor, t_gen: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Steps 3-4: a ``tau`` and a noise per term (one pair if ``shared_timestep``); terms of weight > 0."""
        ca = (self.renoising_timesteps(t_gen, self.ca_schedule, generator), randn_like(x0, generator))
        dm = (
            ca
            if self.shared_timestep
            else (self.renoising_timesteps(t_gen, self.dm_schedule, generator), randn_like(x0, generator))
        )
        terms = {"ca": (self.ca_term, ca), "dm": (self.dm_term, dm)}
        return {
            k: term(x0, *draw, cond, null_cond)
            for k, (term, draw) in terms.items()
            if self.loss_weights[k] > 0
        }

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """Step 6: the fake score's denoising loss on ``sg(x0)`` at ``tau' ~ U[0, T)``."""
        tau = self.timesteps_like(x0, 0, self.schedule.num_train_timesteps, generator)
        return self.fake_score.denoising_loss(x0.detach(), tau, randn_like(x0, generator), cond)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_student, opt_fake = self.optimizers()
        x, labels = self.split_batch(batch)
        self.record_sample_shape(x)
        gen = self.iteration_generator()
        cond, null_cond = self.conditions(labels)
        # 1. The generator's input at a random step of its chain (backward simulation).
        z_t, t_gen = self.generator_input(randn_like(x, gen), cond, gen)
        update_generator = self.is_update_step(self.iteration, self.generator_update_every)
        # 2. x0 = G(z_t, t, c), with grad only when the generator learns this iteration.
        with torch.set_grad_enabled(update_generator):
            x0 = one_step_generate(
                self.student, self.schedule, z_t, t_gen, cond, prediction_type=self.student_prediction_type
            )
        if update_generator:
            # 3.-5. CA and DM on their own re-noised copies, weighted sum, generator step.
            terms = self.generator_terms(x0, t_gen, cond, null_cond, gen)
            self.update(opt_student, terms, turn="generator", max_grad_norm=self.max_grad_norm)
        # 6. Fake score: denoising on the detached sample.
        fake = {"fake": self.fake_score_loss(x0, cond, gen)}
        self.update(opt_fake, fake, turn="fake_score", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.student_init != "regress" or self.iteration > 0:  # a resumed run has its weights
            return
        if self.trainer.datamodule is None:
            raise ValueError(
                "`student_init: regress` fits to the teacher on the datamodule's training data; fit "
                "with a datamodule, or use `student_init: random`."
            )
        gen = torch.Generator(device=self.device).manual_seed(self.noise_seed)
        loader = self.trainer.datamodule.train_dataloader()
        batches = [
            (b[0].to(self.device), self.conditions(b[1].to(self.device))[0])
            for b in itertools.islice(loader, 64)
        ]
        # Fitted on copies: a backward through DDP's parameters outside its forward would mark them as
        # used, and DDP (find_unused_parameters) would then stop at the first turn that leaves one out.
        student, fake_score = copy.deepcopy(self.student), copy.deepcopy(self.fake_score)
        fit_to_teacher(
            student,
            self.teacher,
            self.schedule,
            batches,
            self.init_steps,
            prediction_type=self.student_prediction_type,
            generator=gen,
        )
        fit_to_teacher(fake_score, self.teacher, self.schedule, batches, self.init_steps, generator=gen)
        self.student.load_state_dict(student.state_dict())
        self.fake_score.load_state_dict(fake_score.state_dict())
        if dist.is_available() and dist.is_initialized():  # every rank starts from rank 0's weights
            for tensor in [*self.student.parameters(), *self.fake_score.parameters()]:
                dist.broadcast(tensor.data, src=0)

    # ------------------------------------------------------------------ sampling and evaluation
    @torch.no_grad()
    def generate(self, model: nn.Module, labels: Tensor | None, n: int, generator: torch.Generator) -> Tensor:
        """``n`` samples of the student (its chain) or another model (``teacher_eval_steps`` steps with CFG)."""
        noise = self.initial_noise(n, generator)
        if model is not self.student:
            return self._guided_samples(model, noise, labels)
        return few_step_sample(
            self.student,
            self.schedule,
            noise,
            self.generator_timesteps,
            self.conditions(labels)[0],
            generator=generator,
            prediction_type=self.student_prediction_type,
        )

    def sample(self, n: int, generator: torch.Generator, cond: Tensor | None = None) -> Tensor:
        """``n`` student samples for the labels ``cond``, drawn from the mixture's class weights when not given."""
        if cond is None and self.num_classes is not None:
            cond = self.draw_labels(n, generator, self.num_classes)
        return self.generate(self.student, cond, n, generator)

    def evaluation_labels(self, cond: Cond) -> Tensor | None:
        """With ``num_classes`` the student is scored on the evaluation batch's labels (and ``on_class``)."""
        return cond if self.num_classes is not None else None

    def evaluation_samples(self, n: int, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        return self.generate(self.student, labels, n, generator)

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's ``teacher_eval_steps``-step sampler with CFG at ``guidance_scale``."""
        return self._guided_samples(self.teacher, noise, labels)

    def _guided_samples(self, model: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
        cond, null_cond = self.conditions(labels)
        return teacher_sample(
            model, self.schedule, noise, self.eval_teacher_steps, cond, null_cond, self.guidance_scale
        )
