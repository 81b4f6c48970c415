"""The exact-score bench: named Gaussian mixtures and their perfect teacher, `AnalyticTeacher`.

A :class:`~lightning_distill.diffusion.mixture.GaussianMixture` pushed through the forward process
``x_t = alpha_t x0 + sigma_t eps`` stays a mixture, so its score, the posterior mean
``E[x0 | x_t]`` and therefore the output of a *perfect* denoiser are known exactly at every noise
level. :class:`AnalyticTeacher` wraps that in the call convention of a diffusers model, so a
distillation recipe can be run against a teacher without error of its own: whatever gap remains
between student and data is the distillation's. :data:`PRESETS` and :func:`make_mixture` build
the named mixtures the configs use.

``GaussianMixture`` itself lives in :mod:`lightning_distill.diffusion.mixture` and is re-exported
here (configs and callers name ``lightning_distill.diffusion.gmm.GaussianMixture``).

Example:
    >>> import torch
    >>> gmm = make_mixture("ring", options={"k": 8, "radius": 4.0, "std": 0.25})
    >>> x = gmm.sample(5, torch.Generator().manual_seed(0))
    >>> x.shape, gmm.noised_score(x, alpha=0.8, sigma=0.6).shape
    (torch.Size([5, 2]), torch.Size([5, 2]))
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from lightning_distill.diffusion.mixture import GaussianMixture

__all__ = ["PRESETS", "AnalyticTeacher", "AlphaSigmaSchedule", "GaussianMixture", "make_mixture"]

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


class AlphaSigmaSchedule(Protocol):
    """What :class:`AnalyticTeacher` needs from a noise schedule (``lightning_distill.diffusion.NoiseSchedule``).

    ``alpha_sigma(t)`` gives ``(alpha_t, sigma_t)`` of the timesteps a model receives; the
    teacher also reads the ``prediction_type`` attribute unless it is given one.
    """

    def alpha_sigma(self, t): ...


PRESETS = {
    "ring": GaussianMixture.ring,
    "grid": GaussianMixture.grid,
    "line_1d": GaussianMixture.line_1d,
    "blobs": GaussianMixture.blobs,
}
"""The named mixtures :func:`make_mixture` and :class:`~lightning_distill.data.GMMDataModule` build."""


def make_mixture(
    preset: Literal["ring", "grid", "line_1d", "blobs"] = "ring",
    num_classes: int | None = None,
    options: dict[str, Any] | None = None,
) -> GaussianMixture:
    """Build a preset mixture by name; usable as a ``class_path`` in configs.

    Args:
        preset: ``"ring"`` (8 modes on a circle of radius 4), ``"grid"`` (5x5), ``"line_1d"``
            (Phased DMD's ``{-1, 0, 1, 2}``) or ``"blobs"`` (8 anisotropic modes in 8-D).
        num_classes: number of classes the modes are dealt into (mode ``i`` gets class
            ``i % num_classes``); ``None`` for an unconditional mixture.
        options: other keyword arguments of the preset (``k``, ``radius``, ``std``, ``size``,
            ``spacing``, ``points``, ``weights``, ``dim``, ``spread``, ``anisotropic``, ``seed``).

    Raises:
        ValueError: an unknown preset or an option the preset does not take.

    Example:
        >>> make_mixture("ring", num_classes=4, options={"k": 8, "std": 0.1}).num_classes
        4
    """
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}.")
    builder = PRESETS[preset]
    options = dict(options or {})
    allowed = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"Preset {preset!r} takes the options {allowed}, got unknown {unknown}.")
    return builder(num_classes=num_classes, **options)


class AnalyticTeacher(nn.Module):
    """The perfect denoiser of a :class:`GaussianMixture`, called like a diffusers model.

    ``forward(sample, timestep, class_labels=None)`` returns the exact model output in the
    schedule's parameterisation, from ``(alpha_t, sigma_t) = schedule.alpha_sigma(timestep)``:

    - ``"epsilon"``: ``eps* = -sigma grad log p_t(x_t)``;
    - ``"sample"``: ``x0* = E[x0 | x_t]`` (computed directly, so it is defined at ``alpha = 0``);
    - ``"v_prediction"``: ``v* = alpha eps* - sigma x0*``;
    - ``"flow"``: the velocity ``u* = eps* - x0*`` (for ``x_t = (1 - s) x0 + s eps``).

    Class labels select the class-conditional mixture, ``num_classes`` (or ``-1``) the
    unconditional one, so classifier-free guidance on this teacher is exact. Samples of any shape
    ``(B, ...)`` with ``prod(...) = D`` are accepted (flattened, answered in the same shape).

    Args:
        gmm: the data distribution.
        schedule: anything with ``alpha_sigma(t) -> (alpha, sigma)``, ``prediction_type``
            (see :class:`AlphaSigmaSchedule`), e.g. ``lightning_distill.diffusion.NoiseSchedule``.
        prediction_type: override of ``schedule.prediction_type``.
        num_classes: the null-class label; defaults to ``gmm.num_classes`` and, when the mixture
            has classes, must equal it.

    Raises:
        ValueError: an unknown prediction type or a ``num_classes`` that contradicts the mixture.
        TypeError: a ``gmm`` that is not a :class:`GaussianMixture` or a schedule without
            ``alpha_sigma``.

    Example:
        >>> import torch
        >>> class Flow:  # sigma = t / T, alpha = 1 - sigma
        ...     kind, num_train_timesteps, prediction_type = "flow", 1000, "flow"
        ...     def alpha_sigma(self, t):
        ...         s = t.float() / 1000
        ...         return 1 - s, s
        >>> teacher = AnalyticTeacher(GaussianMixture.ring(), Flow())
        >>> teacher(torch.zeros(3, 2), torch.tensor(500.0)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        gmm: GaussianMixture,
        schedule: AlphaSigmaSchedule,
        prediction_type: PredictionType | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(gmm, GaussianMixture):
            raise TypeError(f"`gmm` must be a GaussianMixture, got {type(gmm).__name__}.")
        if not callable(getattr(schedule, "alpha_sigma", None)):
            raise TypeError(
                f"`schedule` must have an `alpha_sigma(t)` method, got {type(schedule).__name__}."
            )
        prediction_type = (
            prediction_type if prediction_type is not None else getattr(schedule, "prediction_type", None)
        )
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"`prediction_type` must be one of {_PREDICTION_TYPES} (or come from `schedule.prediction_type`), "
                f"got {prediction_type!r}."
            )
        if num_classes is None:
            num_classes = gmm.num_classes
        elif gmm.num_classes and num_classes != gmm.num_classes:
            raise ValueError(f"`num_classes` must equal the mixture's {gmm.num_classes}, got {num_classes}.")
        self.gmm = gmm
        self.schedule = schedule
        self.prediction_type: str = prediction_type
        self.num_classes = num_classes

    def alpha_sigma(
        self, timestep: Tensor | float, batch_size: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)``, each ``(B,)``, of a scalar or per-sample ``timestep``."""
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(
                f"`timestep` must be a scalar or have shape ({batch_size},), got {tuple(t.shape)}."
            )
        alpha, sigma = self.schedule.alpha_sigma(t)
        return alpha.reshape(batch_size), sigma.reshape(batch_size)

    def forward(self, sample: Tensor, timestep: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """Exact model output for noisy ``sample`` ``(B, ...)`` at ``timestep`` (scalar or ``(B,)``)."""
        if sample.ndim < 2 or sample[0].numel() != self.gmm.dim:
            raise ValueError(
                f"`sample` must be (B, ...) with {self.gmm.dim} values per sample, got {tuple(sample.shape)}."
            )
        b = sample.shape[0]
        x = sample.reshape(b, -1)
        alpha, sigma = self.alpha_sigma(timestep, b, sample.device)
        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, device=sample.device).reshape(-1).long()
            if labels.numel() == 1 and b > 1:
                labels = labels.expand(b)
            labels = torch.where(labels == self.num_classes, torch.full_like(labels, -1), labels)
        x, alpha, sigma = self.gmm._prepare(x, alpha, sigma)  # in the mixture's dtype (float64 by default)
        score, x0 = self.gmm._score_and_mean(x, alpha, sigma, labels)
        alpha, sigma = alpha[:, None], sigma[:, None]
        eps = -sigma * score
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "v_prediction":
            out = alpha * eps - sigma * x0
        else:
            out = eps - x0
        return out.reshape(sample.shape).to(sample.dtype)
