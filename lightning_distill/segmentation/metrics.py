"""Segmentation metrics: per-class IoU and mIoU accumulated over a whole evaluation (torchmetrics).

:class:`IoUTracker` keeps one ``MulticlassJaccardIndex(average="none")`` per name (``"val/student"``,
``"val/teacher"``, ...), created on first use with the number of classes the logits have, so IoU is
computed from the confusion counts of the whole evaluation set, not averaged over batches.
:meth:`IoUTracker.compute` gives ``miou`` (all classes), ``miou_fg`` (all but class 0, the
background) and ``iou_<k>`` per class, then resets.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

__all__ = ["IoUTracker", "iou_summary"]


def iou_summary(per_class: Tensor) -> dict[str, Tensor]:
    """``{"miou", "miou_fg", "iou_0", ...}`` from per-class IoU ``(K,)`` (class 0 = background).

    Example:
        >>> import torch
        >>> {k: round(float(v), 2) for k, v in iou_summary(torch.tensor([0.9, 0.5, 0.3])).items()}
        {'miou': 0.57, 'miou_fg': 0.4, 'iou_0': 0.9, 'iou_1': 0.5, 'iou_2': 0.3}
    """
    out = {
        "miou": per_class.mean(),
        "miou_fg": per_class[1:].mean() if len(per_class) > 1 else per_class.mean(),
    }
    out.update({f"iou_{k}": v for k, v in enumerate(per_class)})
    return out


class IoUTracker:
    """Per-class IoU of several models over an evaluation, through torchmetrics.

    Args:
        ignore_index: label of pixels left out of the counts.
    """

    def __init__(self, ignore_index: int = -1) -> None:
        self.ignore_index = ignore_index
        self._metrics: dict[str, MulticlassJaccardIndex] = {}

    def update(self, name: str, logits: Tensor, labels: Tensor) -> None:
        """Count ``logits (B, K, H, W)`` against ``labels (B, H, W)`` under ``name``.

        Raises:
            ValueError: shapes that do not match.
        """
        if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"Expected logits (B, K, H, W) and labels (B, H, W), got {tuple(logits.shape)} and {tuple(labels.shape)}."
            )
        metric = self._metrics.get(name)
        if metric is None or metric.num_classes != logits.shape[1]:
            metric = MulticlassJaccardIndex(
                num_classes=logits.shape[1], average="none", ignore_index=self.ignore_index, zero_division=0
            )
            self._metrics[name] = metric
        metric = metric.to(logits.device)
        self._metrics[name] = metric
        metric.update(logits.argmax(dim=1), labels)

    def has(self, name: str) -> bool:
        """Whether anything was counted under ``name`` since the last :meth:`compute`."""
        return name in self._metrics

    def compute(self, name: str) -> dict[str, Tensor]:
        """:func:`iou_summary` of what ``name`` counted (summed over DDP ranks), then forget it."""
        metric = self._metrics.pop(name)
        return iou_summary(metric.compute().float())

    def log(self, module: Any, name: str, prefix: str) -> None:
        """Log :meth:`compute` of ``name`` through ``module.log_dict`` as ``<prefix><metric>``
        (``val/miou``, ``val/teacher_iou_3``, ...); nothing if ``name`` counted nothing."""
        if self.has(name):
            summary = self.compute(name)
            module.log_dict({f"{prefix}{k}": v for k, v in summary.items()}, prog_bar=False)
