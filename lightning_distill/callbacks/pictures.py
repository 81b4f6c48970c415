"""Pictures of a classifier's validation results, student next to teachers, once per validation.

:class:`ClassificationPictures` counts the student's confusion matrix over the validation set and,
once per run (teachers are frozen), each teacher's; at the end of every validation epoch it logs one
picture: the student's row-normalised confusion matrix, and the per-class accuracy of the student
and of every teacher side by side (bars up to 30 classes, lines above). A class where the student
falls behind its teacher shows at once.

It logs through the image API of the run's loggers: ``WandbLogger.log_image`` (and any logger with
the same ``log_image(key=, images=, step=)`` method) and TensorBoard's ``add_image``. With no such
logger (the default CSV logger) it does nothing, not even the forward passes.

Batches are ``(x, y, ...)`` with labels ``(B,)`` (``-1`` = unlabelled, skipped); the student is
``pl_module.student`` (else the module itself) and the teachers ``pl_module.teachers``, each
mapping ``x`` to logits ``(B, K)``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

__all__ = ["ClassificationPictures", "classification_picture", "confusion_counts"]


def confusion_counts(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Confusion counts ``(K, K)`` int64, rows = true class, columns = predicted class.

    Args:
        logits: ``(B, K)`` scores.
        labels: ``(B,)`` classes; ``-1`` (unlabelled) is skipped.
        num_classes: ``K``.

    Raises:
        ValueError: ``logits`` is not ``(B, num_classes)`` or does not match ``labels``.

    Example:
        >>> confusion_counts(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, -1]), 2)
        tensor([[1, 1],
                [0, 0]])
    """
    if logits.ndim != 2 or logits.shape[-1] != num_classes or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Expected logits (B, {num_classes}) for labels {tuple(labels.shape)}, got {tuple(logits.shape)}."
        )
    keep = labels >= 0
    index = labels[keep].long() * num_classes + logits[keep].argmax(dim=-1)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def classification_picture(
    student: np.ndarray,
    teachers: dict[str, np.ndarray],
    title: str = "",
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Render a student's confusion counts ``(K, K)`` and per-class accuracies next to the teachers'
    as an RGB image ``(H, W, 3)`` uint8 (needs matplotlib).

    Example:
        >>> counts = np.array([[8, 2], [1, 9]])
        >>> classification_picture(counts, {"teacher": np.eye(2, dtype=int) * 10}).shape[2]
        3
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = student.shape[0]
    names = class_names or [str(i) for i in range(k)]

    def per_class(counts: np.ndarray) -> np.ndarray:
        return np.diag(counts) / np.maximum(counts.sum(axis=1), 1)

    def overall(counts: np.ndarray) -> float:
        return float(np.trace(counts) / max(counts.sum(), 1))

    fig = Figure(figsize=(10, 4.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    rates = student / np.maximum(student.sum(axis=1, keepdims=True), 1)
    left.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    left.set(xlabel="predicted", ylabel="true", title="student confusion (row-normalised)")
    if k <= 30:
        left.set_xticks(range(k), names, fontsize=7)
        left.set_yticks(range(k), names, fontsize=7)
    models = {"student": student, **teachers}
    if k <= 30:
        width = 0.8 / len(models)
        for i, (name, counts) in enumerate(models.items()):
            right.bar(
                np.arange(k) + (i - (len(models) - 1) / 2) * width,
                per_class(counts),
                width,
                label=f"{name} {overall(counts):.1%}",
            )
        right.set_xticks(range(k), names, fontsize=7)
    else:
        for name, counts in models.items():
            right.plot(per_class(counts), label=f"{name} {overall(counts):.1%}", linewidth=1)
    right.set(xlabel="class", ylabel="accuracy", ylim=(0.0, 1.2), title="per-class accuracy")
    right.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    right.legend(fontsize=8, loc="upper center", ncol=len(models), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class ClassificationPictures(Callback):
    """Each validation, a picture of the student's confusion matrix and its per-class accuracy next to
    every teacher's, logged as ``val/<key>`` to the loggers that take images.

    Args:
        key: the picture's name (``val/<key>``).
        max_batches: count at most this many validation batches per epoch (``None``: all).
        class_names: labels of the classes on the axes (default ``0..K-1``).

    Raises:
        ValueError: ``max_batches`` < 1 or ``key`` empty.
    """

    def __init__(
        self, key: str = "classes", max_batches: int | None = None, class_names: list[str] | None = None
    ) -> None:
        if not key:
            raise ValueError("`key` must be a non-empty name; set `init_args.key` of ClassificationPictures.")
        if max_batches is not None and max_batches < 1:
            raise ValueError(
                f"`max_batches` must be >= 1 or None, got {max_batches}; set `init_args.max_batches`."
            )
        self.key = key
        self.max_batches = max_batches
        self.class_names = class_names
        self.student_counts: Tensor | None = None  # this epoch's, (K, K)
        self.teacher_counts: dict[str, Tensor] | None = None  # counted once per run
        self.last_picture: np.ndarray | None = None
        self._active = False
        self._teacher_pending: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = bool(_image_loggers(trainer))
        if self._active:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                rank_zero_warn(
                    "ClassificationPictures needs matplotlib to draw (`pip install matplotlib`); no pictures "
                    "are logged. Remove it from `trainer.callbacks` to silence this."
                )
                self._active = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.student_counts = None
        self._teacher_pending = {} if self.teacher_counts is None else None

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
        if not self._active or trainer.sanity_checking or dataloader_idx != 0:
            return
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        x, y = batch[0], batch[1]
        student = getattr(pl_module, "student", None)
        student = pl_module if student is None else student
        counts = self._count(student, x, y, "student")
        self.student_counts = counts if self.student_counts is None else self.student_counts + counts
        if self._teacher_pending is not None:
            teachers = list(getattr(pl_module, "teachers", []) or [])
            for k, teacher in enumerate(teachers):
                name = "teacher" if len(teachers) == 1 else f"teacher{k}"
                counts = self._count(teacher, x, y, name)
                pending = self._teacher_pending.get(name)
                self._teacher_pending[name] = counts if pending is None else pending + counts

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or trainer.sanity_checking or self.student_counts is None:
            return
        # Sum over DDP ranks (a no-op on one device); every rank takes part in the collective.
        student = trainer.strategy.reduce(self.student_counts.to(pl_module.device), reduce_op="sum").cpu()
        if self._teacher_pending is not None:
            self.teacher_counts = {
                name: trainer.strategy.reduce(c.to(pl_module.device), reduce_op="sum").cpu()
                for name, c in self._teacher_pending.items()
            }
            self._teacher_pending = None
        self.student_counts = student
        if not trainer.is_global_zero:
            return
        picture = classification_picture(
            student.numpy(),
            {name: c.numpy() for name, c in (self.teacher_counts or {}).items()},
            title=f"validation, epoch {trainer.current_epoch}, step {trainer.global_step}",
            class_names=self.class_names,
        )
        self.last_picture = picture
        tag = f"val/{self.key}"
        for logger in _image_loggers(trainer):
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, picture, global_step=trainer.global_step, dataformats="HWC")
            else:
                logger.log_image(key=tag, images=[picture], step=trainer.global_step)

    # ------------------------------------------------------------------ helpers
    def _count(self, model: nn.Module, x: Tensor, y: Tensor, name: str) -> Tensor:
        logits = model(x)
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError(
                f"ClassificationPictures expects the {name} to return logits (B, K), got "
                f"{type(logits).__name__}{tuple(logits.shape) if isinstance(logits, Tensor) else ''}; "
                "remove it from `trainer.callbacks` for a model that is not a classifier."
            )
        return confusion_counts(logits.float(), y, logits.shape[-1])


def _image_loggers(trainer: pl.Trainer) -> list[Any]:
    """The run's loggers that take pictures: TensorBoard and those with ``log_image`` (W&B); not the
    ``DummyLogger`` of ``fast_dev_run``, which answers every method."""
    return [
        logger
        for logger in trainer.loggers
        if not isinstance(logger, DummyLogger)
        and (isinstance(logger, TensorBoardLogger) or callable(getattr(logger, "log_image", None)))
    ]
