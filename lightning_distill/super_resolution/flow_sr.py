"""The rectified-flow super-resolution process of OFTSR, its ODE solvers, and its teacher trained on first use.

OFTSR's stage 1 (Zhu et al., arXiv 2412.09465; official code yuanzhi-zhu/OFTSR, ``fm/flow_matching.py``)
trains a conditional rectified flow from a noise-augmented upsampled LR image to the HR image:

* images live in ``[-1, 1]`` (``to_signed``); the start point is the VP-style perturbation of the
  bicubic-upsampled LR image, ``x_0 = sqrt(1 − σ_p²) · up(LR) + σ_p · ε`` (official ``gaussian_VP``),
* the path is the straight line ``x_t = t · x_1 + (1 − t) · x_0`` with ``x_1 = HR``: ``t = 0`` is the
  LR end, ``t = 1`` the HR end (the official direction),
* the velocity target is ``x_1 − x_0``; the teacher ``v_φ(x_t, t, LR)`` learns it with an L1 loss,
  ``t ~ U[ε, 1)``, the LR image also concatenated as a condition (``use_cond: true``),
* the network sees the time as ``999 · t`` (the official ``t * 999``).

:func:`flow_sample` integrates ``dx/dt = v(x, t)`` from ``t = ε`` to 1 with Euler or a generic
second-order Runge-Kutta step (:func:`rk2_step`; ``r = 0.5`` midpoint, ``r = 1`` Heun), as
``fm/sampling.py`` does. :func:`trained_flow_sr` returns an :class:`LRConditionedUNet` trained as the
teacher through :func:`~lightning_distill.models.first_use_cache.cached_training`, keeping the EMA
of its weights (official ``ema_rate``).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from lightning_distill.losses.super_resolution import flow_velocity_l1_loss
from lightning_distill.models.first_use_cache import cached_training, load_weights, loss_summary
from lightning_distill.super_resolution.denoisers import upsample_to
from lightning_distill.utils.checks import check_choice, check_int, check_non_negative, check_positive
from lightning_distill.utils.ema import EMAUpdater
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "FLOW_EPS",
    "TIME_SCALE",
    "bootstrap_velocity_target",
    "check_sigma_p",
    "euler_step",
    "flow_interpolate",
    "flow_sample",
    "flow_start",
    "flow_velocity",
    "flow_velocity_target",
    "one_step_sr",
    "rk2_step",
    "to_signed",
    "to_unit",
    "trained_flow_sr",
]

#: The smallest time of training and sampling (official ``fm_model.eps``).
FLOW_EPS = 1e-3
#: The network sees ``TIME_SCALE · t`` (official ``model(x, t * 999)``).
TIME_SCALE = 999.0

Field = Callable[[Tensor, Tensor], Tensor]


def to_signed(image: Tensor) -> Tensor:
    """``[0, 1] -> [-1, 1]``."""
    return image * 2.0 - 1.0


def to_unit(image: Tensor) -> Tensor:
    """``[-1, 1] -> [0, 1]``, clamped."""
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def check_sigma_p(sigma_p: float, key: str = "sigma_p") -> float:
    """``σ_p`` must lie in ``[0, 1]`` (a VP perturbation); returns it as a float."""
    value = check_non_negative(key, sigma_p)
    if value > 1.0:
        raise ValueError(f"`{key}` must be in [0, 1] (x_0 = sqrt(1 − σ_p²) up(LR) + σ_p ε), got {value}.")
    return value


def _time(t: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """``t`` as a ``(B,)`` float tensor on ``like``'s device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"`t` must be a scalar or a (B={batch},) tensor, got shape {tuple(t.shape)}.")
    return t


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def flow_start(
    lr: Tensor, size: tuple[int, int] | int, sigma_p: float, generator: torch.Generator | None = None
) -> Tensor:
    """The start point ``x_0 = sqrt(1 − σ_p²) · up(LR) + σ_p · ε`` in ``[-1, 1]`` space.

    Args:
        lr: ``(B, C, h, w)`` LR images in ``[-1, 1]``.
        size: the HR size ``(H, W)``.
        sigma_p: the perturbation ``σ_p`` in ``[0, 1]`` (official ``ir.sigma_pertubation``).
        generator: source of ``ε``.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> flow_start(torch.zeros(1, 3, 2, 2), 4, 0.0).abs().max().item()
        0.0
    """
    sigma_p = check_sigma_p(sigma_p)
    up = upsample_to(lr, size)
    noise = torch.randn(up.shape, generator=generator, device=up.device, dtype=up.dtype)
    return math.sqrt(1.0 - sigma_p**2) * up + sigma_p * noise


def flow_interpolate(x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
    """``x_t = t · x_1 + (1 − t) · x_0`` (``t`` a scalar or ``(B,)``)."""
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` and `x1` must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}."
        )
    t = _bcast(_time(t, x0.shape[0], x0), x0)
    return t * x1 + (1.0 - t) * x0


def flow_velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """The straight path's velocity ``x_1 − x_0``."""
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` and `x1` must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}."
        )
    return x1 - x0


def flow_velocity(model: nn.Module, x: Tensor, t: Tensor | float, lr: Tensor) -> Tensor:
    """``v(x, t | LR)`` of an LR-conditioned velocity network called ``model(x, 999·t, lr)``.

    ``model`` may return a tensor or a diffusers output with ``.sample``.
    """
    out = model(x, _time(t, x.shape[0], x) * TIME_SCALE, lr)
    return out.sample if hasattr(out, "sample") else out


def euler_step(field: Field, x: Tensor, t: Tensor | float, dt: float) -> Tensor:
    """``x + dt · v(x, t)``."""
    return x + dt * field(x, _time(t, x.shape[0], x))


def rk2_step(
    field: Field, x: Tensor, t: Tensor | float, dt: float, r: float = 0.5, *, k1: Tensor | None = None
) -> Tensor:
    """One generic second-order Runge-Kutta step of ``dx/dt = v(x, t)`` (official ``rk2_sampler``).

    ``k1 = v(x, t)``, ``k2 = v(x + r·dt·k1, t + r·dt)``, ``x' = x + dt · (k1 + (k2 − k1) / (2r))``:
    ``r = 0.5`` is the midpoint method, ``r = 1`` Heun's, ``r = 2/3`` Ralston's.

    Args:
        field: ``(x, t (B,)) -> v``.
        x: the state ``(B, ...)``.
        t: the time (scalar or ``(B,)``).
        dt: the step (scalar).
        r: where the second evaluation sits, in ``(0, 1]``.
        k1: ``v(x, t)`` if already computed (saves one evaluation).

    Example:
        >>> round(rk2_step(lambda x, t: x, torch.ones(1), 0.0, 0.1).item(), 6)  # e^0.1 to second order
        1.105
    """
    if not 0.0 < r <= 1.0:
        raise ValueError(f"`r` must be in (0, 1], got {r!r}.")
    t = _time(t, x.shape[0], x)
    k1 = field(x, t) if k1 is None else k1
    k2 = field(x + r * dt * k1, t + r * dt)
    return x + dt * (k1 + (k2 - k1) / (2.0 * r))


def flow_sample(
    model: nn.Module,
    lr: Tensor,
    x0: Tensor,
    steps: int,
    solver: Literal["euler", "rk2"] = "euler",
    rk2_r: float = 0.5,
    t_start: float = FLOW_EPS,
) -> Tensor:
    """Integrate the flow ODE from ``x0`` at ``t_start`` to ``t = 1`` in ``steps`` uniform steps.

    One Euler step is ``x_0 + (1 − ε) · v(x_0, ε)``, the teacher's estimate of ``E[x_1 | x_0]``.

    Args:
        model: the velocity network (``model(x, 999 t, lr)``).
        lr: ``(B, C, h, w)`` LR images in ``[-1, 1]`` (the condition).
        x0: ``(B, C, H, W)`` start points (:func:`flow_start`).
        steps: number of steps (Euler: ``steps`` evaluations; RK2: ``2 · steps``).
        solver: ``"euler"`` or ``"rk2"``.
        rk2_r: the RK2 parameter (see :func:`rk2_step`).
        t_start: the start time.

    Returns:
        ``x_1`` estimates ``(B, C, H, W)`` in ``[-1, 1]`` space (not clamped).
    """
    check_int("steps", steps, low=1)
    check_choice("solver", solver, ("euler", "rk2"))

    def field(x: Tensor, t: Tensor) -> Tensor:
        return flow_velocity(model, x, t, lr)

    dt = (1.0 - t_start) / steps
    x = x0
    for k in range(steps):
        t = t_start + k * dt
        x = euler_step(field, x, t, dt) if solver == "euler" else rk2_step(field, x, t, dt, rk2_r)
    return x


def one_step_sr(model: nn.Module, lr: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
    """OFTSR's one-step output ``x_0 + (1 − ε) · v_θ(x_0, t)`` (official ``image_restoration_t_``).

    ``t`` is the fidelity–realism knob: near ``ε`` it is the teacher's one Euler step (the
    conditional mean, high PSNR), near 1 the end of the teacher's ODE trajectory (realism).
    """
    return x0 + (1.0 - FLOW_EPS) * flow_velocity(model, x0, t, lr)


def bootstrap_velocity_target(
    teacher: nn.Module,
    lr: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    dt: float,
    rk2_r: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """OFTSR's bootstrapped velocity target for the student at ``t + dt`` (no gradient).

    The student's state at ``t`` is ``x̂_t = x_0 + t · v_θ(x_0, t)``; one teacher RK2 step moves it to
    ``x̂_{t+dt}``, and the velocity that reaches that point from ``x_0`` in one step is
    ``(x̂_{t+dt} − x_0) / (t + dt)``: the target of ``v_θ(x_0, t + dt)``.

    Args:
        teacher: the flow teacher ``v_φ``.
        lr: ``(B, C, h, w)`` LR condition in ``[-1, 1]``.
        x0: ``(B, C, H, W)`` start points.
        x_t: ``(B, C, H, W)`` the student's (detached) state at ``t``.
        t: ``(B,)`` times.
        dt: the bootstrap step (official ``boot.t_step``).
        rk2_r: the RK2 parameter (official ``boot.rk2_r``).

    Returns:
        ``(target, v_teacher)``: the target velocity and ``v_φ(x̂_t, t)`` (the first RK2 stage).
    """
    with torch.no_grad():

        def field(x: Tensor, s: Tensor) -> Tensor:
            return flow_velocity(teacher, x, s, lr)

        k1 = field(x_t, t)
        x_next = rk2_step(field, x_t, t, dt, rk2_r, k1=k1)
        target = (x_next - x0) / _bcast(t + dt, x0)
    return target, k1


def _flow_batch_loss(
    model: nn.Module, lr: Tensor, hr: Tensor, sigma_p: float, generator: torch.Generator | None
) -> Tensor:
    """One teacher training step's loss: ``mean |v_φ(x_t, t) − (x_1 − x_0)|``, ``t ~ U[ε, 1)``."""
    lr, x1 = to_signed(lr), to_signed(hr)
    x0 = flow_start(lr, tuple(x1.shape[-2:]), sigma_p, generator)
    t = torch.rand(x1.shape[0], generator=generator, device=x1.device) * (1.0 - FLOW_EPS) + FLOW_EPS
    x_t = flow_interpolate(x0, x1, t)
    return flow_velocity_l1_loss(flow_velocity(model, x_t, t, lr), flow_velocity_target(x0, x1))


def _fit_flow(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    sigma_p: float,
    steps: int,
    lr: float,
    warmup: int,
    ema_decay: float,
    max_grad_norm: float | None,
) -> list[float]:
    """Adam on the L1 velocity loss with linear warm-up and clipping; leaves the EMA weights in ``model``."""
    data.setup("fit")
    loader = data.train_dataloader()
    average = copy.deepcopy(model).requires_grad_(False)
    updater = EMAUpdater(model, average)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    generator = torch.Generator().manual_seed(int(torch.initial_seed()))
    losses: list[float] = []
    model.train()

    def batches():
        for epoch in itertools.count():
            sampler = getattr(loader, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
            yield from loader

    for _, (low, high) in zip(range(steps), batches()):
        loss = _flow_batch_loss(model, low, high, sigma_p, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        updater.update(ema_decay)
        losses.append(float(loss.detach()))
    model.load_state_dict(average.state_dict())
    return losses


def trained_flow_sr(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    sigma_p: float = 0.2,
    steps: int = 400_000,
    lr: float = 1e-4,
    warmup: int = 500,
    ema_decay: float = 0.9999,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Return ``model`` as a trained rectified-flow SR teacher: from ``checkpoint``, the cache, or trained now.

    Training (OFTSR stage 1) re-initialises ``model`` from ``seed`` and minimises the L1 velocity
    loss ``mean |v_φ(x_t, t, LR) − (HR − x_0)|`` on the ``(lr, hr)`` batches of ``data`` with Adam,
    a linear warm-up and gradient clipping, keeping an EMA of the weights (the EMA is what is
    returned and cached). The defaults are the official DIV2K configuration
    (``configs/ir_fm_DIV2K.yml``); a toy config sets fewer steps, a larger ``lr`` and a smaller
    ``ema_decay``.

    The module comes back in eval mode carrying ``flow_sigma_p`` (the ``σ_p`` it was trained
    with; the recipe checks it), ``distill_source`` and ``training_record``.

    Args:
        model: the velocity network, e.g. :meth:`LRConditionedUNet.tiny`.
        data: a datamodule of ``(lr, hr)`` batches in ``[0, 1]`` (``SuperResolutionDataModule``);
            required unless ``checkpoint`` is given.
        sigma_p: the start-point perturbation ``σ_p`` (official ``ir.sigma_pertubation``: 0.2 for
            DIV2K/ImageNet, 0.1 for FFHQ).
        steps: optimizer steps (official ``max_steps``).
        lr: Adam learning rate.
        warmup: linear warm-up steps.
        ema_decay: EMA weight (official ``ema_rate``).
        max_grad_norm: gradient clipping (official ``grad_clip``); ``None`` turns it off.
        seed: seed of the initialisation, the data order and the noise.
        checkpoint: the user's trained weights (a ``state_dict`` or Lightning checkpoint); then
            ``sigma_p`` must be the one they were trained with.
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE``).
        retrain: ignore a cached teacher and train again.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or a bad setting.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    sigma_p = check_sigma_p(sigma_p)
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.flow_sigma_p = sigma_p
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        model.training_record = {}
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_flow_sr` needs `checkpoint` (your trained weights) or `data` (to train the flow teacher on "
            "first use); set `teacher.init_args.checkpoint` or `teacher.init_args.data`."
        )
    check_int("steps", steps, low=1)
    check_int("warmup", warmup, low=0)
    check_positive("lr", lr)
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay!r}.")
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)
    settings: dict[str, Any] = {
        "kind": "rectified-flow SR (OFTSR stage 1)",
        "sigma_p": sigma_p,
        "steps": steps,
        "lr": lr,
        "warmup": warmup,
        "ema_decay": ema_decay,
        "max_grad_norm": max_grad_norm,
        "seed": seed,
    }

    def fit() -> dict[str, Any]:
        losses = _fit_flow(
            model,
            data,
            sigma_p=sigma_p,
            steps=steps,
            lr=lr,
            warmup=warmup,
            ema_decay=ema_decay,
            max_grad_norm=max_grad_norm,
        )
        return loss_summary(losses, "Flow SR teacher trained: L1 velocity loss")

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        stem=f"{type(model).__name__}-flow-sr",
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    model.flow_sigma_p = sigma_p
    last = info.get("last_loss")
    model.distill_source = f"trained_flow_sr cache {weights}" + (
        f" (final L1 velocity loss {last:.4f})" if last is not None else ""
    )
    model.training_record = info
    return model.eval()
