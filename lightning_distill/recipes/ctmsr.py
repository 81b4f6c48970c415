"""CTMSR: one-step SR by consistency training on the LR→HR trajectory, then distribution trajectory matching.

Paper: You, Zhang, Zhang, Zhou, Shi & Gu, "Consistency Trajectory Matching for One-Step Generative
Super-Resolution" (arXiv 2503.20349); official code ``LabShuHangGU/CTMSR``
(``basicsr/models/sr_edm_unet_real_model.py``, ``options/train/ctmsr_train.yml``). No teacher: the
student learns from itself.

The trajectory (:class:`~lightning_distill.super_resolution.edm_sr.EDMSRProcess`):
``x_i = HR + α_i (up(LR) − HR) + σ_i ε`` on Karras grids ``i = 0..N`` (official: both the line
``i / N``), ``D_θ`` the EDM-preconditioned student with ``D_θ(x, σ_min) = x``.

1. ``N`` follows the annealed grid, 4 → 3 intervals over the consistency stage
   (:func:`~lightning_distill.super_resolution.edm_sr.annealed_num_steps`).
2. Draw ``n ~ U{0..N−1}`` and one ``ε``; the neighbours ``x_n`` and ``x_{n+1}`` share ``ε``.
3. Target ``sg(D_θ(x_n, σ_n))`` (the official code copies the live weights into a no-grad network every
   step: the same as a stop-gradient pass of the student).
4. Consistency loss ``0.5 d_P(D_θ(x_{n+1}), target) + 0.5 Charbonnier(·, ·)`` (``d_P``: LPIPS in the
   paper; offline a :class:`~lightning_distill.super_resolution.metrics.FeatureDistance` network).
5. Stage 2 (after ``consistency_steps``) adds distribution trajectory matching with a frozen self-copy
   ``D_φ`` refreshed every ``refresh_every`` steps: with ``SR = D_θ(x_{n+1})`` of step 4, noise ``HR`` and
   ``sg(SR)`` to the same grid point ``k`` with the same noise (``x_k``, ``z_k``),
   ``g = D_φ(z_k) − D_φ(x_k)`` and ``L_dtm = ½ w d_P(SR, sg(SR − g))``, ``w = 1 / mean|SR − HR|``.
6. An EMA (0.999) of the student is what is evaluated; one step samples ``D(up(LR) + σ_max ε, σ_max)``.

Total loss: ``w_perceptual d_P + w_charbonnier Charb (+ w_dtm L_dtm in stage 2)``, weights 0.5, 0.5 and
0.8 (= ½ · 1.6 of the official ``dtm_opt.weight``; the ½ sits in the loss).

Hyper-parameters -> config keys (``model.init_args.*``):

=======================================  ================================  ==========================
paper / official code                    key                               default
=======================================  ================================  ==========================
LPIPS / Charbonnier weights              ``loss_weights``                  0.5 / 0.5
``dtm_opt.weight`` (1.6) · ½             ``loss_weights.dtm``              0.8
LPIPS (VGG)                              ``perceptual``                    required (a module)
``sigma_min`` / ``sigma_max``            ``sigma_min`` / ``sigma_max``     0 / 1
``noise_rho`` / ``res_rho``              ``noise_rho`` / ``residual_rho``  1 / 1
``sigma_data``, σ / 0.1 in ``EDMUNet``   ``sigma_data``, ``sigma_scale``   0.5, 10
``s0`` → ``s1``                          ``initial_steps``/``final_steps``  4 → 3
``ct_iter`` / ``dtm_iter``               ``consistency_steps`` / ``trajectory_steps``  500000 / 2000
``time_scale`` (self-copy refresh)       ``refresh_every``                 1000
``dtm_opt.num_steps``, ``t_min/t_max``   ``trajectory_grid_steps``, ``trajectory_t_range``  3, (0.1, 0.5)
``weight_type: improved``                ``trajectory_weighting``          ``improved``
Charbonnier ``sqrt(d² + 1e-12)``         ``charbonnier_eps``               1e-6
``ema_decay``                            ``ema_decay``                     0.999
AdamW 5e-5, betas (0.9, 0.9), wd 0       ``optimizer``                     :func:`ctmsr_adamw`
one-step inference                       ``inference_steps``               1
=======================================  ================================  ==========================
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.callbacks import EMATeacher
from lightning_distill.callbacks.progressive_schedule import ProgressiveSchedule
from lightning_distill.losses.super_resolution import (
    charbonnier_loss,
    distribution_trajectory_matching_loss,
    inverse_l1_weight,
)
from lightning_distill.module import DistillationModule
from lightning_distill.super_resolution.degradations import pair_scale
from lightning_distill.super_resolution.denoisers import upsample_to
from lightning_distill.super_resolution.edm_sr import (
    EDMSRProcess,
    annealed_step_stages,
    from_model_space,
    perceptual_distance,
    to_model_space,
)
from lightning_distill.super_resolution.metrics import SRMetrics
from lightning_distill.utils.checks import check_option

__all__ = ["CTMSR", "ctmsr_adamw"]


def ctmsr_adamw(params: Any) -> torch.optim.Optimizer:
    """The official optimizer: AdamW, lr 5e-5, betas (0.9, 0.9), weight decay 0."""
    return torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.9), weight_decay=0.0)


class CTMSR(DistillationModule):
    """CTMSR recipe; see the module docstring for the algorithm.

    Args:
        student: the denoiser network ``F(x, c_noise, lr)``, an
            :class:`~lightning_distill.super_resolution.denoisers.LRConditionedUNet`.
        perceptual: the perceptual distance ``d_P``: a ``FeatureDistance`` (offline) or torchmetrics
            LPIPS (``lpips_metric("vgg")`` when its weights are local); may be ``None`` only when
            ``loss_weights.perceptual`` is 0 (then ``L_dtm`` uses the squared error).
        sigma_min, sigma_max, noise_rho, residual_rho, sigma_data, sigma_scale, preconditioning: the
            :class:`~lightning_distill.super_resolution.edm_sr.EDMSRProcess`.
        initial_steps, final_steps: grid intervals at the start and the end of the consistency stage.
        consistency_steps: optimizer steps of stage 1 (the annealing runs over them).
        trajectory_steps: optimizer steps of stage 2 (DTM); refresh boundaries are laid out over them.
        refresh_every: steps between refreshes of the frozen self-copy in stage 2.
        trajectory_grid_steps: ``M`` of the DTM point choice ``k ∈ [max(1, ⌊t_min (M+1)⌋), ⌊t_max (M+1)⌋)``.
        trajectory_t_range: ``(t_min, t_max)`` of that choice.
        trajectory_weighting: ``"improved"`` (``1 / mean|SR − HR|``) or ``"simple"`` (1).
        charbonnier_eps: ``ε`` of ``sqrt(d² + ε²)``.
        ema_decay: decay of the evaluated EMA of the student.
        inference_steps: sampling steps of evaluation and ``predict`` (1: the paper's one step).
        noise_seed: seed of the training noise (``None``: from ``torch.initial_seed()``).
        loss_weights: ``{"perceptual", "charbonnier", "dtm"}``.
        optimizer: the student's optimizer (default :func:`ctmsr_adamw`).
        lr_scheduler: optional scheduler (stepped per epoch; the official MultiStepLR halves at 50k steps).

    Raises:
        ValueError: a bad option (named with its config key), or no ``perceptual`` module with a
            positive perceptual weight.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("perceptual", "charbonnier", "dtm")
    default_loss_weights: ClassVar[dict[str, float]] = {"perceptual": 0.5, "charbonnier": 0.5, "dtm": 0.8}
    requires_teacher: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        perceptual: nn.Module | None = None,
        sigma_min: float = 0.0,
        sigma_max: float = 1.0,
        noise_rho: float = 1.0,
        residual_rho: float = 1.0,
        sigma_data: float = 0.5,
        sigma_scale: float = 10.0,
        preconditioning: Literal["ctmsr", "edm"] = "ctmsr",
        initial_steps: int = 4,
        final_steps: int = 3,
        consistency_steps: int = 500_000,
        trajectory_steps: int = 2000,
        refresh_every: int = 1000,
        trajectory_grid_steps: int = 3,
        trajectory_t_range: Sequence[float] = (0.1, 0.5),
        trajectory_weighting: Literal["improved", "simple"] = "improved",
        charbonnier_eps: float = 1e-6,
        ema_decay: float = 0.999,
        inference_steps: int = 1,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = ctmsr_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(student, loss_weights=loss_weights, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.save_hyperparameters(ignore=["student", "perceptual", "optimizer", "lr_scheduler"])
        try:
            self.process = EDMSRProcess(
                sigma_min, sigma_max, noise_rho, residual_rho, sigma_data, sigma_scale, preconditioning
            )
        except ValueError as error:
            raise ValueError(f"{error} Set it in `model.init_args`.") from None
        for key, value in (
            ("initial_steps", initial_steps),
            ("final_steps", final_steps),
            ("consistency_steps", consistency_steps),
            ("refresh_every", refresh_every),
            ("trajectory_grid_steps", trajectory_grid_steps),
            ("inference_steps", inference_steps),
        ):
            check_option(_is_int(value) and value >= 1, key, value, "an integer >= 1")
        check_option(
            _is_int(trajectory_steps) and trajectory_steps >= 0, "trajectory_steps", trajectory_steps, ">= 0"
        )
        t_range = tuple(float(t) for t in trajectory_t_range)
        check_option(
            len(t_range) == 2 and 0 <= t_range[0] < t_range[1] <= 1,
            "trajectory_t_range",
            trajectory_t_range,
            "(t_min, t_max) with 0 <= t_min < t_max <= 1",
        )
        m = trajectory_grid_steps + 1  # the official code's grid points
        low = max(1, int(t_range[0] * m))
        self.dtm_index_range = (low, max(min(m, int(t_range[1] * m)), low + 1))  # randint's [low, high)
        check_option(
            trajectory_weighting in ("improved", "simple"),
            "trajectory_weighting",
            trajectory_weighting,
            "'improved' or 'simple'",
        )
        check_option(charbonnier_eps > 0, "charbonnier_eps", charbonnier_eps, "> 0")
        check_option(0.0 <= ema_decay <= 1.0, "ema_decay", ema_decay, "in [0, 1]")
        if perceptual is None and self.loss_weights["perceptual"] > 0:
            raise ValueError(
                "`perceptual` is needed for the perceptual term (weight "
                f"{self.loss_weights['perceptual']}): set `model.init_args.perceptual` to a FeatureDistance "
                "(offline) or `lpips_metric`, or set `model.init_args.loss_weights.perceptual` to 0."
            )
        if perceptual is not None:
            self.register_frozen("perceptual", perceptual)
        else:
            self.perceptual = None
        self.initial_steps, self.final_steps = initial_steps, final_steps
        self.consistency_steps, self.trajectory_steps = consistency_steps, trajectory_steps
        self.refresh_every, self.trajectory_weighting = refresh_every, trajectory_weighting
        self.charbonnier_eps, self.ema_decay, self.inference_steps = (
            float(charbonnier_eps),
            float(ema_decay),
            inference_steps,
        )
        self.noise_seed = int(torch.initial_seed() % 2**31) if noise_seed is None else int(noise_seed)
        self.metrics = SRMetrics()
        # Set by ProgressiveSchedule before every batch (configure_callbacks); these are the step-0 values.
        self.num_steps = initial_steps
        self.refresh_round = 0  # 0: stage 1; k >= 1: stage 2, the self-copy refreshed k times
        # The frozen self-copy D_φ of stage 2 (refreshed in on_stage_change).
        self.register_frozen("frozen_copy", copy.deepcopy(self.student))

    # ------------------------------------------------------------------ the paper
    def denoise(self, network: nn.Module, x: Tensor, sigma: Tensor, lq: Tensor) -> Tensor:
        """``D(x, σ) = c_skip x + c_out F(c_in x, c_noise, LR)`` (model space)."""
        return self.process.denoise(network, x, sigma, lq)

    def consistency_loss(self, sr: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Step 4: ``d_P(SR, sg(target))`` and ``Charbonnier(SR, sg(target))``."""
        terms = {"charbonnier": charbonnier_loss(sr, target.detach(), eps=self.charbonnier_eps)}
        if self.perceptual is not None:
            terms["perceptual"] = self._perceptual(sr, target.detach()).mean()
        return terms

    def trajectory_matching_loss(
        self, sr: Tensor, hr: Tensor, lr_up: Tensor, lq: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Step 5: ``½ w d_P(SR, sg(SR − (D_φ(z_k) − D_φ(x_k))))`` with ``x_k``, ``z_k`` sharing noise."""
        sigmas, alphas = self.process.grid(self.num_steps, hr.device)
        low, high = self.dtm_index_range
        k = (
            torch.randint(low, high, (hr.shape[0],), generator=generator)
            .clamp(max=self.num_steps)
            .to(hr.device)
        )
        noise = torch.randn(hr.shape, generator=generator).to(hr)
        x_k = self.process.interpolate(hr, lr_up, sigmas[k], alphas[k], noise)
        z_k = self.process.interpolate(sr.detach(), lr_up, sigmas[k], alphas[k], noise)
        with torch.no_grad():
            fake_x0 = self.denoise(self.frozen_copy, z_k, sigmas[k], lq)
            real_x0 = self.denoise(self.frozen_copy, x_k, sigmas[k], lq)
        weight = inverse_l1_weight(sr, hr) if self.trajectory_weighting == "improved" else None
        distance = self._perceptual if self.perceptual is not None else None
        return distribution_trajectory_matching_loss(sr, fake_x0, real_x0, weight=weight, distance=distance)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        lr_img, hr_img = batch[0], batch[1]
        pair_scale(lr_img, hr_img)
        hr, lq = to_model_space(hr_img.float()), to_model_space(lr_img.float())
        lr_up = upsample_to(lq, tuple(hr.shape[-2:]))
        generator = torch.Generator().manual_seed(self.noise_seed + self.global_step)
        # 1-2. the annealed grid and a pair of neighbours sharing one noise
        sigmas, alphas = self.process.grid(self.num_steps, hr.device)
        n = torch.randint(0, self.num_steps, (hr.shape[0],), generator=generator).to(hr.device)
        noise = torch.randn(hr.shape, generator=generator).to(hr)
        x_n = self.process.interpolate(hr, lr_up, sigmas[n], alphas[n], noise)
        x_next = self.process.interpolate(hr, lr_up, sigmas[n + 1], alphas[n + 1], noise)
        # 3. the target: a stop-gradient pass of the student at the less noisy neighbour
        with torch.no_grad():
            target = self.denoise(self.student, x_n, sigmas[n], lq)
        # 4. the student at the noisier neighbour, and the consistency loss
        sr = self.denoise(self.student, x_next, sigmas[n + 1], lq)
        terms = self.consistency_loss(sr, target)
        # 5. stage 2: distribution trajectory matching against the frozen self-copy
        if self.refresh_round > 0:
            terms["dtm"] = self.trajectory_matching_loss(sr, hr, lr_up, lq, generator)
        return self.log_losses(terms)

    def on_stage_change(self, name: str, old: Any, new: Any) -> None:
        """Refresh ``D_φ``: at the start of stage 2 from the EMA (the official run loads the stage-1
        ``params_ema``), then from the live student every ``refresh_every`` steps."""
        if name != "refresh_round" or new < 1:
            return
        source = getattr(self, "ema_student", None) if new == 1 else None
        self.refresh_frozen_copy(source if isinstance(source, nn.Module) else self.student)

    @torch.no_grad()
    def refresh_frozen_copy(self, source: nn.Module) -> None:
        """``φ ← θ`` (parameters and buffers); the copy stays frozen and outside every optimizer."""
        self.frozen_copy.load_state_dict(source.state_dict())

    # ------------------------------------------------------------------ sampling and evaluation
    @torch.no_grad()
    def super_resolve(
        self,
        model: nn.Module,
        lr_img: Tensor,
        scale: int,
        num_steps: int | None = None,
        generator: Any = None,
    ) -> Tensor:
        """SR images in ``[0, 1]`` from LR images in ``[0, 1]`` (``inference_steps`` by default)."""
        steps = self.inference_steps if num_steps is None else num_steps
        out = self.process.sample(
            model, to_model_space(lr_img.float()), scale, steps, generator, stochastic=True
        )
        return from_model_space(out)

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """PSNR/SSIM (Y, border = scale), RGB PSNR and the perceptual distance of one-step samples."""
        lr_img, hr_img = batch[0], batch[1]
        scale = pair_scale(lr_img, hr_img)
        generator = torch.Generator().manual_seed(self.noise_seed)
        sr = self.super_resolve(model, lr_img, scale, generator=generator)
        metrics = self.metrics(sr, hr_img, scale=scale)
        if self.perceptual is not None:
            with torch.no_grad():
                metrics["perceptual"] = perceptual_distance(self.perceptual, sr, hr_img.float()).mean()
        return metrics

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        lr_img = batch[0] if isinstance(batch, (list, tuple)) else batch
        scale = int(getattr(getattr(self.trainer, "datamodule", None), "scale", 0) or 0)
        check_option(scale >= 1, "data.init_args.scale", scale, "a datamodule with a `scale`")
        return self.super_resolve(self.student, lr_img, scale)

    @torch.no_grad()
    def sr_outputs(self, lr_img: Tensor) -> dict[str, Tensor]:
        """The column of ``SuperResolutionPictures``: the student's ``inference_steps``-step SR."""
        scale = int(getattr(getattr(self.trainer, "datamodule", None), "scale", 0) or 0)
        check_option(scale >= 1, "data.init_args.scale", scale, "a datamodule with a `scale`")
        generator = torch.Generator().manual_seed(self.noise_seed)
        return {"student": self.super_resolve(self.student, lr_img, scale, generator=generator)}

    def configure_callbacks(self) -> list[Any]:
        """The stage/refresh/annealing schedules and the evaluated EMA of the student.

        Lightning lets a module's callbacks replace trainer callbacks of the same type: list other
        schedules through this recipe, not a second ProgressiveSchedule in ``trainer.callbacks``.
        """
        start = self.consistency_steps
        rounds = max(1, math.ceil(self.trajectory_steps / self.refresh_every)) if self.trajectory_steps else 0
        boundaries = [start + k * self.refresh_every for k in range(rounds)]
        schedules = {
            "num_steps": annealed_step_stages(self.consistency_steps, self.initial_steps, self.final_steps),
            "refresh_round": {"kind": "stages", "boundaries": boundaries, "values": list(range(rounds + 1))},
        }
        return [
            ProgressiveSchedule(schedules),
            EMATeacher(source="student", target="ema_student", decay=self.ema_decay, swap_for_eval=True),
        ]

    # ------------------------------------------------------------------ helpers
    def _perceptual(self, sr: Tensor, target: Tensor) -> Tensor:
        """``d_P`` per image on model-space images (mapped to ``[0, 1]`` without clamping)."""
        return perceptual_distance(self.perceptual, (sr + 1.0) / 2.0, (target + 1.0) / 2.0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
