"""MSD: K one-step students, each distilled with DMD2 on its own share of the conditions, routed at sampling.

"Multi-student Diffusion Distillation for Better One-step Generators" (Song, Lorraine, Nie, Kreis, Lucas;
arXiv 2410.23274, ICML 2025). No official code was found; see ``recipes/msd/README.md`` for what was
verified and what is our reading.

Algorithm:

1. Split the classes into K disjoint blocks (``partition``; default: contiguous id blocks); student
   G_k owns block C_k and a router (:class:`RoutedDenoiser`) sends every sample to its class's owner.
2. Optional teacher score matching (TSM) for ``tsm_steps`` iterations, for students that cannot start
   from the teacher's weights: G_k regresses the teacher's prediction at x_t = α_t x + σ_t ε (x real data
   of its classes, t ~ U[0, T)); the fake scores then start as copies of their student.
3. DMD2 per student (distribution matching + fake-score denoising + optional GAN; see
   :class:`~lightning_distill.recipes.dmd2.DMD2`): every term is reduced per student, Σ_k mean over
   the samples of C_k, so student k gets exactly the gradient of its own DMD2 run on its samples.
4. Fake score: one per student (default; the students are independent distillations) or one shared
   class-conditional fake score (``fake_score_sharing: shared``).
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

import copy
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_distill.callbacks.feature_hooks import FeatureHooks
from lightning_distill.diffusion import (
    Cond,
    GANHead,
    MLPDenoiser,
    discriminator_logits,
    feature_path,
    model_output,
)
from lightning_distill.diffusion.denoisers import bottleneck_channels
from lightning_distill.diffusion.recipe_base import check_option
from lightning_distill.diffusion.routing import (
    RoutedDenoiser,
    check_partition,
    contiguous_partition,
    reassemble,
)
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.losses.distribution_matching import (
    denoising_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    pseudo_target_loss,
)
from lightning_distill.recipes.dmd2 import DMD2

__all__ = ["MSD", "RoutedDenoiser", "check_partition", "contiguous_partition"]


class MSD(DMD2):
    """Multi-student distillation (manual optimization, two optimizers with one parameter group per student).

    Args:
        student: one generator (copied ``num_students`` times: same-size students start alike, as when
            they all start from the teacher) or a list of K generators.
        teacher: the frozen class-conditional teacher (see :class:`DMD2`).
        num_students: K when ``student`` is one module (default: ``len(partition)``, else 4).
        partition: K blocks of class ids; ``None``: :func:`contiguous_partition` of ``teacher.num_classes``.
        fake_score: ``None`` (a copy of the teacher per student), one network (copied per student, or the
            shared one), or a list of K networks.
        fake_score_sharing: ``"per_student"`` (one fake score and GAN head per student) or ``"shared"``.
        tsm_steps: iterations of teacher score matching before distribution matching (0: none).
        tsm_init_fake_score: after TSM, start each fake score as a copy of its student (same architecture).
        student_init: ``"teacher"`` loads the teacher's weights into every student; ``"random"`` keeps them.
        gan: DMD2's GAN term (per student with per-student fake scores).
        gan_feature_path: the tapped module inside each fake score (default: its bottleneck).
        gan_channels: channels of those features (default: read from the architecture).
        **dmd2_args: the other :class:`DMD2` arguments (``schedule``, ``real_guidance_scale``,
            ``dfake_gen_update_ratio``, loss weights, ``optimizer``, ...), passed on unchanged.

    Raises:
        ValueError: a bad partition or count (naming ``model.init_args.partition``), a ``fake_score`` list
            of the wrong length, ``tsm_init_fake_score`` with mismatched or shared fake scores, or any
            :class:`DMD2` argument error.
    """

    loss_terms: ClassVar[tuple[str, ...]] = (*DMD2.loss_terms, "tsm")

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
        **dmd2_args: Any,
    ) -> None:
        students = _as_list(
            student, num_students or (len(partition) if partition is not None else 4), "student"
        )
        K = len(students)
        if num_students is not None and num_students != K:
            raise ValueError(
                f"`num_students`={num_students} but `student` lists {K} networks; set `model.init_args.num_students`."
            )
        if partition is None:
            classes = _teacher_classes(teacher)
            if classes is None:
                raise ValueError(
                    "The teacher does not tell its number of classes; set `model.init_args.partition`."
                )
            partition = contiguous_partition(classes, K)
        check_option(fake_score_sharing in ("per_student", "shared"), "fake_score_sharing", fake_score_sharing,
               "'per_student' or 'shared'")  # fmt: skip
        check_option(tsm_steps >= 0, "tsm_steps", tsm_steps, "an integer >= 0")
        if student_init == "teacher":
            for k, s in enumerate(students):
                try:
                    s.load_state_dict(teacher.state_dict())
                except RuntimeError as error:
                    raise ValueError(
                        f"`student_init='teacher'` needs students with the teacher's architecture (student {k} differs); "
                        "set `model.init_args.student_init: random` (and `tsm_steps` for a teacher-like start)."
                    ) from error
        router = RoutedDenoiser(students, partition)
        per_student = fake_score_sharing == "per_student"
        if per_student:
            if fake_score is None and next(teacher.parameters(), None) is None:
                raise ValueError("The teacher has no parameters to copy; give `model.init_args.fake_score`.")
            fakes = _as_list(teacher if fake_score is None else fake_score, K, "fake_score")
            fake_score = RoutedDenoiser([f.requires_grad_(True).train() for f in fakes], partition)
        elif fake_score is not None and not isinstance(fake_score, nn.Module):
            raise ValueError(
                "`fake_score_sharing: shared` takes one `model.init_args.fake_score` network, got a list."
            )
        if tsm_steps and tsm_init_fake_score:
            if not per_student:
                raise ValueError(
                    "`tsm_init_fake_score` needs per-student fake scores; set `fake_score_sharing: per_student`."
                )
            for k, (s, f) in enumerate(zip(students, fake_score.experts)):
                if {n: p.shape for n, p in s.state_dict().items()} != {
                    n: p.shape for n, p in f.state_dict().items()
                }:
                    raise ValueError(
                        f"`tsm_init_fake_score` copies student {k} into its fake score, but their architectures differ; "
                        "set `model.init_args.tsm_init_fake_score: false`."
                    )
        super().__init__(
            router,
            teacher,
            fake_score=fake_score,
            student_init="random",
            gan=gan and not per_student,
            gan_feature_path=gan_feature_path,
            gan_channels=gan_channels,
            **dmd2_args,
        )
        self.per_student_fake = per_student
        self.tsm_steps = tsm_steps
        self.tsm_init_fake_score = tsm_init_fake_score
        if gan and per_student:  # one head per student, on its own fake score's bottleneck
            experts = self.fake_score.model.experts
            self.gan_hooks = FeatureHooks(
                {f"student{k}": f"fake_score.model.experts.{k}.{gan_feature_path or feature_path(e)}"
                 for k, e in enumerate(experts)}
            )  # fmt: skip
            # Vector features (MLP fake scores) are 1x1 maps: GANHead's default groups would hold one value
            # each, which GroupNorm sends to 0 (a constant discriminator); one group normalises over channels.
            self.gan_head = nn.ModuleList(
                GANHead(
                    gan_channels or bottleneck_channels(e),
                    num_groups=1 if isinstance(e, MLPDenoiser) else None,
                )
                for e in experts
            )

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

    def distribution_matching_loss(
        self, x0: Tensor, cond: Cond, null_cond: Cond, generator: torch.Generator | None = None
    ) -> Tensor:
        """L_DM = Σ_k mean_k ½‖x̂₀ − sg(x̂₀ − g)‖² with DMD2's ``g`` (each sample's fake score and the teacher)."""
        g = self.distribution_matching_gradient(x0, cond, null_cond, generator)
        return self.per_student_mean(pseudo_target_loss(x0, g, reduction="none"), cond)

    def generator_gan_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_G = Σ_k mean_k softplus(−D_k(x̂₀))."""
        return self.per_student_mean(
            gan_generator_loss(self.discriminator_logits(x0, cond, generator), reduction="none"), cond
        )

    def fake_score_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """L_fake = Σ_k mean_k ‖f_k(x_t, t, c) − ε‖² on detached samples, t ~ U[0, T) (the batch mean when shared)."""
        t = self.timesteps_like(x0, 0, self.schedule.num_train_timesteps, generator)
        per_sample = self.fake_score.denoising_loss(
            x0.detach(), t, randn_like(x0, generator), cond, reduction="none"
        )
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
        x = torch.cat([real.detach(), fake.detach().to(real.dtype)])
        logits = self.discriminator_logits(x, torch.cat([real_cond, fake_cond]), generator)
        real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
        per_sample = gan_discriminator_loss(real_logits, fake_logits, reduction="none")
        loss = self.per_student_mean(per_sample, fake_cond) if self.per_student_fake else per_sample.mean()
        return loss, real_logits, fake_logits

    def discriminator_logits(self, x: Tensor, cond: Cond, generator: torch.Generator | None = None) -> Tensor:
        """D(x) ``(B,)``: DMD2's discriminator, with each sample read by its student's fake score and head."""
        if not self.per_student_fake:
            return super().discriminator_logits(x, cond, generator)
        x, t = self.discriminator_input(x, generator)
        owners, parts, indices = self.router.owners(cond), [], []
        for k, (expert, head) in enumerate(zip(self.fake_score.model.experts, self.gan_head)):
            index = (owners == k).nonzero(as_tuple=True)[0]
            if index.numel():
                parts.append(
                    discriminator_logits(
                        expert, head, self.gan_hooks, f"student{k}", x[index], t[index], cond[index]
                    )
                )
                indices.append(index)
        return reassemble(parts, indices)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        # 1. Teacher score matching for the first `tsm_steps` iterations (generators only).
        if self.iteration < self.tsm_steps:
            opt_gen, _ = self.optimizers()
            real, cond = self.split_batch(batch)
            self.record_sample_shape(real)
            self.toggle_optimizer(opt_gen)
            loss = self.teacher_score_matching_loss(real, cond, self.iteration_generator(stream=(7,)))
            self.manual_update(loss, opt_gen, clip_grad_norm=self.max_grad_norm)
            self.untoggle_optimizer(opt_gen)
            self.iteration += 1
            self.log("train/tsm", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
            return
        # 2. Stage change: fake scores start from their TSM student, both optimizers from fresh moments.
        if self.tsm_steps and self.iteration == self.tsm_steps:
            self.end_teacher_score_matching()
        # 3. DMD2 on every student at once, each term reduced per student (the overridden loss methods).
        super().training_step(batch, batch_idx)

    @torch.no_grad()
    def end_teacher_score_matching(self) -> None:
        """Copy each student into its fake score (``tsm_init_fake_score``) and clear both optimizers' state."""
        if self.tsm_init_fake_score:
            for student, fake in zip(self.router.experts, self.fake_score.model.experts):
                fake.load_state_dict(student.state_dict())
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()

    def manual_update(self, loss: Tensor, optimizer: Any, *, clip_grad_norm: float | None = None) -> None:
        """Zero grads, backward, clip each parameter group (one per student) on its own, step."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if clip_grad_norm is not None:
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], clip_grad_norm)
        optimizer.step()

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

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` one-step samples ``(n, *sample_shape)``, each from the student owning its label.

        Without ``cond`` the labels are drawn first from ``generator``: in proportion to the class
        weights of the bench's mixture when known, else uniformly.
        """
        if cond is None:
            cond = self.draw_labels(n, generator, self.router.num_classes)
        return super().sample(n, generator, torch.as_tensor(cond).to(self.device))

    def class_weights(self) -> Tensor:
        """``p(c)`` ``(C,)``: the mixture's class masses on the exact bench, else uniform."""
        return self.label_prior(self.router.num_classes)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _as_list(module: nn.Module | Sequence[nn.Module], count: int, key: str) -> list[nn.Module]:
    if isinstance(module, nn.Module):
        check_option(count >= 1, "num_students", count, "an integer >= 1")
        return [copy.deepcopy(module) for _ in range(count)]
    modules = list(module)
    if (
        not modules
        or not all(isinstance(m, nn.Module) for m in modules)
        or (key == "fake_score" and len(modules) != count)
    ):
        raise ValueError(
            f"`{key}` must be one nn.Module or a list of {count if key == 'fake_score' else 'K'} nn.Modules (one per "
            f"student), got {len(modules)} item(s); set `model.init_args.{key}`."
        )
    return modules


def _teacher_classes(teacher: nn.Module) -> int | None:
    """The teacher's number of classes: ``num_classes``, or a diffusers UNet's class embeddings minus the null one."""
    if isinstance(teacher, UNet2DModel) and teacher.config.num_class_embeds:
        return int(teacher.config.num_class_embeds) - 1
    classes = getattr(teacher, "num_classes", None)
    return classes if isinstance(classes, int) and classes >= 1 else None
