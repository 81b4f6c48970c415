"""LiDAR detectors trained on first use (through ``cached_training``) or loaded from a checkpoint.

:func:`trained_detector` returns the :class:`~lightning_distill.detection.detector.VoxelDetector`
(or any module with the same ``forward``/``loss``/``detect`` contract) it is given, with weights
from ``checkpoint``, from the cache, or trained now with CenterPoint's loss (heatmap focal + 0.25 x
box L1) under AdamW and a one-cycle schedule, as CenterPoint trains. The cache record holds the
validation BEV AP (toolkit's :class:`~lightning_distill.detection.metrics.DetectionAP`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from lightning_distill.detection.detector import batch_targets
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "camera_detection_ap",
    "detection_ap",
    "fit_camera_detector",
    "fit_detector",
    "trained_camera_detector",
    "trained_detector",
]


def _train(
    model: nn.Module,
    data: L.LightningDataModule,
    loss: Callable[[dict[str, Any]], Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float | None,
) -> None:
    """CenterPoint's optimisation of ``loss(batch)`` over ``data``'s training batches (AdamW, one-cycle, clipping).

    Raises:
        FloatingPointError: a non-finite loss (names the epoch and the step).
    """
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.4)
    model.train()
    step = 0
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            value = loss(batch)
            if not torch.isfinite(value):
                raise FloatingPointError(f"the training loss is {value.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
    model.eval()


def fit_detector(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    box_weight: float = 0.25,
    max_grad_norm: float | None = 35.0,
) -> None:
    """Train ``model`` on ``data``'s training batches with CenterPoint's loss (AdamW, one-cycle, clipping 35).

    Raises:
        FloatingPointError: a non-finite loss (names the epoch and the step).
    """

    def loss(batch: dict[str, Any]) -> Tensor:
        output = model(batch["points"], batch["batch_index"], len(batch["boxes"]))
        terms = model.loss(output, batch["boxes"], batch["labels"])
        return terms["heatmap"] + box_weight * terms["box"]

    _train(model, data, loss, epochs=epochs, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)


@torch.no_grad()
def detection_ap(model: nn.Module, loader: Any, metric: Any = None) -> dict[str, float]:
    """The toolkit's detection metrics of ``model`` over ``loader``'s batches (floats, by metric name)."""
    from lightning_distill.detection.metrics import DetectionAP

    metric = DetectionAP() if metric is None else metric
    was_training = model.training
    model.eval()
    for batch in loader:
        output = model(batch["points"], batch["batch_index"], len(batch["boxes"]))
        metric.update(model.detect(output), batch_targets(batch))
    model.train(was_training)
    return {k: float(v) for k, v in metric.compute().items() if torch.as_tensor(v).numel() == 1}


def trained_detector(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """``model`` trained with CenterPoint's loss on ``data`` (dict batches of the detection data module), or loaded.

    Args:
        model: a detector (``forward(points, batch_index, batch_size)``, ``loss``, ``detect``).
        data: the training data (e.g. :class:`~lightning_distill.data.detection.DetectionSceneDataModule`).
        checkpoint: your own weights (a ``state_dict`` or Lightning checkpoint) instead of training.
        epochs, lr, weight_decay: training settings (CenterPoint: AdamW, lr 1e-3, weight decay 0.01).
        seed: the training seed (part of the cache key).
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE``).
        retrain: train again even if cached.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or ``epochs`` < 1.
        FloatingPointError: a non-finite loss or weights (nothing cached).
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_detector` needs `checkpoint` (your trained weights) or `data` (to train on first use); set "
            "`model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if epochs < 1:
        raise ValueError(
            f"`epochs` must be >= 1, got {epochs}; set `model.init_args.teacher.init_args.epochs`."
        )
    settings = {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "objective": "centerpoint",
    }

    def fit() -> dict[str, Any]:
        fit_detector(model, data, epochs=epochs, lr=lr, weight_decay=weight_decay)
        data.setup("validate")
        return {f"val_{k}": v for k, v in detection_ap(model, data.val_dataloader()).items()}

    path, info = cached_training(
        model, data, settings, fit, seed=seed, stem=f"Detector{type(model).__name__}", what=f"{epochs} epochs",
        cache_dir=cache_dir, retrain=retrain,
    )  # fmt: skip
    model.distill_source = f"detector trained on first use, cached at {path}"
    return model.eval()


def fit_camera_detector(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    box_weight: float = 0.25,
    depth_weight: float = 3.0,
    max_grad_norm: float | None = 35.0,
) -> None:
    """Train a camera detector (``LiftSplatDetector``) on the objects its cameras see: CenterPoint's loss plus
    ``depth_weight`` x BEVDepth's depth loss from projected LiDAR points (AdamW, one-cycle, clipping 35).

    Raises:
        FloatingPointError: a non-finite loss (names the epoch and the step).
    """
    from lightning_distill.detection.bev_distill import run_bev_detector
    from lightning_distill.detection.camera import visible_boxes

    def loss(batch: dict[str, Any]) -> Tensor:
        output = run_bev_detector(model, batch)
        boxes, labels, _ = visible_boxes(batch)
        terms = model.loss(output, boxes, labels)
        value = terms["heatmap"] + box_weight * terms["box"]
        if depth_weight:
            value = value + depth_weight * model.depth_loss(
                output, batch["points"], batch["batch_index"], batch["K"], batch["T_cam_from_lidar"]
            )
        return value

    _train(model, data, loss, epochs=epochs, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)


@torch.no_grad()
def camera_detection_ap(model: nn.Module, loader: Any, metric: Any = None) -> dict[str, float]:
    """The toolkit's detection metrics of any BEV detector over ``loader``, counting only objects a camera sees."""
    from lightning_distill.detection.bev_distill import run_bev_detector
    from lightning_distill.detection.camera import camera_targets
    from lightning_distill.detection.metrics import DetectionAP

    metric = DetectionAP() if metric is None else metric
    was_training = model.training
    model.eval()
    for batch in loader:
        metric.update(model.detect(run_bev_detector(model, batch)), camera_targets(batch))
    model.train(was_training)
    return {k: float(v) for k, v in metric.compute().items() if torch.as_tensor(v).numel() == 1}


def trained_camera_detector(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    depth_weight: float = 3.0,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """A camera detector (``LiftSplatDetector``) trained on first use (:func:`fit_camera_detector`) and cached,
    or loaded from ``checkpoint``; the record holds its validation AP on the objects the cameras see.

    Args:
        model: the camera detector.
        data: the training data (:class:`~lightning_distill.data.detection.DetectionSceneDataModule`).
        checkpoint: your own weights instead of training.
        epochs, lr, weight_decay: training settings.
        depth_weight: weight of the depth loss (BEVDepth: 3; 0 trains without depth supervision).
        seed, cache_dir, retrain: as :func:`trained_detector`.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or ``epochs`` < 1.
        FloatingPointError: a non-finite loss or weights (nothing cached).
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_camera_detector` needs `checkpoint` (your trained weights) or `data` (to train on first use); "
            "set `model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if epochs < 1:
        raise ValueError(
            f"`epochs` must be >= 1, got {epochs}; set `model.init_args.teacher.init_args.epochs`."
        )
    settings = {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "depth_weight": depth_weight,
        "seed": seed,
        "objective": "centerpoint+depth",
    }

    def fit() -> dict[str, Any]:
        fit_camera_detector(
            model, data, epochs=epochs, lr=lr, weight_decay=weight_decay, depth_weight=depth_weight
        )
        data.setup("validate")
        return {f"val_{k}": v for k, v in camera_detection_ap(model, data.val_dataloader()).items()}

    path, _ = cached_training(
        model, data, settings, fit, seed=seed, stem=f"CameraDetector{type(model).__name__}", what=f"{epochs} epochs",
        cache_dir=cache_dir, retrain=retrain,
    )  # fmt: skip
    model.distill_source = f"camera detector trained on first use, cached at {path}"
    return model.eval()
