"""A LiDiff-style point diffusion model for scene completion: local per-point noise, a sparse denoiser.

LiDiff (Nunes et al., CVPR 2024) and Distillation-DPO (arXiv 2504.11447) diffuse the points of the
scene themselves, with noise added *locally* to each point instead of shrinking the cloud to the
origin: ``x_t = x_0 + σ_t ε`` with ``σ_t = sqrt(1 − ᾱ_t)`` of a DDPM beta schedule (LiDiff's: linear,
β from 3.5e-5 to 0.007 over 1000 steps, so ``σ_T ≈ 0.985`` m). Generation starts from the input
scan duplicated ``k`` times plus noise, ``x_T = repeat(scan, k) + σ_T ε``, and a denoiser conditioned
on the scan predicts the per-point noise.

* :class:`PointDiffusion`: the schedule (``ᾱ_t`` from diffusers' ``DDPMScheduler`` with LiDiff's
  betas), noising, ``x̂_0 = x_t − σ_t ε̂``, the start ``x_T``, and deterministic DDIM sampling in
  the local form (``x_s = x̂_0 + σ_s ε̂``). The steps are written out rather than taken from a
  diffusers scheduler, whose steps assume the variance-preserving form ``√ᾱ_t x_0 + σ_t ε`` that
  local noise does not use. ``one_step`` is the student's generator (DDIM with one step from ``T``).
* :class:`PointDenoiser`: ``model(x_t (B, N, 3), t (B,), scan (B, S, 3)) -> ε̂ (B, N, 3)``. The noisy
  points and the scan points are voxelised together (per-voxel features: the fraction of noisy and
  of scan points, their mean offset inside the voxel, a sinusoidal embedding of ``t``), a
  MinkUNet-style :class:`~lightning_distill.lidar.networks.SparseUNet` (spconv) maps the voxels, and
  a point-wise MLP reads each noisy point's voxel feature, its offset and the time embedding.
  LiDiff conditions its MinkUNet on a separate encoder of the scan; sharing one sparse tensor is
  the smaller toy equivalent.
* :func:`trained_point_diffusion`: the teacher, trained on first use by ε-MSE on the dense targets
  of a completion data module (``x_0`` = ``k * S`` points drawn from the target) and cached by
  :func:`~lightning_distill.models.first_use_cache.cached_training`.

Example:
    >>> diffusion = PointDiffusion()
    >>> round(float(diffusion.sigma(torch.tensor([999]))), 3)
    0.985
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from lightning_distill.lidar.geometry import to_sparse_tensor, voxelize
from lightning_distill.lidar.networks import SparseUNet
from lightning_distill.lidar.spconv_cpu import sparse_in_fp32
from lightning_distill.losses.lidar_generation import noise_prediction_loss
from lightning_distill.models.first_use_cache import cached_training, load_weights, loss_summary
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "PointDenoiser",
    "PointDiffusion",
    "draw_target_points",
    "duplicate_scan",
    "trained_point_diffusion",
]


def duplicate_scan(scan: Tensor, k: int) -> Tensor:
    """``(B, S, 3) -> (B, k * S, 3)``: the scan repeated ``k`` times (LiDiff's starting cloud)."""
    if scan.ndim != 3 or scan.shape[-1] != 3:
        raise ValueError(f"`scan` must be (B, S, 3), got {tuple(scan.shape)}.")
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}.")
    return scan.repeat(1, k, 1)


def draw_target_points(target: Tensor, num_points: int, mask: Tensor | None = None, generator=None) -> Tensor:
    """``num_points`` points per sample drawn uniformly (with replacement) from the real target points.

    Args:
        target: ``(B, M, 3)`` padded targets.
        num_points: points per sample.
        mask: ``(B, M)`` boolean, ``True`` for real points; ``None``: all real.
        generator: a ``torch.Generator`` for the draw.

    Returns:
        ``(B, num_points, 3)``.
    """
    if mask is None:
        mask = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
    weights = mask.float()
    if (weights.sum(dim=1) == 0).any():
        raise ValueError("every target needs at least one real point (`target_mask` has an all-False row).")
    index = torch.multinomial(weights, num_points, replacement=True, generator=generator)  # (B, num_points)
    return torch.gather(target, 1, index[..., None].expand(-1, -1, 3))


class PointDiffusion(nn.Module):
    """LiDiff's local point diffusion: schedule, noising, ``x̂_0``, the start cloud and DDIM sampling.

    Args:
        num_train_timesteps: ``T`` (LiDiff: 1000).
        beta_start: first β (LiDiff: 3.5e-5).
        beta_end: last β (LiDiff: 0.007).
        beta_schedule: diffusers' ``beta_schedule`` name (LiDiff: ``"linear"``).

    Raises:
        ValueError: ``num_train_timesteps`` < 2 or betas outside (0, 1).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 3.5e-5,
        beta_end: float = 0.007,
        beta_schedule: str = "linear",
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        if num_train_timesteps < 2:
            raise ValueError(f"`num_train_timesteps` must be >= 2, got {num_train_timesteps}.")
        if not 0 < beta_start < 1 or not 0 < beta_end < 1:
            raise ValueError(f"betas must be in (0, 1), got beta_start={beta_start}, beta_end={beta_end}.")
        scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
        )
        self.num_train_timesteps = num_train_timesteps
        self.config = {
            "num_train_timesteps": num_train_timesteps,
            "beta_start": beta_start,
            "beta_end": beta_end,
            "beta_schedule": beta_schedule,
        }
        sigmas = (1.0 - scheduler.alphas_cumprod.double()).sqrt().float()
        self.register_buffer("sigmas", sigmas, persistent=False)

    def sigma(self, t: Tensor) -> Tensor:
        """``σ_t = sqrt(1 − ᾱ_t)`` for integer timesteps ``t`` (any shape)."""
        return self.sigmas.to(t.device)[t.long()]

    def _sigma_b(self, t: Tensor, x: Tensor) -> Tensor:
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.sigma(t).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = x_0 + σ_t ε`` (local noise; ``t`` is ``(B,)`` or a scalar)."""
        return x0 + self._sigma_b(t, x0) * noise

    def predict_x0(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x̂_0 = x_t − σ_t ε̂``."""
        return x_t - self._sigma_b(t, x_t) * eps

    def start(self, scan: Tensor, noise: Tensor, k: int) -> Tensor:
        """``x_T = repeat(scan, k) + σ_T ε``, ``noise`` ``(B, k * S, 3)``."""
        x_init = duplicate_scan(scan, k)
        if noise.shape != x_init.shape:
            raise ValueError(f"`noise` must be {tuple(x_init.shape)} for k={k}, got {tuple(noise.shape)}.")
        return x_init + float(self.sigmas[-1]) * noise

    def timesteps(self, num_steps: int) -> list[int]:
        """``num_steps`` timesteps from ``T − 1`` down to 0, evenly spaced (DDIM's trailing spacing)."""
        if num_steps < 1:
            raise ValueError(f"`num_steps` must be >= 1, got {num_steps}.")
        T = self.num_train_timesteps
        return sorted({round(T - 1 - i * T / num_steps) for i in range(num_steps)}, reverse=True)

    def one_step(self, model: nn.Module, scan: Tensor, noise: Tensor, k: int) -> Tensor:
        """The one-step generator: ``x̂_0 = x_T − σ_T model(x_T, T − 1, scan)`` (keeps the graph)."""
        x_t = self.start(scan, noise, k)
        t = torch.full((scan.shape[0],), self.num_train_timesteps - 1, device=scan.device, dtype=torch.long)
        return self.predict_x0(x_t, model(x_t, t, scan), t)

    @torch.no_grad()
    def sample(self, model: nn.Module, scan: Tensor, noise: Tensor, k: int, num_steps: int = 50) -> Tensor:
        """Deterministic DDIM in the local form: ``x_s = x̂_0 + σ_s ε̂`` from ``x_T`` to ``x̂_0``.

        Returns:
            ``(B, k * S, 3)`` completed points.
        """
        x = self.start(scan, noise, k)
        steps = self.timesteps(num_steps)
        for i, t in enumerate(steps):
            tt = torch.full((scan.shape[0],), t, device=scan.device, dtype=torch.long)
            eps = model(x, tt, scan)
            x0 = self.predict_x0(x, eps, tt)
            x = x0 if i + 1 == len(steps) else x0 + float(self.sigmas[steps[i + 1]]) * eps
        return x


def _time_embedding(t: Tensor, dim: int, num_train_timesteps: int) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of ``t / T`` (sin and cos at geometric frequencies)."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(1000.0) / max(half - 1, 1))
    )
    angle = (t.float() / num_train_timesteps * 1000.0)[:, None] * freqs[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class PointDenoiser(nn.Module):
    """ε-prediction for noisy points conditioned on a scan: ``(x_t (B, N, 3), t (B,), scan (B, S, 3)) -> (B, N, 3)``.

    Args:
        voxel_size: voxel edge of the sparse network, metres (LiDiff: 0.05 on KITTI).
        widths: channels per level of the :class:`~lightning_distill.lidar.networks.SparseUNet`.
        time_dim: width of the sinusoidal time embedding (even).
        hidden: width of the point-wise MLP head.
        num_train_timesteps: ``T`` the time embedding is scaled by.

    Raises:
        ValueError: ``voxel_size`` <= 0, an odd or non-positive ``time_dim``, ``hidden`` < 1, or inputs
            of the wrong shape.
    """

    def __init__(
        self,
        voxel_size: float = 0.05,
        widths: Sequence[int] = (32, 64, 128, 256),
        time_dim: int = 32,
        hidden: int = 128,
        num_train_timesteps: int = 1000,
    ) -> None:
        super().__init__()
        if not voxel_size > 0:
            raise ValueError(f"`voxel_size` must be > 0, got {voxel_size}.")
        if time_dim < 2 or time_dim % 2:
            raise ValueError(f"`time_dim` must be a positive even int, got {time_dim}.")
        if hidden < 1:
            raise ValueError(f"`hidden` must be >= 1, got {hidden}.")
        self.voxel_size = float(voxel_size)
        self.time_dim = int(time_dim)
        self.num_train_timesteps = int(num_train_timesteps)
        self.unet = SparseUNet(in_channels=5 + time_dim, widths=widths, momentum=0.1)
        width = self.unet.out_channels
        self.head = nn.Sequential(
            nn.Linear(width + 3 + time_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 3),
        )

    def forward(self, x_t: Tensor, t: Tensor, scan: Tensor) -> Tensor:
        if x_t.ndim != 3 or x_t.shape[-1] != 3 or scan.ndim != 3 or scan.shape[-1] != 3:
            raise ValueError(
                f"PointDenoiser needs x_t (B, N, 3) and scan (B, S, 3), got {tuple(x_t.shape)} and {tuple(scan.shape)}."
            )
        if scan.shape[0] != x_t.shape[0]:
            raise ValueError(f"`x_t` and `scan` batch sizes differ: {x_t.shape[0]} and {scan.shape[0]}.")
        B, N, _ = x_t.shape
        S = scan.shape[1]
        t = t.expand(B) if t.ndim == 0 else t
        emb = _time_embedding(t.to(x_t.device), self.time_dim, self.num_train_timesteps)  # (B, time_dim)
        points = torch.cat([x_t, scan.to(x_t)], dim=1)  # (B, N + S, 3)
        batch = torch.arange(B, device=x_t.device).repeat_interleave(N + S)
        flat = points.reshape(-1, 3)
        offset = (
            flat / self.voxel_size - torch.floor(flat / self.voxel_size) - 0.5
        )  # (B(N+S), 3) in [-0.5, 0.5)
        kind = torch.zeros(B, N + S, 2, device=x_t.device, dtype=x_t.dtype)
        kind[:, :N, 0] = 1.0
        kind[:, N:, 1] = 1.0
        features = torch.cat([kind.reshape(-1, 2), offset, emb[batch]], dim=1)
        voxels = voxelize(
            torch.cat([batch[:, None].to(flat), flat], dim=1),
            self.voxel_size,
            features=features,
            batch_size=B,
        )
        # spconv has no bf16 kernels: the sparse network runs in fp32 under bf16 autocast
        voxel_features = sparse_in_fp32(self.unet, to_sparse_tensor(voxels)).features  # (V, width)
        noisy = (torch.arange(N + S, device=x_t.device) < N).repeat(B)
        per_point = torch.cat(
            [voxel_features[voxels.inverse[noisy]], offset[noisy], emb[batch[noisy]]], dim=1
        )
        return self.head(per_point).reshape(B, N, 3)


def trained_point_diffusion(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    diffusion: PointDiffusion | None = None,
    duplication: int = 10,
    steps: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Return ``model`` (a point denoiser) with trained weights: from ``checkpoint``, the cache, or trained now.

    Training minimises the ε-MSE :func:`~lightning_distill.losses.lidar_generation.noise_prediction_loss`
    of ``model(x_0 + σ_t ε, t, scan)`` against ``ε``, ``t ~ U{0, …, T−1}``, with ``x_0`` =
    ``duplication * S`` points drawn from each sample's dense target (AdamW, cosine decay). The
    weights are cached by a key of the architecture, the data settings and these arguments.

    Args:
        model: the denoiser, e.g. :class:`PointDenoiser`.
        data: a completion data module (``scan``, ``target``, ``target_mask`` batches); required unless
            ``checkpoint`` is given.
        diffusion: the :class:`PointDiffusion` schedule; ``None`` is LiDiff's.
        duplication: ``k``, points generated per scan point (LiDiff: 10).
        steps: optimizer steps.
        lr: peak learning rate.
        seed: seed of the initialisation, the data order and the training noise.
        checkpoint: path of the user's trained weights.
        cache_dir: where cached teachers live.
        retrain: ignore a cached teacher and train again.

    Returns:
        ``model`` in eval mode, with ``distill_source`` and ``training_record``.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: neither ``checkpoint`` nor ``data``, ``steps`` < 1, ``duplication`` < 1 or ``lr`` <= 0.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        model.training_record = {}
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_point_diffusion` needs `checkpoint` (your trained weights) or `data` (to train on first use); "
            "set `teacher.init_args.checkpoint` or `teacher.init_args.data`."
        )
    diffusion = PointDiffusion() if diffusion is None else diffusion
    for name, value in (("steps", steps), ("duplication", duplication)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be an integer >= 1, got {value!r}; set `teacher.init_args.{name}`."
            )
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr!r}; set `teacher.init_args.lr`.")
    settings: dict[str, Any] = {
        "kind": "point_diffusion",
        "diffusion": diffusion.config,
        "duplication": duplication,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "version": 1,
    }

    def fit() -> dict[str, Any]:
        model.train()
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        data.setup("fit")
        losses = []
        batches = itertools.chain.from_iterable(data.train_dataloader() for _ in itertools.count())
        for _, batch in zip(range(steps), batches):
            scan = batch["scan"]
            x0 = draw_target_points(
                batch["target"], duplication * scan.shape[1], batch.get("target_mask"), gen
            )
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(diffusion.num_train_timesteps, (x0.shape[0],), generator=gen)
            loss = noise_prediction_loss(model(diffusion.add_noise(x0, noise, t), t, scan), noise)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite denoising loss at step {len(losses)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        return loss_summary(losses, "Point diffusion teacher trained: loss")

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        stem=f"{type(model).__name__}-point-diffusion",
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    last = info.get("last_loss")
    model.distill_source = f"trained_point_diffusion cache {weights}" + (
        f" (final ε-MSE {last:.4f})" if last is not None else ""
    )
    model.training_record = info
    return model.eval()
