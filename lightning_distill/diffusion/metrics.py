"""Sample-quality metrics of the exact-score bench, as pure functions and torchmetrics ``Metric`` s.

Distances between two point sets ``(N, D)`` and ``(M, D)``:

- :func:`sliced_wasserstein`: the sliced 2-Wasserstein distance, exact 1-D W2 per projection;
- :func:`rbf_mmd2`: the unbiased squared MMD with a (sum of) Gaussian kernel(s).

Against a known :class:`~lightning_distill.diffusion.gmm.GaussianMixture`:

- :func:`mode_coverage`: fraction of modes that the samples reach;
- :func:`mode_weight_tv`: total variation between the share of samples per mode (plus an
  "off-mode" bin) and the true weights;
- :func:`sample_metrics`: all of them at once (and the on-class share for conditional samples),
  what the diffusion recipes log.

Finite samples make every one of these non-zero even for perfect samples: :func:`noise_floor`
measures the metric between two independent data samples of the same size, the number a model's
score must be read against.

For images, :class:`FrechetClassifierDistance` is the Fréchet distance between Gaussian fits of
the penultimate features of a small digits classifier trained in this repository
(:func:`digits_classifier`). It is *not* FID: no Inception network, 8x8/16x16 digits, and its
values are only comparable with other values from the same classifier.

The ``Metric`` classes keep DDP-safe states (``"cat"`` for point sets, ``"sum"`` for counts and
moments), and compute exactly what the functions compute on the gathered data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_distill.diffusion.gmm import GaussianMixture

__all__ = [
    "FrechetClassifierDistance",
    "ModeCoverage",
    "ModeWeightTV",
    "RBFMMD",
    "SlicedWasserstein",
    "default_mode_threshold",
    "digits_classifier",
    "frechet_distance",
    "frechet_distance_from_features",
    "median_bandwidth",
    "mode_assignment",
    "mode_coverage",
    "mode_weight_tv",
    "noise_floor",
    "random_projections",
    "rbf_mmd2",
    "sample_metrics",
    "sliced_wasserstein",
]


def _check_points(x: Tensor, name: str, dim: int | None = None) -> None:
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
    _check_points(x, "x")
    _check_points(y, "y", x.shape[1])
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
    _check_points(x, "x")
    _check_points(y, "y", x.shape[1])
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
    _check_points(x, "x", gmm.dim)
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
    _check_points(x, "x", gmm.dim)
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
# Fréchet distance
# ----------------------------------------------------------------------------------------------
def _sqrt_psd(matrix: Tensor) -> Tensor:
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    return eigvecs @ torch.diag_embed(eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})``; the trace of the matrix
    square root is the sum of the square roots of the eigenvalues of the symmetric
    ``sigma1^{1/2} sigma2 sigma1^{1/2}``, which avoids a non-symmetric ``sqrtm``. Float64.

    Args:
        mu1: mean ``(F,)``.
        sigma1: covariance ``(F, F)``.
        mu2: mean ``(F,)``.
        sigma2: covariance ``(F, F)``.

    Raises:
        ValueError: shapes that do not fit.

    Example:
        >>> eye = torch.eye(3)
        >>> float(frechet_distance(torch.zeros(3), eye, torch.ones(3), 4 * eye))
        6.0
    """
    f = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(
            "Expected mu (F,) and sigma (F, F) for both Gaussians, got "
            f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}."
        )
    mu1, mu2, sigma1, sigma2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt


def _mean_cov(features: Tensor) -> tuple[Tensor, Tensor]:
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance_from_features(real: Tensor, fake: Tensor) -> Tensor:
    """:func:`frechet_distance` between Gaussian fits (unbiased covariance) of features ``(N, F)``, ``(M, F)``."""
    _check_points(real, "real")
    _check_points(fake, "fake", real.shape[1])
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"Need at least 2 feature rows each, got {real.shape[0]} and {fake.shape[0]}.")
    return frechet_distance(*_mean_cov(real), *_mean_cov(fake))


def digits_classifier(
    size: int = 16,
    width: int = 32,
    depth: int = 2,
    epochs: int = 30,
    seed: int = 0,
    cache_dir: str | None = None,
) -> nn.Module:
    """A :class:`~lightning_distill.models.SmallCNN` trained on the bundled digits (cached after the first call).

    Its inputs are images as :class:`~lightning_distill.data.DigitsDataModule` serves them
    (``(B, 1, size, size)``, normalised with the training set's mean and std), so a generator
    trained on that data module can be scored directly. Training goes through
    :func:`~lightning_distill.models.trained_classifier`: cached under its cache directory by a key
    of all these settings.
    """
    from lightning_distill.data import DigitsDataModule
    from lightning_distill.models import SmallCNN, trained_classifier

    model = SmallCNN(in_channels=1, num_classes=10, width=width, depth=depth)
    return trained_classifier(
        model, DigitsDataModule(size=size), epochs=epochs, seed=seed, cache_dir=cache_dir
    )


class _FrozenFeatures(nn.Module):
    """Wraps a feature network: always in eval mode, no gradients, ``forward_features`` if it has one."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> _FrozenFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        fn = getattr(self.network, "forward_features", None)
        features = fn(images) if callable(fn) else self.network(images)
        return features.reshape(features.shape[0], -1)


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
        _check_points(points, "points")
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
        _check_points(points, "points", self.gmm.dim)
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


class FrechetClassifierDistance(Metric):
    """Fréchet distance between Gaussian fits of digits-classifier features of real and generated images.

    **Not FID**: the features are the pooled penultimate activations of a small CNN trained on
    the bundled 8x8 digits (:func:`digits_classifier`), not Inception-v3 on ImageNet. It ranks
    generators of digits-like images by how far their feature statistics are from the data's;
    numbers are comparable only between runs that use the same classifier.

    States are feature sums and outer-product sums (``"sum"``, float64), so it is DDP-safe and
    memory does not grow with the number of images.

    Args:
        feature_extractor: the network; its ``forward_features`` is used when it has one, else
            its output (flattened). ``None``: :func:`digits_classifier` with ``image_size``.
        image_size: side of the images when the default classifier is built (8, 16 or 32).
        num_features: feature width; inferred from one dummy image when ``None``.

    Example:
        >>> from lightning_distill.models import SmallCNN
        >>> metric = FrechetClassifierDistance(SmallCNN(width=4, depth=1), image_size=8)
        >>> x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> metric.update(x, real=True); metric.update(x, real=False)
        >>> abs(float(metric.compute())) < 1e-8
        True
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        feature_extractor: nn.Module | None = None,
        image_size: int = 16,
        num_features: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if feature_extractor is None:
            feature_extractor = digits_classifier(size=image_size)
        if not isinstance(feature_extractor, nn.Module):
            raise TypeError(
                f"`feature_extractor` must be an nn.Module, got {type(feature_extractor).__name__}."
            )
        self.features = _FrozenFeatures(feature_extractor)
        if num_features is None:
            num_features = int(self.features(torch.zeros(2, 1, image_size, image_size)).shape[1])
        self.num_features = num_features
        for side in ("real", "fake"):
            self.add_state(
                f"{side}_sum", default=torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(
                f"{side}_outer",
                default=torch.zeros(num_features, num_features, dtype=torch.float64),
                dist_reduce_fx="sum",
            )
            self.add_state(f"{side}_count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, real: bool) -> None:
        """Add images ``(B, C, H, W)`` to the real (data) or generated set."""
        if images.ndim != 4:
            raise ValueError(f"`images` must be (B, C, H, W), got {tuple(images.shape)}.")
        f = self.features(images).double()  # (B, F)
        if f.shape[1] != self.num_features:
            raise ValueError(
                f"The feature extractor gave {f.shape[1]} features, expected {self.num_features}."
            )
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])

    def _moments(self, side: str) -> tuple[Tensor, Tensor]:
        n = int(getattr(self, f"{side}_count"))
        if n < 2:
            raise RuntimeError(f"Need at least 2 {side} images before `compute`, got {n}.")
        total, outer = getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer")
        mu = total / n
        cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu, cov

    def compute(self) -> Tensor:
        return frechet_distance(*self._moments("real"), *self._moments("fake"))
