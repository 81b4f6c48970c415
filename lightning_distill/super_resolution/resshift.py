"""ResShift: the residual-shifting diffusion process of an SR teacher, its samplers, and a teacher trained on first use.

ResShift (Yue, Wang & Loy, NeurIPS 2023, arXiv 2307.12348; official code zsyOAOA/ResShift) diffuses
the HR image ``x_0`` towards the upsampled LR image ``y_0`` instead of towards pure noise:

    q(x_t | x_0, y_0) = N(x_0 + η_t (y_0 − x_0), κ² η_t I),        t = 1 .. T,

with ``√η_t`` growing geometrically in ``(t−1)/(T−1)`` raised to the power ``p`` from
``√η_1 = min(min_noise_level / κ, min_noise_level)`` to ``√η_T = etas_end`` (the ``exponential``
schedule). Sampling starts at ``x_T = y_0 + κ √η_T ε`` (the LR image plus noise, no pure-noise
start) and walks back ``T`` steps with the network's ``x_0`` prediction, either through the
posterior ``q(x_{t−1} | x_t, x_0)`` (ancestral) or deterministically (the DDIM-like step TAD-SR's
teacher targets use). Indices here run ``0 .. T−1`` as in the official code (index ``i`` is step
``t = i + 1``).

Parts: :class:`ResShiftSchedule` (η, the marginal, the posterior, both steps, the ``T``-step and one-step
samplers, input scaling), :func:`trained_resshift` (an ``x_0``-predicting
:class:`~lightning_distill.super_resolution.denoisers.LRConditionedUNet` trained on first use through
``cached_training``), :class:`TimeAwareDiscriminator` and :func:`denoiser_features` (TAD-SR's
discriminator on a frozen denoiser's features). Images enter and leave in ``[0, 1]``; the process runs in
``[−1, 1]`` as ResShift's data does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.super_resolution.denoisers import upsample_to
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "ResShiftSchedule",
    "TimeAwareDiscriminator",
    "denoiser_features",
    "resshift_sqrt_etas",
    "to_signed",
    "to_unit",
    "trained_resshift",
]

Sampler = Literal["ddim", "ancestral"]


def to_signed(image: Tensor) -> Tensor:
    """``[0, 1] → [−1, 1]`` (ResShift's data range)."""
    return image * 2.0 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """``[−1, 1] → [0, 1]``, clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def resshift_sqrt_etas(
    num_steps: int = 15,
    kappa: float = 2.0,
    min_noise_level: float = 0.04,
    etas_end: float = 0.99,
    power: float = 0.3,
) -> Tensor:
    """``√η_t`` for ``t = 1 .. T`` (float64, ``(T,)``): ResShift's ``exponential`` schedule.

    ``√η_t = s · (e / s) ** (((t − 1) / (T − 1)) ** p)`` with ``s = min(min_noise_level / κ, min_noise_level)``
    and ``e = etas_end``: geometric in the warped time ``((t − 1)/(T − 1))^p``.

    Raises:
        ValueError: ``num_steps`` < 2, a non-positive ``kappa``/``power``/``min_noise_level``, or
            ``etas_end`` outside ``(start, 1]``.

    Example:
        >>> s = resshift_sqrt_etas()
        >>> round(float(s[0]), 4), round(float(s[-1]), 4), len(s)
        (0.02, 0.99, 15)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"`num_steps` must be an int >= 2, got {num_steps!r}.")
    for name, value in (("kappa", kappa), ("power", power), ("min_noise_level", min_noise_level)):
        if not value > 0:
            raise ValueError(f"`{name}` must be > 0, got {value!r}.")
    start = min(min_noise_level / kappa, min_noise_level)
    if not start < etas_end <= 1.0:
        raise ValueError(f"`etas_end` must be in ({start:g}, 1], got {etas_end!r}.")
    warped = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64) ** power
    return start * (etas_end / start) ** warped


class ResShiftSchedule:
    """The ResShift process: η schedule, marginal, posterior, samplers. Indices ``t`` are ``0 .. T−1``.

    Args:
        num_steps: ``T`` (ResShift v1 and TAD-SR's teacher: 15).
        kappa: ``κ``, the noise scale (2.0).
        min_noise_level: sets ``√η_1 = min(min_noise_level / κ, min_noise_level)`` (0.04).
        etas_end: ``√η_T`` (0.99).
        power: ``p`` of the warped time (0.3).
        normalize_input: divide the network input by ``√(κ² η_t + 1)`` (ResShift's ``normalize_input``).

    Raises:
        ValueError: see :func:`resshift_sqrt_etas`.

    Example:
        >>> sched = ResShiftSchedule()
        >>> x0, y0 = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> t = torch.tensor([14])
        >>> x_t = sched.q_sample(x0, y0, t, torch.zeros_like(x0))  # no noise: x_0 + η_T (y_0 − x_0)
        >>> round(float(x_t[0, 0, 0, 0]), 4), round(float(sched.etas[14]), 4)
        (0.9801, 0.9801)
    """

    def __init__(
        self,
        num_steps: int = 15,
        kappa: float = 2.0,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        power: float = 0.3,
        normalize_input: bool = True,
    ) -> None:
        self.sqrt_etas = resshift_sqrt_etas(num_steps, kappa, min_noise_level, etas_end, power)
        self.num_steps = num_steps
        self.kappa = float(kappa)
        self.min_noise_level = float(min_noise_level)
        self.etas_end = float(etas_end)
        self.power = float(power)
        self.normalize_input = bool(normalize_input)
        self.etas = self.sqrt_etas**2
        self.etas_prev = torch.cat([self.etas.new_zeros(1), self.etas[:-1]])
        self.alpha = self.etas - self.etas_prev
        # q(x_{t-1} | x_t, x_0) = N(c1 x_t + c2 x_0, κ² η_{t-1} α_t / η_t)
        self.posterior_variance = self.kappa**2 * self.etas_prev / self.etas * self.alpha
        self.posterior_coef1 = self.etas_prev / self.etas
        self.posterior_coef2 = self.alpha / self.etas

    def settings(self) -> dict[str, Any]:
        """The arguments, for cache keys and checkpoints."""
        return {
            "num_steps": self.num_steps,
            "kappa": self.kappa,
            "min_noise_level": self.min_noise_level,
            "etas_end": self.etas_end,
            "power": self.power,
            "normalize_input": self.normalize_input,
        }

    def __repr__(self) -> str:
        return f"ResShiftSchedule({', '.join(f'{k}={v}' for k, v in self.settings().items())})"

    # ------------------------------------------------------------------ algebra
    def at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``values[t]`` broadcast to ``like`` ``(B, 1, 1, 1)`` in its dtype and device."""
        out = values.to(like.device)[t.to(like.device).long()].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def last(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The index ``T − 1`` for a batch ``(B,)``."""
        return torch.full((batch,), self.num_steps - 1, dtype=torch.long, device=device)

    def q_sample(self, x0: Tensor, y0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = x_0 + η_t (y_0 − x_0) + κ √η_t ε`` ``(B, C, H, W)``."""
        return (
            x0 + self.at(self.etas, t, x0) * (y0 - x0) + self.kappa * self.at(self.sqrt_etas, t, x0) * noise
        )

    def prior_sample(self, y0: Tensor, noise: Tensor) -> Tensor:
        """``x_T = y_0 + κ √η_T ε``: where sampling (and TAD-SR's one-step student) starts."""
        return self.q_sample(y0, y0, self.last(y0.shape[0], y0.device), noise)

    def scale_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network input: ``x_t / √(κ² η_t + 1)`` with ``normalize_input``, else ``x_t``."""
        if not self.normalize_input:
            return x_t
        return x_t / (self.kappa**2 * self.at(self.etas, t, x_t) + 1.0).sqrt()

    def epsilon_from_x0(self, x_t: Tensor, x0: Tensor, y0: Tensor, t: Tensor) -> Tensor:
        """The noise ``ε`` that puts ``x0`` at ``x_t``: ``(x_t − x_0 − η_t (y_0 − x_0)) / (κ √η_t)``."""
        mean = x0 + self.at(self.etas, t, x0) * (y0 - x0)
        return (x_t - mean) / (self.kappa * self.at(self.sqrt_etas, t, x0))

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_{t−1} | x_t, x_0)``: ``(η_{t−1}/η_t) x_t + (α_t/η_t) x_0``, ``κ² η_{t−1} α_t / η_t``."""
        mean = self.at(self.posterior_coef1, t, x_t) * x_t + self.at(self.posterior_coef2, t, x_t) * x0
        return mean, self.at(self.posterior_variance, t, x_t)

    def ancestral_step(self, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_{t−1} ~ q(x_{t−1} | x_t, x̂_0)`` (ResShift's sampler); the last step (``t = 0``) returns ``x̂_0``."""
        mean, variance = self.posterior(x0, x_t, t)
        return mean + variance.sqrt() * noise

    def ddim_step(self, x0: Tensor, x_t: Tensor, y0: Tensor, t: Tensor) -> Tensor:
        """Deterministic step: ``x_{t−1} = x̂_0 + η_{t−1}(y_0 − x̂_0) + κ √η_{t−1} ε̂`` with ``ε̂`` the implied noise."""
        eps = self.epsilon_from_x0(x_t, x0, y0, t)
        return (
            x0
            + self.at(self.etas_prev, t, x0) * (y0 - x0)
            + self.kappa * self.at(self.etas_prev, t, x0).sqrt() * eps
        )

    # ------------------------------------------------------------------ the network
    def predict_x0(
        self, model: nn.Module, x_t: Tensor, t: Tensor, lr: Tensor, *, clip: bool = False
    ) -> Tensor:
        """``x̂_0 = model(scale_input(x_t), t, lr)`` (``lr`` in ``[−1, 1]``), optionally clamped to ``[−1, 1]``."""
        out = model(self.scale_input(x_t, t), t, lr)
        out = getattr(out, "sample", out)
        return out.clamp(-1.0, 1.0) if clip else out

    def sample(
        self,
        model: nn.Module,
        lr: Tensor,
        noise: Tensor,
        *,
        num_steps: int | None = None,
        sampler: Sampler = "ddim",
        generator: torch.Generator | None = None,
        clip: bool = True,
    ) -> Tensor:
        """Run the sampler from ``x_T = y_0 + κ √η_T noise``; returns ``x̂_0`` ``(B, C, H, W)`` in ``[−1, 1]``.

        Args:
            model: an ``x_0``-predicting denoiser ``model(x_t, t, lr)``.
            lr: the LR images in ``[−1, 1]`` ``(B, C, h, w)``.
            noise: ``ε`` of ``x_T`` ``(B, C, H, W)`` (fixes the output size).
            num_steps: ``T`` (the full chain) or 1 (the network's first ``x_0`` prediction); ``None`` is ``T``.
            sampler: ``"ddim"`` (deterministic, TAD-SR's teacher targets) or ``"ancestral"`` (posterior
                sampling, ResShift's default).
            generator: draws the ancestral steps' noise.
            clip: clamp each ``x̂_0`` to ``[−1, 1]`` (pixel space; ResShift's ``clip_denoised``).

        Raises:
            ValueError: ``num_steps`` other than 1 or ``T``, or an unknown ``sampler``.
        """
        steps = self.num_steps if num_steps is None else num_steps
        if steps not in (1, self.num_steps):
            raise ValueError(
                f"`num_steps` must be 1 or T={self.num_steps} (the chain the network was trained on), got {steps!r}."
            )
        if sampler not in ("ddim", "ancestral"):
            raise ValueError(f"`sampler` must be 'ddim' or 'ancestral', got {sampler!r}.")
        y0 = upsample_to(lr, tuple(noise.shape[-2:]))
        x_t = self.prior_sample(y0, noise)
        if steps == 1:
            return self.predict_x0(model, x_t, self.last(x_t.shape[0], x_t.device), lr, clip=clip)
        for i in reversed(range(self.num_steps)):
            t = torch.full((x_t.shape[0],), i, dtype=torch.long, device=x_t.device)
            x0 = self.predict_x0(model, x_t, t, lr, clip=clip)
            if i == 0:
                return x0
            if sampler == "ddim":
                x_t = self.ddim_step(x0, x_t, y0, t)
            else:
                z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
                x_t = self.ancestral_step(x0, x_t, t, z)
        raise AssertionError("unreachable")

    @torch.no_grad()
    def super_resolve(
        self,
        model: nn.Module,
        lr: Tensor,
        scale: int,
        *,
        num_steps: int | None = None,
        sampler: Sampler = "ddim",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """SR images ``(B, C, h·s, w·s)`` in ``[0, 1]`` of LR images ``lr`` in ``[0, 1]`` (noise from ``generator``)."""
        b, c, h, w = lr.shape
        noise = torch.randn((b, c, h * scale, w * scale), generator=generator).to(lr.device, lr.dtype)
        return to_unit(
            self.sample(
                model, to_signed(lr), noise, num_steps=num_steps, sampler=sampler, generator=generator
            )
        )


# ---------------------------------------------------------------------- the teacher, trained on first use
def _fit_resshift(
    model: nn.Module, data: L.LightningDataModule, schedule: ResShiftSchedule, *, steps: int, lr: float
) -> dict[str, Any]:
    """Adam on ``‖model(x_t, t, lr) − x_0‖²``, ``t ~ U{0..T−1}`` (ResShift's x_0 loss); the T-step PSNR of one val batch."""
    data.setup("fit")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    step, first, last = 0, float("nan"), float("nan")
    while step < steps:
        for lr_img, hr_img in data.train_dataloader():
            lr_s, x0 = to_signed(lr_img), to_signed(hr_img)
            y0 = upsample_to(lr_s, tuple(x0.shape[-2:]))
            t = torch.randint(0, schedule.num_steps, (x0.shape[0],))
            x_t = schedule.q_sample(x0, y0, t, torch.randn_like(x0))
            loss = F.mse_loss(schedule.predict_x0(model, x_t, t, lr_s), x0)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite x_0 loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cosine.step()
            last, step = float(loss.detach()), step + 1
            first = last if step == 1 else first
            if step >= steps:
                break
    model.eval()
    psnr, n = 0.0, 0
    gen = torch.Generator().manual_seed(0)
    for lr_img, hr_img in itertools.islice(data.val_dataloader(), 1):  # one batch: a sanity check
        sr = schedule.super_resolve(model, lr_img, hr_img.shape[-1] // lr_img.shape[-1], generator=gen)
        mse = (sr - hr_img).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
        psnr += float((-10 * torch.log10(mse)).sum())  # RGB, no border: a sanity check, not the bench
        n += hr_img.shape[0]
    return {"first_loss": first, "last_loss": last, "val_psnr": psnr / max(n, 1)}


def trained_resshift(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    schedule: ResShiftSchedule | None = None,
    checkpoint: str | None = None,
    steps: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """``model`` (an ``x_0``-predicting ResShift denoiser) trained on ``data`` on first use and cached, or loaded.

    Args:
        model: e.g. :class:`~lightning_distill.super_resolution.denoisers.LRConditionedUNet`, ``model(x_t, t, lr)``.
        data: a paired SR datamodule of ``(lr, hr)`` in ``[0, 1]``; required unless ``checkpoint``.
        schedule: the process (default :class:`ResShiftSchedule` ``()``: T = 15, κ = 2, p = 0.3).
        checkpoint: the user's trained weights (state_dict or Lightning checkpoint) instead.
        steps: Adam steps (cosine learning rate from ``lr``); ResShift trains far longer.
        lr: peak learning rate (ResShift: AdamW 5e-5 at scale; the toy configs use more).
        seed: seed of the initialisation, the data order and the noise.
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE``).
        retrain: ignore a cached teacher and train again.

    The returned module is in eval mode and carries ``distill_source`` and ``training_record``.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or ``steps`` < 1 / ``lr`` <= 0.
        TypeError: ``schedule`` is not a :class:`ResShiftSchedule`.
    """
    schedule = ResShiftSchedule() if schedule is None else schedule
    if not isinstance(schedule, ResShiftSchedule):
        raise TypeError(f"`schedule` must be a ResShiftSchedule, got {type(schedule).__name__}.")
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        model.training_record = {}
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_resshift` needs `checkpoint` (your trained weights) or `data` (to train on first use); set "
            "`model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1, got {steps!r}.")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr!r}.")
    settings = {"steps": steps, "lr": lr, "seed": seed, "loss": "x0_mse", **schedule.settings()}

    def fit() -> dict[str, Any]:
        result = _fit_resshift(model, data, schedule, steps=steps, lr=lr)
        rank_zero_info(
            f"Trained the ResShift teacher: val PSNR {result['val_psnr']:.2f} dB ({schedule.num_steps} steps)"
        )
        return result

    def check(result: dict[str, Any]) -> str | None:
        psnr = result.get("val_psnr", float("nan"))
        return None if math.isfinite(psnr) and psnr > 10 else f"validation PSNR {psnr:.2f} dB (<= 10 dB)"

    weights, info = cached_training(
        model, data, settings, fit, seed=seed, stem="ResShift", what=f"{steps} steps", cache_dir=cache_dir,
        retrain=retrain, check=check,
    )  # fmt: skip
    model.distill_source = f"trained ResShift teacher {weights}"
    model.training_record = info
    return model.eval()


# ---------------------------------------------------------------------- TAD-SR's discriminator
def denoiser_features(
    model: nn.Module, path: str, x_t: Tensor, t: Tensor, lr: Tensor, call: Callable[..., Any] | None = None
) -> Tensor:
    """The output of submodule ``path`` of ``model`` while it runs on ``(x_t, t, lr)``; the graph is kept.

    A forward hook is registered for the one call and removed afterwards. ``call`` runs the model
    (default ``model(x_t, t, lr)``), e.g. a schedule's :meth:`ResShiftSchedule.predict_x0`.

    Raises:
        ValueError: ``path`` is not a submodule of ``model`` (the message lists some that are).
    """
    modules = dict(model.named_modules())
    if path not in modules:
        names = [n for n in modules if n.endswith(("mid_block", "down_blocks.0", "up_blocks.0"))]
        raise ValueError(f"`{path}` is not a submodule of {type(model).__name__}; e.g. {names[:5]}.")
    found: list[Tensor] = []

    def grab(_module: nn.Module, _inputs: Any, output: Any) -> None:
        found.append(output[0] if isinstance(output, tuple) else output)

    handle = modules[path].register_forward_hook(grab)
    try:
        (call or model)(x_t, t, lr)
    finally:
        handle.remove()
    return found[-1]


class TimeAwareDiscriminator(nn.Module):
    """Logits ``(B,)`` of features ``(B, C, H, W)`` at timestep ``t``: a projection head conditioned on ``t``.

    ``h = pool(SiLU(GroupNorm(conv3x3(f))))``; ``logit = w·h + ⟨embed(t), h⟩`` (the time embedding
    projected onto the features, as a projection discriminator does with a class).

    Args:
        in_channels: ``C``.
        num_steps: ``T`` (number of timestep embeddings).
        hidden_channels: width (default ``in_channels``).

    Raises:
        ValueError: non-positive sizes.

    Example:
        >>> d = TimeAwareDiscriminator(8, num_steps=15)
        >>> d(torch.randn(2, 8, 4, 4), torch.tensor([0, 14])).shape
        torch.Size([2])
    """

    def __init__(self, in_channels: int, num_steps: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = in_channels if hidden_channels is None else hidden_channels
        for name, value in (
            ("in_channels", in_channels),
            ("num_steps", num_steps),
            ("hidden_channels", hidden),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        groups = max(g for g in range(1, min(32, hidden) + 1) if hidden % g == 0)
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(groups, hidden)
        self.out = nn.Linear(hidden, 1)
        self.time_embedding = nn.Embedding(num_steps, hidden)
        nn.init.normal_(self.time_embedding.weight, std=1.0 / math.sqrt(hidden))

    def forward(self, features: Tensor, t: Tensor) -> Tensor:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"`features` must be (B, {self.in_channels}, H, W), got {tuple(features.shape)}."
            )
        h = F.silu(self.norm(self.conv(features.to(self.conv.weight.dtype)))).mean(dim=(2, 3))
        return self.out(h).squeeze(-1) + (self.time_embedding(t.long().to(h.device)) * h).sum(dim=-1)
