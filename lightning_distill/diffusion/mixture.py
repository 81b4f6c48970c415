"""`GaussianMixture`: a mixture of Gaussians whose noised density, score and posterior mean are closed-form.

A mixture ``p(x0) = sum_k w_k N(x0; mu_k, Sigma_k)`` pushed through the forward process
``x_t = alpha_t x0 + sigma_t eps`` stays a mixture::

    p_t(x_t) = sum_k w_k N(x_t; alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I)

so its score ``grad log p_t`` and the posterior mean ``E[x0 | x_t]`` (Tweedie) are known exactly
at every noise level. It is the data of the exact-score bench; the perfect teacher built on it,
the named presets and :func:`~lightning_distill.diffusion.gmm.make_mixture` are in
:mod:`lightning_distill.diffusion.gmm`.

Modes may carry class labels (``class_of_mode``); the class-conditional mixture keeps only the
modes of that class, so the conditional score and classifier-free guidance are exact too.
Label ``-1`` or ``num_classes`` (the null class) means "unconditional".

Computation runs in the dtype of the mixture's buffers (float64 by default) with log-sum-exp
responsibilities, and results come back in the input's dtype.

Example:
    >>> import torch
    >>> gmm = GaussianMixture.ring(k=8, radius=4.0, std=0.25)
    >>> x = gmm.sample(5, torch.Generator().manual_seed(0))
    >>> x.shape, gmm.noised_score(x, alpha=0.8, sigma=0.6).shape
    (torch.Size([5, 2]), torch.Size([5, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GaussianMixture"]


def _as_float_tensor(value: Any, name: str) -> Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`{name}` must be a tensor or a nested sequence of numbers, got {type(value).__name__}."
        ) from err
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` must be finite, got {tensor.tolist()}.")
    return tensor


class GaussianMixture(nn.Module):
    """A mixture of ``K`` Gaussians in ``D`` dimensions with exact noised scores.

    An ``nn.Module`` with buffers only (no parameters), so ``.to(device)`` moves it with the
    module that owns it and its state dict records the mixture.

    Args:
        means: mode centres ``(K, D)``.
        covs: full covariances ``(K, D, D)``, symmetric positive definite. Give ``covs`` or
            ``stds``, not both.
        stds: standard deviations: a float (all modes isotropic), ``(K,)`` (isotropic per mode) or
            ``(K, D)`` (diagonal covariances).
        weights: mode weights ``(K,)``, positive; normalised to sum to one. Default uniform.
        class_of_mode: class index of each mode ``(K,)``; classes are ``0 .. num_classes - 1`` and
            each must own at least one mode. ``None``: an unconditional mixture.
        dtype: dtype of the buffers and of all internal computation.

    Raises:
        ValueError: shapes that do not fit together, non-positive ``stds``/``weights``, ``covs``
            that are not symmetric positive definite, classes without modes.
        TypeError: inputs that are not numbers.
    """

    def __init__(
        self,
        means: Tensor | Sequence[Sequence[float]],
        covs: Tensor | Sequence | None = None,
        stds: Tensor | float | Sequence | None = None,
        weights: Tensor | Sequence[float] | None = None,
        class_of_mode: Tensor | Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        mu = _as_float_tensor(means, "means")
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(f"`means` must have shape (K, D) with K, D >= 1, got {tuple(mu.shape)}.")
        k, d = mu.shape
        if (covs is None) == (stds is None):
            raise ValueError("Give exactly one of `covs` (K, D, D) and `stds` (float, (K,) or (K, D)).")
        if covs is not None:
            cov = _as_float_tensor(covs, "covs")
            if cov.shape != (k, d, d):
                raise ValueError(f"`covs` must have shape (K, D, D) = {(k, d, d)}, got {tuple(cov.shape)}.")
            if not torch.allclose(cov, cov.transpose(-1, -2), atol=1e-10, rtol=1e-8):
                raise ValueError("`covs` must be symmetric.")
            eigvals, eigvecs = torch.linalg.eigh(cov)  # (K, D), (K, D, D)
            if (eigvals <= 0).any():
                raise ValueError(
                    f"`covs` must be positive definite; smallest eigenvalue per mode: {eigvals[:, 0].tolist()}."
                )
            self.axis_aligned = False
        else:
            sd = _as_float_tensor(stds, "stds")
            if sd.ndim == 0:
                sd = sd.expand(k)
            if sd.shape == (k,):
                sd = sd[:, None].expand(k, d)
            if sd.shape != (k, d):
                raise ValueError(
                    f"`stds` must be a float, (K,) = ({k},) or (K, D) = {(k, d)}, got {tuple(sd.shape)}."
                )
            if (sd <= 0).any():
                raise ValueError(f"`stds` must be > 0, got {sd.tolist()}.")
            eigvals = sd.square().contiguous()
            eigvecs = torch.eye(d, dtype=torch.float64).expand(k, d, d).contiguous()
            self.axis_aligned = True  # covariances diagonal in the standard basis
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            w = _as_float_tensor(weights, "weights")
            if w.shape != (k,):
                raise ValueError(f"`weights` must have shape (K,) = ({k},), got {tuple(w.shape)}.")
            if (w <= 0).any():
                raise ValueError(f"`weights` must be > 0, got {w.tolist()}.")
            w = w / w.sum()
        if class_of_mode is None:
            classes = torch.full((k,), -1, dtype=torch.long)
            self.num_classes = 0
        else:
            classes = torch.as_tensor(class_of_mode)
            if classes.shape != (k,) or classes.is_floating_point() or classes.dtype == torch.bool:
                raise ValueError(
                    f"`class_of_mode` must be an integer tensor of shape (K,) = ({k},), got "
                    f"{tuple(classes.shape)} of {classes.dtype}."
                )
            classes = classes.long()
            if (classes < 0).any():
                raise ValueError(f"`class_of_mode` must be >= 0, got {classes.tolist()}.")
            self.num_classes = int(classes.max()) + 1
            missing = sorted(set(range(self.num_classes)) - set(classes.tolist()))
            if missing:
                raise ValueError(f"Classes {missing} own no mode in `class_of_mode`={classes.tolist()}.")
        self.register_buffer("means", mu.to(dtype))
        self.register_buffer("weights", w.to(dtype))
        self.register_buffer("eigvals", eigvals.to(dtype))  # (K, D): variances along the principal axes
        self.register_buffer("eigvecs", eigvecs.to(dtype))  # (K, D, D): columns are the axes
        self.register_buffer("class_of_mode", classes)

    # ------------------------------------------------------------------------------------------
    # Presets
    # ------------------------------------------------------------------------------------------
    @classmethod
    def ring(
        cls,
        k: int = 8,
        radius: float = 4.0,
        std: float = 0.25,
        num_classes: int | None = None,
        weights: Sequence[float] | None = None,
    ) -> GaussianMixture:
        """``k`` isotropic modes evenly spaced on a circle; mode ``i`` has class ``i % num_classes``.

        Example:
            >>> GaussianMixture.ring(num_classes=8).means.shape
            torch.Size([8, 2])
        """
        _check_count(k, "k")
        angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(means, stds=std, weights=weights, class_of_mode=_classes(k, num_classes))

    @classmethod
    def grid(
        cls,
        size: int = 5,
        spacing: float = 2.0,
        std: float = 0.1,
        num_classes: int | None = None,
        weights: Sequence[float] | None = None,
    ) -> GaussianMixture:
        """``size x size`` isotropic modes on a square grid centred at the origin (the 25-mode grid).

        Mode ``i`` (row-major) has class ``i % num_classes``.
        """
        _check_count(size, "size")
        axis = spacing * (torch.arange(size, dtype=torch.float64) - (size - 1) / 2)
        gy, gx = torch.meshgrid(axis, axis, indexing="ij")
        means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
        return cls(means, stds=std, weights=weights, class_of_mode=_classes(size * size, num_classes))

    @classmethod
    def line_1d(
        cls,
        points: Sequence[float] = (-1.0, 0.0, 1.0, 2.0),
        std: float = 0.05,
        num_classes: int | None = None,
        weights: Sequence[float] | None = None,
    ) -> GaussianMixture:
        """Narrow 1-D modes at ``points``: the toy of Phased DMD (data ``{-1, 0, 1, 2}``)."""
        pts = _as_float_tensor(points, "points")
        if pts.ndim != 1 or pts.numel() < 1:
            raise ValueError(f"`points` must be a non-empty sequence of floats, got {points!r}.")
        return cls(pts[:, None], stds=std, weights=weights, class_of_mode=_classes(pts.numel(), num_classes))

    @classmethod
    def blobs(
        cls,
        dim: int = 8,
        k: int = 8,
        spread: float = 3.0,
        std: float = 0.5,
        anisotropic: bool = True,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> GaussianMixture:
        """``k`` modes in ``dim`` dimensions with random centres and (by default) random full covariances.

        Centres are ``spread * N(0, I)``; each covariance is ``Q diag(s^2) Q^T`` with a random
        rotation ``Q`` and axis scales ``s = std * exp(U(-0.5, 0.5))``. Weights are random in
        ``[0.5, 1.5]`` (normalised) so that mode-weight errors show. Deterministic from ``seed``.

        Example:
            >>> gmm = GaussianMixture.blobs(dim=8, k=4)
            >>> gmm.means.shape, gmm.axis_aligned
            (torch.Size([4, 8]), False)
        """
        _check_count(dim, "dim")
        _check_count(k, "k")
        gen = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(k, dim, generator=gen, dtype=torch.float64)
        weights = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
        if not anisotropic:
            return cls(means, stds=std, weights=weights, class_of_mode=_classes(k, num_classes))
        q, r = torch.linalg.qr(torch.randn(k, dim, dim, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        scales = std * torch.exp(torch.rand(k, dim, generator=gen, dtype=torch.float64) - 0.5)
        covs = q @ torch.diag_embed(scales.square()) @ q.transpose(-1, -2)
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        return cls(means, covs=covs, weights=weights, class_of_mode=_classes(k, num_classes))

    # ------------------------------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------------------------------
    @property
    def num_modes(self) -> int:
        """``K``."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """``D``."""
        return self.means.shape[1]

    @property
    def covs(self) -> Tensor:
        """Covariances ``(K, D, D)``."""
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(-1, -2)

    def extra_repr(self) -> str:
        return f"modes={self.num_modes}, dim={self.dim}, num_classes={self.num_classes}"

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The data log-density ``log p(x | label)`` ``(B,)``; same as :meth:`log_prob`."""
        return self.log_prob(x, labels)

    # ------------------------------------------------------------------------------------------
    # Sampling and densities
    # ------------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        *,
        return_modes: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples ``(n, D)``, from the class-conditional mixtures if ``labels`` is given.

        Args:
            n: number of samples.
            generator: source of randomness; numbers are drawn on its device, then moved to the
                mixture's device. ``None`` uses the global generator.
            labels: ``(n,)`` class per sample (``-1`` or ``num_classes`` for unconditional).
            return_modes: also return the mode index of each sample ``(n,)``.
            dtype: dtype of the returned samples.

        Raises:
            ValueError: ``n`` < 1 or invalid ``labels``.
        """
        if n < 1:
            raise ValueError(f"`n` must be >= 1, got {n}.")
        log_w = self._log_weights(labels, n)  # (n, K)
        device = generator.device if generator is not None else self.means.device
        modes = torch.multinomial(log_w.exp().to(device), 1, generator=generator).squeeze(1)  # (n,)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=self.means.dtype)
        modes, z = modes.to(self.means.device), z.to(self.means.device)
        axes = self.eigvecs[modes]  # (n, D, D)
        x = self.means[modes] + (axes @ (self.eigvals[modes].sqrt() * z).unsqueeze(-1)).squeeze(-1)
        x = x.to(dtype)
        return (x, modes) if return_modes else x

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Data log-density ``log p(x | label)`` of points ``(B, D)``, shape ``(B,)``."""
        return self.noised_log_prob(x, 1.0, 0.0, labels)

    def noised_log_prob(
        self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, labels: Tensor | None = None
    ) -> Tensor:
        """``log p_t(x_t | label)`` of the noised mixture at ``(alpha, sigma)``, shape ``(B,)``.

        ``alpha`` and ``sigma`` are floats or tensors with one value per sample ``(B,)``.
        """
        x, a, s = self._prepare(x_t, alpha, sigma)
        log_joint, _, _ = self._components(x, a, s, labels)
        return torch.logsumexp(log_joint, dim=1).to(x_t.dtype)

    def noised_score(
        self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, labels: Tensor | None = None
    ) -> Tensor:
        """Exact score ``grad_x log p_t(x_t | label)`` of the noised mixture, shape ``(B, D)``.

        ``sum_k r_k(x_t) (alpha^2 Sigma_k + sigma^2 I)^{-1} (alpha mu_k - x_t)`` with the
        responsibilities ``r_k`` from a log-sum-exp.

        Args:
            x_t: noisy points ``(B, D)``.
            alpha: signal scale, a float or ``(B,)``.
            sigma: noise scale, a float or ``(B,)``; ``sigma = 0, alpha = 1`` gives the data score.
            labels: ``(B,)`` classes (``-1`` or ``num_classes``: unconditional); ``None``:
                unconditional.

        Raises:
            ValueError: bad shapes, or ``alpha``/``sigma`` negative or both zero.
        """
        score, _ = self.score_and_posterior_mean(x_t, alpha, sigma, labels)
        return score

    def posterior_mean(
        self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, labels: Tensor | None = None
    ) -> Tensor:
        """``E[x0 | x_t, label]`` ``(B, D)``, computed without dividing by ``alpha`` (valid at ``alpha = 0``)."""
        _, mean = self.score_and_posterior_mean(x_t, alpha, sigma, labels)
        return mean

    def score_and_posterior_mean(
        self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Both :meth:`noised_score` and :meth:`posterior_mean` from one pass, each ``(B, D)``.

        Per mode, ``x0 | x_t, k`` is Gaussian with mean
        ``mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)``, ``C_k = alpha^2 Sigma_k + sigma^2 I``;
        the posterior mean mixes these with the responsibilities. It satisfies
        ``x_t = alpha E[x0 | x_t] - sigma^2 score`` exactly.
        """
        score, mean = self._score_and_mean(*self._prepare(x_t, alpha, sigma), labels)
        return score.to(x_t.dtype), mean.to(x_t.dtype)

    def _score_and_mean(
        self, x: Tensor, a: Tensor, s: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Score and posterior mean in the mixture's dtype, from prepared inputs."""
        log_joint, z, var = self._components(x, a, s, labels)  # (B, K), (B, K, D), (B, K, D)
        resp = torch.softmax(log_joint, dim=1).unsqueeze(-1)  # (B, K, 1)
        # In the principal axes of each mode: score_k = -z / var, E[x0 | k] = mu_k + alpha lam z / var.
        white = z / var  # (B, K, D)
        score_axes = -(resp * white)  # (B, K, D)
        shift_axes = resp * (a[:, None, None] * self.eigvals[None] * white)  # (B, K, D)
        if self.axis_aligned:
            score = score_axes.sum(1)
            mean = (resp * self.means[None]).sum(1) + shift_axes.sum(1)
        else:
            score = torch.einsum("kde,bke->bd", self.eigvecs, score_axes)
            mean = (resp * self.means[None]).sum(1) + torch.einsum("kde,bke->bd", self.eigvecs, shift_axes)
        return score, mean

    def guided_score(
        self,
        x_t: Tensor,
        alpha: Tensor | float,
        sigma: Tensor | float,
        labels: Tensor,
        guidance_scale: float,
    ) -> Tensor:
        """Classifier-free-guided score ``s_u + w (s_c - s_u)`` ``(B, D)``, ``w = guidance_scale``.

        It is the score of ``p_t(x)^{1-w} p_t(x | c)^w`` (unnormalised), what CFG with the exact
        conditional and unconditional models samples from.
        """
        uncond = self.noised_score(x_t, alpha, sigma, None)
        cond = self.noised_score(x_t, alpha, sigma, labels)
        return uncond + guidance_scale * (cond - uncond)

    def noised(self, alpha: float, sigma: float) -> GaussianMixture:
        """The noised distribution at scalar ``(alpha, sigma)`` as a new :class:`GaussianMixture`."""
        if alpha < 0 or sigma < 0 or (alpha == 0 and sigma == 0):
            raise ValueError(f"`alpha` and `sigma` must be >= 0 and not both 0, got {alpha} and {sigma}.")
        covs = alpha**2 * self.covs.double() + sigma**2 * torch.eye(
            self.dim, dtype=torch.float64, device=self.means.device
        )
        classes = self.class_of_mode if self.num_classes else None
        return GaussianMixture(
            alpha * self.means.double(),
            covs=covs,
            weights=self.weights,
            class_of_mode=classes,
            dtype=self.means.dtype,
        )

    def mahalanobis(self, x: Tensor) -> Tensor:
        """Distance of points ``(B, D)`` to each mode in units of that mode's covariance, ``(B, K)``."""
        x, _, _ = self._prepare(x, 1.0, 0.0)
        diff = x[:, None, :] - self.means[None]  # (B, K, D)
        z = diff if self.axis_aligned else torch.einsum("kde,bkd->bke", self.eigvecs, diff)
        return (z.square() / self.eigvals[None]).sum(-1).sqrt()

    # ------------------------------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------------------------------
    def _prepare(
        self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(x_t, Tensor) or x_t.ndim != 2 or x_t.shape[1] != self.dim:
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"`x_t` must be a tensor of shape (B, D) with D = {self.dim}, got {shape}.")
        b = x_t.shape[0]
        dtype, device = self.means.dtype, self.means.device

        def per_sample(value: Tensor | float, name: str) -> Tensor:
            v = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
            if v.numel() == 1:
                v = v.expand(b)
            if v.shape != (b,):
                raise ValueError(
                    f"`{name}` must be a float or have one value per sample ({b},), got {tuple(v.shape)}."
                )
            return v

        a, s = per_sample(alpha, "alpha"), per_sample(sigma, "sigma")
        if (a < 0).any() or (s < 0).any() or ((a == 0) & (s == 0)).any():
            raise ValueError("`alpha` and `sigma` must be >= 0 and never both 0.")
        return x_t.to(device=device, dtype=dtype), a, s

    def _log_weights(self, labels: Tensor | None, b: int) -> Tensor:
        """Log mode weights ``(B, K)`` of the (class-conditional) mixture, ``-inf`` outside the class."""
        log_w = self.weights.log()[None].expand(b, -1)
        if labels is None:
            return log_w
        labels = torch.as_tensor(labels, device=self.means.device)
        if labels.shape != (b,) or labels.is_floating_point():
            raise ValueError(
                f"`labels` must be an integer tensor of shape ({b},), got {tuple(labels.shape)}."
            )
        null = (labels == -1) | (labels == self.num_classes)
        if not self.num_classes:
            if not null.all():
                raise ValueError(
                    "This mixture has no classes; `labels` may only hold -1 or 0 (the null class), got "
                    f"{sorted(set(labels.tolist()))}."
                )
            return log_w
        if ((labels < -1) | (labels > self.num_classes)).any():
            raise ValueError(
                f"`labels` must be in [0, {self.num_classes}) or -1/{self.num_classes} (unconditional), got "
                f"{sorted(set(labels.tolist()))}."
            )
        keep = null[:, None] | (self.class_of_mode[None] == labels[:, None])  # (B, K)
        log_w = log_w.masked_fill(~keep, float("-inf"))
        return log_w - torch.logsumexp(log_w, dim=1, keepdim=True)

    def _components(
        self, x: Tensor, a: Tensor, s: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Log joint ``log w_k + log N_k(x_t)`` ``(B, K)``, the residual in each mode's axes ``(B, K, D)``
        and the noised variances along those axes ``(B, K, D)``."""
        diff = x[:, None, :] - a[:, None, None] * self.means[None]  # (B, K, D)
        z = diff if self.axis_aligned else torch.einsum("kde,bkd->bke", self.eigvecs, diff)
        var = a[:, None, None].square() * self.eigvals[None] + s[:, None, None].square()  # (B, K, D)
        log_norm = -0.5 * (z.square() / var + var.log() + math.log(2 * math.pi)).sum(-1)  # (B, K)
        return self._log_weights(labels, x.shape[0]) + log_norm, z, var


def _check_count(value: int, name: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")


def _classes(k: int, num_classes: int | None) -> Tensor | None:
    if num_classes is None:
        return None
    if not isinstance(num_classes, int) or not 1 <= num_classes <= k:
        raise ValueError(
            f"`num_classes` must be an int in [1, {k}] (the number of modes) or None, got {num_classes!r}."
        )
    return torch.arange(k) % num_classes
