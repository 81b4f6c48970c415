"""TAD-SR: a one-step SR student distilled from a ResShift teacher with HSD and a time-aware discriminator.

Paper: He et al., "One Step Diffusion-based Super-Resolution with Time-Aware Distillation" (TAD-SR,
arXiv 2408.07476; official code LearningHx/TAD-SR,
``TAD-SR/models/gaussian_diffusion.py::training_losses_distill``/``training_losses_D``, ``trainer.py``).
The teacher is ResShift (:mod:`lightning_distill.super_resolution.resshift`), an ``x_0``-predicting
denoiser of the residual-shifting process; the student has its architecture and starts from its weights.

1. ``x_T = y_0 + κ √η_T ε``; the student predicts ``x̂₀ = S(x_T, T)`` in one step.
2. The teacher's ``T``-step deterministic sampler from the same ``x_T`` gives ``x_tch``;
   ``L_mse = mean (x̂₀ − x_tch)²``.
3. HSD: noise ``x̂₀`` and ``x_tch`` with the same ``ε'`` to ``t ~ U{0..hsd_max_timestep−1}``; the teacher's
   ``x₀`` predictions there, turned into noise predictions, give ``g = ε̂(x̂₀,t) − ε̂(x_tch,t)``;
   ``L_hsd = mean(sg(g) · x̂₀)``.
4. Discriminator turn: teacher (frozen UNet) features of the noised HR image (real) and of the noised,
   detached ``x̂₀`` (fake), same noise, ``t ~ U{0..T−2}``; a trainable time-aware head ``D(f, t)``;
   ``L_disc = mean relu(1 − D(real)) + mean relu(1 + D(fake))`` (hinge).
5. Generator turn: ``L_gan = −mean D(f(noised x̂₀), t)`` through the frozen teacher into ``x̂₀``;
   the student minimises ``w_mse L_mse + w_hsd L_hsd + w_gan L_gan``. An EMA of the student
   (:class:`~lightning_distill.callbacks.EMATeacher`) is what validation and test evaluate.

The official code draws the HSD and discriminator noise with ``torch.rand_like`` (uniform on [0, 1));
the process needs Gaussian noise, which is what this recipe draws (:meth:`TADSR.draw_noise`).

==============================  ==============================  =========================
paper / official code           config key (``model.init_args``)  default
==============================  ==============================  =========================
MSE to the teacher              ``loss_weights.mse``            1.0
``hsd_weight``                  ``loss_weights.hsd``            1.0
``GAN_weight``                  ``loss_weights.gan``            0.02
discriminator hinge loss        ``loss_weights.disc``           1.0
HSD timesteps (non-uniform)     ``hsd_max_timestep``            3 (t in {0, 1, 2})
teacher target sampler          ``teacher_sampler``             ``"ddim"`` (ddim_sample_loop)
``ema_rate``                    ``ema_decay``                   0.999
AdamW lr 5e-5, wd 0 (both)      ``optimizer``, ``discriminator_optimizer``  :func:`tad_sr_adamw`
linear warm-up, 5000 iters      ``lr_scheduler``                :func:`tad_sr_warmup`
ResShift T, κ, p, η ends        ``schedule``                    15, 2.0, 0.3, 0.02 / 0.99
==============================  ==============================  =========================
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks.ema_teacher import EMATeacher
from lightning_distill.diffusion.plumbing import derive_seed
from lightning_distill.losses.super_resolution import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    hsd_loss,
    teacher_sr_mse_loss,
)
from lightning_distill.module import DistillationModule
from lightning_distill.super_resolution.denoisers import upsample_to
from lightning_distill.super_resolution.metrics import SRMetrics
from lightning_distill.super_resolution.resshift import (
    ResShiftSchedule,
    TimeAwareDiscriminator,
    denoiser_features,
    to_signed,
)
from lightning_distill.utils.checks import check_option

__all__ = ["TADSR", "tad_sr_adamw", "tad_sr_warmup"]


def tad_sr_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 5e-5, weight decay 0 (``configs/TAD-SR.yaml``; student and discriminator alike)."""
    return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0)


def tad_sr_warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate rises linearly over the first 5000 updates (``trainer.py::adjust_lr``, milestone 5000)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5000))


class TADSR(DistillationModule):
    """TAD-SR recipe (manual optimisation: discriminator turn, then student turn). See the module docstring.

    Args:
        student: the one-step SR network, called like the teacher ``student(x_t, t, lr)`` (an
            :class:`~lightning_distill.super_resolution.denoisers.LRConditionedUNet`).
        teacher: the frozen ResShift teacher predicting ``x_0`` (e.g.
            :func:`~lightning_distill.super_resolution.resshift.trained_resshift`).
        schedule: the teacher's ResShift process (default: T = 15, κ = 2, p = 0.3).
        student_init: ``"teacher"`` copies the teacher's weights into the student (the paper);
            ``"random"`` keeps the student as given.
        teacher_sampler: the teacher's target sampler, ``"ddim"`` (official) or ``"ancestral"``.
        hsd_max_timestep: HSD draws ``t`` from ``{0, …, hsd_max_timestep − 1}`` (official: 3); ``T − 1``
            is the official ``uniform_sampling`` variant.
        gan: train the time-aware discriminator and add ``L_gan`` (official ``use_GAN_loss``).
        gan_feature_path: the teacher submodule whose output the discriminator reads.
        gan_channels: channels of those features (default: the UNet's last ``block_out_channels``).
        ema_decay: decay of the student EMA evaluated in validation/test; ``None`` turns it off.
        max_grad_norm: clip each turn's gradient norm; ``None`` (official) does not clip.
        border: pixels shaved before PSNR/SSIM (``None``: the scale, the SR protocol).
        noise_seed: seed of the training noise; ``None``: ``torch.initial_seed()``.
        loss_weights: ``mse``, ``hsd``, ``gan`` (student turn) and ``disc`` (discriminator turn).
        optimizer: the student's optimizer (default :func:`tad_sr_adamw`).
        discriminator_optimizer: the head's (default: ``optimizer``'s callable).
        lr_scheduler: built for each optimizer, stepped on each of its updates (default :func:`tad_sr_warmup`).

    Raises:
        ValueError: an argument out of range (the message names the config key), or a student whose
            weights do not fit the teacher's under ``student_init="teacher"``.
        TypeError: ``schedule`` that is not a ``ResShiftSchedule``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("mse", "hsd", "gan", "disc")
    default_loss_weights: ClassVar[dict[str, float]] = {"mse": 1.0, "hsd": 1.0, "gan": 0.02, "disc": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: ResShiftSchedule | None = None,
        student_init: Literal["teacher", "random"] = "teacher",
        teacher_sampler: Literal["ddim", "ancestral"] = "ddim",
        hsd_max_timestep: int = 3,
        gan: bool = True,
        gan_feature_path: str = "unet.mid_block",
        gan_channels: int | None = None,
        ema_decay: float | None = 0.999,
        max_grad_norm: float | None = None,
        border: int | None = None,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = tad_sr_adamw,
        discriminator_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = tad_sr_warmup,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.save_hyperparameters(
            ignore=["student", "teacher", "schedule", "optimizer", "discriminator_optimizer", "lr_scheduler"]
        )
        schedule = ResShiftSchedule() if schedule is None else schedule
        if not isinstance(schedule, ResShiftSchedule):
            raise TypeError(f"`schedule` must be a ResShiftSchedule, got {type(schedule).__name__}.")
        steps = schedule.num_steps
        check_option(
            student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"
        )
        check_option(
            teacher_sampler in ("ddim", "ancestral"),
            "teacher_sampler",
            teacher_sampler,
            "'ddim' or 'ancestral'",
        )
        check_option(
            not isinstance(hsd_max_timestep, bool) and isinstance(hsd_max_timestep, int) and 1 <= hsd_max_timestep < steps,
            "hsd_max_timestep", hsd_max_timestep, f"an int in [1, T - 1 = {steps - 1}]",
        )  # fmt: skip
        check_option(ema_decay is None or 0.0 <= ema_decay < 1.0, "ema_decay", ema_decay, "in [0, 1) or null")
        check_option(
            max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"
        )
        if student_init == "teacher":
            try:
                student.load_state_dict(teacher.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    "`student_init='teacher'` copies the teacher's weights into the student, but they do not fit "
                    f"({str(err).splitlines()[0]}); give the student the teacher's architecture or set "
                    "`model.init_args.student_init: random`."
                ) from None
        self.schedule = schedule
        self.teacher_sampler = teacher_sampler
        self.hsd_max_timestep = hsd_max_timestep
        self.gan_feature_path = gan_feature_path
        self.ema_decay = ema_decay
        self.max_grad_norm = max_grad_norm
        self.noise_seed = torch.initial_seed() % 2**62 if noise_seed is None else int(noise_seed)
        self.discriminator_optimizer = discriminator_optimizer
        self.discriminator: TimeAwareDiscriminator | None = None
        if gan:
            if gan_channels is None:
                config = getattr(teacher, "config", None)
                check_option(
                    config is not None and hasattr(config, "block_out_channels"), "gan_channels", gan_channels,
                    "the channels of the tapped teacher features (the teacher has no UNet config to read them from)",
                )  # fmt: skip
                gan_channels = int(config.block_out_channels[-1])
            self.discriminator = TimeAwareDiscriminator(gan_channels, num_steps=steps)
        self.metrics = SRMetrics(border=border)
        self.automatic_optimization = False

    # ------------------------------------------------------------------ the paper, one method per equation
    def draw_noise(
        self, shape: torch.Size | tuple[int, ...], generator: torch.Generator, like: Tensor
    ) -> Tensor:
        """Standard Gaussian noise ``shape`` (the official code's ``rand_like`` is uniform: a bug, not followed)."""
        return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)

    def student_x0(self, x_T: Tensor, lr: Tensor) -> Tensor:
        """Step 1: ``x̂₀ = S(x_T, T − 1, lr)`` ``(B, C, H, W)`` (not clamped; keeps the grad mode)."""
        return self.schedule.predict_x0(self.student, x_T, self.schedule.last(x_T.shape[0], x_T.device), lr)

    @torch.no_grad()
    def teacher_target(self, lr: Tensor, noise: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Step 2: the teacher's ``T``-step output from ``x_T = y_0 + κ √η_T noise`` (``[−1, 1]``)."""
        return self.schedule.sample(
            self.teacher, lr, noise, sampler=self.teacher_sampler, generator=generator
        )

    def mse_loss(self, x0: Tensor, target: Tensor) -> Tensor:
        """``L_mse = mean (x̂₀ − sg(x_tch))²``."""
        return teacher_sr_mse_loss(x0, target)

    def noised_pair(
        self, a: Tensor, b: Tensor, y0: Tensor, t: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``a`` and ``b`` noised to ``t`` with the same Gaussian ``ε`` (ResShift marginal); returns ``(a_t, b_t, ε)``."""
        noise = self.draw_noise(a.shape, generator, a)
        return self.schedule.q_sample(a, y0, t, noise), self.schedule.q_sample(b, y0, t, noise), noise

    @torch.no_grad()
    def hsd_gradient(
        self, x0: Tensor, target: Tensor, y0: Tensor, lr: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Step 3: ``g = ε̂_T(x̂₀ noised, t) − ε̂_T(x_tch noised, t)``, ``t ~ U{0..hsd_max_timestep−1}`` ``(B, C, H, W)``."""
        t = torch.randint(0, self.hsd_max_timestep, (x0.shape[0],), generator=generator).to(x0.device)
        x0 = x0.detach()
        student_t, teacher_t, _ = self.noised_pair(x0, target, y0, t, generator)
        predict = self.schedule.predict_x0
        eps_student = self.schedule.epsilon_from_x0(
            student_t, predict(self.teacher, student_t, t, lr, clip=True), y0, t
        )
        eps_teacher = self.schedule.epsilon_from_x0(
            teacher_t, predict(self.teacher, teacher_t, t, lr, clip=True), y0, t
        )
        return eps_student - eps_teacher

    def hsd_loss(self, x0: Tensor, gradient: Tensor) -> Tensor:
        """``L_hsd = mean(sg(g) · x̂₀)``."""
        return hsd_loss(x0, gradient)

    def discriminator_logits(self, x_t: Tensor, t: Tensor, lr: Tensor) -> Tensor:
        """``D(f_T(x_t, t), t)`` ``(B,)``: the head on the frozen teacher's features (graph kept into ``x_t``)."""
        if self.discriminator is None:
            raise RuntimeError("The GAN branch is off (`gan: false`); there is no discriminator.")
        features = denoiser_features(
            self.teacher, self.gan_feature_path, x_t, t, lr,
            call=lambda x, s, c: self.schedule.predict_x0(self.teacher, x, s, c),
        )  # fmt: skip
        return self.discriminator(features, t)

    def discriminator_loss(
        self, hr: Tensor, x0: Tensor, y0: Tensor, lr: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Step 4: hinge loss on noised HR vs noised ``sg(x̂₀)`` at ``t ~ U{0..T−2}``; returns ``(L_disc, t, ε)``."""
        t = torch.randint(0, self.schedule.num_steps - 1, (hr.shape[0],), generator=generator).to(hr.device)
        real_t, fake_t, noise = self.noised_pair(hr, x0.detach(), y0, t, generator)
        real_logits = self.discriminator_logits(real_t, t, lr)
        fake_logits = self.discriminator_logits(fake_t, t, lr)
        self.log_diagnostics({"d_real": real_logits.mean(), "d_fake": fake_logits.mean()})
        return hinge_discriminator_loss(real_logits, fake_logits), t, noise

    def generator_gan_loss(self, x0: Tensor, y0: Tensor, t: Tensor, noise: Tensor, lr: Tensor) -> Tensor:
        """Step 5: ``L_gan = −mean D(f_T(x̂₀ noised, t), t)`` with the discriminator turn's ``t`` and ``ε``."""
        return hinge_generator_loss(
            self.discriminator_logits(self.schedule.q_sample(x0, y0, t, noise), t, lr)
        )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizers = self.optimizers()
        opt_student, opt_disc = optimizers if isinstance(optimizers, (list, tuple)) else (optimizers, None)
        lr, hr = to_signed(batch[0]), to_signed(batch[1])
        rng = self._iteration_generator()
        # 1. The student's one step from x_T = y_0 + κ √η_T ε.
        noise = self.draw_noise(hr.shape, rng, hr)
        y0 = upsample_to(lr, tuple(hr.shape[-2:]))
        x0 = self.student_x0(self.schedule.prior_sample(y0, noise), lr)
        # 2. The teacher's multi-step output from the same noise.
        target = self.teacher_target(lr, noise, rng)
        # 4. Discriminator turn (the official order: D first, on the detached student output).
        if self.discriminator is not None and opt_disc is not None:
            disc, t_dis, dis_noise = self.discriminator_loss(hr, x0, y0, lr, rng)
            self.update(opt_disc, {"disc": disc}, turn="discriminator", max_grad_norm=self.max_grad_norm)
        # 3./5. Student turn: MSE to the teacher + HSD + GAN through the frozen teacher.
        terms = {
            "mse": self.mse_loss(x0, target),
            "hsd": self.hsd_loss(x0, self.hsd_gradient(x0, target, y0, lr, rng)),
        }
        if self.discriminator is not None and opt_disc is not None:
            terms["gan"] = self.generator_gan_loss(x0, y0, t_dis, dis_noise, lr)
        self.update(opt_student, terms, turn="student", max_grad_norm=self.max_grad_norm)

    def configure_optimizers(self) -> Any:
        groups = [(self.optimizer, list(self.student.parameters()))]
        if self.discriminator is not None:
            groups.append(
                (self.discriminator_optimizer or self.optimizer, list(self.discriminator.parameters()))
            )
        out = []
        for make, params in groups:
            opt = make(params)
            entry: dict[str, Any] = {"optimizer": opt}
            if self.lr_scheduler is not None:
                entry["lr_scheduler"] = {"scheduler": self.lr_scheduler(opt), "interval": "step"}
            out.append(entry)
        return out

    def configure_callbacks(self) -> list[Any]:
        if self.ema_decay is None:
            return []
        return [EMATeacher(source="student", target="ema_student", decay=self.ema_decay, swap_for_eval=True)]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def super_resolve(self, model: nn.Module, lr: Tensor, scale: int, num_steps: int | None = None) -> Tensor:
        """SR ``(B, C, H, W)`` in ``[0, 1]`` of ``lr`` in ``[0, 1]``: one step for a student, ``T`` for the teacher."""
        steps = num_steps or (self.schedule.num_steps if model is self.teacher else 1)
        gen = torch.Generator().manual_seed(self.noise_seed % 2**31)
        return self.schedule.super_resolve(
            model, lr, scale, num_steps=steps, sampler=self.teacher_sampler, generator=gen
        )

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """PSNR/SSIM on Y (border = scale) and RGB PSNR of ``model`` (student: 1 step; teacher: ``T`` steps)."""
        lr, hr = batch[0], batch[1]
        check_option(
            lr.ndim == 4 and hr.ndim == 4 and hr.shape[-1] % lr.shape[-1] == 0, "data", tuple(lr.shape),
            f"(lr, hr) batches with an HR size a multiple of the LR size (HR {tuple(hr.shape)})",
        )  # fmt: skip
        scale = hr.shape[-1] // lr.shape[-1]
        return self.metrics(self.super_resolve(model, lr, scale), hr, scale=scale)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The student's one-step SR in ``[0, 1]`` of ``(lr, hr)`` batches (the scale read from them) or LR images at ×4."""
        if isinstance(batch, (list, tuple)):
            lr, scale = batch[0], (batch[1].shape[-1] // batch[0].shape[-1] if len(batch) > 1 else 4)
        else:
            lr, scale = batch, 4
        return self.super_resolve(self.student, lr, scale)

    @torch.no_grad()
    def sr_outputs(self, lr: Tensor) -> dict[str, Tensor]:
        """The columns of ``SuperResolutionPictures``: the student's one step and the teacher's ``T`` steps."""
        scale = int(getattr(getattr(self.trainer, "datamodule", None), "scale", 0) or 4)
        return {
            "student, 1 step": self.super_resolve(self.student, lr, scale),
            "teacher": self.super_resolve(self.teacher, lr, scale),
        }

    # ------------------------------------------------------------------ helpers
    def _iteration_generator(self) -> torch.Generator:
        """Training noise of this iteration and rank, reproducible on resume."""
        seed = derive_seed([self.noise_seed, self.global_step, self.global_rank])
        return torch.Generator().manual_seed(seed)
