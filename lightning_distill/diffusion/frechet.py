"""The Fréchet distance between Gaussian fits of features, and the digits FCD built on it.

- :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between two Gaussians;
- :func:`frechet_distance_from_features`: the same between Gaussian fits of two feature sets;
- :class:`FrechetClassifierDistance`: a torchmetrics ``Metric`` accumulating the feature moments of
  real and generated images under a classifier it is given.

For digits-like images the classifier is the small CNN trained on the bundled digits
(:func:`lightning_distill.models.digits.digits_classifier`, trained and cached on first use); the
caller builds it and passes it in (the FCD callback in
:mod:`lightning_distill.callbacks.evaluation` does), so this toolkit never imports the data it is
trained on. It is *not* FID: no Inception network, 8x8/16x16 digits, and its values are only
comparable with other values from the same classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = ["FrechetClassifierDistance", "frechet_distance", "frechet_distance_from_features"]


def _check_features(x: Tensor, name: str, dim: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be a non-empty tensor of shape (N, D), got {shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` must have D = {dim} columns, got {tuple(x.shape)}.")


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
    _check_features(real, "real")
    _check_features(fake, "fake", real.shape[1])
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"Need at least 2 feature rows each, got {real.shape[0]} and {fake.shape[0]}.")
    return frechet_distance(*_mean_cov(real), *_mean_cov(fake))


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


class FrechetClassifierDistance(Metric):
    """Fréchet distance between Gaussian fits of digits-classifier features of real and generated images.

    **Not FID**: the features are the pooled penultimate activations of a small CNN trained on
    the bundled digits (:func:`lightning_distill.models.digits.digits_classifier`), not
    Inception-v3 on ImageNet. It ranks generators of digits-like images by how far their feature
    statistics are from the data's; numbers are comparable only between runs that use the same
    classifier.

    States are feature sums and outer-product sums (``"sum"``, float64), so it is DDP-safe and
    memory does not grow with the number of images.

    Args:
        feature_extractor: the network, e.g. ``digits_classifier(size=image_size)``; its
            ``forward_features`` is used when it has one, else its output (flattened). Frozen.
        image_size: side of the (single-channel, square) images, for inferring ``num_features``.
        num_features: feature width; inferred from one dummy image when ``None``.

    Raises:
        TypeError: a ``feature_extractor`` that is not an ``nn.Module``.

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
        feature_extractor: nn.Module,
        image_size: int = 16,
        num_features: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
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
