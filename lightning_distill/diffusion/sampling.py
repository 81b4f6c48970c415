"""Sampling: the teacher's multi-step sampler, and the student's one-/few-step generation.

* :func:`sample`: the baseline, a diffusers sampler loop (``set_timesteps`` + ``step``): DDIM
  (η = 0 by default) for VP schedules, Euler for flow schedules, with optional CFG.
* :func:`one_step_generate`: a generator's x₀ from noise at one timestep, converted from whatever
  the generator predicts. Keeps the caller's grad mode (use it in the generator loss).
* :func:`few_step_sample`: DMD2's multi-step generator: at each listed timestep the generator
  predicts x₀, which is re-noised with fresh noise to the next timestep,
  :math:`x_{t_{k+1}} = \\alpha_{t_{k+1}}\\hat x_0 + \\sigma_{t_{k+1}}\\varepsilon'`. Diffusers'
  ``LCMScheduler`` (VP) and ``FlowMatchLCMScheduler`` (flow) step the same way.
* :func:`backward_simulation`: DMD2's fix for the train/test mismatch of few-step students: the
  input of a training step at step ``k`` is produced by running the student itself for ``k``
  steps without grad, instead of noising real data.

Pure noise is the input at the first timestep: :math:`x_{t_0} = \\varepsilon` (DMD2 and
SwiftBrush do the same at ``t = T - 1``, where :math:`\\sigma \\approx 1`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond, guided_output, model_output
from lightning_distill.diffusion.schedule import NoiseSchedule

__all__ = ["backward_simulation", "few_step_sample", "one_step_generate", "randn_like", "sample"]


@torch.no_grad()
def sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    noise: Tensor,
    num_steps: int,
    cond: Cond = None,
    null_cond: Cond = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    eta: float = 0.0,
) -> Tensor:
    """Multi-step sampling with the diffusers scheduler (DDIM for VP, Euler for flow), without grad.

    The model must predict ``schedule.prediction_type``. Steps follow the scheduler's
    ``timestep_spacing`` (``NoiseSchedule.ddpm`` uses ``"trailing"``, so the first step is at
    ``T - 1`` for any ``num_steps``); a flow schedule applies its ``shift``.

    Args:
        model: the denoiser (teacher).
        schedule: the noise schedule.
        noise: the starting noise ``(B, ...)``; samples come back in its dtype.
        num_steps: number of model evaluations (times 2 under CFG, batched).
        cond: the condition, or ``None``.
        null_cond: the unconditional condition for CFG.
        guidance_scale: CFG scale ``s`` (``uncond + s (cond - uncond)``); 1 disables CFG.
        generator: random source for stochastic DDIM (``eta > 0``).
        eta: DDIM's η (0: deterministic DDIM); VP only.

    Returns:
        Samples ``(B, ...)``.

    Raises:
        ValueError: for ``num_steps < 1``, ``eta != 0`` with a flow schedule, or a flow scheduler
            with dynamic shifting (it needs a resolution-dependent ``mu``).

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser
        >>> schedule = NoiseSchedule.ddpm(beta_schedule="linear")
        >>> sample(MLPDenoiser(dim=2, hidden=16, depth=1), schedule, torch.randn(4, 2), num_steps=5).shape
        torch.Size([4, 2])
    """
    _check_steps(num_steps)
    scheduler = schedule.sampling_scheduler()
    if schedule.kind == "flow":
        if eta != 0.0:
            raise ValueError(f"`eta` is a DDIM option; a flow schedule samples with Euler, got eta={eta}.")
        if getattr(scheduler.config, "use_dynamic_shifting", False):
            raise ValueError(
                "The flow scheduler uses dynamic shifting, which needs a resolution-dependent `mu`; build the "
                "schedule with `use_dynamic_shifting=False` and a fixed `shift`."
            )
    scheduler.set_timesteps(num_steps, device=noise.device)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # 1 for DDIM; flow schedulers have none
    batch = noise.shape[0]
    for t in scheduler.timesteps:
        t_batch = t.expand(batch)
        out = guided_output(model, x, t_batch, cond, null_cond, guidance_scale)
        step_kwargs = {"eta": eta, "generator": generator} if schedule.kind == "vp" else {}
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample.to(noise.dtype)
    return x


def one_step_generate(
    generator_model: nn.Module,
    schedule: NoiseSchedule,
    noise: Tensor,
    t: int | float | Tensor | None = None,
    cond: Cond = None,
    *,
    prediction_type: str | None = None,
) -> Tensor:
    """x₀ from a one-step generator that sees ``noise`` at timestep ``t``; keeps the caller's grad mode.

    Args:
        generator_model: the student, called ``model(noise, t[, cond])``.
        schedule: the noise schedule.
        noise: the generator input :math:`x_t` ``(B, ...)`` (pure noise for a one-step generator).
        t: the timestep the student receives: a number, a scalar or ``(B,)``; ``None`` is
            ``schedule.max_timestep`` (``T - 1`` for VP, ``T`` for flow).
        cond: the condition, or ``None``.
        prediction_type: what the student predicts (default: the schedule's).

    Returns:
        :math:`\\hat x_0`, float32, shape of ``noise``.

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser
        >>> schedule = NoiseSchedule.ddpm()
        >>> student = MLPDenoiser(dim=2, hidden=16, depth=1)
        >>> x0 = one_step_generate(student, schedule, torch.randn(3, 2))
        >>> x0.shape, x0.requires_grad
        (torch.Size([3, 2]), True)
    """
    t_tensor = _timesteps(schedule.max_timestep if t is None else t, noise)
    if t_tensor.ndim == 0:
        t_tensor = t_tensor.expand(noise.shape[0])
    out = model_output(generator_model, noise, t_tensor, cond)
    return schedule.to_x0(out, noise, t_tensor, prediction_type)


def few_step_sample(
    generator_model: nn.Module,
    schedule: NoiseSchedule,
    noise: Tensor,
    timesteps: Sequence[int | float] = (999, 749, 499, 249),
    cond: Cond = None,
    *,
    generator: torch.Generator | None = None,
    prediction_type: str | None = None,
) -> Tensor:
    """DMD2's few-step generation: predict x₀ at each timestep, re-noise it to the next.

    Keeps the caller's grad mode (wrap in ``torch.no_grad()`` for inference). Fresh noise is drawn
    between steps with diffusers' ``randn_tensor`` (on the generator's device, then moved), in the
    order ``LCMScheduler.step`` draws it, so the exported student samples identically with diffusers.

    Args:
        generator_model: the student.
        schedule: the noise schedule.
        noise: the input at the first timestep ``(B, ...)``.
        timesteps: decreasing timesteps (DMD2 4-step: ``(999, 749, 499, 249)``; one step: ``(T - 1,)``).
        cond: the condition, or ``None``.
        generator: random source of the re-noising.
        prediction_type: what the student predicts (default: the schedule's).

    Returns:
        The last :math:`\\hat x_0`, float32, shape of ``noise``.

    Raises:
        ValueError: if ``timesteps`` is empty or not strictly decreasing.
    """
    steps = _check_timesteps(timesteps)
    x = noise
    x0 = noise.float()
    for k, t in enumerate(steps):
        x0 = one_step_generate(generator_model, schedule, x, t, cond, prediction_type=prediction_type)
        if k + 1 < len(steps):
            fresh = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x = schedule.add_noise(x0, fresh, _timesteps(steps[k + 1], x0)).to(noise.dtype)
    return x0


@torch.no_grad()
def backward_simulation(
    generator_model: nn.Module,
    schedule: NoiseSchedule,
    noise: Tensor,
    timesteps: Sequence[int | float] = (999, 749, 499, 249),
    cond: Cond = None,
    *,
    step: int | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The student's own input at step ``k`` of its few-step chain, produced without grad (DMD2).

    Runs :func:`few_step_sample` for the first ``k`` timesteps from ``noise`` and re-noises the
    last x₀ to ``timesteps[k]``; for ``k = 0`` the input is ``noise`` itself. The training step
    then runs the student with grad on the returned ``(x_t, t)``. ``k`` is one value for the whole
    batch (DMD2 draws it once and broadcasts it to every rank: seed ``generator`` identically
    on every rank, or pass ``step``).

    Args:
        generator_model: the student.
        schedule: the noise schedule.
        noise: pure noise, the input at ``timesteps[0]``, ``(B, ...)``.
        timesteps: the student's decreasing timesteps.
        cond: the condition, or ``None``.
        step: which step's input to produce, ``0 <= step < len(timesteps)``; ``None`` draws it
            uniformly with ``generator``.
        generator: random source of ``step`` and of the re-noising.
        prediction_type: what the student predicts (default: the schedule's).

    Returns:
        ``(x_t, t)``: the input ``(B, ...)`` in ``noise``'s dtype, and its timesteps ``(B,)``.

    Raises:
        ValueError: for bad ``timesteps`` or ``step`` out of range.

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser
        >>> x_t, t = backward_simulation(
        ...     MLPDenoiser(dim=2, hidden=16, depth=1), NoiseSchedule.ddpm(), torch.randn(3, 2), step=2
        ... )
        >>> t.tolist(), x_t.requires_grad
        ([499, 499, 499], False)
    """
    steps = _check_timesteps(timesteps)
    if step is None:
        device = generator.device if generator is not None else torch.device("cpu")
        step = int(torch.randint(0, len(steps), (1,), generator=generator, device=device).item())
    elif isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(steps):
        raise ValueError(f"`step` must be None or an integer in [0, {len(steps)}), got {step!r}.")
    t = _timesteps(steps[step], noise).reshape(1).repeat(noise.shape[0])
    if step == 0:
        return noise, t
    x0 = few_step_sample(
        generator_model,
        schedule,
        noise,
        steps[:step],
        cond,
        generator=generator,
        prediction_type=prediction_type,
    )
    fresh = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return schedule.add_noise(x0, fresh, t).to(noise.dtype), t


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise with the shape, dtype and device of ``x``, drawn on the generator's device.

    Like diffusers' ``randn_tensor``: a CPU generator gives the same noise for a tensor on any device.

    Example:
        >>> a = randn_like(torch.zeros(2, 3), torch.Generator().manual_seed(0))
        >>> torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))
        True
    """
    return randn_tensor(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)


def _timesteps(t: int | float | Tensor, like: Tensor) -> Tensor:
    if isinstance(t, Tensor):
        return t.to(like.device)
    dtype = torch.long if isinstance(t, int) else torch.float32
    return torch.tensor(t, device=like.device, dtype=dtype)


def _check_steps(num_steps: object) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be an integer >= 1, got {num_steps!r}.")


def _check_timesteps(timesteps: object) -> list[int | float]:
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Sequence) or not timesteps:
        raise ValueError(
            f"`timesteps` must be a non-empty sequence of decreasing timesteps, got {timesteps!r}."
        )
    steps = [t.item() if isinstance(t, Tensor) else t for t in timesteps]
    for t in steps:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ValueError(f"`timesteps` must hold numbers, got {timesteps!r}.")
    if any(a <= b for a, b in zip(steps[:-1], steps[1:])):
        raise ValueError(f"`timesteps` must be strictly decreasing, got {list(steps)}.")
    return steps
