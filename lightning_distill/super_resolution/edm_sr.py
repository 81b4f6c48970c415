"""EDM-style super-resolution diffusion on the LR→HR noisy interpolation (CTMSR's process and teacher).

CTMSR (You et al., "Consistency Trajectory Matching for One-Step Generative Super-Resolution",
arXiv 2503.20349; code LabShuHangGU/CTMSR) does not start from pure noise: a point of its trajectory
is the HR image moved towards the upsampled LR image and noised,

    x(σ_i, α_i) = HR + α_i (up(LR) − HR) + σ_i ε,                 ε ~ N(0, I),

on two Karras grids ``σ_i`` (noise, ``sigma_min → sigma_max``, ``noise_rho``) and ``α_i`` (residual,
``0 → 1``, ``residual_rho``), i = 0..N. With the official values (σ from 0 to 1, ρ = 1 for both) the
two grids are the same line ``i / N``: the trajectory runs straight from HR (i = 0) to
``up(LR) + σ_max ε`` (i = N), where one-step sampling starts. Images live in ``[-1, 1]`` there (the
official ``mean = std = 0.5`` normalisation, matching ``σ_data = 0.5``); :func:`to_model_space` and
:func:`from_model_space` convert from and to the data modules' ``[0, 1]``.

The denoiser is EDM-preconditioned, ``D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ), LR)``
with ``F`` an :class:`~lightning_distill.super_resolution.denoisers.LRConditionedUNet`:

* ``preconditioning="ctmsr"`` (the official ``EDMUNet``): ``s = sigma_scale (σ − σ_min)``,
  ``c_skip = σ_d² / (s² + σ_d²)``, ``c_out = s / √(s² + σ_d²)``, ``c_in = 1``, ``c_noise = ¼ ln(σ + 0.002)``
  (``sigma_scale = 10``: the code divides σ by 0.1);
* ``preconditioning="edm"`` (Karras et al. 2022 with the consistency-model boundary shift):
  ``c_skip = σ_d² / ((σ − σ_min)² + σ_d²)``, ``c_out = (σ − σ_min) σ_d / √(σ² + σ_d²)``,
  ``c_in = 1 / √(σ² + σ_d²)``, ``c_noise = ¼ ln(σ + 0.002)`` (the offset keeps σ = 0 finite).

Both give ``c_skip = 1, c_out = 0`` at ``σ = σ_min``: the consistency function is the identity there.

Parts: :class:`EDMSRProcess` (grids, interpolation, scalings, the preconditioned denoiser, the
multi-step sampler), :func:`annealed_num_steps` / :func:`annealed_step_stages` (the official step
count annealing, 4 → 3), :func:`perceptual_distance` (a differentiable per-image perceptual distance
from a ``FeatureDistance`` or torchmetrics LPIPS) and :func:`trained_edm_sr_teacher` (an EDM-style SR
diffusion teacher trained on first use through ``cached_training``, or loaded from a checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.losses.super_resolution import feature_distance_loss
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.super_resolution.denoisers import upsample_to
from lightning_distill.super_resolution.metrics import FeatureDistance
from lightning_distill.utils.checks import check_choice, check_int, check_non_negative, check_positive
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "EDMSRProcess",
    "annealed_num_steps",
    "annealed_step_stages",
    "from_model_space",
    "karras_grid",
    "perceptual_distance",
    "to_model_space",
    "trained_edm_sr_teacher",
]

Preconditioning = Literal["ctmsr", "edm"]


def to_model_space(image: Tensor) -> Tensor:
    """``[0, 1] → [-1, 1]`` (the official ``normalize(mean=0.5, std=0.5)``)."""
    return image * 2.0 - 1.0


def from_model_space(image: Tensor) -> Tensor:
    """``[-1, 1] → [0, 1]``, clamped."""
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def karras_grid(num_steps: int, low: float, high: float, rho: float, device: Any = None) -> Tensor:
    """``(low^{1/ρ} + i/N (high^{1/ρ} − low^{1/ρ}))^ρ`` for ``i = 0..N``: ``N + 1`` increasing values.

    Example:
        >>> karras_grid(4, 0.0, 1.0, 1.0)
        tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000])
    """
    check_int("num_steps", num_steps, low=1)
    check_positive("rho", rho)
    ramp = torch.linspace(0.0, 1.0, num_steps + 1, device=device, dtype=torch.float64)
    lo, hi = low ** (1.0 / rho), high ** (1.0 / rho)
    return ((lo + ramp * (hi - lo)) ** rho).float()


def annealed_num_steps(step: int, total_steps: int, initial: int = 4, final: int = 3) -> int:
    """Intervals of the consistency grid at training step ``step``: ``initial`` → ``final`` in equal phases.

    The official ``improved_timesteps_schedule_{de,in}crease_linear``: the run is cut into
    ``|initial − final| + 1`` phases of ``⌊total / (|initial − final| + 1)⌋`` steps and the count moves
    by one per phase (the official function returns the number of grid points, one more).

    Example:
        >>> [annealed_num_steps(s, 100) for s in (0, 49, 50, 99, 500)]
        [4, 4, 3, 3, 3]
    """
    check_int("initial", initial, low=1)
    check_int("final", final, low=1)
    check_int("total_steps", total_steps, low=1)
    if initial == final:
        return initial
    phase = max(1, total_steps // (abs(initial - final) + 1))
    moved = step // phase
    if initial > final:
        return max(initial - moved, final)
    return min(initial + moved, final)


def annealed_step_stages(total_steps: int, initial: int = 4, final: int = 3) -> dict[str, Any]:
    """:func:`annealed_num_steps` as a ``ProgressiveSchedule`` stage spec ``{"kind": "stages", ...}``.

    Example:
        >>> annealed_step_stages(100)
        {'kind': 'stages', 'boundaries': [50], 'values': [4, 3]}
    """
    annealed_num_steps(0, total_steps, initial, final)  # argument checks
    if initial == final:
        return {"kind": "stages", "boundaries": [], "values": [initial]}
    phase = max(1, total_steps // (abs(initial - final) + 1))
    sign = -1 if initial > final else 1
    values = [initial + sign * k for k in range(abs(initial - final) + 1)]
    return {"kind": "stages", "boundaries": [phase * k for k in range(1, len(values))], "values": values}


@dataclass(frozen=True)
class EDMSRProcess:
    """The LR→HR noisy interpolation, its Karras grids, the EDM preconditioning and the sampler.

    Args:
        sigma_min: smallest noise level (official 0: the trajectory ends exactly at HR).
        sigma_max: largest noise level, where sampling starts (official 1).
        noise_rho: Karras ρ of the σ grid (official ``noise_rho`` 1).
        residual_rho: Karras ρ of the α grid (official ``res_rho`` 1).
        sigma_data: ``σ_d`` of the preconditioning (official 0.5).
        sigma_scale: ``"ctmsr"`` preconditioning's stretch of σ (official 10, i.e. ``σ / 0.1``).
        preconditioning: ``"ctmsr"`` (the official scalings) or ``"edm"`` (Karras et al.).

    Raises:
        ValueError: an unknown preconditioning, ``sigma_max <= sigma_min``, a negative ``sigma_min``
            or a non-positive ρ, ``sigma_data`` or ``sigma_scale``.
    """

    sigma_min: float = 0.0
    sigma_max: float = 1.0
    noise_rho: float = 1.0
    residual_rho: float = 1.0
    sigma_data: float = 0.5
    sigma_scale: float = 10.0
    preconditioning: Preconditioning = "ctmsr"

    def __post_init__(self) -> None:
        check_non_negative("sigma_min", self.sigma_min)
        check_positive("sigma_max", self.sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"`sigma_max` ({self.sigma_max}) must be larger than `sigma_min` ({self.sigma_min})."
            )
        for name in ("noise_rho", "residual_rho", "sigma_data", "sigma_scale"):
            check_positive(name, getattr(self, name))
        check_choice("preconditioning", self.preconditioning, ("ctmsr", "edm"))

    # ------------------------------------------------------------------ the trajectory
    def grid(self, num_steps: int, device: Any = None) -> tuple[Tensor, Tensor]:
        """``(σ_0..σ_N, α_0..α_N)``: the noise grid ``sigma_min → sigma_max`` and the residual grid ``0 → 1``."""
        sigmas = karras_grid(num_steps, self.sigma_min, self.sigma_max, self.noise_rho, device)
        alphas = karras_grid(num_steps, 0.0, 1.0, self.residual_rho, device)
        return sigmas, alphas

    @staticmethod
    def interpolate(hr: Tensor, lr_up: Tensor, sigma: Tensor, alpha: Tensor, noise: Tensor) -> Tensor:
        """``HR + α (up(LR) − HR) + σ ε`` with per-image ``σ, α`` ``(B,)``; images ``(B, C, H, W)``."""
        if hr.shape != lr_up.shape or hr.shape != noise.shape:
            raise ValueError(
                f"`hr`, `lr_up` and `noise` must have one shape, got {tuple(hr.shape)}, {tuple(lr_up.shape)} "
                f"and {tuple(noise.shape)}."
            )
        s, a = _per_image(sigma, hr), _per_image(alpha, hr)
        return hr + a * (lr_up - hr) + s * noise

    # ------------------------------------------------------------------ the preconditioning
    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` at noise levels ``σ`` (any shape, float32)."""
        sigma = sigma.float()
        sd2 = self.sigma_data**2
        c_noise = torch.log(sigma + 0.002) / 4.0
        if self.preconditioning == "ctmsr":
            s = self.sigma_scale * (sigma - self.sigma_min)
            c_skip = sd2 / (s**2 + sd2)
            c_out = s / (s**2 + sd2).sqrt()
            c_in = torch.ones_like(sigma)
        else:
            shifted = sigma - self.sigma_min
            c_skip = sd2 / (shifted**2 + sd2)
            c_out = shifted * self.sigma_data / (sigma**2 + sd2).sqrt()
            c_in = 1.0 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, c_noise

    def denoise(self, network: nn.Module, x: Tensor, sigma: Tensor, lr: Tensor) -> Tensor:
        """``D(x, σ) = c_skip x + c_out F(c_in x, c_noise, LR)`` ``(B, C, H, W)``; ``lr`` in model space, LR size."""
        sigma = _per_image(sigma, x).flatten()
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        out = network(x * _per_image(c_in, x).to(x.dtype), c_noise, lr)
        out = out.sample if hasattr(out, "sample") else out
        return _per_image(c_skip, x) * x.float() + _per_image(c_out, x) * out.float()

    # ------------------------------------------------------------------ sampling
    def start(self, lr: Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
        """The sampler's start ``up(LR) + σ_max ε`` ``(B, C, H, W)`` (``lr`` in model space)."""
        lr_up = upsample_to(lr.float(), size)
        noise = torch.randn(lr_up.shape, generator=generator, device=lr_up.device)
        return lr_up + self.sigma_max * noise

    @torch.no_grad()
    def sample(
        self,
        network: nn.Module,
        lr: Tensor,
        scale: int,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        """SR images in model space ``(B, C, h·s, w·s)`` from ``lr`` ``(B, C, h, w)`` (model space).

        From ``x_N = up(LR) + σ_max ε`` on the ``num_steps`` grid, at each ``i = N..1``:
        ``x̂ = D(x_i, σ_i)``; then, unless ``i = 1``,
        ``x_{i−1} = x̂ + α_{i−1}(up(LR) − x̂) + σ_{i−1} ε̂`` with ``ε̂ = (x_i − x̂ − α_i (up(LR) − x̂)) / σ_i``
        (deterministic, the DDIM step of this process: the teacher's many-step sampler) or fresh noise
        ``ε̂ ~ N(0, I)`` (``stochastic``: multistep consistency sampling). One step returns ``D(x_N, σ_max)``.
        """
        check_int("num_steps", num_steps, low=1)
        check_int("scale", scale, low=1)
        size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
        lr_up = upsample_to(lr.float(), size)
        sigmas, alphas = self.grid(num_steps, lr.device)
        x = self.start(lr, size, generator)
        x0 = x
        for i in range(num_steps, 0, -1):
            sigma = sigmas[i].expand(lr.shape[0])
            x0 = self.denoise(network, x, sigma, lr)
            if i == 1:
                break
            if stochastic:
                eps = torch.randn(x.shape, generator=generator, device=x.device)
            else:
                eps = (x - x0 - alphas[i] * (lr_up - x0)) / sigmas[i]
            x = x0 + alphas[i - 1] * (lr_up - x0) + sigmas[i - 1] * eps
        return x0


def _per_image(value: Tensor | float, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, device=like.device, dtype=torch.float32)
    if value.ndim == 0:
        value = value.expand(like.shape[0])
    if value.numel() != like.shape[0]:
        raise ValueError(
            f"Expected one noise level per image ({like.shape[0]}), got shape {tuple(value.shape)}."
        )
    return value.reshape(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------------------------------------- perceptual
def perceptual_distance(metric: nn.Module, sr: Tensor, target: Tensor) -> Tensor:
    """A differentiable per-image perceptual distance ``(B,)`` of images ``(B, C, H, W)`` in ``[0, 1]``.

    ``metric`` is a :class:`~lightning_distill.super_resolution.metrics.FeatureDistance` (its
    network's taps through :func:`~lightning_distill.losses.super_resolution.feature_distance_loss`;
    its own ``forward`` is a no-grad metric), torchmetrics' LPIPS (from
    :func:`~lightning_distill.super_resolution.metrics.lpips_metric`: its network per image, the
    official CTMSR loss) or any module ``(sr, target) -> (B,)`` that keeps the graph.
    """
    if isinstance(metric, FeatureDistance):
        return feature_distance_loss(metric.features(sr), metric.features(target.detach()), reduction="none")
    inner = getattr(metric, "net", None)
    if type(metric).__name__ == "LearnedPerceptualImagePatchSimilarity" and isinstance(inner, nn.Module):
        return inner(sr.float(), target.detach().float(), normalize=True).reshape(-1)
    return metric(sr, target.detach()).reshape(-1)


# ---------------------------------------------------------------------------------------------- the teacher
def _fit_teacher(
    model: nn.Module, data: L.LightningDataModule, process: EDMSRProcess, *, steps: int, lr: float
) -> dict[str, Any]:
    """Denoising regression on the interpolation: ``‖D(x(σ, α), σ) − HR‖²`` with ``u ~ U(0, 1)`` on the
    continuous grids (σ = σ(u), α = α(u)); Adam with a cosine learning rate. Returns val PSNRs."""
    data.setup("fit")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    step = 0
    while step < steps:
        for lr_img, hr_img in data.train_dataloader():
            hr, lq = to_model_space(hr_img), to_model_space(lr_img)
            lr_up = upsample_to(lq, tuple(hr.shape[-2:]))
            u = torch.rand(hr.shape[0])
            sigma = _continuous(u, process.sigma_min, process.sigma_max, process.noise_rho)
            alpha = _continuous(u, 0.0, 1.0, process.residual_rho)
            x = process.interpolate(hr, lr_up, sigma, alpha, torch.randn_like(hr))
            loss = (process.denoise(model, x, sigma, lq) - hr).pow(2).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite denoising loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step >= steps:
                break
    model.eval()
    scale = int(getattr(data, "scale", 1))
    psnr, n = 0.0, 0
    generator = torch.Generator().manual_seed(0)
    for lr_img, hr_img in data.val_dataloader():
        sr = from_model_space(process.sample(model, to_model_space(lr_img), scale, 1, generator))
        mse = (sr - hr_img).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
        psnr += float((-10 * torch.log10(mse)).sum())  # RGB, one step, no border: a sanity check
        n += hr_img.shape[0]
    return {"val_psnr_one_step": psnr / max(n, 1)}


def _continuous(u: Tensor, low: float, high: float, rho: float) -> Tensor:
    lo, hi = low ** (1.0 / rho), high ** (1.0 / rho)
    return (lo + u * (hi - lo)) ** rho


def trained_edm_sr_teacher(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    steps: int = 2000,
    lr: float = 2e-4,
    seed: int = 0,
    sigma_min: float = 0.0,
    sigma_max: float = 1.0,
    noise_rho: float = 1.0,
    residual_rho: float = 1.0,
    sigma_data: float = 0.5,
    sigma_scale: float = 10.0,
    preconditioning: Preconditioning = "ctmsr",
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """An EDM-style SR diffusion teacher ``F`` (its :class:`EDMSRProcess` in ``model.edm_sr_process``).

    Trained on first use (cached through ``cached_training``, keyed by the model, the data and these
    settings) by denoising regression on the LR→HR interpolation (see :func:`_fit_teacher`), or
    loaded from the user's ``checkpoint``. Sample it with ``model.edm_sr_process.sample(model, ...)``.

    Args:
        model: the denoiser network, an :class:`~lightning_distill.super_resolution.denoisers.LRConditionedUNet`.
        data: a paired SR datamodule serving ``(lr, hr)`` in ``[0, 1]``.
        checkpoint: the user's trained weights instead of training.
        steps, lr: Adam steps and peak learning rate (cosine).
        seed: seed of the initialisation and the noise.
        sigma_min ... preconditioning: the :class:`EDMSRProcess` (use the student's).
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE``).
        retrain: ignore a cached teacher and train again.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``steps`` < 1, or a bad process argument.
    """
    process = EDMSRProcess(
        sigma_min, sigma_max, noise_rho, residual_rho, sigma_data, sigma_scale, preconditioning
    )
    model.edm_sr_process = process
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_edm_sr_teacher` needs `checkpoint` (your trained weights) or `data` (to train on first "
            "use); set `checkpoint` or `data` in its `init_args`."
        )
    check_int("steps", steps, low=1)
    check_positive("lr", lr)
    settings = {
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "loss": "edm_sr_denoising",
        **dataclasses.asdict(process),
    }

    def fit() -> dict[str, Any]:
        result = _fit_teacher(model, data, process, steps=steps, lr=lr)
        rank_zero_info(f"Trained the EDM SR teacher: one-step val PSNR {result['val_psnr_one_step']:.2f} dB")
        return result

    def check(result: dict[str, Any]) -> str | None:
        psnr = result.get("val_psnr_one_step", float("nan"))
        return (
            None if math.isfinite(psnr) and psnr > 10 else f"one-step validation PSNR {psnr:.2f} dB (<= 10)"
        )

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        stem="EDMSRTeacher",
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
        check=check,
    )
    model.distill_source = (
        f"trained_edm_sr_teacher cache {weights} ({info.get('val_psnr_one_step', 0):.2f} dB)"
    )
    return model.eval()
