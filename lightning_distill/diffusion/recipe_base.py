"""`DiffusionDistillationModule`: what every diffusion-distillation recipe needs besides its equations.

The recipes of the DMD family (DMD2, SwiftBrush, Decoupled/Phased/Flash DMD, MSD) train a one- or
few-step student against a frozen teacher with a trainable fake score and two optimizers
(manual optimization). This base holds their shared plumbing once:

* the noise ``schedule`` (``None``: the teacher's own, else Stable Diffusion's), checked against
  the teacher's prediction type (:func:`check_teacher_schedule` also compares its own schedule);
* an ``iteration`` counter saved in checkpoints (under the recipe's ``checkpoint_key``) with the
  noise seed and the sample shape, so a resumed run is exact;
* per-iteration random generators, a pure function of ``(noise_seed, iteration, rank)``;
* batches split into ``(samples, condition)`` and the null condition for classifier-free guidance;
* the reference :class:`~lightning_distill.diffusion.gmm.GaussianMixture` of the exact-score
  bench (the analytic teacher's, else the datamodule's ``mixture``) and the sample shape;
* validation/test without any callback: ``<stage>/fake_score_loss``, the fake score's denoising
  loss on the batch (:meth:`~DiffusionDistillationModule.validation_losses`), so a real-scale run
  logs something of its own; and the small interface the evaluation callbacks call
  (``evaluation_seed``, ``evaluation_labels``, ``evaluation_samples``, ``teacher_samples``).
  The toy-bench metrics (Gaussian-mixture ``<stage>/{swd, mmd, mode_coverage, mode_tv}``, digits
  ``<stage>/fcd``) are callbacks a config lists: :mod:`lightning_distill.callbacks.evaluation`;
* small helpers: the fake score from an argument, the student started from the teacher (its
  weights, or :func:`fit_to_teacher` for a teacher without any), timestep and noise draws,
  argument checks (:func:`check_option`). Each optimizer's turn is one
  :meth:`~lightning_distill.module.DistillationModule.update` call (weigh, log, step, scheduler).

The free functions it stands on (``derive_seed``, ``model_sample_shape``, ``model_null_label``,
``fit_to_teacher``, ``check_teacher_schedule``) live in :mod:`lightning_distill.diffusion.plumbing`,
``first_tensor`` in :mod:`~lightning_distill.diffusion.guidance`; they are re-exported here.

A subclass implements ``training_step`` (its algorithm, in numbered steps) and
``sample(n, generator, cond=None)`` (its inference path, used by the evaluation callbacks,
``predict`` and ``SampleLogger``), sets ``loss_terms``, ``checkpoint_key`` and ``self.fake_score`` (e.g. with
:meth:`~DiffusionDistillationModule.build_fake_score`; the default ``configure_optimizers`` gives
the student and the fake score one optimizer each), and overrides the hooks where its
conventions differ: ``split_batch`` (other batch layouts), ``null_condition`` (other null
conditions), ``evaluation_labels`` / ``teacher_samples`` (class-conditional evaluation, CFG),
``checkpoint_state`` / ``load_checkpoint_state`` (more state to save), ``iteration_seed``.

Example:
    >>> import torch
    >>> from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, one_step_generate
    >>> class OneStep(DiffusionDistillationModule):
    ...     loss_terms = ("fake",)
    ...     checkpoint_key = "one_step"
    ...     def sample(self, n, generator, cond=None):
    ...         noise = self.initial_noise(n, generator)
    ...         return one_step_generate(self.student, self.schedule, noise, self.schedule.max_timestep, cond)
    >>> module = OneStep(MLPDenoiser(dim=2, hidden=8, depth=1), MLPDenoiser(dim=2, hidden=8, depth=1), noise_seed=0)
    >>> module.sample(3, torch.Generator().manual_seed(0)).shape, module.resolve_sample_shape()
    (torch.Size([3, 2]), (2,))
    >>> module.iteration_seed(0) == module.iteration_seed(0) != module.iteration_seed(1)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion.fake_score import FakeScore
from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.guidance import Cond, first_tensor, model_output
from lightning_distill.diffusion.plumbing import (
    check_teacher_prediction_type,
    check_teacher_schedule,
    derive_seed,
    fit_to_teacher,
    known_unconditional,
    model_null_label,
    model_sample_shape,
)
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.sampling import sample as teacher_sampler
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.diffusion.timesteps import uniform_timesteps
from lightning_distill.losses.distribution_matching import denoising_loss
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

#: The :meth:`~DiffusionDistillationModule.iteration_seed` stream that reseeds torch's global generator.
GLOBAL_GENERATOR_STREAM = 0x676C6F62

#: ``check_option`` and the free functions of :mod:`~lightning_distill.diffusion.plumbing` stay
#: importable from here, where the recipes import them.
__all__ = [
    "DiffusionDistillationModule",
    "check_option",
    "check_teacher_schedule",
    "derive_seed",
    "first_tensor",
    "fit_to_teacher",
    "model_null_label",
    "model_sample_shape",
]


class DiffusionDistillationModule(DistillationModule):
    """Base of the diffusion-distillation recipes (manual optimization). See the module docstring.

    Args:
        student: the generator, a denoiser with the diffusers call signature ``student(x_t, t[, cond])``.
        teacher: the frozen real score with the same call signature.
        schedule: the noise schedule; ``None`` takes ``teacher.schedule`` when it is a
            ``NoiseSchedule``, else Stable Diffusion's (``NoiseSchedule.ddpm()``).
        noise_seed: seed of all training noise; ``None``: ``torch.initial_seed()`` now (the seed
            of ``seed_everything``). Saved in checkpoints.
        sample_shape: shape of one sample; ``None``: from the first training batch, else from
            the teacher, the student or the reference mixture (:meth:`resolve_sample_shape`).
        eval_teacher_steps: sampler steps of the teacher's evaluation samples.
        null_label: the unconditional class label for CFG; ``None``: the teacher's (:func:`model_null_label`).
        loss_weights: weights of the recipe's ``loss_terms``.
        optimizer: optimizer of the student (and of the fake score unless ``fake_score_optimizer``).
        fake_score_optimizer: optimizer of the fake score.
        lr_scheduler: optional scheduler of every optimizer, stepped by ``update`` on each of its turns.

    Raises:
        TypeError: a ``schedule`` that is not a ``NoiseSchedule``.
        ValueError: a teacher whose ``prediction_type`` differs from the schedule's.
    """

    #: The checkpoint entry of the recipe's state (``iteration``, ``noise_seed``, ``sample_shape``).
    checkpoint_key: ClassVar[str] = "diffusion_distillation"
    #: 32-bit words of ``SeedSequence`` per iteration seed (see :func:`derive_seed`).
    seed_words: ClassVar[int] = 2

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        *,
        noise_seed: int | None = None,
        sample_shape: Sequence[int] | None = None,
        eval_teacher_steps: int = 50,
        null_label: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        fake_score_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.automatic_optimization = False
        if schedule is None:
            own = getattr(teacher, "schedule", None)
            schedule = own if isinstance(own, NoiseSchedule) else NoiseSchedule.ddpm()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"`schedule` must be a NoiseSchedule, got {type(schedule).__name__}; set `model.init_args.schedule`."
            )
        check_teacher_prediction_type(teacher, schedule)
        check_option(
            isinstance(eval_teacher_steps, int)
            and not isinstance(eval_teacher_steps, bool)
            and eval_teacher_steps >= 1,
            "eval_teacher_steps",
            eval_teacher_steps,
            "an integer >= 1",
        )
        self.schedule = schedule
        self.noise_seed = int(torch.initial_seed() if noise_seed is None else noise_seed) % 2**63
        self.sample_shape = tuple(int(s) for s in sample_shape) if sample_shape is not None else None
        self.eval_teacher_steps = eval_teacher_steps
        self.null_label = null_label
        self.fake_score_optimizer = fake_score_optimizer
        self.iteration = 0  # training iterations done: the update ratio and the training noise depend on it

    # ------------------------------------------------------------------ what a subclass implements
    def sample(self, n: int, generator: torch.Generator, cond: Cond = None) -> Tensor:
        """``n`` samples ``(n, *sample_shape)`` by the student's inference path, noise from ``generator``.

        Raises:
            NotImplementedError: always; every recipe implements it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `sample(n, generator, cond=None)`.")

    # ------------------------------------------------------------------ randomness
    def iteration_seed(self, iteration: int | None = None, stream: Sequence[int] = ()) -> int:
        """The seed of one iteration's training noise: :func:`derive_seed` of ``(noise_seed, iteration, rank, *stream)``.

        Each DDP rank draws its own noise, and a resumed run draws what the uninterrupted one
        would; ``stream`` separates independent sources within one iteration.
        """
        iteration = self.iteration if iteration is None else iteration
        rank = self.global_rank if self._trainer is not None else 0
        return derive_seed([self.noise_seed, iteration, rank, *stream], self.seed_words)

    def iteration_generator(
        self, iteration: int | None = None, *, stream: Sequence[int] = (), device: torch.device | None = None
    ) -> torch.Generator:
        """A fresh generator seeded with :meth:`iteration_seed` (on ``device``, default the module's)."""
        generator = torch.Generator(device=device if device is not None else self.device)
        return generator.manual_seed(self.iteration_seed(iteration, stream))

    def initial_noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Gaussian noise ``(n, *sample_shape)`` drawn on the generator's device, moved to the module's."""
        device = generator.device if generator is not None else self.device
        shape = (n, *self.resolve_sample_shape())
        return torch.randn(shape, generator=generator, device=device).to(self.device)

    def timesteps_like(self, like: Tensor, low: int, high: int, generator: torch.Generator | None) -> Tensor:
        """Integer timesteps ``(B,)`` uniform on ``[low, high)``, one per sample of ``like`` ``(B, ...)``."""
        return uniform_timesteps(
            like.shape[0],
            low,
            high,
            num_train_timesteps=self.schedule.num_train_timesteps,
            generator=generator,
            device=like.device,
        )

    # ------------------------------------------------------------------ batches and conditions
    def split_batch(self, batch: Any) -> tuple[Tensor, Cond]:
        """``(samples (B, ...), cond)`` from a tensor, ``(x, y, ...)`` or ``{"x": ..., "cond": ...}`` batch.

        Integer labels ``y`` are the condition unless all are ``-1`` (unlabelled: no condition); a
        floating ``y`` (e.g. ``(B, L, D)`` text embeddings) is passed on as it is.

        Raises:
            ValueError: labels that mix ``-1`` and classes, or a batch of another structure.
        """
        if isinstance(batch, Tensor):
            return batch, None
        if isinstance(batch, Mapping) and "x" in batch:
            return batch["x"], batch.get("cond")
        if not (isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor)):
            raise ValueError(
                f"Cannot read a batch of type {type(batch).__name__}; override "
                f"`{type(self).__name__}.split_batch`."
            )
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        if y is None or y.is_floating_point() or not bool((y < 0).any()):
            return batch[0], y
        if not bool((y < 0).all()):
            raise ValueError(
                f"The batch mixes unlabelled (-1) and labelled samples; {type(self).__name__} needs one or the other."
            )
        return batch[0], None

    def null_condition(self, cond: Cond) -> Cond:
        """The unconditional counterpart of ``cond`` for classifier-free guidance.

        Embeddings become zeros (SDXL's convention; SD1.5 uses the empty prompt's embedding:
        override this method); labels become ``null_label``, else the teacher's null label
        (:func:`model_null_label`).

        Raises:
            ValueError: no condition, a mapping condition, or no known null label.
        """
        if isinstance(cond, Tensor) and cond.is_floating_point():
            return torch.zeros_like(cond)
        null = self.null_label if self.null_label is not None else model_null_label(self.teacher)
        if not isinstance(cond, Tensor) or null is None:
            raise ValueError(
                "No known null condition: set `model.init_args.null_label` or override "
                f"`{type(self).__name__}.null_condition`."
            )
        return torch.full_like(cond, null)

    # ------------------------------------------------------------------ models
    def build_fake_score(self, fake_score: nn.Module | None) -> FakeScore:
        """The fake score: ``None`` is a trainable copy of the teacher; a module is wrapped and made trainable.

        Raises:
            ValueError: ``None`` with a teacher without parameters (e.g. the analytic teacher).
        """
        if fake_score is None:
            if next(self.teacher.parameters(), None) is None:
                raise ValueError(
                    f"The teacher ({type(self.teacher).__name__}) has no parameters to copy into a fake score; "
                    "give `model.init_args.fake_score`."
                )
            return FakeScore.copy_of(self.teacher, self.schedule)
        if isinstance(fake_score, FakeScore):
            return fake_score
        return FakeScore(fake_score.requires_grad_(True).train(), self.schedule)

    def init_from_teacher(self, module: nn.Module) -> None:
        """Load the teacher's weights into ``module`` (``student_init: teacher``).

        Raises:
            ValueError: ``module`` does not have the teacher's architecture (or the teacher has no weights).
        """
        try:
            module.load_state_dict(self.teacher.state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"`student_init: teacher` copies the weights of the teacher ({type(self.teacher).__name__}) into "
                f"{type(module).__name__}, which needs the teacher's architecture (the analytic teacher has no "
                f"weights); set `model.init_args.student_init: random`. ({str(error).splitlines()[0]})"
            ) from error

    # ------------------------------------------------------------------ shapes and the exact bench
    @property
    def reference_mixture(self) -> GaussianMixture | None:
        """The data's Gaussian mixture (exact bench): the teacher's ``gmm``, else the datamodule's ``mixture``."""
        gmm = getattr(self.teacher, "gmm", None)
        if gmm is None and self._trainer is not None:
            gmm = getattr(getattr(self._trainer, "datamodule", None), "mixture", None)
        return gmm if isinstance(gmm, GaussianMixture) else None

    def record_sample_shape(self, x: Tensor) -> None:
        """Remember the shape of one sample from a batch ``(B, ...)`` when it is not known yet."""
        if self.sample_shape is None:
            self.sample_shape = tuple(x.shape[1:])

    def resolve_sample_shape(self) -> tuple[int, ...]:
        """``sample_shape``, else inferred from the teacher, the student or the reference mixture.

        Raises:
            ValueError: none of them tells it.
        """
        if self.sample_shape is not None:
            return self.sample_shape
        for model in (self.teacher, self.student):
            shape = model_sample_shape(model)
            if shape is not None:
                return shape
        if self.reference_mixture is not None:
            return (self.reference_mixture.dim,)
        raise ValueError(
            f"Cannot tell the sample shape of {type(self.student).__name__} before training; set "
            "`model.init_args.sample_shape` (e.g. [4, 64, 64])."
        )

    def label_prior(self, num_classes: int) -> Tensor:
        """``p(c)`` ``(C,)`` float64: the mixture's class masses on the exact bench, else uniform."""
        gmm = self.reference_mixture
        if gmm is not None and gmm.num_classes == num_classes:
            return torch.zeros(num_classes, dtype=torch.float64).index_add_(
                0, gmm.class_of_mode.cpu(), gmm.weights.double().cpu()
            )
        return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)

    def draw_labels(self, n: int, generator: torch.Generator, num_classes: int) -> Tensor:
        """``n`` class labels ``(n,)`` drawn from :meth:`label_prior` with ``generator``, on the module's device."""
        prior = self.label_prior(num_classes).to(generator.device)
        return torch.multinomial(prior, n, replacement=True, generator=generator).to(self.device)

    # ------------------------------------------------------------------ evaluation
    # The toy-bench metrics are callbacks a config lists (lightning_distill.callbacks.evaluation:
    # MixtureMetrics, FrechetClassifierDistanceMetric); they call the four methods below, with
    # split_batch, initial_noise, resolve_sample_shape and reference_mixture.
    @property
    def evaluation_seed(self) -> int:
        """Seed of the evaluation samples (the noise floor uses ``evaluation_seed + 1``)."""
        return self.noise_seed

    def evaluation_labels(self, cond: Cond) -> Tensor | None:
        """Labels ``(B,)`` the evaluation samples are conditioned on; default ``None`` (unconditional)."""
        return None

    def evaluation_samples(self, n: int, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        """The student's ``n`` evaluation samples: :meth:`sample` (with ``labels`` when given)."""
        return self.sample(n, generator) if labels is None else self.sample(n, generator, labels)

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's evaluation samples from ``noise``: its sampler in ``eval_teacher_steps`` steps."""
        return teacher_sampler(self.teacher, self.schedule, noise, self.eval_teacher_steps, labels)

    @torch.no_grad()
    def validation_losses(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """What validation logs without any callback: the fake score's denoising loss, a real-scale signal.

        ``fake_score_loss``: ``‖f_φ(x_t, t, c) − y‖²`` (``y`` the schedule's target) of the fake
        score on the batch's samples and conditions (class labels dropped for a fake score known to
        be unconditional: an ``MLPDenoiser`` without ``num_classes``, a ``UNet2DModel`` without
        ``num_class_embeds``), ``t ~ U[0, T)``. The fake score tracks the
        student's distribution, so on held-out data this falls as the student approaches the
        data. Image-free batches (conditions only, as in SwiftBrush) score the student's own
        samples for the batch's conditions instead, as ``fake_score_loss_generated`` (the fake
        score's training loss, held out). The timesteps and noise come from a generator seeded
        ``evaluation_seed + batch_idx``, never the global one. Empty without a fake score.
        """
        fake_score = getattr(self, "fake_score", None)
        if not isinstance(fake_score, nn.Module):
            return {}
        x, cond = self.split_batch(batch)
        generator = torch.Generator(device=self.device).manual_seed(self.evaluation_seed + batch_idx)
        name = "fake_score_loss"
        if x is None:
            x, name = self.sample(first_tensor(cond).shape[0], generator, cond), "fake_score_loss_generated"
        if known_unconditional(fake_score) and isinstance(cond, Tensor) and not cond.is_floating_point():
            cond = None  # evaluation data may carry labels an unconditional fake score cannot take
        x0 = x
        t = self.timesteps_like(x0, 0, self.schedule.num_train_timesteps, generator)
        noise = randn_like(x0, generator)
        pred = model_output(fake_score, self.schedule.add_noise(x0, noise, t), t, cond)
        return {name: denoising_loss(pred.float(), self.schedule.target(x0, noise, t).float())}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Log :meth:`validation_losses` as ``val/<name>`` (``test/<name>`` when testing), epoch means."""
        stage = "test" if self._trainer is not None and self.trainer.testing else "val"
        losses = self.validation_losses(batch, batch_idx)
        if losses:
            x, cond = self.split_batch(batch)
            size = x.shape[0] if x is not None else first_tensor(cond).shape[0]
            for name, value in losses.items():
                self.log(f"{stage}/{name}", value, on_epoch=True, sync_dist=True, batch_size=size)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """What :meth:`validation_step` does (a recipe extending one extends both)."""
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Samples ``(B, *sample_shape)`` for a batch's conditions, noise seeded ``noise_seed + batch_idx``."""
        x, cond = self.split_batch(batch)
        if x is not None:
            self.record_sample_shape(x)
        n = x.shape[0] if x is not None else first_tensor(cond).shape[0]
        generator = torch.Generator(device=self.device).manual_seed(self.noise_seed + batch_idx)
        return self.sample(n, generator, cond)

    # ------------------------------------------------------------------ optimization
    def generator_parameters(self) -> list[nn.Parameter]:
        """The student's trainable parameters (the first optimizer's)."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed torch's global generator from the iteration, so draws the recipe does not make itself follow it.

        Dropout inside the networks draws from the global generator, which Lightning neither restores on
        resume nor keeps in step with a one-process run (diffusers' ``UNet3DConditionModel`` has
        ``p = 0.1`` in every temporal convolution). Reseeding it each iteration from
        :meth:`iteration_seed` (its own stream) makes those masks a function of the iteration: a resumed
        run draws the masks the uninterrupted one drew.
        """
        super().on_train_batch_start(batch, batch_idx)
        torch.manual_seed(self.iteration_seed(stream=(GLOBAL_GENERATOR_STREAM,)))

    def fake_score_parameters(self) -> list[nn.Parameter]:
        """The fake score's trainable parameters (the second optimizer's)."""
        return self.fake_score.trainable_parameters()

    def configure_optimizers(self) -> Any:
        """Two optimizers, student then fake score, each with ``lr_scheduler`` when it is given."""
        optimizers = [
            self.optimizer(self.generator_parameters()),
            (self.fake_score_optimizer or self.optimizer)(self.fake_score_parameters()),
        ]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """What the checkpoint keeps under ``checkpoint_key``; extend it to save more."""
        return {"iteration": self.iteration, "noise_seed": self.noise_seed, "sample_shape": self.sample_shape}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` (entries missing in older checkpoints keep their values)."""
        self.iteration = int(state.get("iteration", 0))
        self.noise_seed = int(state.get("noise_seed", self.noise_seed))
        if state.get("sample_shape") is not None:
            self.sample_shape = tuple(state["sample_shape"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.checkpoint_key] = self.checkpoint_state()
        # Frozen fake-score weights (the base of a LoRA fake score, a copy of the teacher) are rebuilt.
        frozen = {f"fake_score.{n}" for n, p in self._fake_score_named_parameters() if not p.requires_grad}
        state = checkpoint.get("state_dict")
        if frozen and isinstance(state, dict):
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        fake_score = getattr(self, "fake_score", None)
        if isinstance(state, dict) and isinstance(fake_score, nn.Module):
            for key, value in fake_score.state_dict(prefix="fake_score.").items():
                state.setdefault(key, value)
        self.load_checkpoint_state(checkpoint.get(self.checkpoint_key, {}))

    def _fake_score_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        fake_score = getattr(self, "fake_score", None)
        return list(fake_score.named_parameters()) if isinstance(fake_score, nn.Module) else []
