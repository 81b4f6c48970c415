"""Supervised baseline: the student trained alone with cross-entropy on its labelled samples.

Not a paper: the reference every distillation recipe is compared with ("the same student trained
alone on the same labels"). It takes the same ``student``, data, optimizer and schedule as a
recipe config, so swapping ``model.class_path`` to this class (and dropping the teacher keys)
gives the fair baseline. Samples labelled ``-1`` (hidden labels, see
:data:`~lightning_distill.data.UNLABELLED`) are ignored, so it also runs on ``train_split: all``.

Loss: ``L_ce = mean over labelled samples of CE(S(x), y)`` (with optional label smoothing).

Example:
    >>> import torch
    >>> from torch import nn
    >>> module = Supervised(student=nn.Linear(4, 3))
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> round(module.supervised_loss(logits, torch.tensor([0, -1])).item(), 4)  # only row 0 counts
    0.2395
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses import labelled_cross_entropy
from lightning_distill.module import DistillationModule

__all__ = ["Supervised"]


class Supervised(DistillationModule):
    """The student alone: cross-entropy on labelled samples, no teacher.

    Args:
        student: classifier ``(B, C, H, W) -> (B, K)``.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        optimizer: optimizer for the student.
        lr_scheduler: optional epoch-wise scheduler.

    Batches are ``(x, y, ...)`` with ``y`` of shape ``(B,)``; ``y = -1`` marks an unlabelled sample.

    Raises:
        ValueError: ``label_smoothing`` outside ``[0, 1)``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ce",)
    requires_teacher: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(student, optimizer=optimizer, lr_scheduler=lr_scheduler)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1), got {label_smoothing}; "
                "set `model.init_args.label_smoothing`."
            )
        self.save_hyperparameters(ignore=["student", "optimizer", "lr_scheduler"])
        self.label_smoothing = label_smoothing

    def supervised_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``L_ce``: mean cross-entropy of ``(B, K)`` logits over the samples with ``labels >= 0``.

        A batch without labelled samples gives 0 (still connected to the graph).
        """
        return labelled_cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        return self.log_losses({"ce": self.supervised_loss(self.student(x), y)})
