"""The steps of DMD2's iteration as parts: DMD2, Flash-DMD and MSD compose them, and so can a user's module.

One DMD2 iteration (Yin et al., arXiv 2405.14867) is built from these pieces; each is a plain
function of the networks and tensors it needs (no Lightning, no recipe state), and draws its
randomness from the ``generator`` it is given, in a fixed order, so a recipe that composes them
is reproducible:

* :func:`dmd2_settings`: the checked timestep settings (student steps, DM range, GAN range);
* :func:`generator_input`: the student's input ``(x_t, t)``, pure noise or backward simulation;
* :func:`distribution_matching_gradient`: ``g = (x̂_fake − x̂_real) / mean|x̂₀ − x̂_real|`` at a
  random ``t`` in a range, the real score with CFG (the loss is
  :func:`~lightning_distill.losses.distribution_matching.pseudo_target_loss` of ``g``);
* :func:`fake_score_denoising_loss`: the fake score's denoising loss on ``sg(x̂₀)``, ``t ~ U[0, T)``;
* :func:`discriminator_input` and :func:`paired_logits`: the GAN's noised inputs and the logits
  of real and fake samples in one pass (the logits come from
  :func:`~lightning_distill.diffusion.gan_head.discriminator_logits`, the fake score's tapped
  features through a :class:`~lightning_distill.diffusion.gan_head.GANHead`);
* :func:`guidance_null_condition`: the null condition of the real score's CFG;
* :func:`routed_students`, :func:`per_student_heads`: MSD's K students (and per-student fake
  scores and GAN heads) behind one router; :func:`read_copied_students_as`, :func:`copy_students`:
  TSM students copied into fake scores, read in the schedule's parameterisation.

May import: ``utils``, ``losses`` and this toolkit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_distill.diffusion.denoisers import MLPDenoiser, bottleneck_channels
from lightning_distill.diffusion.fake_score import Reparameterised
from lightning_distill.diffusion.gan_head import GANHead
from lightning_distill.diffusion.guidance import Cond, guided_output, model_output
from lightning_distill.diffusion.routing import RoutedDenoiser, contiguous_partition
from lightning_distill.diffusion.sampling import backward_simulation, randn_like
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.diffusion.timesteps import uniform_timesteps
from lightning_distill.losses.distribution_matching import dmd_gradient
from lightning_distill.utils.checks import check_option

__all__ = [
    "discriminator_input",
    "distribution_matching_gradient",
    "dmd2_settings",
    "fake_score_denoising_loss",
    "generator_input",
    "guidance_null_condition",
    "paired_logits",
    "per_student_heads",
    "routed_students",
    "timesteps_in",
]

#: ``(x, cond, generator) -> logits (B,)``: a discriminator, e.g. a recipe's ``discriminator_logits``.
Logits = Callable[[Tensor, Cond, "torch.Generator | None"], Tensor]


def timesteps_in(
    like: Tensor, low: int, high: int, schedule: NoiseSchedule, generator: torch.Generator | None
) -> Tensor:
    """Integer timesteps ``(B,)`` uniform on ``[low, high)``, one per sample of ``like`` ``(B, ...)``."""
    T = schedule.num_train_timesteps
    return uniform_timesteps(
        like.shape[0], low, high, num_train_timesteps=T, generator=generator, device=like.device
    )


def dmd2_settings(
    schedule: NoiseSchedule,
    *,
    min_step_percent: float,
    max_step_percent: float,
    denoising_timesteps: Sequence[int] | None,
    gan_max_timestep: int | None,
) -> tuple[tuple[int, ...], tuple[int, int], int]:
    """Checked timestep settings: ``(student timesteps, DM range [low, high), GAN range high)``.

    The student's timesteps default to one step at ``schedule.max_timestep``; the DM range is
    ``[⌊min·T⌋, ⌊max·T⌋ + 1)`` (the official ``min/max_step_percent``, upper end included); the
    GAN's upper timestep defaults to ``T``.

    Raises:
        ValueError: naming the config key of a value out of range.
    """
    T, t_max = schedule.num_train_timesteps, schedule.max_timestep
    steps = tuple(int(t) for t in (denoising_timesteps or (t_max,)))
    checks = [
        (0 <= min_step_percent < max_step_percent <= 1, "min_step_percent", min_step_percent, "< max, in [0, 1]"),
        (0 <= (gan_max_timestep or 0) <= T, "gan_max_timestep", gan_max_timestep, f"in [0, {T}] or null"),
        (list(steps) == sorted(set(steps), reverse=True) and 0 <= steps[-1] and steps[0] <= t_max,
         "denoising_timesteps", list(steps), f"strictly decreasing, in [0, {t_max}]"),
    ]  # fmt: skip
    for ok, key, value, allowed in checks:
        check_option(ok, key, value, allowed)
    dm_range = (int(min_step_percent * T), min(int(max_step_percent * T) + 1, T))
    return steps, dm_range, T if gan_max_timestep is None else gan_max_timestep


@torch.no_grad()
def generator_input(
    student: nn.Module,
    schedule: NoiseSchedule,
    real: Tensor,
    cond: Cond,
    generator: torch.Generator,
    *,
    timesteps: Sequence[int],
    backward_simulation_on: bool = True,
    step_generator: torch.Generator | None = None,
    prediction_type: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The student's training input ``(x_t (B, ...), t (B,))`` (DMD2, no grad).

    One step (``len(timesteps) == 1``): pure noise at ``timesteps[0]``. Few steps with backward
    simulation: the student's own sample after ``k`` of its steps re-noised to ``t_k``, ``k``
    uniform, drawn from ``step_generator`` (seed it alike on every rank: DMD2 broadcasts ``k``).
    Without it (the official ``denoising`` mode): ``real`` noised to a random ``t_k`` per sample,
    pure noise where ``t_k = T - 1``. The noise comes first from ``generator``.
    """
    noise = randn_like(real, generator)
    if len(timesteps) == 1:
        return noise, torch.full((real.shape[0],), timesteps[0], device=real.device, dtype=torch.long)
    if backward_simulation_on:
        k = int(torch.randint(len(timesteps), (1,), generator=step_generator).item())
        return backward_simulation(
            student,
            schedule,
            noise,
            timesteps,
            cond,
            step=k,
            generator=generator,
            prediction_type=prediction_type,
        )
    t = torch.tensor(timesteps, device=real.device)[
        timesteps_in(real, 0, len(timesteps), schedule, generator)
    ]
    pure = (t == schedule.num_train_timesteps - 1).reshape(-1, *[1] * (real.ndim - 1))
    return torch.where(pure, noise, schedule.add_noise(real, noise, t)), t


@torch.no_grad()
def distribution_matching_gradient(
    real_score: nn.Module,
    fake_score: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    cond: Cond,
    null_cond: Cond,
    *,
    timestep_range: tuple[int, int],
    guidance_scale: float = 1.0,
    normalise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DMD2's ``g = (x̂_fake − x̂_real) / mean|x̂₀ − x̂_real|`` ``(B, ...)`` at ``x_t = α_t sg(x̂₀) + σ_t ε``.

    ``t ~ U[timestep_range)`` (DMD2: ``[0.02 T, 0.98 T]``), then ``ε``, both from ``generator``.
    The real prediction carries CFG at ``guidance_scale`` (``null_cond`` its null condition), the
    fake one none (the official ``fake_guidance_scale`` must be 1); ``normalise=False`` keeps the
    raw difference. Non-finite entries become 0 (:func:`~lightning_distill.losses.distribution_matching.dmd_gradient`).
    """
    t = timesteps_in(x0, *timestep_range, schedule, generator)
    x_t = schedule.add_noise(x0.detach(), randn_like(x0, generator), t)
    fake_x0 = schedule.to_x0(model_output(fake_score, x_t, t, cond), x_t, t)
    real_x0 = schedule.to_x0(guided_output(real_score, x_t, t, cond, null_cond, guidance_scale), x_t, t)
    return dmd_gradient(fake_x0, real_x0, x0, normalise=normalise)


def fake_score_denoising_loss(
    fake_score: nn.Module,
    x0: Tensor,
    cond: Cond,
    generator: torch.Generator | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    """``L_fake = ‖f_φ(x_t, t) − y‖²`` at ``x_t = α_t sg(x̂₀) + σ_t ε``, ``t ~ U[0, T)`` then ``ε`` from ``generator``.

    ``fake_score`` is a :class:`~lightning_distill.diffusion.fake_score.FakeScore` (its schedule
    gives ``y``, e.g. ε). ``reduction="none"`` gives ``(B,)``.
    """
    t = timesteps_in(x0, 0, fake_score.schedule.num_train_timesteps, fake_score.schedule, generator)
    return fake_score.denoising_loss(x0.detach(), t, randn_like(x0, generator), cond, reduction=reduction)


def discriminator_input(
    schedule: NoiseSchedule, x: Tensor, max_timestep: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(x_t, t)``: ``x`` noised to ``t ~ U[0, max_timestep)``; clean at ``t = 0`` when ``max_timestep`` is 0 (DMD2)."""
    t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if max_timestep > 0:
        t = timesteps_in(x, 0, max_timestep, schedule, generator)
        x = schedule.add_noise(x, randn_like(x, generator), t)
    return x, t


def paired_logits(
    logits: Logits,
    real: Tensor,
    fake: Tensor,
    real_cond: Cond,
    fake_cond: Cond,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Discriminator logits of ``sg(real)`` ``(B_real,)`` and ``sg(fake)`` ``(B_fake,)`` for DMD2's loss L_D.

    The two go through ``logits`` as one batch when their conditions concatenate (``None`` or
    tensors); every sample still gets its own noise level, as with two calls.
    """
    real, fake = real.detach(), fake.detach().to(real.dtype)
    if (real_cond is None and fake_cond is None) or (
        isinstance(real_cond, Tensor) and isinstance(fake_cond, Tensor)
    ):
        cond = None if real_cond is None else torch.cat([real_cond, fake_cond])
        both = logits(torch.cat([real, fake]), cond, generator)
        real_logits, fake_logits = both.split([real.shape[0], fake.shape[0]])
        return real_logits, fake_logits
    return logits(real, real_cond, generator), logits(fake, fake_cond, generator)


def guidance_null_condition(cond: Cond, guidance_scale: float, null_of: Callable[[Cond], Cond]) -> Cond:
    """The null condition of the real score's CFG: ``None`` at scale 1, else ``null_of(cond)``.

    Raises:
        ValueError: CFG asked for on batches without a condition.
    """
    if guidance_scale == 1.0:
        return None
    if cond is None:
        raise ValueError(
            f"`real_guidance_scale`={guidance_scale} needs conditioned batches; the data has no labels. "
            "Set `model.init_args.real_guidance_scale: 1.0`."
        )
    return null_of(cond)


# ---------------------------------------------------------------------------- MSD: K routed students
def routed_students(
    student: nn.Module | Sequence[nn.Module],
    teacher: nn.Module,
    *,
    num_students: int | None,
    partition: Sequence[Sequence[int]] | None,
    fake_score: nn.Module | Sequence[nn.Module] | None,
    fake_score_sharing: str,
    tsm_steps: int,
    tsm_init_fake_score: bool,
    student_init: str,
) -> tuple[RoutedDenoiser, nn.Module | None]:
    """MSD's students and fake score(s), checked: ``(router over the K students, fake-score network)``.

    ``student`` is one network (copied K times) or K networks; ``partition`` defaults to contiguous
    blocks of the teacher's classes. ``student_init: teacher`` loads the teacher's weights into every
    student. Per-student fake scores (``fake_score_sharing: per_student``) are routed like the
    students: copies of ``fake_score`` (or of the teacher), or a list of K networks; a shared one is
    returned as given (``None``: the recipe copies the teacher).

    Raises:
        ValueError: naming the config key of a bad count, partition, list length or architecture.
    """
    students = _as_list(student, num_students or (len(partition) if partition is not None else 4), "student")
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
    check_option(student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'")
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
    return router, fake_score


def read_copied_students_as(
    fake_scores: RoutedDenoiser, schedule: NoiseSchedule, student_prediction_type: str | None
) -> None:
    """Wrap each per-student fake score in place so a student copied into it is read as the schedule's type.

    MSD's TSM students predict ``student_prediction_type`` (e.g. x₀) while the fake scores are
    trained and read in ``schedule.prediction_type`` (ε): each expert becomes a
    :class:`~lightning_distill.diffusion.fake_score.Reparameterised` (nothing changes when the types agree).

    Raises:
        ValueError: the student's predictions cannot be converted at some timestep of ``schedule``.
    """
    source = student_prediction_type or schedule.prediction_type
    if source == schedule.prediction_type:
        return
    for k, expert in enumerate(fake_scores.experts):
        fake_scores.experts[k] = Reparameterised(expert, schedule, source=source)


@torch.no_grad()
def copy_students(students: RoutedDenoiser, fake_scores: RoutedDenoiser) -> None:
    """Load each student's weights into its fake score (MSD after TSM), inside its conversion if it has one.

    With :func:`read_copied_students_as` applied first, a copied x₀ student predicts ε, which is
    what the fake score is trained and read as.
    """
    for student, fake in zip(students.experts, fake_scores.experts):
        (fake.model if isinstance(fake, Reparameterised) else fake).load_state_dict(student.state_dict())


def per_student_heads(experts: Sequence[nn.Module], channels: int | None = None) -> nn.ModuleList:
    """One :class:`GANHead` per fake score, on its bottleneck (``channels``: default read from each architecture).

    Vector features (MLP fake scores) are 1x1 maps: GANHead's default groups would hold one value
    each, which GroupNorm sends to 0 (a constant discriminator); one group normalises over channels.
    """
    return nn.ModuleList(
        GANHead(
            channels or bottleneck_channels(e),
            num_groups=1 if isinstance(_unwrapped(e), MLPDenoiser) else None,
        )
        for e in experts
    )


def _unwrapped(model: nn.Module) -> nn.Module:
    return _unwrapped(model.model) if isinstance(model, Reparameterised) else model


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
