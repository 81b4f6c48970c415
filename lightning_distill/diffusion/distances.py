"""Distances between two point sets ``(N, D)`` and ``(M, D)``, as pure functions and torchmetrics ``Metric`` s.

- :func:`sliced_wasserstein`: the sliced 2-Wasserstein distance, exact 1-D W2 per projection;
- :func:`rbf_mmd2`: the unbiased squared MMD with a (sum of) Gaussian kernel(s).

They need no reference distribution; the metrics against a known Gaussian mixture (mode
coverage, mode-weight TV) and the bench's bundle of all of them (``sample_metrics``) are in
:mod:`lightning_distill.diffusion.metrics`. The ``Metric`` classes keep the points as ``"cat"``
states (DDP-safe) and compute exactly what the functions compute on the gathered points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "RBFMMD",
    "SlicedWasserstein",
    "check_points",
    "median_bandwidth",
    "random_projections",
    "rbf_mmd2",
    "sliced_wasserstein",
]


def check_points(x: Tensor, name: str, dim: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty ``(N, D)`` tensor (with ``D = dim`` when given)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be a non-empty tensor of shape (N, D), got {shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` must have D = {dim} columns, got {tuple(x.shape)}.")


# ----------------------------------------------------------------------------------------------
# Sliced Wasserstein
# ----------------------------------------------------------------------------------------------
def random_projections(num_projections: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Directions uniform on the unit sphere ``(P, D)`` (float64, on the generator's device)."""
    if num_projections < 1:
        raise ValueError(f"`num_projections` must be >= 1, got {num_projections}.")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(
        num_projections, dim, generator=generator, device=generator.device, dtype=torch.float64
    )
    return theta / theta.norm(dim=1, keepdim=True)


def _w2_squared_sorted(a: Tensor, b: Tensor) -> Tensor:
    """Exact squared W2 between the empirical measures of sorted columns ``a (N, P)``, ``b (M, P)``.

    Integrates ``(F^-1(u) - G^-1(u))^2`` over ``u`` in ``[0, 1]``: both quantile functions are
    constant between the breakpoints ``{i/N} U {j/M}``.
    """
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return (a - b).square().mean(0)
    dtype, device = a.dtype, a.device
    steps_a = torch.arange(1, n + 1, dtype=dtype, device=device) / n
    steps_b = torch.arange(1, m + 1, dtype=dtype, device=device) / m
    breaks = torch.cat([steps_a, steps_b]).sort().values  # (N + M,)
    widths = torch.diff(breaks, prepend=breaks.new_zeros(1))  # (N + M,)
    mids = breaks - widths / 2
    ia = torch.clamp((mids * n).floor().long(), max=n - 1)
    ib = torch.clamp((mids * m).floor().long(), max=m - 1)
    return (widths[:, None] * (a[ia] - b[ib]).square()).sum(0)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    num_projections: int = 256,
    generator: torch.Generator | None = None,
    *,
    projections: Tensor | None = None,
) -> Tensor:
    """Sliced 2-Wasserstein distance ``sqrt(mean_theta W2^2(theta . x, theta . y))``.

    Each projection's W2 is exact: sorted projections for equal sizes, quantile functions for
    unequal sizes. In 1-D this is the exact W2 between the two empirical distributions.

    Args:
        x: points ``(N, D)``.
        y: points ``(M, D)``.
        num_projections: random directions, uniform on the sphere.
        generator: source of the directions; ``None`` uses a generator seeded with 0, so the same
            call always uses the same directions.
        projections: explicit directions ``(P, D)`` (unit norm), instead of random ones.

    Returns:
        A float64 scalar tensor.

    Raises:
        ValueError: bad shapes or ``num_projections`` < 1.

    Example:
        >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        >>> float(sliced_wasserstein(x, x))
        0.0
        >>> round(float(sliced_wasserstein(x, x + torch.tensor([3.0, 0.0]), projections=torch.eye(2))), 4)
        2.1213
    """
    check_points(x, "x")
    check_points(y, "y", x.shape[1])
    if projections is None:
        if generator is None:
            projections = random_projections(num_projections, x.shape[1]).to(x.device)
        else:
            projections = random_projections(num_projections, x.shape[1], generator).to(x.device)
    elif projections.ndim != 2 or projections.shape[1] != x.shape[1]:
        raise ValueError(
            f"`projections` must be (P, D) with D = {x.shape[1]}, got {tuple(projections.shape)}."
        )
    theta = projections.to(device=x.device, dtype=torch.float64)
    px = (x.double() @ theta.T).sort(dim=0).values  # (N, P)
    py = (y.to(x.device).double() @ theta.T).sort(dim=0).values  # (M, P)
    return _w2_squared_sorted(px, py).mean().sqrt()


# ----------------------------------------------------------------------------------------------
# MMD
# ----------------------------------------------------------------------------------------------
def _pairwise_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    return (a.square().sum(1)[:, None] + b.square().sum(1)[None] - 2 * a @ b.T).clamp_min_(0)


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance of the pooled points (the first ``max_points`` of each set)."""
    pooled = torch.cat([x[:max_points], y[:max_points]]).double()
    d2 = _pairwise_sq_dists(pooled, pooled)
    iu = torch.triu_indices(len(pooled), len(pooled), offset=1, device=d2.device)
    median = float(d2[iu[0], iu[1]].sqrt().median())
    return median if median > 0 else 1.0


def _kernel_sum(a: Tensor, b: Tensor, gammas: Tensor, exclude_diagonal: bool, chunk: int = 1024) -> Tensor:
    """``sum_{i,j} sum_h exp(-gamma_h |a_i - b_j|^2)``, without ``i == j`` if asked; by row chunks."""
    total = a.new_zeros(())
    for start in range(0, a.shape[0], chunk):
        d2 = _pairwise_sq_dists(a[start : start + chunk], b)  # (c, M)
        k = torch.exp(-d2[None] * gammas[:, None, None]).sum(0)  # (c, M)
        if exclude_diagonal:
            rows = torch.arange(k.shape[0], device=k.device)
            k[rows, rows + start] = 0.0
        total = total + k.sum()
    return total


def rbf_mmd2(x: Tensor, y: Tensor, bandwidths: float | Sequence[float] | None = None) -> Tensor:
    """Unbiased squared maximum mean discrepancy with Gaussian kernels.

    ``MMD^2_u = 1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j)
    - 2/(NM) sum_{i,j} k(x_i, y_j)`` with ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))``. Being
    unbiased, it is about zero (and can be slightly negative) for samples of one distribution.

    Args:
        x: points ``(N, D)``, ``N >= 2``.
        y: points ``(M, D)``, ``M >= 2``.
        bandwidths: kernel widths ``h``: one float, several, or ``None`` for the median pairwise
            distance of the pooled points (:func:`median_bandwidth`).

    Returns:
        A float64 scalar tensor.

    Raises:
        ValueError: bad shapes, fewer than 2 points, non-positive bandwidths.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(300, 2, generator=gen), torch.randn(300, 2, generator=gen)
        >>> abs(float(rbf_mmd2(x, y, 1.0))) < 0.01, float(rbf_mmd2(x, y + 2.0, 1.0)) > 0.3
        (True, True)
    """
    check_points(x, "x")
    check_points(y, "y", x.shape[1])
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"`x` and `y` need at least 2 points each, got {x.shape[0]} and {y.shape[0]}.")
    x, y = x.double(), y.to(x.device).double()
    if bandwidths is None:
        hs = [median_bandwidth(x, y)]
    else:
        hs = [float(bandwidths)] if isinstance(bandwidths, (int, float)) else [float(h) for h in bandwidths]
    if not hs or any(h <= 0 for h in hs):
        raise ValueError(f"`bandwidths` must be > 0, got {bandwidths!r}.")
    gammas = torch.tensor([1.0 / (2 * h * h) for h in hs], dtype=torch.float64, device=x.device)
    n, m = x.shape[0], y.shape[0]
    kxx = _kernel_sum(x, x, gammas, exclude_diagonal=True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, gammas, exclude_diagonal=True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, gammas, exclude_diagonal=False) / (n * m)
    return kxx + kyy - 2 * kxy


# ----------------------------------------------------------------------------------------------
# torchmetrics classes
# ----------------------------------------------------------------------------------------------
class _TwoSampleMetric(Metric):
    """Collects real and generated points ``(B, D)`` (``"cat"`` states) for a two-sample distance."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("real_points", default=[], dist_reduce_fx="cat")
        self.add_state("fake_points", default=[], dist_reduce_fx="cat")

    def update(self, points: Tensor, real: bool) -> None:
        """Add points ``(B, D)`` to the real (data) or generated set."""
        check_points(points, "points")
        (self.real_points if real else self.fake_points).append(points.detach().double())

    def _gathered(self) -> tuple[Tensor, Tensor]:
        if not self.real_points or not self.fake_points:
            raise RuntimeError("Call `update` with both real=True and real=False points before `compute`.")
        return dim_zero_cat(self.real_points), dim_zero_cat(self.fake_points)


class SlicedWasserstein(_TwoSampleMetric):
    """:func:`sliced_wasserstein` between the real and generated points seen so far.

    Directions come from ``seed`` at ``compute`` time, so every rank and every call uses the same.

    Example:
        >>> metric = SlicedWasserstein(num_projections=64)
        >>> x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
        >>> metric.update(x, real=True); metric.update(x, real=False)
        >>> float(metric.compute())
        0.0
    """

    def __init__(self, num_projections: int = 256, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_projections < 1:
            raise ValueError(f"`num_projections` must be >= 1, got {num_projections}.")
        self.num_projections = num_projections
        self.seed = seed

    def compute(self) -> Tensor:
        real, fake = self._gathered()
        gen = torch.Generator().manual_seed(self.seed)
        return sliced_wasserstein(
            real, fake, projections=random_projections(self.num_projections, real.shape[1], gen)
        )


class RBFMMD(_TwoSampleMetric):
    """:func:`rbf_mmd2` (unbiased squared MMD) between the real and generated points seen so far."""

    def __init__(self, bandwidths: float | Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bandwidths = bandwidths

    def compute(self) -> Tensor:
        real, fake = self._gathered()
        return rbf_mmd2(real, fake, self.bandwidths)
