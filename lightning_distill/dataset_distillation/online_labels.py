"""Labels online vs stored: what each costs, and evaluation by retraining with online labels.

* Storage accounting: :func:`hard_label_bytes`, :func:`soft_label_cache_bytes` (and
  :meth:`~lightning_distill.dataset_distillation.LabelProjector.storage_bytes`).
* Evaluation by retraining with labels taken online from any label function
  (:class:`OnlineLabelClassifier`, :func:`retrain_with_online_labels`,
  :func:`evaluate_online_labels`), the same protocol as
  :func:`~lightning_distill.dataset_distillation.evaluate_synthetic` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.dataset_distillation.evaluate import (
    EvalResult,
    RetrainClassifier,
    classification_accuracy,
    fit_fresh_model,
)
from lightning_distill.dataset_distillation.networks import ConvNet
from lightning_distill.losses.dataset_distillation import LabelLoss, soft_label_loss

__all__ = [
    "OnlineLabelClassifier",
    "evaluate_online_labels",
    "hard_label_bytes",
    "retrain_with_online_labels",
    "soft_label_cache_bytes",
]


def hard_label_bytes(num_images: int, num_classes: int) -> int:
    """Bytes of ``num_images`` class indices stored in the smallest unsigned integer type.

    Example:
        >>> hard_label_bytes(100, 10), hard_label_bytes(100, 1000)
        (100, 200)
    """
    if num_images < 0 or num_classes < 1:
        raise ValueError(f"Need num_images >= 0 and num_classes >= 1, got {num_images} and {num_classes}.")
    width = 1 if num_classes <= 2**8 else 2 if num_classes <= 2**16 else 4
    return num_images * width


def soft_label_cache_bytes(
    num_images: int, num_classes: int, epochs: int, *, views_per_epoch: int = 1, bytes_per_value: int = 2
) -> int:
    """Bytes of a relabel cache: one ``K``-vector per image, augmented view and epoch (SRe2L/CDA).

    SRe2L's ``FKD``-style relabelling stores teacher outputs for every augmented view the student
    will see (``epochs x views x N x K`` numbers, fp16 by default); the augmentation parameters
    stored beside them are not counted here.

    Example:
        >>> soft_label_cache_bytes(100, 10, epochs=300)
        600000
    """
    for name, value in (("num_images", num_images), ("num_classes", num_classes), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}.")
    if views_per_epoch < 1 or bytes_per_value < 1:
        raise ValueError(
            f"`views_per_epoch` and `bytes_per_value` must be >= 1, got {views_per_epoch}, {bytes_per_value}."
        )
    return epochs * views_per_epoch * num_images * num_classes * bytes_per_value


class OnlineLabelClassifier(RetrainClassifier):
    """:class:`RetrainClassifier` whose soft labels come online from ``label_fn`` on each augmented view.

    ``label_fn`` (a projector, a teacher, an ensemble: ``(B, C, H, W) -> (B, K)`` logits or
    log-probabilities) is frozen and run without gradient on exactly the augmented images the model
    trains on; the loss is :func:`soft_label_loss` (``kind``) plus ``hard_weight`` times the
    cross-entropy on the hard labels. Reading a stored relabel cache gives the same targets as
    running its teacher online, so this also evaluates "teacher soft labels for every view".

    Args:
        model: the classifier being trained.
        label_fn: the label generator (frozen here).
        loss: ``"kl"`` or ``"mse"``.
        hard_weight: weight of the hard-label cross-entropy (HeLlO's ``beta``; 0 by default).
        **kwargs: :class:`RetrainClassifier` arguments (``epochs``, ``lr``, ``augment``, ``temperature``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        label_fn: nn.Module,
        *,
        loss: LabelLoss = "kl",
        hard_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if loss not in ("kl", "mse") or hard_weight < 0:
            raise ValueError(
                f"`loss` must be 'kl' or 'mse' and `hard_weight` >= 0, got {loss!r} and {hard_weight}."
            )
        self.label_fn = label_fn.requires_grad_(False).eval()
        self.loss, self.hard_weight = loss, hard_weight

    def train(self, mode: bool = True) -> OnlineLabelClassifier:
        super().train(mode)
        self.label_fn.eval()
        return self

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if self.augment is not None:
            x = self.augment(x, self.augment.sample(x, self.generator))
        with torch.no_grad():
            target = self.label_fn(x)
        logits = self.model(x)
        loss = soft_label_loss(logits, target, kind=self.loss, temperature=self.temperature)
        if self.hard_weight:
            loss = loss + self.hard_weight * F.cross_entropy(logits, y)
        return loss


def retrain_with_online_labels(
    images: Tensor,
    labels: Tensor,
    model_fn: Callable[[], nn.Module],
    label_fn: nn.Module,
    *,
    epochs: int,
    lr: float = 0.01,
    seed: int = 0,
    loss: LabelLoss = "kl",
    hard_weight: float = 0.0,
    temperature: float = 1.0,
    augment: str | None = "color_crop_cutout_scale_rotate",
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    accelerator: str = "cpu",
    devices: int | list[int] = 1,
) -> nn.Module:
    """:func:`~lightning_distill.dataset_distillation.retrain_model` with labels from ``label_fn`` on every augmented view.

    The same Trainer settings, seeding, SGD schedule (lr / 10 at half time) and augmentation as
    :func:`~lightning_distill.dataset_distillation.retrain_model`; ``label_fn`` is used in place (moved to the
    training device and back to the CPU afterwards).

    Returns:
        The trained model, on the CPU, in eval mode.

    Raises:
        ValueError: mismatched shapes or bad settings.
    """
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    tensors = [images.detach().cpu().float().clone(), labels.detach().cpu().long().clone()]
    was_training = label_fn.training
    flags = [p.requires_grad for p in label_fn.parameters()]
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=min(batch_size, tensors[0].shape[0]),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )

    def wrap(model: nn.Module) -> OnlineLabelClassifier:
        return OnlineLabelClassifier(
            model,
            label_fn,
            loss=loss,
            hard_weight=hard_weight,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            augment=augment,
            temperature=temperature,
            seed=seed,
        )

    try:
        return fit_fresh_model(
            model_fn, wrap, loader, epochs=epochs, seed=seed, accelerator=accelerator, devices=devices
        )
    finally:
        label_fn.cpu().train(was_training)
        for p, flag in zip(label_fn.parameters(), flags):
            p.requires_grad_(flag)


def evaluate_online_labels(
    images: Tensor,
    labels: Tensor,
    datamodule: L.LightningDataModule,
    label_fn: nn.Module,
    model_fn: Callable[[], nn.Module] | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    **kwargs: Any,
) -> EvalResult:
    """Evaluation by retraining with online labels: one model per seed, accuracy on the real test split.

    Args:
        images: the training set ``(N, C, H, W)``.
        labels: its hard labels ``(N,)``.
        datamodule: supplies ``test_dataloader()``.
        label_fn: the label generator (projector, teacher, ensemble).
        model_fn: fresh classifier per seed (default: ConvNet-3 width 128, as :func:`evaluate_synthetic`).
        seeds: one model per seed.
        **kwargs: :func:`retrain_with_online_labels` settings (``epochs`` required).

    Raises:
        ValueError: empty ``seeds``.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    if model_fn is None:
        num_classes = int(getattr(datamodule, "num_classes", int(labels.max()) + 1))
        c, h, w = images.shape[1:]
        model_fn = lambda: ConvNet(c, num_classes, (h, w))  # noqa: E731
    datamodule.setup("test")
    accuracies = []
    for seed in seeds:
        model = retrain_with_online_labels(images, labels, model_fn, label_fn, seed=seed, **kwargs)
        accuracies.append(classification_accuracy(model, datamodule.test_dataloader()))
    return EvalResult(tuple(accuracies), seeds)
