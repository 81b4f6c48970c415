"""SNR phases of a few-step generator: the forward process restarted inside a subinterval, and the phase-wise generator.

Phased DMD (Fan et al., arXiv 2510.27684) splits the timestep range at ``T = t_0 > t_1 > ... > t_K = 0``
and distils one expert per phase. Its pieces that do not depend on the recipe live here:

- :func:`subinterval_coefficients` / :func:`subinterval_noise`: ``x_t = α_{t|s} x_s + σ_{t|s} ε``, the
  forward process started from samples ``x_s`` at time ``s < t`` (same marginals as the full process);
- :func:`subinterval_target`: the unbiased regression targets of a full-process model on those inputs
  (the "score matching within subintervals" of the paper's title);
- :class:`PhasedGenerator`: the mixture-of-experts few-step generator, one expert per phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import model_output
from lightning_distill.diffusion.schedule import NoiseSchedule

__all__ = ["PhasedGenerator", "subinterval_coefficients", "subinterval_noise", "subinterval_target"]


def subinterval_coefficients(
    alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> tuple[Tensor, Tensor]:
    """``(α_{t|s}, σ_{t|s})`` of the forward process restarted at ``s < t``: ``x_t = α_{t|s} x_s + σ_{t|s} ε``.

    ``α_{t|s} = α_t / α_s`` and ``σ_{t|s}² = σ_t² - α_{t|s}² σ_s²``, so that ``x_t`` has the marginal
    of the full process whenever ``x_s`` does. Inputs are scalars or ``(B,)``; float32 out.

    Example:
        >>> a, b = subinterval_coefficients(*map(torch.tensor, (0.8, 0.6, 0.6, 0.8)))
        >>> round(a.item(), 4), round(b.item(), 4)  # 0.75 and sqrt(0.64 - 0.5625 * 0.36)
        (0.75, 0.6614)
    """
    alpha_ts = alpha_t.float() / alpha_s.float()
    sigma_ts = (sigma_t.float() ** 2 - alpha_ts**2 * sigma_s.float() ** 2).clamp_min(1e-12).sqrt()
    return alpha_ts, sigma_ts


def subinterval_noise(
    x_s: Tensor, noise: Tensor, alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> Tensor:
    """``x_t = α_{t|s} x_s + σ_{t|s} ε`` for samples ``x_s`` ``(B, ...)`` at time ``s`` (float32)."""
    a, b = (_per_sample(c, x_s) for c in subinterval_coefficients(alpha_s, sigma_s, alpha_t, sigma_t))
    return a * x_s.float() + b * noise.float()


def subinterval_target(
    x_s: Tensor, noise: Tensor, alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> tuple[Tensor, Tensor]:
    """The unbiased ``(x̂₀, ε̂)`` regression pair for ``x_t = subinterval_noise(x_s, noise, ...)``.

    A model of the *full* process predicting ``(x̂₀, ε̂)`` at ``x_t`` has the score
    ``-ε̂/σ_t``. The score of the subinterval marginal is ``E[-(x_t - α_{t|s} x_s)/σ_{t|s}² | x_t]``,
    so the unbiased targets are ``ε* = (σ_t/σ_{t|s}) ε`` and ``x₀* = (x_t - σ_t ε*)/α_t``
    ``= x_s/α_s - α_t σ_s²/(α_s² σ_{t|s}) ε`` (affine in ``x_s``: the denoising target is ``x_s``).
    Feed them to ``NoiseSchedule.target(x0, eps, t)`` for any parameterisation; for flow this is
    the paper's Eq. 13. At ``(α_s, σ_s) = (1, 0)`` they are ``(x_s, ε)``: plain denoising.

    Returns:
        ``(x0_target, eps_target)``, float32, shape of ``x_s``.
    """
    a_ts, s_ts = (_per_sample(c, x_s) for c in subinterval_coefficients(alpha_s, sigma_s, alpha_t, sigma_t))
    a_s, s_s, a_t, s_t = (_per_sample(c.float(), x_s) for c in (alpha_s, sigma_s, alpha_t, sigma_t))
    eps_target = (s_t / s_ts) * noise.float()
    x0_target = x_s.float() / a_s - (a_t * s_s**2 / (a_s**2 * s_ts)) * noise.float()
    return x0_target, eps_target


class PhasedGenerator(nn.Module):
    """A few-step mixture-of-experts generator: expert ``k`` steps from ``timesteps[k]`` to ``timesteps[k+1]``.

    Each expert is a denoiser (diffusers call convention) predicting ``schedule.prediction_type``;
    a step is deterministic DDIM (Euler for flow): ``x_next = α_next x̂₀ + σ_next ε̂``, and the
    last expert returns x̂₀. Called as ``generator(x_t, t)`` it routes each sample to the expert
    whose phase ``(t_{k+1}, t_k]`` holds ``t`` (for export and diffusers-style use).

    Args:
        experts: ``K`` modules.
        schedule: the noise schedule.
        timesteps: the ``K`` decreasing timesteps the experts receive (``t_0 .. t_{K-1}``).
    """

    def __init__(
        self, experts: Sequence[nn.Module], schedule: NoiseSchedule, timesteps: Sequence[int | float]
    ) -> None:
        super().__init__()
        if len(experts) != len(timesteps) or not experts:
            raise ValueError(
                f"Need one expert per timestep, got {len(experts)} experts and timesteps {list(timesteps)}."
            )
        self.experts = nn.ModuleList(experts)
        self.schedule = schedule
        self.timesteps = list(timesteps)

    def step(self, k: int, x: Tensor, cond: Any = None) -> Tensor:
        """Expert ``k`` on ``x`` ``(B, ...)`` at ``timesteps[k]``: the sample at ``timesteps[k+1]`` (x̂₀ for the last)."""
        t = torch.full((x.shape[0],), self.timesteps[k], device=x.device)
        t = t.long() if isinstance(self.timesteps[k], int) else t
        out = model_output(self.experts[k], x, t, cond)
        x0 = self.schedule.to_x0(out, x, t)
        if k + 1 == len(self.experts):
            return x0
        alpha, sigma = self.schedule.alpha_sigma(torch.tensor(self.timesteps[k + 1], device=x.device))
        return alpha * x0 + sigma * self.schedule.to_eps(out, x, t)

    def generate(
        self, noise: Tensor, cond: Any = None, *, last: int | None = None, grad: bool = False
    ) -> Tensor:
        """Run experts ``0..last`` from ``noise`` (all by default); only expert ``last`` may keep grad."""
        last = len(self.experts) - 1 if last is None else last
        x = noise
        with torch.no_grad():
            for k in range(last):
                x = self.step(k, x, cond).to(noise.dtype)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.step(last, x, cond)

    def forward(self, sample: Tensor, timestep: Tensor | int | float, *args: Any, **kwargs: Any) -> Tensor:
        t = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])
        bounds = torch.tensor(self.timesteps[1:], device=sample.device, dtype=torch.float32)
        owner = (bounds[None, :] >= t.float()[:, None]).sum(1)  # (B,): the phase of each sample
        out = torch.empty_like(sample)
        for k in owner.unique().tolist():
            rows = owner == k
            cut = [a[rows] if isinstance(a, Tensor) and a.shape[:1] == sample.shape[:1] else a for a in args]
            out[rows] = model_output(self.experts[k], sample[rows], t[rows], *cut[:1], **kwargs).to(out.dtype)
        return out


def _per_sample(coef: Tensor, like: Tensor) -> Tensor:
    coef = torch.as_tensor(coef, device=like.device).float()
    return coef.reshape(-1, *([1] * (like.ndim - 1))) if coef.ndim == 1 else coef
