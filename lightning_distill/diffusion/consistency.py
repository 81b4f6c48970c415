"""Consistency distillation machinery: the teacher's guided solver step, skipping-step grids, the
consistency parameterisation, an extra scalar slot for ``w`` (or SLAM's γ), and multi-step sampling.

Latent consistency distillation (LCM, arXiv 2310.04378) and the methods built on it (SLAM, MCM,
CTMSR, StableMaterials, OFTSR) share one iteration:

1. a *skipping-step grid* ``t_0 < t_1 < ... < t_{N-1}`` (``N = 50`` DDIM steps of ``T = 1000``:
   ``19, 39, ..., 999``), a grid index ``n``, the pair ``(t_{n+k}, t_n)`` (:func:`skipping_timesteps`,
   :func:`draw_timestep_pairs`);
2. the *teacher's ODE solver step* from ``x_{t_{n+k}}`` to ``x̂_{t_n}`` with classifier-free guidance
   ``ε̂ = (1 + w) ε(x, c) − w ε(x, ∅)`` (:func:`solver_step`: DDIM, or Heun's second-order step);
3. the *consistency parameterisation* ``f(x, t) = c_skip(t) x + c_out(t) x̂₀(x, t)`` with
   ``c_skip(0) = 1, c_out(0) = 0``, so ``f`` is the identity at the boundary (:func:`consistency_scalings`,
   :func:`consistency_output`);
4. a pseudo-Huber distance between the student at ``t_{n+k}`` and the *target network* (an EMA of
   the student, :class:`~lightning_distill.callbacks.EMATeacher`) at ``(x̂_{t_n}, t_n)``
   (:func:`~lightning_distill.losses.consistency.pseudo_huber_loss`);
5. at inference, *multi-step consistency sampling*: ``x̂₀ = f(x, τ_i)``, re-noised to ``τ_{i+1}``
   (:func:`consistency_sample`, timesteps of diffusers' ``LCMScheduler``: :func:`lcm_timesteps`).

A student conditioned on the guidance scale receives ``w`` through LCM's embedding
(:func:`guidance_scale_embedding`, sinusoidal features of ``1000 w``); :class:`GuidanceConditioned`
gives any denoiser that slot: diffusers UNets built with ``time_cond_proj_dim`` take it natively as
``timestep_cond``, other denoisers get a zero-initialised projection added to their timestep embedding.
SLAM carries its interpolation weight γ in the same slot.

Guidance convention here is the papers' ``w``: ``(1 + w) cond − w uncond``, i.e. the scale
``s = 1 + w`` of :func:`~lightning_distill.diffusion.guidance.cfg`; ``w = 0`` is the conditional model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from diffusers import LCMScheduler
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond, guided_output
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.schedule import NoiseSchedule, broadcast_to, scheduler_from_config
from lightning_distill.utils.checks import check_option

__all__ = [
    "GuidanceConditioned",
    "check_consistency_options",
    "consistency_output",
    "consistency_sample",
    "consistency_scalings",
    "draw_timestep_pairs",
    "guidance_scale_embedding",
    "guided_x0_eps",
    "lcm_timesteps",
    "skipping_timesteps",
    "solver_step",
]

Solver = Literal["ddim", "heun"]


# ---------------------------------------------------------------------------------- options
def check_consistency_options(
    T: int, *, guidance, num_solver_steps, skip, loss_type, huber_c, ema_decay, num_inference_steps
) -> None:
    """The argument checks of the latent-consistency recipes (``T``: the schedule's training timesteps).

    Raises:
        ValueError: naming the argument (:func:`~lightning_distill.utils.checks.check_option`).
    """
    n, k = num_solver_steps, num_inference_steps
    check_option(guidance >= 0, "guidance", guidance, ">= 0")
    check_option(isinstance(n, int) and 1 <= n <= T, "num_solver_steps", n, f"an integer in [1, {T}]")
    check_option(isinstance(skip, int) and 1 <= skip <= n, "skip", skip, "an integer in [1, N]")
    check_option(loss_type in ("huber", "l2"), "loss_type", loss_type, "'huber' or 'l2'")
    check_option(huber_c >= 0, "huber_c", huber_c, ">= 0")
    check_option(0.0 <= ema_decay <= 1.0, "ema_decay", ema_decay, "in [0, 1]")
    check_option(
        isinstance(k, int) and 1 <= k <= n, "num_inference_steps", k, "an integer in [1, num_solver_steps]"
    )


# ---------------------------------------------------------------------------------- grids
def skipping_timesteps(num_train_timesteps: int = 1000, num_solver_steps: int = 50) -> Tensor:
    """The skipping-step grid of LCM's DDIM solver: ``(i + 1) · T // N − 1`` for ``i = 0 .. N − 1``, ascending.

    Args:
        num_train_timesteps: ``T``.
        num_solver_steps: ``N``, the teacher's DDIM steps (LCM and SLAM: 50).

    Returns:
        ``(N,)`` int64, e.g. ``[19, 39, ..., 999]`` for ``T = 1000, N = 50``.

    Raises:
        ValueError: ``N`` not in ``[1, T]``.

    Example:
        >>> skipping_timesteps(1000, 4).tolist()
        [249, 499, 749, 999]
    """
    for name, value in (("num_train_timesteps", num_train_timesteps), ("num_solver_steps", num_solver_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if num_solver_steps > num_train_timesteps:
        raise ValueError(
            f"`num_solver_steps` must be <= num_train_timesteps = {num_train_timesteps}, got {num_solver_steps}."
        )
    step = num_train_timesteps // num_solver_steps
    return torch.arange(1, num_solver_steps + 1, dtype=torch.long) * step - 1


def draw_timestep_pairs(
    batch: int,
    grid: Tensor,
    *,
    skip: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Grid indices ``n`` and the pairs ``(t_{n+k}, t_n)`` of one consistency-distillation step.

    ``n ~ U{0, ..., N − 1}``, ``t_{n+k} = grid[n]``, ``t_n = grid[n − k]`` (``0`` when ``n < k``: the
    boundary, where the consistency function is the identity). With ``k = 1`` this is LCM's
    ``start − T // N``, clipped at 0.

    Args:
        batch: number of pairs ``B``.
        grid: ascending grid ``(N,)`` from :func:`skipping_timesteps`.
        skip: ``k``, grid points per solver step.
        generator: random source (drawn on its device).
        device: where the results go (default: the generator's, else CPU).

    Returns:
        ``(index, t_start, t_end)``, each ``(B,)`` int64.

    Raises:
        ValueError: ``skip < 1`` or an empty / non-increasing grid.
    """
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"`skip` must be an integer >= 1, got {skip!r}.")
    if grid.ndim != 1 or grid.numel() == 0 or bool((grid[1:] <= grid[:-1]).any()):
        raise ValueError(f"`grid` must be a non-empty ascending 1-D tensor, got {grid.tolist()}.")
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    index = torch.randint(0, grid.numel(), (batch,), generator=generator, device=draw_device)
    index = index.to(device if device is not None else draw_device)
    grid = grid.to(index.device)
    t_start = grid[index]
    previous = (index - skip).clamp(min=0)
    t_end = torch.where(index >= skip, grid[previous], torch.zeros_like(t_start))
    return index, t_start, t_end


def lcm_timesteps(schedule: NoiseSchedule, num_steps: int, original_steps: int = 50) -> list[int]:
    """The timesteps diffusers' ``LCMScheduler`` visits in ``num_steps`` steps (on the ``original_steps`` grid).

    Example:
        >>> lcm_timesteps(NoiseSchedule.ddpm(), 4)
        [999, 759, 499, 259]

    Raises:
        ValueError: a flow schedule, or ``num_steps`` outside ``[1, original_steps]``.
    """
    if schedule.kind != "vp":
        raise ValueError("`lcm_timesteps` needs a VP schedule (LCMScheduler); got a flow schedule.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= original_steps:
        raise ValueError(f"`num_steps` must be an integer in [1, {original_steps}], got {num_steps!r}.")
    scheduler = scheduler_from_config(
        LCMScheduler,
        schedule.scheduler.config,
        original_inference_steps=original_steps,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(num_steps)
    return [int(t) for t in scheduler.timesteps]


# ---------------------------------------------------------------------------------- the teacher's step
def guided_x0_eps(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    cond: Cond = None,
    null_cond: Cond = None,
    guidance: float | Tensor = 0.0,
    *,
    prediction_type: str | None = None,
) -> tuple[Tensor, Tensor]:
    """``(x̂₀, ε̂)`` of ``model`` with guidance ``(1 + w) cond − w uncond`` (one batched forward), float32.

    The combination is affine, so guiding the raw output and converting equals guiding x̂₀ and ε̂
    separately, as the LCM/SLAM code does.

    Args:
        model: the denoiser (teacher), called as in :func:`~lightning_distill.diffusion.guidance.model_output`.
        schedule: the noise schedule.
        x_t: noisy input ``(B, ...)``.
        t: timesteps ``(B,)`` or a scalar.
        cond, null_cond: the condition and its null counterpart (``null_cond`` unused when ``w = 0``).
        guidance: ``w``, a number or per-sample ``(B,)``.
        prediction_type: what ``model`` predicts (default: the schedule's).
    """
    scale = 1.0 + guidance if not isinstance(guidance, Tensor) else 1.0 + guidance.float()
    out = guided_output(model, x_t, t, cond, null_cond, scale)
    x0 = schedule.to_x0(out, x_t, t, prediction_type)
    eps = schedule.to_eps(out, x_t, t, prediction_type)
    return x0, eps


@torch.no_grad()
def solver_step(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t_from: Tensor,
    t_to: Tensor,
    cond: Cond = None,
    null_cond: Cond = None,
    guidance: float | Tensor = 0.0,
    *,
    solver: Solver = "ddim",
    prediction_type: str | None = None,
) -> Tensor:
    """One step of the teacher's probability-flow ODE from ``t_from`` to ``t_to`` with guidance, without grad.

    * ``"ddim"``: ``x_{t_to} = α_to x̂₀ + σ_to ε̂`` with ``(x̂₀, ε̂)`` of the guided teacher at
      ``(x_{t_from}, t_from)`` (LCM's ``DDIMSolver``; one guided forward).
    * ``"heun"``: the DDIM step is the Euler step of ``d(x/α) = ε̂ d(σ/α)``; Heun averages ``ε̂`` at
      both ends (a second guided forward at the Euler point), second order. Needs ``α_from > 0``.

    Args:
        model: the teacher.
        schedule: its noise schedule.
        x_t: ``x_{t_from}`` ``(B, ...)``.
        t_from, t_to: timesteps ``(B,)`` (or scalars), ``t_to < t_from`` for a denoising step.
        cond, null_cond: the condition and the null condition of guidance.
        guidance: ``w`` (``(1 + w) cond − w uncond``), a number or ``(B,)``.
        solver: ``"ddim"`` or ``"heun"``.
        prediction_type: what the teacher predicts (default: the schedule's).

    Returns:
        ``x_{t_to}`` ``(B, ...)`` in ``x_t``'s dtype.

    Raises:
        ValueError: an unknown solver, or Heun from a timestep with ``α = 0``.
    """
    if solver not in ("ddim", "heun"):
        raise ValueError(f"`solver` must be 'ddim' or 'heun', got {solver!r}.")
    x0, eps = guided_x0_eps(
        model, schedule, x_t, t_from, cond, null_cond, guidance, prediction_type=prediction_type
    )
    a_to, s_to = (broadcast_to(v, x0) for v in schedule.alpha_sigma(_as_batch(t_to, x_t)))
    x_to = a_to * x0 + s_to * eps
    if solver == "heun":
        a_from, s_from = (broadcast_to(v, x0) for v in schedule.alpha_sigma(_as_batch(t_from, x_t)))
        if bool((a_from <= 0).any()):
            raise ValueError("Heun's step divides by α at `t_from`, which is 0 there; use solver='ddim'.")
        _, eps_end = guided_x0_eps(
            model,
            schedule,
            x_to.to(x_t.dtype),
            t_to,
            cond,
            null_cond,
            guidance,
            prediction_type=prediction_type,
        )
        eps_mean = 0.5 * (eps + eps_end)
        x_to = a_to * (x_t.float() / a_from + (s_to / a_to - s_from / a_from) * eps_mean)
    return x_to.to(x_t.dtype)


# ---------------------------------------------------------------------------------- parameterisation
def consistency_scalings(
    t: Tensor, *, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """LCM's boundary scalings: ``c_skip = σ_d² / ((s t)² + σ_d²)``, ``c_out = s t / sqrt((s t)² + σ_d²)``.

    ``c_skip(0) = 1`` and ``c_out(0) = 0``, so the consistency function is the identity at ``t = 0``;
    ``s = timestep_scaling`` (10, LCM's ``t / 0.1``) makes ``c_skip`` negligible from ``t ≈ 1`` on.

    Args:
        t: timesteps, any shape.
        sigma_data: ``σ_d`` (0.5).
        timestep_scaling: ``s``.

    Returns:
        ``(c_skip, c_out)``, float32, ``t``'s shape.

    Example:
        >>> c_skip, c_out = consistency_scalings(torch.tensor([0, 999]))
        >>> c_skip.tolist()[0], c_out.tolist()[0], round(c_out.tolist()[1], 6)
        (1.0, 0.0, 1.0)
    """
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def consistency_output(
    x_t: Tensor, x0: Tensor, t: Tensor, *, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> Tensor:
    """``f(x_t, t) = c_skip(t) x_t + c_out(t) x̂₀`` ``(B, ...)`` float32 (see :func:`consistency_scalings`)."""
    c_skip, c_out = consistency_scalings(
        _as_batch(t, x_t), sigma_data=sigma_data, timestep_scaling=timestep_scaling
    )
    return broadcast_to(c_skip, x0) * x_t.float() + broadcast_to(c_out, x0) * x0.float()


# ---------------------------------------------------------------------------------- the w slot
def guidance_scale_embedding(w: Tensor, dim: int = 256, *, scale: float = 1000.0) -> Tensor:
    """LCM's embedding of the guidance scale: ``[sin(scale · w · f_k), cos(scale · w · f_k)]``.

    ``f_k = 10000^(−k / (dim/2 − 1))``, ``k = 0 .. dim/2 − 1`` (the VDM/LCM convention; an odd
    ``dim`` is zero-padded).

    Args:
        w: values ``(B,)``.
        dim: embedding size (>= 4).
        scale: multiplier of ``w`` (1000, so ``w`` in ``[0, 15]`` spans timestep-like values).

    Returns:
        ``(B, dim)`` float32.

    Raises:
        ValueError: ``w`` not 1-D or ``dim < 4``.
    """
    if w.ndim != 1:
        raise ValueError(f"`w` must have shape (B,), got {tuple(w.shape)}.")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4:
        raise ValueError(f"`dim` must be an integer >= 4, got {dim!r}.")
    half = dim // 2
    freqs = torch.exp(
        -torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / (half - 1)
    )
    args = (w.float() * scale)[:, None] * freqs.to(w.device)[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))


class GuidanceConditioned(nn.Module):
    """A denoiser with an extra scalar input (LCM's guidance scale ``w``, SLAM's γ), called
    ``model(x_t, t, cond, guidance=w)``.

    * A diffusers UNet whose config has ``time_cond_proj_dim`` (``UNet2DConditionModel(...,
      time_cond_proj_dim=256)``, as LCM builds its student) receives
      ``timestep_cond = guidance_scale_embedding(w, time_cond_proj_dim)``; its own ``cond_proj`` learns.
    * Any other denoiser: ``projection(guidance_scale_embedding(w))`` is added to the output of its
      timestep-embedding module ``embed_into`` (``"time_mlp"`` of
      :class:`~lightning_distill.diffusion.denoisers.MLPDenoiser`, ``"time_embedding"`` of diffusers
      UNets) through a forward hook that lives for one call only (copies carry no hooks). The
      projection is zero-initialised, so the wrapper starts as the wrapped model.

    ``guidance=None`` runs the wrapped model unchanged. The output is the wrapped model's prediction
    as a plain tensor.

    Args:
        model: the denoiser.
        embedding_dim: size of the sinusoidal features (ignored for the native slot).
        embed_into: dotted path of the timestep-embedding module; ``None`` tries ``time_mlp`` then
            ``time_embedding``.

    Raises:
        ValueError: no timestep-embedding module found, or it holds no ``nn.Linear`` to size the projection.

    Example:
        >>> from lightning_distill.diffusion.denoisers import MLPDenoiser
        >>> base = MLPDenoiser(dim=2, hidden=16, depth=1)
        >>> student = GuidanceConditioned(base, embedding_dim=32)
        >>> x, t = torch.randn(3, 2), torch.tensor([5, 500, 900])
        >>> torch.equal(student(x, t, guidance=torch.tensor([1.0, 2.0, 8.0])), base(x, t))  # zero-initialised
        True
    """

    def __init__(self, model: nn.Module, embedding_dim: int = 256, *, embed_into: str | None = None) -> None:
        super().__init__()
        self.model = model
        native = getattr(getattr(model, "config", None), "time_cond_proj_dim", None)
        self.native = native is not None
        if self.native:
            self.embedding_dim = int(native)
            self.embed_into = None
            self.projection = None
            return
        candidates = [embed_into] if embed_into is not None else ["time_mlp", "time_embedding"]
        found = [p for p in candidates if _has_submodule(model, p)]
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no timestep-embedding module among {candidates}; pass `embed_into` "
                "(the dotted path of the module whose output is the timestep embedding)."
            )
        linears = [m for m in model.get_submodule(found[0]).modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"`{found[0]}` of {type(model).__name__} holds no nn.Linear to read its width from."
            )
        self.embedding_dim = int(embedding_dim)
        self.embed_into = found[0]
        self.projection = nn.Linear(self.embedding_dim, linears[-1].out_features)
        nn.init.zeros_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | int | float,
        cond: Cond = None,
        guidance: Tensor | float | None = None,
    ) -> Tensor:
        """Prediction ``(B, ...)`` for ``sample`` at ``timestep`` with condition ``cond`` and slot value ``guidance``."""
        if guidance is None:
            return _call(self.model, sample, timestep, cond, {})
        w = torch.as_tensor(guidance, device=sample.device, dtype=torch.float32)
        w = w.expand(sample.shape[0]) if w.ndim == 0 else w.reshape(-1)
        emb = guidance_scale_embedding(w, self.embedding_dim).to(sample.dtype)
        if self.native:
            return _call(self.model, sample, timestep, cond, {"timestep_cond": emb})
        extra = self.projection(emb)
        handle = self.model.get_submodule(self.embed_into).register_forward_hook(
            lambda module, inputs, output: output + extra.to(output.dtype)
        )
        try:
            return _call(self.model, sample, timestep, cond, {})
        finally:
            handle.remove()


# ---------------------------------------------------------------------------------- sampling
def consistency_sample(
    consistency_fn: Callable[[Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    timesteps: Sequence[int],
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multi-step consistency sampling: ``x̂₀ = f(x, τ_i)``; ``x ← α_{τ_{i+1}} x̂₀ + σ_{τ_{i+1}} ε'``.

    The loop of diffusers' ``LCMScheduler.step`` (and of the CM paper's Algorithm 1), for any
    consistency function ``f(x (B, ...), t (B,)) -> x̂₀``; keeps the caller's grad mode.

    Args:
        consistency_fn: the student's consistency function.
        schedule: the noise schedule.
        noise: the input at ``timesteps[0]`` ``(B, ...)``.
        timesteps: strictly decreasing timesteps (e.g. :func:`lcm_timesteps`).
        generator: source of the re-noising.

    Returns:
        The last ``x̂₀`` ``(B, ...)`` float32.

    Raises:
        ValueError: empty or not strictly decreasing ``timesteps``.
    """
    steps = [int(t) for t in timesteps]
    if not steps or any(a <= b for a, b in zip(steps[:-1], steps[1:])):
        raise ValueError(f"`timesteps` must be non-empty and strictly decreasing, got {steps}.")
    x = noise
    x0 = noise.float()
    for i, t in enumerate(steps):
        t_batch = torch.full((noise.shape[0],), t, dtype=torch.long, device=noise.device)
        x0 = consistency_fn(x, t_batch).float()
        if i + 1 < len(steps):
            t_next = torch.full_like(t_batch, steps[i + 1])
            x = schedule.add_noise(x0, randn_like(x0, generator), t_next).to(noise.dtype)
    return x0


# ---------------------------------------------------------------------------------- helpers
def _as_batch(t: Tensor | int | float, like: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _call(model: nn.Module, sample: Tensor, timestep: Any, cond: Cond, extra: dict[str, Any]) -> Tensor:
    if cond is None:
        out = model(sample, timestep, **extra)
    elif isinstance(cond, Mapping):
        out = model(sample, timestep, **cond, **extra)
    else:
        out = model(sample, timestep, cond, **extra)
    if isinstance(out, Tensor):
        return out
    sample_out = getattr(out, "sample", None)
    if isinstance(sample_out, Tensor):
        return sample_out
    return out[0]
