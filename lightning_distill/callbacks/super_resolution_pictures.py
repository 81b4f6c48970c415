"""LR / bicubic / SR / teacher SR / HR side by side, logged at the end of every validation.

:class:`SuperResolutionPictures` keeps the first ``num_images`` pairs of the first validation batch,
super-resolves them with the student (and, once per run, every teacher) and logs one picture: a row
per image with the LR input (enlarged with nearest-neighbour so its pixels show), the bicubic
upsampling, the student's SR, the teachers' SR and the HR ground truth. :func:`sr_picture` builds
it with torch alone (no matplotlib). It logs through the same image loggers as
:class:`~lightning_distill.callbacks.pictures.ClassificationPictures` (W&B's ``log_image``,
TensorBoard's ``add_image``) and does nothing without one.

Batches are ``(lr (B, C, h, w), hr (B, C, H, W))`` in [0, 1]; models map LR to HR size.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_distill.callbacks.pictures import _image_loggers

__all__ = ["SuperResolutionPictures", "sr_picture"]


def sr_picture(lr: Tensor, hr: Tensor, outputs: dict[str, Tensor], gap: int = 2) -> np.ndarray:
    """One RGB picture ``(H, W, 3)`` uint8: a row per image, columns LR, bicubic, each output, HR.

    Args:
        lr: ``(N, C, h, w)`` inputs in [0, 1] (C = 1 or 3).
        hr: ``(N, C, H, W)`` ground truth.
        outputs: named SR outputs ``(N, C, H, W)`` (e.g. ``{"student": ..., "teacher": ...}``), in order.
        gap: white pixels between tiles.

    Raises:
        ValueError: an output whose shape is not ``hr``'s.

    Example:
        >>> sr_picture(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8), {"student": torch.zeros(2, 3, 8, 8)}).shape
        (18, 38, 3)
    """
    size = hr.shape[-2:]
    for name, out in outputs.items():
        if out.shape != hr.shape:
            raise ValueError(f"SR output {name!r} has shape {tuple(out.shape)}, HR has {tuple(hr.shape)}.")
    columns = [
        F.interpolate(lr.float(), size=size, mode="nearest"),
        F.interpolate(lr.float(), size=size, mode="bicubic", align_corners=False),
        *(out.float() for out in outputs.values()),
        hr.float(),
    ]
    columns = [c.detach().cpu().clamp(0, 1).expand(-1, 3, -1, -1) for c in columns]
    n, (h, w) = hr.shape[0], size
    canvas = torch.ones(3, n * h + (n - 1) * gap, len(columns) * w + (len(columns) - 1) * gap)
    for i in range(n):
        for j, column in enumerate(columns):
            canvas[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = column[i]
    return (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


class SuperResolutionPictures(Callback):
    """Each validation, LR / bicubic / student SR / teacher SR / HR of a few validation images, as ``val/<key>``.

    The SR columns come from ``pl_module.sr_outputs(lr) -> {name: (N, C, H, W)}`` when the module defines
    it (a diffusion or flow recipe, whose student is a denoiser rather than an ``lr -> sr`` network);
    otherwise from ``pl_module.student(lr)`` and each of ``pl_module.teachers`` (computed once per run).

    Args:
        key: the picture's name (``val/<key>``).
        num_images: rows (images of the first validation batch).

    Raises:
        ValueError: ``num_images`` < 1 or ``key`` empty.
    """

    def __init__(self, key: str = "sr", num_images: int = 4) -> None:
        if not key:
            raise ValueError(
                "`key` must be a non-empty name; set `init_args.key` of SuperResolutionPictures."
            )
        if num_images < 1:
            raise ValueError(f"`num_images` must be >= 1, got {num_images}; set `init_args.num_images`.")
        self.key = key
        self.num_images = num_images
        self.teacher_outputs: dict[str, Tensor] | None = None  # computed once per run
        self.last_picture: np.ndarray | None = None
        self._batch: tuple[Tensor, Tensor] | None = None
        self._active = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = bool(_image_loggers(trainer))

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            self._batch = (batch[0][: self.num_images].detach(), batch[1][: self.num_images].detach())

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or trainer.sanity_checking or self._batch is None or not trainer.is_global_zero:
            return
        lr, hr = self._batch
        sr_outputs = getattr(pl_module, "sr_outputs", None)
        if callable(sr_outputs):  # samplers (diffusion, flow) say themselves what to show
            outputs = dict(sr_outputs(lr))
        else:
            student = getattr(pl_module, "student", pl_module)
            outputs = {"student": student(lr)}
            if self.teacher_outputs is None:
                teachers = list(getattr(pl_module, "teachers", []) or [])
                self.teacher_outputs = {
                    ("teacher" if len(teachers) == 1 else f"teacher{k}"): t(lr)
                    for k, t in enumerate(teachers)
                }
            outputs.update(self.teacher_outputs)
        picture = sr_picture(lr, hr, outputs)
        self.last_picture = picture
        tag = f"val/{self.key}"
        for logger in _image_loggers(trainer):
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, picture, global_step=trainer.global_step, dataformats="HWC")
            else:
                logger.log_image(key=tag, images=[picture], step=trainer.global_step)
