"""Training a radiance field on multi-view images, teachers on first use, and the view metrics.

* :func:`fit_field`: photometric training (MSE of rendered to true pixel colours on random rays of the
  training views, Adam); the "from scratch" baseline of PVD's benchmark and the teacher's training.
* :func:`trained_field`: a field trained on first use and cached through
  :func:`~lightning_distill.models.first_use_cache.cached_training`, or loaded from your checkpoint.
* :func:`view_metrics`: PSNR/SSIM (torchmetrics, data range 1) of rendered views; :func:`render_views`
  renders full views; :func:`views_picture` puts renders next to the ground truth.

``data`` is a multi-view DataModule (:class:`lightning_distill.data.multiview.MultiViewDataModule`):
after ``setup()`` it has ``scene`` (a :class:`~lightning_distill.radiance.scenes.MultiViewScene`),
``train_rays`` (origins, directions, colours ``(R, 3)`` of every training pixel) and
``view_rays(split)``; this module only reads those attributes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.radiance.rendering import render_image, render_rays, sample_points
from lightning_distill.utils.checks import check_int, check_positive
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["fit_field", "render_views", "trained_field", "view_metrics", "views_picture"]


def fit_field(
    field: nn.Module,
    data: Any,
    *,
    steps: int,
    lr: float = 1e-2,
    rays_per_batch: int = 1024,
    num_samples: int = 32,
    seed: int = 0,
    until_psnr: float | None = None,
    eval_every: int = 50,
) -> dict[str, Any]:
    """Train ``field`` on the training pixels of ``data`` by photometric MSE (Adam ``lr``, β (0.9, 0.99)).

    With ``until_psnr`` it stops once the mean test-view PSNR (checked every ``eval_every`` steps)
    reaches it. Returns ``{"steps": ..., "test_psnr": ..., "curve": [(step, psnr), ...], "train_seconds": ...}``
    (``train_seconds``: CPU time of this process spent training, the evaluations left out).
    """
    check_int("steps", steps, low=1)
    check_positive("lr", lr)
    data.setup("fit")
    origins, directions, colors = data.train_rays
    aabb, background = data.scene.aabb, data.scene.background
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(field.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
    field.train()
    curve: list[tuple[int, float]] = []
    step, start, evaluating = 0, time.process_time(), 0.0
    for step in range(1, steps + 1):
        pick = torch.randint(0, origins.shape[0], (rays_per_batch,), generator=gen)
        samples = sample_points(
            origins[pick], directions[pick], aabb, num_samples, perturb=True, generator=gen
        )
        out = render_rays(field, samples, density=field.activate_density, background=background)
        loss = F.mse_loss(out["rgb"], colors[pick])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite photometric loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if until_psnr is not None and step % eval_every == 0:
            tick = time.process_time()
            psnr = view_metrics(field, data, "test", num_samples=num_samples)["psnr"]
            evaluating += time.process_time() - tick
            curve.append((step, psnr))
            if psnr >= until_psnr:
                break
    seconds = time.process_time() - start - evaluating
    field.eval()
    psnr = view_metrics(field, data, "test", num_samples=num_samples)["psnr"]
    return {"steps": step, "test_psnr": psnr, "curve": curve, "train_seconds": seconds}


@torch.no_grad()
def render_views(
    field: nn.Module, data: Any, split: str = "test", *, num_samples: int = 32
) -> tuple[Tensor, Tensor]:
    """Rendered and true views ``(V, 3, H, W)`` of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
    origins, directions, colors = data.view_rays(split)
    pred = render_image(
        field, origins, directions, data.scene.aabb, num_samples, background=data.scene.background
    )
    return pred.permute(0, 3, 1, 2).clamp(0, 1), colors.permute(0, 3, 1, 2)


def view_metrics(
    field: nn.Module, data: Any, split: str = "test", *, num_samples: int = 32
) -> dict[str, float]:
    """Mean PSNR and SSIM (torchmetrics, data range 1) of ``field``'s renders of the ``split`` views."""
    pred, target = render_views(field, data, split, num_samples=num_samples)
    return {
        "psnr": float(
            peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
        ),
        "ssim": float(structural_similarity_index_measure(pred, target, data_range=1.0)),
    }


def views_picture(rows: dict[str, Tensor], gap: int = 2) -> np.ndarray:
    """An RGB picture ``(H', W', 3)`` uint8: one row per name (e.g. student, teacher, ground truth), one column per view.

    Args:
        rows: name -> views ``(V, 3, H, W)`` in [0, 1], all of one shape.
    """
    tiles = list(rows.values())
    if not tiles or any(t.shape != tiles[0].shape for t in tiles):
        raise ValueError(f"`rows` must be views of one shape, got {[tuple(t.shape) for t in tiles]}.")
    v, _, h, w = tiles[0].shape
    canvas = torch.ones(3, len(tiles) * (h + gap) - gap, v * (w + gap) - gap)
    for i, views in enumerate(tiles):
        for j in range(v):
            canvas[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = views[j].clamp(
                0, 1
            )
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def trained_field(
    field: nn.Module,
    data: Any = None,
    checkpoint: str | None = None,
    steps: int = 300,
    lr: float = 1e-2,
    rays_per_batch: int = 1024,
    num_samples: int = 32,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """``field`` trained photometrically on ``data`` on first use (cached), or loaded from ``checkpoint``.

    Args:
        field: a :class:`~lightning_distill.radiance.fields.RadianceField`.
        data: the multi-view DataModule whose training views it fits.
        checkpoint: your own weights (a ``state_dict`` or Lightning checkpoint) instead of training.
        steps, lr, rays_per_batch, num_samples: the training (Adam, photometric MSE; PVD trains its
            teachers with torch-ngp's Adam, lr 1e-2).
        seed: the training seed (part of the cache key).
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE``).
        retrain: train again even if cached.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``.
    """
    if checkpoint is not None:
        load_weights(field, checkpoint)
        field.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return field.eval()
    if data is None:
        raise ValueError(
            "`trained_field` needs `checkpoint` (your trained field) or `data` (to train on first use); set "
            "`model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    settings = {"steps": steps, "lr": lr, "rays_per_batch": rays_per_batch, "num_samples": num_samples,
                "seed": seed, "objective": "photometric_mse"}  # fmt: skip

    def fit() -> dict[str, Any]:
        result = fit_field(field, data, steps=steps, lr=lr, rays_per_batch=rays_per_batch, num_samples=num_samples,
                           seed=seed)  # fmt: skip
        return {"test_psnr": result["test_psnr"]}

    def check(result: dict[str, Any]) -> str | None:
        return (
            None if result["test_psnr"] > 14.0 else f"test PSNR {result['test_psnr']:.1f} dB (a blank render)"
        )

    path, _ = cached_training(
        field, data, settings, fit, seed=seed, stem=f"Field{type(field).__name__}", what=f"{steps} steps",
        cache_dir=cache_dir, retrain=retrain, check=check,
    )  # fmt: skip
    field.distill_source = f"radiance field trained on first use, cached at {path}"
    return field.eval()
