"""DynamicCity: 4D occupancy generation with a HexPlane VAE and a DiT on the rolled-out planes.

"DynamicCity: Large-Scale 4D Occupancy Generation from Dynamic Scenes" (Bian, Kong, Zeng, Liu,
Liu; arXiv 2410.18084). Official code: 3DTopia/DynamicCity (``dynamic_city/trainer/vae_trainer.py``,
``dit_trainer.py``). Not a distillation method: the library builds it as a recipe (:class:`DynamicCity`) so that its
DiT can then be distilled into a few-step generator (:class:`DynamicCityDMD`,
``recipes/dynamiccity/distill.yaml``: our extension, built from the diffusion toolkit's DMD2 parts).

Algorithm (two stages, as the paper trains them):

1. VAE (the ``teacher`` argument, trained on first use by
   :func:`~lightning_distill.data.occupancy.trained_occupancy_vae` and then frozen): occupancy
   ``(T, X, Y, Z)`` -> 3D convs -> projection onto six planes (xy, xz, yz, tx, ty, tz) -> mean and
   log-variance -> decoder querying the planes at every voxel -> class logits;
   ``L_VAE = CE + Lovász + β KL``.
2. DiT (the ``student``, what this recipe trains): z₀ = padded rollout of the HexPlane mean (one
   square image, unit scale), x_t = α_t z₀ + σ_t ε, t ~ U[0, T);
   ``L_denoise = Σ m (ε̂(x_t, t) − ε)² / Σ m`` with ``m`` the rollout mask (padding left out).
3. Generation: ``sampling_steps`` (50) steps of the diffusers scheduler from noise, the VAE decodes
   the rollout, argmax over classes.

Why the VAE is cached on first use rather than trained as a first stage of this module: the DiT
needs a fixed latent space, the paper trains the two one after the other, and the cache lets the
few-step distillation config reuse the same VAE.

======================================  ==========================  =====================================
paper / official code                   config key                  default
======================================  ==========================  =====================================
DiT diffusion (``create_diffusion``)    ``schedule``                1000 linear betas 1e-4..0.02, ε
sampling steps                          ``sampling_steps``          50 (DDIM, diffusers)
rollout mask on the DiT loss            always on                   —
AdamW (DiT)                             ``optimizer``               lr 1e-4, weight decay 0
VAE loss CE + Lovász + β KL             ``teacher.init_args.loss_weights``  1, 1, 1e-3
======================================  ==========================  =====================================

The extension, :class:`DynamicCityDMD` (DMD2, arXiv 2405.14867, without its GAN term): a few-step
student and a fake score start from the trained DiT; each iteration the fake score learns to denoise
the student's samples (``fake``), and on every ``generator_update_every``-th one the student follows
``g = (x̂_fake − x̂_real) / mean|x̂₀ − x̂_real|`` (``dm``, :mod:`lightning_distill.diffusion.dmd`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion import dmd
from lightning_distill.diffusion.guidance import model_output
from lightning_distill.diffusion.plumbing import derive_seed
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule
from lightning_distill.diffusion.sampling import few_step_sample, one_step_generate, randn_like
from lightning_distill.diffusion.sampling import sample as scheduler_sample
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.diffusion.timesteps import uniform_timesteps
from lightning_distill.lidar_generation.occupancy import OccupancyIoU, class_frequency_distance
from lightning_distill.losses.distribution_matching import pseudo_target_loss
from lightning_distill.losses.lidar_generation import masked_denoising_loss
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option

__all__ = ["DynamicCity", "DynamicCityDMD", "dit_adamw"]

dit_adamw = functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.0)
"""DiT's optimizer (AdamW, lr 1e-4, no weight decay), the official DiT trainer's."""


class DynamicCity(DistillationModule):
    """DynamicCity's DiT on the frozen HexPlane VAE's rolled-out latents. See the module docstring.

    Args:
        student: the DiT, a denoiser ``student(x_t (B, C, H, W), t) -> ε̂`` (e.g.
            :class:`~lightning_distill.lidar_generation.dit.PlaneDiT` around diffusers'
            ``DiTTransformer2DModel``).
        teacher: the trained VAE (:class:`~lightning_distill.lidar_generation.hexplane.HexPlaneVAE`,
            with ``encode_latent``, ``decode_latent`` and ``latent_mask``), frozen.
        schedule: the noise schedule; ``None`` is DiT's (1000 linear betas, ε-prediction).
        sampling_steps: scheduler steps of generation (validation samples, ``predict``).
        num_samples: sequences generated at each validation for ``val/class_tv``.
        noise_seed: seed of the training noise; ``None``: ``torch.initial_seed()``.
        loss_weights: weight of ``denoise`` (1).
        optimizer: the DiT's optimizer (default :data:`dit_adamw`).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: ``sampling_steps`` or ``num_samples`` < 1, a teacher that is not a HexPlane VAE,
            or a schedule whose prediction type is not ε.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("denoise",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        sampling_steps: int = 50,
        num_samples: int = 8,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = dit_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(student, teacher=teacher, loss_weights=loss_weights, optimizer=optimizer,
                         lr_scheduler=lr_scheduler)  # fmt: skip
        self.save_hyperparameters(ignore=["student", "teacher", "schedule", "optimizer", "lr_scheduler"])
        for name in ("encode_latent", "decode_latent", "latent_mask"):
            check_option(callable(getattr(teacher, name, None)), "teacher", type(teacher).__name__,
                         f"a HexPlane VAE with `{name}` (lightning_distill.lidar_generation.HexPlaneVAE)")  # fmt: skip
        check_option(
            isinstance(sampling_steps, int) and sampling_steps >= 1, "sampling_steps", sampling_steps, ">= 1"
        )
        check_option(isinstance(num_samples, int) and num_samples >= 1, "num_samples", num_samples, ">= 1")
        self.schedule = NoiseSchedule.ddpm(1000, "linear", "epsilon") if schedule is None else schedule
        check_option(isinstance(self.schedule, NoiseSchedule) and self.schedule.prediction_type == "epsilon",
                     "schedule", schedule, "an ε-prediction NoiseSchedule (DiT's)")  # fmt: skip
        self.sampling_steps = sampling_steps
        self.num_samples = num_samples
        self.noise_seed = int(torch.initial_seed() if noise_seed is None else noise_seed)
        self.register_buffer("latent_mask", teacher.latent_mask().float(), persistent=False)
        # the VAE's (the teacher's) reconstruction IoU / mIoU, logged as <stage>/teacher_{iou,miou}
        self.reconstruction_iou = OccupancyIoU(teacher.num_classes)

    # ------------------------------------------------------------------ the paper, one method per equation
    @torch.no_grad()
    def encode(self, occupancy: Tensor) -> Tensor:
        """Stage 1 (frozen): z₀, the unit-scale HexPlane rollout ``(B, C, H, W)`` of ``occupancy`` ``(B, T, X, Y, Z)``."""
        return self.teacher.encode_latent(occupancy)

    def denoising_loss(self, z0: Tensor, generator: torch.Generator) -> Tensor:
        """Stage 2: ``L = Σ m (ε̂(α_t z₀ + σ_t ε, t) − ε)² / (C Σ m)``, t ~ U[0, T), padding masked out."""
        T = self.schedule.num_train_timesteps
        t = uniform_timesteps(z0.shape[0], 0, T, num_train_timesteps=T, generator=generator, device=z0.device)
        noise = randn_like(z0, generator)
        prediction = model_output(self.student, self.schedule.add_noise(z0, noise, t), t)
        return masked_denoising_loss(prediction, self.schedule.target(z0, noise, t), self.latent_mask)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Step 3: ``n`` latent rollouts ``(n, C, H, W)`` by ``sampling_steps`` scheduler steps, padding zeroed."""
        shape = (n, self.student.in_channels, *self.latent_mask.shape)
        noise = torch.randn(shape, generator=generator).to(self.device)
        return scheduler_sample(self.student, self.schedule, noise, self.sampling_steps) * self.latent_mask

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` generated occupancy sequences ``(n, T, X, Y, Z)``: :meth:`sample`, then the VAE decoder and argmax."""
        return self.teacher.decode_latent(self.sample(n, generator)).argmax(1)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        occupancy = _occupancy(batch)
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed([self.noise_seed, self.global_step, self.global_rank], words=1)
        )
        # 1. The frozen VAE's latent; 2. the DiT's masked denoising loss.
        z0 = self.encode(occupancy)
        return self.log_losses({"denoise": self.denoising_loss(z0, generator)})

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        stage = "test" if self._trainer is not None and self.trainer.testing else "val"
        occupancy = _occupancy(batch)
        generator = torch.Generator(device=self.device).manual_seed(self.noise_seed + batch_idx)
        z0 = self.encode(occupancy)
        size = occupancy.shape[0]
        with torch.no_grad():
            self.log(f"{stage}/denoise", self.denoising_loss(z0, generator), sync_dist=True, batch_size=size)
            self.reconstruction_iou.update(self.teacher.decode_latent(z0).argmax(1), occupancy)
        if batch_idx == 0:
            start = time.perf_counter()
            generated = self.generate(self.num_samples, generator)
            self.log(
                f"{stage}/sampling_seconds", (time.perf_counter() - start) / self.num_samples, batch_size=size
            )
            self.log(f"{stage}/class_tv", class_frequency_distance(generated, occupancy, self.teacher.num_classes),
                     batch_size=size)  # fmt: skip

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _log_reconstruction(self, stage: str) -> None:
        values = self.reconstruction_iou.compute()
        self.log_dict({f"{stage}/teacher_{k}": v for k, v in values.items()}, sync_dist=True)
        self.reconstruction_iou.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_reconstruction("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_reconstruction("test")
        super().on_test_epoch_end()

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Generated occupancy sequences ``(B, T, X, Y, Z)``, one per batch item, noise seeded ``noise_seed + batch_idx``."""
        generator = torch.Generator().manual_seed(self.noise_seed + batch_idx)
        return self.generate(_occupancy(batch).shape[0], generator)


class DynamicCityDMD(DiffusionDistillationModule):
    """Few-step distillation of DynamicCity's DiT with DMD2's parts (manual optimization, two optimizers).

    Args:
        student: the few-step generator, the DiT's architecture (e.g. ``tiny_plane_dit``).
        teacher: the trained DiT (real score), predicting ``schedule.prediction_type``.
        schedule: the noise schedule; ``None`` is DiT's (1000 linear betas, ε).
        fake_score: the fake score's network; ``None`` is a trainable copy of the teacher (DMD2).
        student_init: ``"teacher"`` starts the student from the teacher's weights (DMD2), ``"random"`` does not.
        denoising_timesteps: the student's timesteps (DMD2's 4 steps by default).
        min_step_percent: lowest timestep of the DM loss, as a fraction of ``T``.
        max_step_percent: highest timestep of the DM loss, as a fraction of ``T``.
        generator_update_every: the student updates on every k-th iteration, the fake score on every one.
        backward_simulation: few-step inputs from the student's own samples (DMD2) or from noised data.
        max_grad_norm: gradient clipping of both networks; ``None`` disables it.
        noise_seed: seed of the training noise; ``None``: ``torch.initial_seed()``.
        sample_shape: shape of one latent ``(C, H, W)``; default from the data.
        loss_weights: weights of ``dm`` (student) and ``fake`` (fake score), 1 each.
        optimizer: the student's optimizer (and the fake score's unless ``fake_score_optimizer``).
        fake_score_optimizer: the fake score's optimizer.
        lr_scheduler: optional scheduler of each optimizer.

    Raises:
        ValueError: an argument outside its range (the message names the config key).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("dm", "fake")
    checkpoint_key: ClassVar[str] = "dynamiccity_dmd"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        schedule: NoiseSchedule | None = None,
        fake_score: nn.Module | None = None,
        student_init: str = "teacher",
        denoising_timesteps: tuple[int, ...] | None = (999, 749, 499, 249),
        min_step_percent: float = 0.02,
        max_step_percent: float = 0.98,
        generator_update_every: int = 5,
        backward_simulation: bool = True,
        max_grad_norm: float | None = 10.0,
        noise_seed: int | None = None,
        sample_shape: tuple[int, ...] | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = dit_adamw,
        fake_score_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        schedule = NoiseSchedule.ddpm(1000, "linear", "epsilon") if schedule is None else schedule
        super().__init__(
            student, teacher, schedule, noise_seed=noise_seed, sample_shape=sample_shape, loss_weights=loss_weights,
            optimizer=optimizer, fake_score_optimizer=fake_score_optimizer, lr_scheduler=lr_scheduler,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["student", "teacher", "schedule", "fake_score", "optimizer",
                                          "fake_score_optimizer", "lr_scheduler"])  # fmt: skip
        check_option(
            student_init in ("teacher", "random"), "student_init", student_init, "'teacher' or 'random'"
        )
        check_option(generator_update_every >= 1, "generator_update_every", generator_update_every, ">= 1")
        check_option(
            max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"
        )
        self.denoising_timesteps, self.dm_steps, _ = dmd.dmd2_settings(
            self.schedule, min_step_percent=min_step_percent, max_step_percent=max_step_percent,
            denoising_timesteps=denoising_timesteps, gan_max_timestep=None,
        )  # fmt: skip
        if student_init == "teacher":
            self.init_from_teacher(student)
        self.fake_score = self.build_fake_score(fake_score).requires_grad_(True).train()
        self.generator_update_every = generator_update_every
        self.backward_simulation = backward_simulation
        self.max_grad_norm = max_grad_norm

    def distribution_matching_loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        """L_DM = ½ mean (x̂₀ − sg(x̂₀ − g))², g from the teacher and the fake score at t ~ U[0.02T, 0.98T]."""
        g = dmd.distribution_matching_gradient(self.teacher, self.fake_score, self.schedule, x0, None, None,
                                               timestep_range=self.dm_steps, generator=generator)  # fmt: skip
        return pseudo_target_loss(x0, g)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_student, opt_fake = self.optimizers()
        real, _ = self.split_batch(batch)
        self.record_sample_shape(real)
        rng = self.iteration_generator()
        student_turn = self.is_update_step(self.iteration, self.generator_update_every)
        # 1. The student's input (its own k-step sample re-noised, or noise) and x̂₀ (grad on its turns only).
        step_rng = torch.Generator().manual_seed(
            derive_seed([self.noise_seed, self.iteration, 2**31], words=1)
        )
        x_t, t = dmd.generator_input(self.student, self.schedule, real, None, rng, timesteps=self.denoising_timesteps,
                                     backward_simulation_on=self.backward_simulation, step_generator=step_rng)  # fmt: skip
        with torch.set_grad_enabled(student_turn):
            x0 = one_step_generate(self.student, self.schedule, x_t, t)
        # 2. Student turn: distribution matching against the teacher DiT.
        if student_turn:
            self.update(opt_student, {"dm": self.distribution_matching_loss(x0, rng)}, turn="generator",
                        max_grad_norm=self.max_grad_norm)  # fmt: skip
        # 3. Fake-score turn, every iteration: denoising on the detached samples.
        fake = dmd.fake_score_denoising_loss(self.fake_score, x0, None, rng)
        self.update(opt_fake, {"fake": fake}, turn="fake_score", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        """``n`` latent rollouts ``(n, C, H, W)`` by the student's few steps (decode them with the VAE)."""
        noise = self.initial_noise(n, generator)
        return few_step_sample(
            self.student, self.schedule, noise, self.denoising_timesteps, generator=generator
        )


def _occupancy(batch: Any) -> Tensor:
    """The ``(B, T, X, Y, Z)`` occupancy of a tensor or ``(occupancy, ...)`` batch."""
    occupancy = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(occupancy, Tensor) or occupancy.ndim != 5:
        raise ValueError(
            f"DynamicCity needs batches of occupancy (B, T, X, Y, Z), got {type(occupancy).__name__} "
            f"{tuple(getattr(occupancy, 'shape', ()))}; use lightning_distill.data.OccupancyDataModule."
        )
    return occupancy
