"""Scale distillation (YONOS-SR): an x0-predicting SR diffusion model, its targets, stages and decoder.

The parts the ``yonos_sr`` recipe is built from, usable on their own:

* the diffusion process: a diffusers ``DDPMScheduler`` on x0 ("sample") prediction, 1000 linear
  betas (:func:`sr_noise_scheduler`); images live in ``[-1, 1]`` inside the process
  (:func:`to_model_range`), the LR condition too;
* :func:`denoised_prediction`: the model's x0 for ``x_t`` (the one-step target a frozen teacher
  gives, :func:`teacher_target`, is this under ``no_grad`` with the teacher's easier LR input);
* samplers: :func:`one_step_sr` (one DDIM step from pure noise at ``t = T − 1``, then the decoder)
  and :func:`ddim_sr` (DDIM with ``trailing`` spacing, so one step starts from ``T − 1`` too);
* :func:`scale_stages`: the stage plan ``×2 → ×4 → ×8`` (+ the decoder stage) as :class:`Stage` s;
* :class:`RefinementDecoder`: what "the decoder" is at pixel scale (see its docstring);
* :func:`trained_sr_denoiser`: the ×2 SR diffusion teacher trained on first use
  (:func:`~lightning_distill.models.first_use_cache.cached_training`) or loaded from a checkpoint.

LR inputs at any scale are made from the HR image by :func:`bicubic_downsample`, as the paper makes
each scale's LR from the same HR crop.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from lightning_distill.models.first_use_cache import cached_training, load_weights, loss_summary
from lightning_distill.super_resolution.degradations import bicubic_downsample
from lightning_distill.utils.checks import check_int, check_positive
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "RefinementDecoder",
    "Stage",
    "ddim_sr",
    "denoised_prediction",
    "from_model_range",
    "one_step_sr",
    "scale_stages",
    "sr_noise_scheduler",
    "teacher_target",
    "to_model_range",
    "trained_sr_denoiser",
]


def sr_noise_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The forward process: diffusers ``DDPMScheduler``, linear betas 1e-4..0.02, x0 prediction."""
    check_int("num_train_timesteps", num_train_timesteps, low=2)
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, prediction_type="sample")


def to_model_range(image: Tensor) -> Tensor:
    """``[0, 1]`` images to the process's ``[-1, 1]``."""
    return image * 2.0 - 1.0


def from_model_range(x: Tensor) -> Tensor:
    """The process's ``[-1, 1]`` back to ``[0, 1]`` images (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def denoised_prediction(model: nn.Module, x_t: Tensor, t: Tensor, lr: Tensor) -> Tensor:
    """x̂0 = ``model(x_t, t, lr)`` in ``[-1, 1]`` units; ``lr`` ``(B, C, h, w)`` given in ``[0, 1]``."""
    out = model(x_t, t, to_model_range(lr))
    return getattr(out, "sample", out)


@torch.no_grad()
def teacher_target(teacher: nn.Module, x_t: Tensor, t: Tensor, lr_teacher: Tensor) -> Tensor:
    """The scale-distillation target: the frozen teacher's x̂0 for the same ``x_t``, from its easier LR."""
    return denoised_prediction(teacher, x_t, t, lr_teacher).detach()


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    if generator is not None and generator.device != like.device:
        return torch.randn(shape, generator=generator).to(like.device, like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


@torch.no_grad()
def one_step_sr(
    model: nn.Module,
    lr: Tensor,
    size: int,
    scheduler: DDPMScheduler,
    generator: torch.Generator | None = None,
    decoder: nn.Module | None = None,
) -> Tensor:
    """YONOS-SR inference: x̂0 = model(ε, T − 1, lr) with ε ~ N(0, I), then ``decoder``; ``[0, 1]`` out."""
    channels = int(getattr(model, "image_channels", lr.shape[1]))
    x_t = _noise((lr.shape[0], channels, size, size), generator, lr)
    t = torch.full(
        (lr.shape[0],), scheduler.config.num_train_timesteps - 1, device=lr.device, dtype=torch.long
    )
    x0 = denoised_prediction(model, x_t, t, lr)
    if decoder is not None:
        x0 = decoder(x0, lr)
    return from_model_range(x0)


@torch.no_grad()
def ddim_sr(
    model: nn.Module,
    lr: Tensor,
    size: int,
    scheduler: DDPMScheduler,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Deterministic DDIM (η = 0, ``trailing`` timesteps) with ``steps`` model calls; ``[0, 1]`` out."""
    check_int("steps", steps, low=1)
    ddim = DDIMScheduler.from_config(scheduler.config, timestep_spacing="trailing")
    ddim.set_timesteps(steps, device=lr.device)
    channels = int(getattr(model, "image_channels", lr.shape[1]))
    x = _noise((lr.shape[0], channels, size, size), generator, lr)
    for t in ddim.timesteps:
        t_batch = torch.full((lr.shape[0],), int(t), device=lr.device, dtype=torch.long)
        x0 = denoised_prediction(model, x, t_batch, lr)
        x = ddim.step(x0, t, x, eta=0.0).prev_sample
    return from_model_range(x)


@dataclass(frozen=True)
class Stage:
    """One training stage: ``"distill"`` (student at ``student_scale`` on targets of a model at
    ``teacher_scale``) or ``"decoder"`` (the denoiser frozen, the decoder fine-tuned at ``student_scale``)."""

    kind: str
    student_scale: int
    teacher_scale: int | None


def scale_stages(scales: tuple[int, ...] | list[int], decoder_stage: bool = True) -> list[Stage]:
    """The stage plan: ``scales[k-1] → scales[k]`` distillation for ``k ≥ 1``, then the decoder stage.

    Example:
        >>> [(s.kind, s.student_scale, s.teacher_scale) for s in scale_stages((2, 4, 8))]
        [('distill', 4, 2), ('distill', 8, 4), ('decoder', 8, None)]

    Raises:
        ValueError: fewer than two scales, a scale < 1 or not an int, or scales not increasing.
    """
    scales = list(scales)
    if len(scales) < 2:
        raise ValueError(
            f"`scales` needs the teacher's scale and at least one student scale, got {scales!r}."
        )
    for s in scales:
        check_int("scales", s, low=1)
    if any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"`scales` must increase (each student harder than its teacher), got {scales!r}.")
    stages = [Stage("distill", b, a) for a, b in zip(scales, scales[1:])]
    if decoder_stage:
        stages.append(Stage("decoder", scales[-1], None))
    return stages


class RefinementDecoder(nn.Module):
    """The pixel-space "decoder": ``x̂ = x̂0 + head(concat(x̂0, up(lr)))``, a few convolutions.

    YONOS-SR works in Stable Diffusion's latent space and, once the UNet is frozen, fine-tunes the
    VAE decoder that maps the one-step latent to pixels. Our denoiser works on pixels, so there is
    no VAE; the role that decoder plays (a module after the frozen denoiser, trained on its one-step
    output against the HR image) is taken by this small residual head. Its last convolution starts at
    zero, so before fine-tuning it is the identity, as a pretrained VAE decoder starts from a working
    mapping. We do not fine-tune the UNet's own up blocks instead: they are the denoiser the paper
    freezes.

    Args:
        channels: image channels.
        width: hidden channels.
        depth: hidden 3x3 convolutions (>= 1).
    """

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        check_int("channels", channels, low=1)
        check_int("width", width, low=1)
        check_int("depth", depth, low=1)
        layers: list[nn.Module] = [nn.Conv2d(2 * channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(*layers, out)
        self.channels = channels

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x0: Tensor, lr: Tensor) -> Tensor:
        """``x0`` ``(B, C, H, W)`` in ``[-1, 1]``, ``lr`` ``(B, C, h, w)`` in ``[0, 1]``; same units out."""
        up = torch.nn.functional.interpolate(
            to_model_range(lr), size=x0.shape[-2:], mode="bicubic", align_corners=False
        )
        return x0 + self.head(torch.cat([x0, up.to(x0.dtype)], dim=1))


# ---------------------------------------------------------------------- the x2 teacher
def sr_denoising_batch_loss(
    model: nn.Module, scheduler: DDPMScheduler, hr: Tensor, scale: int, generator: torch.Generator | None
) -> Tensor:
    """``mean ‖model(x_t, t, LR_s) − x0‖²``: t ~ U{0..T−1}, x_t from ``scheduler``, LR_s = bicubic ↓s of HR."""
    x0 = to_model_range(hr)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (hr.shape[0],), generator=generator).to(
        hr.device
    )
    noise = _noise(tuple(x0.shape), generator, x0)
    x_t = scheduler.add_noise(x0, noise, t)
    pred = denoised_prediction(model, x_t, t, bicubic_downsample(hr, scale))
    return (pred.float() - x0.float()).square().mean()


def _fit(model: nn.Module, data: L.LightningDataModule, scale: int, steps: int, lr: float) -> list[float]:
    data.setup("fit")
    loader = data.train_dataloader()
    scheduler = sr_noise_scheduler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)

    def batches() -> Any:
        for epoch in itertools.count():
            sampler = getattr(loader, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
            yield from loader

    model.train()
    losses = []
    for _, batch in zip(range(steps), batches()):
        loss = sr_denoising_batch_loss(model, scheduler, batch[1], scale, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(float(loss.detach()))
    return losses


def trained_sr_denoiser(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    scale: int = 2,
    steps: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """``model`` (an :class:`~lightning_distill.super_resolution.LRConditionedUNet`) as a trained ×``scale`` SR
    diffusion model: from ``checkpoint``, from the cache, or trained now.

    Training: AdamW (cosine decay) on :func:`sr_denoising_batch_loss` over the HR images of ``data``
    (its ``(lr, hr)`` batches; the LR input is remade from HR at ``scale``, so ``data``'s own scale
    does not matter). Cached by the architecture, the data settings and these arguments.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``; ``steps``/``scale`` < 1; ``lr`` <= 0.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_sr_denoiser` needs `checkpoint` (your trained weights) or `data` (to train the teacher on "
            "first use); set `teacher.init_args.checkpoint` or `teacher.init_args.data`."
        )
    check_int("scale", scale, low=1)
    check_int("steps", steps, low=1)
    check_positive("lr", lr)
    settings = {"kind": "x0_sr_denoiser", "scale": scale, "steps": steps, "lr": lr, "seed": seed}

    def fit() -> dict[str, Any]:
        losses = _fit(model, data, scale, steps, lr)
        return loss_summary(losses, f"x{scale} SR denoiser trained: loss")

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        stem=f"{type(model).__name__}-x{scale}-sr-denoiser",
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    model.distill_source = (
        f"trained_sr_denoiser cache {weights} (x{scale}, final loss {info.get('last_loss')})"
    )
    model.training_record = info
    return model.eval()
