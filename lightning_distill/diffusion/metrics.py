"""Sample-quality metrics of the exact-score bench, as pure functions and torchmetrics ``Metric`` s.

Distances between two point sets (:func:`sliced_wasserstein`, :func:`rbf_mmd2` and their
``Metric`` s) are in :mod:`lightning_distill.diffusion.distances`; the two functions are
re-exported here, where the bench's callers import them.

Against a known :class:`~lightning_distill.diffusion.gmm.GaussianMixture`:

- :func:`mode_coverage`: fraction of modes that the samples reach;
- :func:`mode_weight_tv`: total variation between the share of samples per mode (plus an
  "off-mode" bin) and the true weights;
- :func:`sample_metrics`: all of them at once (and the on-class share for conditional samples),
  what the diffusion recipes log.

Finite samples make every one of these non-zero even for perfect samples: :func:`noise_floor`
measures the metric between two independent data samples of the same size, the number a model's
score must be read against.

For images, the Fréchet classifier distance (the digits FCD) is in
:mod:`lightning_distill.diffusion.frechet`.

The ``Metric`` classes (:class:`ModeCoverage`, :class:`ModeWeightTV`) keep per-mode counts as
``"sum"`` states (DDP-safe) and compute exactly what the functions compute on the gathered data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_distill.diffusion.distances import check_points, rbf_mmd2, sliced_wasserstein
from lightning_distill.diffusion.gmm import GaussianMixture

__all__ = [
    "ModeCoverage",
    "ModeWeightTV",
    "default_mode_threshold",
    "mode_assignment",
    "mode_coverage",
    "mode_weight_tv",
    "noise_floor",
    "rbf_mmd2",
    "sample_metrics",
    "sliced_wasserstein",
]


# ----------------------------------------------------------------------------------------------
# Mode metrics
# ----------------------------------------------------------------------------------------------
def default_mode_threshold(dim: int, mass: float = 0.9973) -> float:
    """Mahalanobis radius holding ``mass`` of a ``dim``-D Gaussian: 3.0 in 1-D, 3.44 in 2-D, 4.86 in 8-D.

    With it, a sample of a mode lands within the threshold with the same probability (the 1-D
    "three sigma" rule) in any dimension; a fixed 3.0 would put 34% of an 8-D mode "off-mode".

    Example:
        >>> round(default_mode_threshold(1), 3), round(default_mode_threshold(2), 3)
        (3.0, 3.439)
    """
    from scipy.stats import chi2

    return float(math.sqrt(chi2.ppf(mass, dim)))


def _threshold(gmm: GaussianMixture, threshold_std: float | None) -> float:
    if threshold_std is None:
        return default_mode_threshold(gmm.dim)
    if threshold_std <= 0:
        raise ValueError(f"`threshold_std` must be > 0 or None, got {threshold_std}.")
    return float(threshold_std)


def mode_assignment(x: Tensor, gmm: GaussianMixture, threshold_std: float | None = None) -> Tensor:
    """Nearest mode of each point ``(N,)`` (Mahalanobis), or ``K`` ("off-mode") beyond the threshold.

    Args:
        x: points ``(N, D)``.
        gmm: the mixture.
        threshold_std: Mahalanobis radius; ``None``: :func:`default_mode_threshold` of ``D``.
    """
    check_points(x, "x", gmm.dim)
    dist = gmm.mahalanobis(x)  # (N, K)
    nearest, index = dist.min(dim=1)
    return torch.where(
        nearest <= _threshold(gmm, threshold_std), index, torch.full_like(index, gmm.num_modes)
    )


def _within_counts(x: Tensor, gmm: GaussianMixture, threshold: float) -> Tensor:
    """Points within ``threshold`` of each mode ``(K,)`` (a point may count for several modes)."""
    return (gmm.mahalanobis(x) <= threshold).sum(0)


def _coverage_from_counts(
    counts: Tensor, total: Tensor | int, gmm: GaussianMixture, min_fraction: float
) -> Tensor:
    expected = float(total) * gmm.weights.to(counts.device).double()  # (K,)
    needed = torch.clamp(torch.ceil(min_fraction * expected - 1e-9), min=1.0)  # 0.5 * 10 * 0.2 needs 1, not 2
    return (counts.double() >= needed).double().mean()


def mode_coverage(
    x: Tensor, gmm: GaussianMixture, threshold_std: float | None = None, min_fraction: float = 0.0
) -> Tensor:
    """Fraction of the mixture's modes that the points reach.

    A mode counts as covered when at least ``max(1, ceil(min_fraction * N * w_k))`` points lie
    within ``threshold_std`` (Mahalanobis) of it: with ``min_fraction = 0`` one point is enough;
    with ``min_fraction = 0.1`` a mode needs a tenth of the points it should receive.

    Args:
        x: points ``(N, D)``.
        gmm: the mixture.
        threshold_std: Mahalanobis radius; ``None``: :func:`default_mode_threshold` of ``D``.
        min_fraction: share of a mode's expected count it needs, in ``[0, 1]``.

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: bad shapes, ``threshold_std`` <= 0, ``min_fraction`` outside ``[0, 1]``.

    Example:
        >>> from lightning_distill.diffusion.gmm import GaussianMixture
        >>> gmm = GaussianMixture.ring(k=4, radius=4.0, std=0.25)
        >>> float(mode_coverage(gmm.means[:3].float(), gmm))
        0.75
    """
    check_points(x, "x", gmm.dim)
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"`min_fraction` must be in [0, 1], got {min_fraction}.")
    counts = _within_counts(x, gmm, _threshold(gmm, threshold_std))
    return _coverage_from_counts(counts, x.shape[0], gmm, min_fraction)


def _tv_from_counts(counts: Tensor, gmm: GaussianMixture) -> Tensor:
    empirical = counts.double() / counts.sum().clamp_min(1)  # (K + 1,)
    target = torch.cat([gmm.weights.double().to(counts.device), counts.new_zeros(1, dtype=torch.float64)])
    return 0.5 * (empirical - target).abs().sum()


def mode_weight_tv(x: Tensor, gmm: GaussianMixture, threshold_std: float | None = None) -> Tensor:
    """Total variation between the points' shares per mode and the mixture's weights.

    Each point goes to its nearest mode (:func:`mode_assignment`), or to an off-mode bin when it
    is farther than ``threshold_std`` from every mode; the off-mode bin has true weight 0, so
    points between modes count fully against the model. ``TV = 1/2 sum_k |share_k - w_k| +
    1/2 share_off``, in ``[0, 1]``.

    Example:
        >>> from lightning_distill.diffusion.gmm import GaussianMixture
        >>> gmm = GaussianMixture.ring(k=4, radius=4.0, std=0.25)
        >>> x = torch.cat([gmm.means[:1].repeat(2, 1), torch.zeros(2, 2, dtype=torch.float64)])
        >>> float(mode_weight_tv(x, gmm))  # half the points on mode 0, half off-mode
        0.75
    """
    index = mode_assignment(x, gmm, threshold_std)
    counts = torch.bincount(index, minlength=gmm.num_modes + 1)
    return _tv_from_counts(counts, gmm)


# ----------------------------------------------------------------------------------------------
# Noise floor
# ----------------------------------------------------------------------------------------------
def noise_floor(
    metric_fn: Callable[[Tensor, Tensor], Tensor | float],
    gmm: GaussianMixture,
    n: int,
    seeds: Sequence[int] = (0, 1, 2),
    labels: Tensor | None = None,
) -> Tensor:
    """The metric between two independent data samples of ``n`` points, once per seed ``(S,)``.

    A perfect model's samples score about this much; report model numbers next to it (mean and
    spread over seeds). For metrics against the mixture itself (coverage, TV), pass a function
    that ignores its second argument, e.g. ``lambda x, _: mode_weight_tv(x, gmm)``.

    Args:
        metric_fn: ``metric_fn(x, y)`` on two ``(n, D)`` float32 samples.
        gmm: the data distribution.
        n: size of each sample (use the size the model is evaluated with).
        seeds: one value per seed; seed ``s`` draws both samples from ``Generator().manual_seed(s)``.
        labels: ``(n,)`` classes to sample conditionally; ``None``: unconditional.

    Raises:
        ValueError: ``n`` < 2 or no seeds.

    Example:
        >>> from lightning_distill.diffusion.gmm import GaussianMixture
        >>> floor = noise_floor(sliced_wasserstein, GaussianMixture.ring(), n=500)
        >>> floor.shape, bool((floor > 0).all())
        (torch.Size([3]), True)
    """
    if n < 2:
        raise ValueError(f"`n` must be >= 2, got {n}.")
    if len(seeds) < 1:
        raise ValueError("`seeds` must name at least one seed.")
    values = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        x = gmm.sample(n, gen, labels=labels)
        y = gmm.sample(n, gen, labels=labels)
        values.append(float(metric_fn(x, y)))
    return torch.tensor(values, dtype=torch.float64)


def sample_metrics(
    samples: Tensor, data: Tensor, labels: Tensor | None, gmm: GaussianMixture
) -> dict[str, Tensor]:
    """The bench's metrics of ``samples`` ``(N, D)`` against ``data`` ``(M, D)`` drawn from ``gmm``.

    ``swd`` (:func:`sliced_wasserstein`), ``mmd`` (:func:`rbf_mmd2`), ``mode_coverage`` and
    ``mode_tv`` (:func:`mode_weight_tv`); with ``labels`` ``(N,)`` (the class each sample was
    generated for) and a class-conditional mixture also ``on_class``: the share of samples whose
    mode (:func:`mode_assignment`, off-mode counts as wrong) belongs to their label. Inputs are
    cast to float32 and moved to the mixture's device; the values are float32 scalars.

    Raises:
        ValueError: bad shapes (from the metric functions).

    Example:
        >>> from lightning_distill.diffusion.gmm import GaussianMixture
        >>> gmm = GaussianMixture.ring(k=4, radius=4.0, std=0.25, num_classes=4)
        >>> labels = torch.arange(400) % 4
        >>> x = gmm.sample(400, torch.Generator().manual_seed(0), labels=labels)
        >>> metrics = sample_metrics(x, gmm.sample(400, torch.Generator().manual_seed(1)), labels, gmm)
        >>> sorted(metrics), float(metrics["on_class"]) > 0.99, float(metrics["mode_coverage"])
        (['mmd', 'mode_coverage', 'mode_tv', 'on_class', 'swd'], True, 1.0)
    """
    device = gmm.means.device
    samples, data = samples.detach().float().to(device), data.detach().float().to(device)
    metrics = {
        "swd": sliced_wasserstein(samples, data),
        "mmd": rbf_mmd2(samples, data),
        "mode_coverage": mode_coverage(samples, gmm),
        "mode_tv": mode_weight_tv(samples, gmm),
    }
    if labels is not None and gmm.num_classes:
        owner = torch.cat([gmm.class_of_mode.to(device), torch.tensor([-1], device=device)])
        metrics["on_class"] = (owner[mode_assignment(samples, gmm)] == labels.to(device)).double().mean()
    return {name: value.float() for name, value in metrics.items()}


# ----------------------------------------------------------------------------------------------
# torchmetrics classes
# ----------------------------------------------------------------------------------------------
class ModeCoverage(Metric):
    """:func:`mode_coverage` from per-mode counts (``"sum"`` states), so it needs no stored points.

    Args:
        gmm: the mixture (moved with the metric).
        threshold_std: Mahalanobis radius; ``None``: :func:`default_mode_threshold`.
        min_fraction: share of a mode's expected count it needs to be covered.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, gmm: GaussianMixture, threshold_std: float | None = None, min_fraction: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= min_fraction <= 1.0:
            raise ValueError(f"`min_fraction` must be in [0, 1], got {min_fraction}.")
        self.gmm = gmm
        self.threshold = _threshold(gmm, threshold_std)
        self.min_fraction = min_fraction
        self.add_state("counts", default=torch.zeros(gmm.num_modes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, points: Tensor) -> None:
        """Add generated points ``(B, D)``."""
        check_points(points, "points", self.gmm.dim)
        self.counts += _within_counts(points.detach(), self.gmm, self.threshold).to(self.counts.device)
        self.total += points.shape[0]

    def compute(self) -> Tensor:
        return _coverage_from_counts(self.counts, self.total, self.gmm, self.min_fraction)


class ModeWeightTV(Metric):
    """:func:`mode_weight_tv` from per-mode counts plus an off-mode bin (``"sum"`` states)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, gmm: GaussianMixture, threshold_std: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gmm = gmm
        self.threshold_std = _threshold(gmm, threshold_std)
        self.add_state(
            "counts", default=torch.zeros(gmm.num_modes + 1, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, points: Tensor) -> None:
        """Add generated points ``(B, D)``."""
        index = mode_assignment(points.detach(), self.gmm, self.threshold_std)
        self.counts += torch.bincount(index, minlength=self.gmm.num_modes + 1).to(self.counts.device)

    def compute(self) -> Tensor:
        if int(self.counts.sum()) == 0:
            raise RuntimeError("Call `update` before `compute`.")
        return _tv_from_counts(self.counts, self.gmm)
