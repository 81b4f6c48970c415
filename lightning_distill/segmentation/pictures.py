"""Prediction and label overlays of a segmentation model, logged as one picture each validation.

:func:`overlay_picture` draws, for a few images, three panels side by side: the image, the label
map over it and the prediction over it (one colour per class, background left clear).
:class:`SegmentationPictures` is the callback: on the first validation batch it runs the module
(``pl_module(x)``, logits ``(B, K, H, W)``), draws the picture and logs it as ``val/<key>`` through
TensorBoard's ``add_image`` or any logger with ``log_image`` (W&B). With no such logger it does
nothing, not even the forward pass. The last picture is kept in ``last_picture``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers.logger import DummyLogger
from torch import Tensor

__all__ = ["SegmentationPictures", "class_palette", "overlay_picture"]


def class_palette(num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 colours, class 0 black (drawn clear), the others spread around the hue circle."""
    import colorsys

    colours = [(0, 0, 0)]
    for k in range(1, num_classes):
        r, g, b = colorsys.hsv_to_rgb(((k - 1) * 0.618) % 1.0, 0.85, 1.0)
        colours.append((int(255 * r), int(255 * g), int(255 * b)))
    return np.array(colours[:num_classes], dtype=np.uint8)


def overlay_picture(
    images: Tensor, labels: Tensor, predictions: Tensor, *, num_classes: int, zoom: int = 4
) -> np.ndarray:
    """An RGB picture ``(H', W', 3)`` uint8: one row per image with image | label overlay | prediction overlay.

    Args:
        images: ``(B, C, H, W)`` (any range; each image is min-max scaled; 1 channel shown grey,
            else the first 3).
        labels: ``(B, H, W)`` class ids (negative = ignored, drawn clear).
        predictions: ``(B, H, W)`` class ids.
        num_classes: ``K``.
        zoom: each pixel drawn as ``zoom x zoom``.

    Example:
        >>> overlay_picture(torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long),
        ...                 torch.ones(2, 8, 8, dtype=torch.long), num_classes=2, zoom=1).shape
        (16, 24, 3)
    """
    palette = class_palette(max(num_classes, 2))
    x = images.detach().float().cpu()
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    low = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    rgb = ((x - low) / (high - low).clamp_min(1e-6) * 255).permute(0, 2, 3, 1).numpy().astype(np.float32)

    def overlay(ids: Tensor) -> np.ndarray:
        ids = ids.detach().cpu().long().numpy()
        colour = palette[np.clip(ids, 0, len(palette) - 1)].astype(np.float32)
        alpha = ((ids > 0) * 0.6)[..., None]
        return rgb * (1 - alpha) + colour * alpha

    rows = np.concatenate([rgb, overlay(labels), overlay(predictions)], axis=2)  # (B, H, 3W, 3)
    picture = np.concatenate(list(rows), axis=0).clip(0, 255).astype(np.uint8)
    return picture.repeat(zoom, axis=0).repeat(zoom, axis=1)


class SegmentationPictures(Callback):
    """Each validation, image | label | prediction overlays of a few images, logged as ``val/<key>``.

    Args:
        key: the picture's name.
        max_images: how many images of the first validation batch are drawn.
        zoom: pixel magnification.

    Raises:
        ValueError: an empty ``key`` or ``max_images`` < 1.
    """

    def __init__(self, key: str = "overlays", max_images: int = 4, zoom: int = 4) -> None:
        if not key:
            raise ValueError("`key` must be a non-empty name; set `init_args.key` of SegmentationPictures.")
        if max_images < 1 or zoom < 1:
            raise ValueError(f"`max_images` and `zoom` must be >= 1, got {max_images} and {zoom}.")
        self.key, self.max_images, self.zoom = key, max_images, zoom
        self.last_picture: np.ndarray | None = None

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        loggers = _image_loggers(trainer)
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not loggers:
            return
        x, y = batch[0][: self.max_images], batch[1][: self.max_images]
        logits = pl_module(x)
        if not isinstance(logits, Tensor) or logits.ndim != 4:
            raise ValueError(
                "SegmentationPictures expects the module to return logits (B, K, H, W); remove it from "
                "`trainer.callbacks` for a model that does not segment."
            )
        picture = overlay_picture(x, y, logits.argmax(dim=1), num_classes=logits.shape[1], zoom=self.zoom)
        self.last_picture = picture
        if not trainer.is_global_zero:
            return
        tag = f"val/{self.key}"
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, picture, global_step=trainer.global_step, dataformats="HWC")
            else:
                logger.log_image(key=tag, images=[picture], step=trainer.global_step)


def _image_loggers(trainer: pl.Trainer) -> list[Any]:
    """TensorBoard and loggers with ``log_image`` (W&B); not fast_dev_run's ``DummyLogger``."""
    return [
        logger
        for logger in trainer.loggers
        if not isinstance(logger, DummyLogger)
        and (isinstance(logger, TensorBoardLogger) or callable(getattr(logger, "log_image", None)))
    ]
