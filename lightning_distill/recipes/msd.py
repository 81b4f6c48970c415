"""MSD: K one-step students, each distilled with DMD2 on its own share of the conditions, routed at sampling.

"Multi-student Diffusion Distillation for Better One-step Generators" (Song, Lorraine, Nie, Kreis, Lucas;
arXiv 2410.23274, ICML 2025). No official code was found; see ``recipes/msd/README.md`` for what was
verified and what is our reading.

Algorithm:

1. Split the classes into K disjoint blocks (``partition``; default: contiguous id blocks); student
   G_k owns block C_k and a router (:class:`RoutedDenoiser`) sends every sample to its class's owner.
2. Optional teacher score matching (TSM) for ``tsm_steps`` iterations, for students that cannot start
   from the teacher's weights: G_k regresses the teacher's prediction at x_t = α_t x + σ_t ε (x real data
   of its classes, t ~ U[0, T)); the fake scores then start as copies of their student, read as ε.
3. DMD2 per student (distribution matching + fake-score denoising + optional GAN, the parts of
   :mod:`lightning_distill.diffusion.dmd`): every term is reduced per student, Σ_k mean over the
   samples of C_k, so student k gets exactly the gradient of its own DMD2 run on its samples.
4. Fake score: one per student (default: independent distillations) or one shared (``fake_score_sharing``).
5. Inference: route each condition to its owner, one step of that student.

Loss: ``Σ_k [L_DM,k + w_G L_G,k]`` (generators), ``Σ_k [L_fake,k + w_D L_D,k]`` (fake scores and heads),
``Σ_k L_TSM,k`` during the warm-up. Gradients are clipped per student (one parameter group each).

=========================================  =====================================  ===================
paper                                      config key (``model.init_args``)       default
=========================================  =====================================  ===================
number of students K                       ``num_students`` or ``len(student)``   4
partition of the conditioning set          ``partition``                          contiguous blocks
TSM pre-stage (smaller students)           ``tsm_steps``                          0 (off)
fake score initialised from TSM student    ``tsm_init_fake_score``                true
per-student vs shared fake score           ``fake_score_sharing``                 ``per_student``
DMD2 terms, weights, ratio, CFG, GAN       DMD2's keys (``real_guidance_scale``)  DMD2's defaults
=========================================  =====================================  ===================
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
from lightning_distill.diffusion.guidance import Cond, model_output
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option
from lightning_distill.diffusion.routing import (
    RoutedDenoiser,
    check_partition,
    contiguous_partition,
    reassemble,
)
from lightning_distill.diffusion.sampling import few_step_sample, one_step_generate, randn_like
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.distribution_matching import (
    denoising_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    pseudo_target_loss,
)

__all__ = ["MSD", "RoutedDenoiser", "check_partition", "contiguous_partition"]

_MODULE_ARGS = "student teacher schedule fake_score optimizer fake_score_optimizer lr_scheduler".split()


class MSD(DiffusionDistillationModule):
    """Multi-student distillation (manual optimization, two optimizers with one parameter group per student).

    Args:
        student: one generator (copied ``num_students`` times: same-size students start alike, as when
            they all start from the teacher) or a list of K generators.
        teacher: the frozen class-conditional teacher (see :class:`~lightning_distill.recipes.dmd2.DMD2`).
        num_students: K when ``student`` is one module (default: ``len(partition)``, else 4).
        partition: K blocks of class ids; ``None``: :func:`contiguous_partition` of ``teacher.num_classes``.
        fake_score: ``None`` (a copy of the teacher per student), one network (copied per student, or the
            shared one), or a list of K networks.
        fake_score_sharing: ``"per_student"`` (one fake score and GAN head per student) or ``"shared"``.
        tsm_steps: iterations of teacher score matching before distribution matching (0: none).
        tsm_init_fake_score: after TSM, start each fake score as a copy of its student (same architecture),
            read in the schedule's parameterisation (ε) whatever the student predicts.
        student_init: ``"teacher"`` loads the teacher's weights into every student; ``"random"`` keeps them.
        gan: DMD2's GAN term (per student with per-student fake scores).
        gan_feature_path: the tapped module inside each fake score (default: its bottleneck).
        gan_channels: channels of those features (default: read from the architecture).
        schedule, student_prediction_type, real_guidance_scale, min_step_percent, max_step_percent,
            normalise_dmd_gradient, generator_update_every, gan_max_timestep, null_label, max_grad_norm,
            sample_shape, noise_seed, eval_teacher_steps, loss_weights, optimizer, fake_score_optimizer,
            lr_scheduler: as in :class:`~lightning_distill.recipes.dmd2.DMD2` (the students are one-step).

    Raises:
        ValueError: a bad partition or count, a ``fake_score`` list of the wrong length, ``tsm_init_fake_score``
            with mismatched, shared or unconvertible fake scores, an argument out of range (naming the key).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("dm", "gen_cls", "fake", "guidance_cls", "tsm")
    default_loss_weights: ClassVar[dict[str, float]] = {"dm": 1.0, "gen_cls": 1e-3, "guidance_cls": 1e-2}

    def __init__(
        self,
        student: nn.Module | Sequence[nn.Module],
        teacher: nn.Module,
        num_students: int | None = None,
        partition: Sequence[Sequence[int]] | None = None,
        fake_score: nn.Module | Sequence[nn.Module] | None = None,
        fake_score_sharing: Literal["per_student", "shared"] = "per_student",
        tsm_steps: int = 0,
        tsm_init_fake_score: bool = True,
        student_init: Literal["teacher", "random"] = "teacher",
        gan: bool = True,
        gan_feature_path: str | None = None,
        gan_channels: int | None = None,
        schedule: NoiseSchedule | None = None,
        student_prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] | None = None,
        real_guidance_scale: float = 1.75,
        min_step_percent: float = 0.02,
        max_step_percent: float = 0.98,
        normalise_dmd_gradient: bool = True,
        generator_update_every: int = 10,
        gan_max_timestep: int | None = None,
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
        router, fake_score = dmd.routed_students(
            student, teacher, num_students=num_students, partition=partition, fake_score=fake_score,
            fake_score_sharing=fake_score_sharing, tsm_steps=tsm_steps, tsm_init_fake_score=tsm_init_fake_score,
            student_init=student_init,
        )  # fmt: skip
        super().__init__(
            router, teacher, schedule, noise_seed=noise_seed, sample_shape=sample_shape,
            eval_teacher_steps=eval_teacher_steps, null_label=null_label, loss_weights=loss_weights,
            optimizer=optimizer, fake_score_optimizer=fake_score_optimizer, lr_scheduler=lr_scheduler,
        )  # fmt: skip
        self.save_hyperparameters(ignore=_MODULE_ARGS)
        checks = [
            (generator_update_every >= 1, "generator_update_every", generator_update_every, "an integer >= 1"),
            (max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"),
        ]  # fmt: skip
        for ok, key, value, allowed in checks:
            check_option(ok, key, value, allowed)
        self.denoising_timesteps, self.dm_steps, self.gan_max_timestep = dmd.dmd2_settings(
            self.schedule, min_step_percent=min_step_percent, max_step_percent=max_step_percent,
            denoising_timesteps=None, gan_max_timestep=gan_max_timestep,
        )  # fmt: skip
        self.fake_score = self.build_fake_score(fake_score).requires_grad_(True).train()
        self.per_student_fake = fake_score_sharing == "per_student"
        if tsm_steps and tsm_init_fake_score:  # copies of the students are read in the schedule's type
            dmd.read_copied_students_as(self.fake_score.model, self.schedule, student_prediction_type)
        self.gan_hooks: FeatureHooks | None = None
        self.gan_head: GANHead | nn.ModuleList | None = None
        if gan and not self.per_student_fake:  # one head on the shared fake score
            self.gan_hooks = FeatureHooks({"bottleneck": gan_feature_path or f"fake_score.{feature_path(self.fake_score)}"})  # fmt: skip
            self.gan_head = GANHead(gan_channels or bottleneck_channels(self.fake_score.model))
        elif gan:  # one head per student, on its own fake score's bottleneck
            experts = self.fake_score.model.experts
            self.gan_hooks = FeatureHooks(
                {f"student{k}": f"fake_score.model.experts.{k}.{gan_feature_path or feature_path(e)}"
                 for k, e in enumerate(experts)}
            )  # fmt: skip
            self.gan_head = dmd.per_student_heads(experts, gan_channels)
        self.student_prediction_type = student_prediction_type
        self.real_guidance_scale = float(real_guidance_scale)
        self.normalise_dmd_gradient = normalise_dmd_gradient
        self.generator_update_every, self.max_grad_norm = generator_update_every, max_grad_norm
        self.tsm_steps, self.tsm_init_fake_score = tsm_steps, tsm_init_fake_score

    @property
    def router(self) -> RoutedDenoiser:
        """The students and their partition."""
        return self.student

    # ------------------------------------------------------------------ the paper, one method per equation
    def per_student_mean(self, values: Tensor, cond: Cond) -> Tensor:
        """Σ_k mean_{i: owner(c_i) = k} values_i: each student's own mean of a per-sample loss ``(B,)``, summed."""
        owners = self.router.owners(cond)
        counts = torch.bincount(owners, minlength=len(self.router.experts)).to(values.dtype)
        return (values / counts[owners]).sum()

    def teacher_score_matching_loss(self, real: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """L_TSM = Σ_k mean_k ‖G_k(x_t, t, c) − sg(y_teacher)‖², x_t = α_t x + σ_t ε, t ~ U[0, T).

        ``y_teacher`` is the conditional teacher's prediction (no CFG) converted to the student's
        parameterisation, so the student learns the teacher's denoiser on its classes.
        """
        t = self.timesteps_like(real, 0, self.schedule.num_train_timesteps, generator)
        x_t = self.schedule.add_noise(real, randn_like(real, generator), t)
        with torch.no_grad():
            target = self.schedule.convert(
                model_output(self.teacher, x_t, t, cond), x_t, t,
                target=self.student_prediction_type or self.schedule.prediction_type,
            )  # fmt: skip
        return self.per_student_mean(
            denoising_loss(model_output(self.student, x_t, t, cond), target, reduction="none"), cond
        )

    def generate(self, x_t: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x̂₀ = G_k(x_t, t, c) ``(B, ...)`` in float32, each sample by its owner; keeps the grad mode."""
        return one_step_generate(
            self.student, self.schedule, x_t, t, cond, prediction_type=self.student_prediction_type
        )

    def distribution_matching_gradient(
        self, x0: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> Tensor:
        """DMD2's g ``(B, ...)`` (each sample's own fake score and the teacher with CFG)."""
        return dmd.distribution_matching_gradient(
            self.teacher, self.fake_score, self.schedule, x0, cond, null_cond, timestep_range=self.dm_steps,
            guidance_scale=self.real_guidance_scale, normalise=self.normalise_dmd_gradient, generator=generator,
        )  # fmt: skip

    def distribution_matching_loss(
        self, x0: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> Tensor:
        """L_DM = Σ_k mean_k ½‖x̂₀ − sg(x̂₀ − g)‖²."""
        g = self.distribution_matching_gradient(x0, cond, null_cond, generator)
        return self.per_student_mean(pseudo_target_loss(x0, g, reduction="none"), cond)

    def discriminator_logits(self, x: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """D(x) ``(B,)``: DMD2's discriminator, with each sample read by its student's fake score and head.

        Raises:
            RuntimeError: the GAN branch is off (``gan: false``).
        """
        if self.gan_hooks is None or self.gan_head is None:
            raise RuntimeError("The GAN branch is off (`gan: false`); there is no discriminator.")
        if not self.gan_hooks.is_attached:  # outside a Trainer; inside one the callback attaches in `setup`
            self.gan_hooks.attach(self)
        x, t = dmd.discriminator_input(self.schedule, x, self.gan_max_timestep, generator)
        if not self.per_student_fake:
            return discriminator_logits(
                self.fake_score, self.gan_head, self.gan_hooks, "bottleneck", x, t, cond
            )
        owners, parts, indices = self.router.owners(cond), [], []
        for k, (expert, head) in enumerate(zip(self.fake_score.model.experts, self.gan_head)):
            index = (owners == k).nonzero(as_tuple=True)[0]
            if index.numel():
                tap = f"student{k}"
                parts.append(
                    discriminator_logits(expert, head, self.gan_hooks, tap, x[index], t[index], cond[index])
                )
                indices.append(index)
        return reassemble(parts, indices)

    def generator_gan_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_G = Σ_k mean_k softplus(−D_k(x̂₀))."""
        return self.per_student_mean(
            gan_generator_loss(self.discriminator_logits(x0, cond, generator), reduction="none"), cond
        )

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_fake = Σ_k mean_k ‖f_k(x_t, t, c) − ε‖² on detached samples, t ~ U[0, T) (the batch mean when shared)."""
        per_sample = dmd.fake_score_denoising_loss(self.fake_score, x0, cond, generator, reduction="none")
        return self.per_student_mean(per_sample, cond) if self.per_student_fake else per_sample.mean()

    def guidance_cls_loss(
        self,
        real: Tensor,
        fake: Tensor,
        real_cond: Cond,
        fake_cond: Cond,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """L_D = Σ_k mean_k [softplus(−D_k(real)) + softplus(D_k(sg(fake)))] and the logits ``(B,)``, ``(B,)``.

        Raises:
            ValueError: real and fake samples whose conditions belong to different students.
        """
        if not torch.equal(self.router.owners(real_cond), self.router.owners(fake_cond)):
            raise ValueError("MSD's discriminator loss pairs real and fake samples of the same student.")
        logits = self.discriminator_logits
        real_logits, fake_logits = dmd.paired_logits(logits, real, fake, real_cond, fake_cond, generator)
        per_sample = gan_discriminator_loss(real_logits, fake_logits, reduction="none")
        loss = self.per_student_mean(per_sample, fake_cond) if self.per_student_fake else per_sample.mean()
        return loss, real_logits, fake_logits

    def generator_terms(
        self, x0: Tensor, t: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The generators' terms ``{"dm": L_DM, "gen_cls": L_G}`` (``t``, the students' step, is for subclasses)."""
        terms = {"dm": self.distribution_matching_loss(x0, cond, null_cond, generator)}
        if self.gan_head is not None:
            terms["gen_cls"] = self.generator_gan_loss(x0, cond, generator)
        return terms

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_gen, opt_fake = self.optimizers()
        real, cond = self.split_batch(batch)
        self.record_sample_shape(real)
        # 1. Teacher score matching for the first `tsm_steps` iterations (generators only).
        if self.iteration < self.tsm_steps:
            loss = self.teacher_score_matching_loss(real, cond, self.iteration_generator(stream=(7,)))
            self.update(opt_gen, {"tsm": loss}, turn="generator", max_grad_norm=self.max_grad_norm)
            self.iteration += 1
            return
        # 2. Stage change: fake scores start from their TSM student, both optimizers from fresh moments.
        if self.tsm_steps and self.iteration == self.tsm_steps:
            self.end_teacher_score_matching()
        # 3. DMD2 on every student at once, each term reduced per student.
        null_cond = self.null_condition(cond)
        rng = self.iteration_generator()
        generator_turn = self.is_update_step(self.iteration, self.generator_update_every)
        x_t, t = dmd.generator_input(
            self.student, self.schedule, real, cond, rng, timesteps=self.denoising_timesteps
        )
        with torch.set_grad_enabled(generator_turn):
            x0 = self.generate(x_t, t, cond)
        if generator_turn:
            terms = self.generator_terms(x0, t, cond, null_cond, rng)
            self.update(opt_gen, terms, turn="generator", max_grad_norm=self.max_grad_norm)
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

    @torch.no_grad()
    def end_teacher_score_matching(self) -> None:
        """Copy each student into its fake score (``tsm_init_fake_score``; read as ε, see
        :func:`~lightning_distill.diffusion.dmd.copy_students`) and clear both optimizers' state."""
        if self.tsm_init_fake_score:
            dmd.copy_students(self.router, self.fake_score.model)
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each parameter group (one student, or one fake score with its head) to ``max_grad_norm`` on its own."""
        if gradient_clip_val is None:
            return
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], gradient_clip_val)

    def configure_optimizers(self) -> Any:
        """Generator optimizer: one parameter group per student; fake-score optimizer: one per fake score (+ head)."""
        fakes = list(self.fake_score.model.experts) if self.per_student_fake else [self.fake_score]
        heads = (
            list(self.gan_head) if isinstance(self.gan_head, nn.ModuleList) else [self.gan_head] * len(fakes)
        )
        fake_groups = [[*_trainable(f), *([] if h is None else _trainable(h))] for f, h in zip(fakes, heads)]
        optimizers = [
            self.optimizer([{"params": _trainable(s)} for s in self.router.experts]),
            (self.fake_score_optimizer or self.optimizer)([{"params": group} for group in fake_groups]),
        ]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    def configure_callbacks(self) -> list[Any]:
        return [] if self.gan_hooks is None else [self.gan_hooks]

    def null_condition(self, cond: Cond) -> Cond:
        """The null condition of the teacher's CFG (``None`` when the scale is 1)."""
        return dmd.guidance_null_condition(cond, self.real_guidance_scale, super().null_condition)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` one-step samples ``(n, *sample_shape)``, each from the student owning its label.

        Without ``cond`` the labels are drawn first from ``generator``: in proportion to the class
        weights of the bench's mixture when known, else uniformly.
        """
        if cond is None:
            cond = self.draw_labels(n, generator, self.router.num_classes)
        return few_step_sample(
            self.student, self.schedule, self.initial_noise(n, generator), self.denoising_timesteps,
            torch.as_tensor(cond).to(self.device), generator=generator, prediction_type=self.student_prediction_type,
        )  # fmt: skip

    def class_weights(self) -> Tensor:
        """``p(c)`` ``(C,)``: the mixture's class masses on the exact bench, else uniform."""
        return self.label_prior(self.router.num_classes)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
