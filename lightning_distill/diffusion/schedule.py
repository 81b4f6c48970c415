"""`NoiseSchedule`: the forward process and the parameterisation algebra, on top of a diffusers scheduler.

Every diffusion recipe writes the forward process as

.. math::
    x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon, \\qquad \\varepsilon \\sim \\mathcal N(0, I),

and one ``NoiseSchedule`` answers every question about it: :math:`(\\alpha_t, \\sigma_t)` for the
timestep the model receives, noising, the SNR, and conversions between what a network predicts.
Two families are supported:

* ``kind="vp"`` (DDPM, DDIM, Euler, ... any diffusers scheduler with ``alphas_cumprod``): the
  timestep is an integer index ``t`` in ``[0, T)`` and :math:`\\alpha_t = \\sqrt{\\bar\\alpha_t}`,
  :math:`\\sigma_t = \\sqrt{1 - \\bar\\alpha_t}`. A floating-point ``t`` is interpolated linearly in
  :math:`\\bar\\alpha` between neighbouring indices (integral values give exactly the lookup).
* ``kind="flow"`` (rectified flow, diffusers ``FlowMatchEulerDiscreteScheduler``): the timestep is
  the diffusers timestep in ``[0, T]`` (what an SD3/Flux transformer receives), with
  :math:`\\sigma_t = t / T` and :math:`\\alpha_t = 1 - \\sigma_t`. The scheduler's ``shift`` changes
  which timesteps its samplers visit, never this mapping.

Parameterisations (``prediction_type``), each a linear combination of :math:`x_0` and
:math:`\\varepsilon`:

============== =========================================== ==========================
name            output                                      diffusers name
============== =========================================== ==========================
``epsilon``     :math:`\\varepsilon`                         ``"epsilon"``
``sample``      :math:`x_0`                                 ``"sample"``
``v_prediction`` :math:`v = \\alpha_t\\varepsilon - \\sigma_t x_0` ``"v_prediction"``
``flow``        :math:`u = \\varepsilon - x_0` (velocity)      flow-matching schedulers
============== =========================================== ==========================

All arithmetic is done in float32 whatever the input dtype. Conversions return float32 (they feed
losses); :meth:`NoiseSchedule.add_noise` returns the dtype of ``x0`` (it feeds models), as
diffusers' ``add_noise`` does.

Size: one idea, the ``NoiseSchedule`` object (about 500 lines, half of them docstrings and
argument checks): its ``(alpha_t, sigma_t)`` table, noising and the parameterisation algebra read
the same wrapped scheduler, and ``ddpm_schedule`` / ``flow_schedule`` are its constructors for
configs. Splitting the conversions from the table would scatter one object over two files.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Literal

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

__all__ = [
    "PREDICTION_TYPES",
    "NoiseSchedule",
    "PredictionType",
    "broadcast_to",
    "ddpm_schedule",
    "flow_schedule",
    "scheduler_from_config",
]

PredictionType = Literal["epsilon", "sample", "v_prediction", "flow"]
#: Every parameterisation :meth:`NoiseSchedule.convert` knows.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "flow")
_VP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
# The beta ranges people mean by each schedule name: Stable Diffusion's and the DDPM paper's.
_DEFAULT_BETAS = {"scaled_linear": (0.00085, 0.012), "linear": (1e-4, 0.02)}
_FLOW_SCHEDULERS = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, FlowMatchLCMScheduler)


def broadcast_to(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample coefficients ``(B,)`` (or a scalar) to broadcast over ``like`` ``(B, ...)``.

    Args:
        coef: a scalar tensor ``()`` or per-sample values ``(B,)``.
        like: the tensor the coefficients multiply, ``(B, ...)``.

    Returns:
        ``coef`` viewed as ``(B, 1, ..., 1)`` with ``like.ndim`` dimensions (a scalar is returned as is).

    Raises:
        ValueError: if ``coef`` is neither a scalar nor ``(B,)`` with ``B = like.shape[0]``.

    Example:
        >>> broadcast_to(torch.tensor([1.0, 2.0]), torch.zeros(2, 3, 4, 4)).shape
        torch.Size([2, 1, 1, 1])
    """
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or like.ndim == 0 or coef.shape[0] != like.shape[0]:
        raise ValueError(
            f"Per-sample coefficients must be a scalar or have shape (B,) with B = {like.shape[0] if like.ndim else 1} "
            f"(the batch of a tensor of shape {tuple(like.shape)}); got shape {tuple(coef.shape)}. "
            "Pass one timestep per sample, or a single scalar timestep."
        )
    return coef.reshape(coef.shape[0], *([1] * (like.ndim - 1)))


def _check_prediction_type(name: str, value: object) -> str:
    if value not in PREDICTION_TYPES:
        raise ValueError(f"`{name}` must be one of {PREDICTION_TYPES}, got {value!r}.")
    return value  # type: ignore[return-value]


def _coefficients(prediction_type: str, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, b)`` such that the parameterisation is ``a * x0 + b * eps``."""
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    if prediction_type == "epsilon":
        return zero, one
    if prediction_type == "sample":
        return one, zero
    if prediction_type == "v_prediction":
        return -sigma, alpha
    return -one, one  # flow velocity u = eps - x0


class NoiseSchedule:
    """Forward-process math of one diffusers scheduler: α/σ lookup, noising, parameterisation changes.

    Build one with :meth:`from_diffusers` (any VP scheduler with ``alphas_cumprod``, or a
    flow-matching scheduler), :meth:`ddpm` or :meth:`flow`. The diffusers scheduler stays available
    as :attr:`scheduler` for samplers and export; it is never mutated here (samplers work on a
    copy from :meth:`sampling_scheduler`).

    Args:
        scheduler: a diffusers scheduler: ``DDPMScheduler``, ``DDIMScheduler``,
            ``EulerDiscreteScheduler`` and the like (anything with ``alphas_cumprod``), or
            ``FlowMatchEulerDiscreteScheduler`` (also the flow Heun/LCM variants).

    Raises:
        TypeError: if ``scheduler`` is not a diffusers scheduler of a supported family.
        ValueError: for a VP scheduler whose ``prediction_type`` is not ``epsilon``,
            ``v_prediction`` or ``sample``, or a flow scheduler with ``invert_sigmas=True``.

    Example:
        >>> schedule = NoiseSchedule.ddpm(num_train_timesteps=1000, beta_schedule="linear")
        >>> schedule.kind, schedule.prediction_type, schedule.num_train_timesteps
        ('vp', 'epsilon', 1000)
        >>> alpha, sigma = schedule.alpha_sigma(torch.tensor([0, 999]))
        >>> torch.allclose(alpha**2 + sigma**2, torch.ones(2))
        True
        >>> flow = NoiseSchedule.flow(num_train_timesteps=1000, shift=3.0)
        >>> flow.alpha_sigma(torch.tensor([250.0]))
        (tensor([0.7500]), tensor([0.2500]))
    """

    def __init__(self, scheduler: SchedulerMixin) -> None:
        if isinstance(scheduler, _FLOW_SCHEDULERS):
            if getattr(scheduler.config, "invert_sigmas", False):
                raise ValueError(
                    "`scheduler` has `invert_sigmas=True`, which breaks sigma = t / T; build it with "
                    "`invert_sigmas=False`."
                )
            self.kind: Literal["vp", "flow"] = "flow"
            self.prediction_type: str = "flow"
            self._alphas_cumprod: Tensor | None = None
        elif isinstance(scheduler, SchedulerMixin) and isinstance(
            getattr(scheduler, "alphas_cumprod", None), Tensor
        ):
            prediction_type = scheduler.config.get("prediction_type", "epsilon")
            if prediction_type not in _VP_PREDICTION_TYPES:
                raise ValueError(
                    f"`scheduler.config.prediction_type` must be one of {_VP_PREDICTION_TYPES} for a VP "
                    f"schedule, got {prediction_type!r}."
                )
            self.kind = "vp"
            self.prediction_type = prediction_type
            self._alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone()
        else:
            raise TypeError(
                "`scheduler` must be a diffusers scheduler with `alphas_cumprod` (DDPM, DDIM, Euler, ...) or a "
                f"flow-matching scheduler (FlowMatchEulerDiscreteScheduler), got {type(scheduler).__name__}."
            )
        self.scheduler = scheduler
        self.num_train_timesteps: int = int(scheduler.config.num_train_timesteps)
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_diffusers(cls, scheduler: SchedulerMixin) -> NoiseSchedule:
        """The schedule of an existing diffusers scheduler (e.g. ``DDIMScheduler.from_pretrained(...)``)."""
        return cls(scheduler)

    @classmethod
    def ddpm(
        cls,
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear",
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        *,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> NoiseSchedule:
        """A VP schedule backed by a new ``DDPMScheduler``.

        The scheduler uses ``timestep_spacing="trailing"`` (so a k-step sampler starts at ``T - 1``,
        where :math:`x_T` is nearly pure noise, even for ``k = 1``) and ``clip_sample=False`` (toy data
        is not confined to ``[-1, 1]``).

        Args:
            num_train_timesteps: ``T``, the number of discrete timesteps.
            beta_schedule: ``"scaled_linear"`` (Stable Diffusion), ``"linear"`` (DDPM) or
                ``"squaredcos_cap_v2"`` (the cosine schedule of improved DDPM).
            prediction_type: what the network predicts.
            beta_start: first beta; ``None`` takes the usual value of the schedule (0.00085 for
                ``scaled_linear``, 1e-4 for ``linear``; unused by ``squaredcos_cap_v2``).
            beta_end: last beta; ``None`` takes 0.012 for ``scaled_linear``, 0.02 for ``linear``.

        Raises:
            ValueError: for an unknown ``beta_schedule`` or ``prediction_type``, or ``num_train_timesteps < 2``.
        """
        if beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(f"`beta_schedule` must be one of {_BETA_SCHEDULES}, got {beta_schedule!r}.")
        if prediction_type not in _VP_PREDICTION_TYPES:
            raise ValueError(
                f"`prediction_type` must be one of {_VP_PREDICTION_TYPES}, got {prediction_type!r}."
            )
        _check_num_train_timesteps(num_train_timesteps)
        start, end = _DEFAULT_BETAS.get(beta_schedule, (1e-4, 0.02))
        scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=start if beta_start is None else beta_start,
            beta_end=end if beta_end is None else beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
            timestep_spacing="trailing",
        )
        return cls(scheduler)

    @classmethod
    def flow(cls, num_train_timesteps: int = 1000, shift: float = 1.0) -> NoiseSchedule:
        """A rectified-flow schedule backed by a new ``FlowMatchEulerDiscreteScheduler``.

        Args:
            num_train_timesteps: ``T``; the model receives ``t = σ T`` in ``[0, T]``.
            shift: the SD3 timestep shift used by the sampler (``σ ↦ sσ / (1 + (s − 1)σ)``); 1 is none.

        Raises:
            ValueError: if ``shift <= 0`` or ``num_train_timesteps < 2``.
        """
        _check_num_train_timesteps(num_train_timesteps)
        if not shift > 0:
            raise ValueError(f"`shift` must be > 0, got {shift}.")
        return cls(
            FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=float(shift))
        )

    # ------------------------------------------------------------------ protocol
    @property
    def max_timestep(self) -> int:
        """The timestep of pure noise a generator starts from: ``T - 1`` (VP) or ``T`` (flow, σ = 1)."""
        return self.num_train_timesteps - 1 if self.kind == "vp" else self.num_train_timesteps

    @property
    def alphas_cumprod(self) -> Tensor:
        """:math:`\\bar\\alpha_t` for ``t = 0 .. T-1`` (float32, CPU); VP schedules only.

        Raises:
            AttributeError: for a flow schedule.
        """
        if self._alphas_cumprod is None:
            raise AttributeError("A flow schedule has no `alphas_cumprod`; use `alpha_sigma(t)`.")
        return self._alphas_cumprod.clone()

    def alpha_sigma(self, t: Tensor | int | float) -> tuple[Tensor, Tensor]:
        """:math:`(\\alpha_t, \\sigma_t)` for the timestep(s) the model receives.

        Args:
            t: timesteps of any shape: integer indices in ``[0, T)`` (or floats, interpolated) for a
                VP schedule; values in ``[0, T]`` for a flow schedule (σ = t / T).

        Returns:
            ``(alpha, sigma)``, float32, each of ``t``'s shape and on ``t``'s device.

        Raises:
            TypeError: if ``t`` is not a real tensor or number.
            ValueError: if a timestep is outside the schedule's range.
        """
        t = _as_tensor(t)
        if self.kind == "flow":
            t = t.float()
            self._check_range(t, float(self.num_train_timesteps))
            sigma = t / self.num_train_timesteps
            return 1.0 - sigma, sigma
        alpha_table, sigma_table = self._table(t.device)
        if not t.is_floating_point():
            self._check_range(t, self.num_train_timesteps - 1)
            return alpha_table[t], sigma_table[t]
        t = t.float()
        self._check_range(t, float(self.num_train_timesteps - 1))
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        abar = self._alphas_cumprod.to(t.device)  # type: ignore[union-attr]
        abar_t = torch.lerp(abar[lo], abar[hi], t - lo.float())
        return abar_t.sqrt(), (1.0 - abar_t).sqrt()

    def snr(self, t: Tensor | int | float) -> Tensor:
        """Signal-to-noise ratio :math:`\\alpha_t^2 / \\sigma_t^2` (float32, ``t``'s shape; ``inf`` where σ = 0)."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha**2 / sigma**2

    # ------------------------------------------------------------------ forward process
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int | float) -> Tensor:
        """:math:`x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon` (diffusers ``add_noise`` / ``scale_noise``).

        Args:
            x0: clean samples ``(B, ...)``.
            noise: :math:`\\varepsilon`, same shape as ``x0``.
            t: a scalar timestep or one per sample ``(B,)``.

        Returns:
            :math:`x_t`, shape and dtype of ``x0`` (computed in float32).

        Raises:
            ValueError: if ``noise`` and ``x0`` differ in shape, or ``t`` is not a scalar or ``(B,)``.
        """
        _check_pair("x0", x0, "noise", noise)
        alpha, sigma = self._coefs_like(t, x0)
        return (alpha * x0.float() + sigma * noise.float()).to(x0.dtype)

    def target(
        self, x0: Tensor, noise: Tensor, t: Tensor | int | float, prediction_type: str | None = None
    ) -> Tensor:
        """The regression target of a parameterisation for the pair ``(x0, noise)`` at ``t`` (float32).

        ``epsilon`` → ``noise``; ``sample`` → ``x0``; ``v_prediction`` → :math:`\\alpha_t\\varepsilon -
        \\sigma_t x_0`; ``flow`` → :math:`\\varepsilon - x_0`.

        Args:
            x0: clean samples ``(B, ...)``.
            noise: the noise used to build :math:`x_t`, same shape.
            t: a scalar timestep or ``(B,)``.
            prediction_type: defaults to the schedule's.

        Raises:
            ValueError: for shape mismatches or an unknown ``prediction_type``.
        """
        _check_pair("x0", x0, "noise", noise)
        prediction_type = _check_prediction_type(
            "prediction_type", self.prediction_type if prediction_type is None else prediction_type
        )
        alpha, sigma = self._coefs_like(t, x0)
        a, b = _coefficients(prediction_type, alpha, sigma)
        return a * x0.float() + b * noise.float()

    # ------------------------------------------------------------------ conversions
    def convert(
        self,
        output: Tensor,
        x_t: Tensor,
        t: Tensor | int | float,
        *,
        source: str | None = None,
        target: str,
    ) -> Tensor:
        """Change the parameterisation of a model output, given the input :math:`x_t` it saw.

        With the output :math:`o = a x_0 + b \\varepsilon` and :math:`x_t = \\alpha x_0 + \\sigma\\varepsilon`,
        :math:`x_0 = (\\sigma o - b x_t) / (a\\sigma - b\\alpha)` and
        :math:`\\varepsilon = (a x_t - \\alpha o) / (a\\sigma - b\\alpha)`; the result is rebuilt from
        those. Singular (division by zero) only at ``source="epsilon"`` where α = 0 and at
        ``source="sample"`` where σ = 0 (asking for ε from x₀ in a noiseless state).

        Args:
            output: the model output ``(B, ...)``.
            x_t: the model input, same shape.
            t: a scalar timestep or ``(B,)``.
            source: the parameterisation of ``output``; defaults to the schedule's.
            target: one of ``"epsilon"``, ``"sample"``, ``"v_prediction"``, ``"flow"``.

        Returns:
            The output in the ``target`` parameterisation, float32, shape of ``output``.

        Raises:
            ValueError: for shape mismatches or an unknown parameterisation.

        Example:
            >>> schedule = NoiseSchedule.ddpm(beta_schedule="linear")
            >>> x0, eps, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([10, 900])
            >>> x_t = schedule.add_noise(x0, eps, t)
            >>> v = schedule.target(x0, eps, t, "v_prediction")
            >>> torch.allclose(schedule.convert(v, x_t, t, source="v_prediction", target="sample"), x0, atol=1e-5)
            True
        """
        _check_pair("output", output, "x_t", x_t)
        source = _check_prediction_type("source", self.prediction_type if source is None else source)
        target = _check_prediction_type("target", target)
        if source == target:
            return output.float()
        alpha, sigma = self._coefs_like(t, output)
        a, b = _coefficients(source, alpha, sigma)
        output, x_t = output.float(), x_t.float()
        det = a * sigma - b * alpha
        x0 = (sigma * output - b * x_t) / det
        eps = (a * x_t - alpha * output) / det
        a_out, b_out = _coefficients(target, alpha, sigma)
        return a_out * x0 + b_out * eps

    def to_x0(
        self, output: Tensor, x_t: Tensor, t: Tensor | int | float, prediction_type: str | None = None
    ) -> Tensor:
        """:math:`\\hat x_0` from a model output (``prediction_type`` defaults to the schedule's); float32."""
        return self.convert(output, x_t, t, source=prediction_type, target="sample")

    def to_eps(
        self, output: Tensor, x_t: Tensor, t: Tensor | int | float, prediction_type: str | None = None
    ) -> Tensor:
        """:math:`\\hat\\varepsilon` from a model output (``prediction_type`` defaults to the schedule's); float32."""
        return self.convert(output, x_t, t, source=prediction_type, target="epsilon")

    # ------------------------------------------------------------------ samplers
    def sampling_scheduler(self) -> SchedulerMixin:
        """A fresh scheduler for multi-step sampling: ``DDIMScheduler`` (VP) or ``FlowMatchEulerDiscreteScheduler`` (flow).

        Built from this schedule's config, so the betas/shift and ``prediction_type`` are the same;
        a new object each call, so ``set_timesteps`` never touches :attr:`scheduler`.
        """
        if self.kind == "flow":
            if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
                return copy.deepcopy(self.scheduler)
            return scheduler_from_config(FlowMatchEulerDiscreteScheduler, self.scheduler.config)
        return scheduler_from_config(DDIMScheduler, self.scheduler.config)

    # ------------------------------------------------------------------ helpers
    def _table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        table = self._tables.get(device)
        if table is None:
            abar = self._alphas_cumprod.to(device)  # type: ignore[union-attr]
            table = (abar**0.5, (1.0 - abar) ** 0.5)
            self._tables[device] = table
        return table

    def _check_range(self, t: Tensor, high: float) -> None:
        if t.numel() == 0:
            return
        lo, hi = t.min().item(), t.max().item()
        if lo < 0 or hi > high:
            allowed = (
                f"integer indices in [0, {self.num_train_timesteps})"
                if self.kind == "vp"
                else f"values in [0, {self.num_train_timesteps}] (sigma = t / T)"
            )
            raise ValueError(
                f"Timesteps must be {allowed} for this {self.kind} schedule, got range [{lo}, {hi}]."
            )

    def _coefs_like(self, t: Tensor | int | float, like: Tensor) -> tuple[Tensor, Tensor]:
        t = _as_tensor(t, device=like.device)
        alpha, sigma = self.alpha_sigma(t)
        return broadcast_to(alpha, like), broadcast_to(sigma, like)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tables"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, prediction_type={self.prediction_type!r}, "
            f"num_train_timesteps={self.num_train_timesteps}, scheduler={type(self.scheduler).__name__})"
        )


def scheduler_from_config(cls: type[SchedulerMixin], config: Any, **overrides: Any) -> SchedulerMixin:
    """``cls.from_config(config, **overrides)``, keeping only the entries ``cls`` accepts (no warnings about the rest)."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    kept = {key: value for key, value in dict(config).items() if key in accepted}
    kept.update(overrides)
    return cls.from_config(kept)


def _check_num_train_timesteps(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"`num_train_timesteps` must be an integer >= 2, got {value!r}.")


def _as_tensor(t: object, device: torch.device | None = None) -> Tensor:
    if isinstance(t, Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"Timesteps must be a real tensor, got dtype {t.dtype}.")
        return t if device is None else t.to(device)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"Timesteps must be a tensor or a number, got {type(t).__name__}.")
    return torch.tensor(t, device=device)


def _check_pair(name_a: str, a: object, name_b: str, b: object) -> None:
    for name, value in ((name_a, a), (name_b, b)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor, got {type(value).__name__}.")
    if a.shape != b.shape:  # type: ignore[union-attr]
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."  # type: ignore[union-attr]
        )


def ddpm_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear",
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
) -> NoiseSchedule:
    """:meth:`NoiseSchedule.ddpm` as a function, so configs can build it with ``class_path``.

    Example:
        >>> ddpm_schedule(prediction_type="v_prediction").prediction_type
        'v_prediction'
    """
    return NoiseSchedule.ddpm(num_train_timesteps, beta_schedule, prediction_type)


def flow_schedule(num_train_timesteps: int = 1000, shift: float = 1.0) -> NoiseSchedule:
    """:meth:`NoiseSchedule.flow` as a function, so configs can build it with ``class_path``.

    Example:
        >>> flow_schedule().kind
        'flow'
    """
    return NoiseSchedule.flow(num_train_timesteps, shift)
