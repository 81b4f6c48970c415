"""The baselines every distilled set is compared with, as ``(images, labels)`` to evaluate alike.

* :func:`random_real_subset`: ``ipc`` random real training images per class;
* :func:`herding_subset`: per class, the images whose features herd towards the class mean
  (Welling 2009, as the DC papers use it) or a k-center cover, on features of a trained model;
* :func:`teacher_soft_labels`: a teacher's logits for a set of images (random real + soft labels);
* :func:`full_training_set`: all labelled training images (the upper bound).

Evaluate them with :func:`~lightning_distill.dataset_distillation.evaluate_synthetic`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import lightning.pytorch as L
import torch
from torch import Tensor, nn

__all__ = ["full_training_set", "herding_subset", "random_real_subset", "teacher_soft_labels"]


def _labelled_train_images(datamodule: L.LightningDataModule) -> tuple[Tensor, Tensor]:
    train_images = getattr(datamodule, "train_images", None)
    if not callable(train_images):
        raise TypeError(
            f"The datamodule ({type(datamodule).__name__}) needs a `train_images()` method returning the "
            "training images and labels, like lightning_distill.data.ArrayImageDataModule."
        )
    datamodule.setup("fit")
    x, y = train_images()
    keep = y >= 0
    return x[keep], y[keep]


def _num_classes(datamodule: L.LightningDataModule, labels: Tensor) -> int:
    return int(getattr(datamodule, "num_classes", int(labels.max()) + 1))


def full_training_set(datamodule: L.LightningDataModule) -> tuple[Tensor, Tensor]:
    """All labelled training images ``(N, C, H, W)`` and labels ``(N,)`` (the upper bound).

    Raises:
        TypeError: the datamodule has no ``train_images()``.
    """
    return _labelled_train_images(datamodule)


def random_real_subset(datamodule: L.LightningDataModule, ipc: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``ipc`` random labelled training images per class, class-blocked, drawn from ``seed``.

    Returns:
        ``(images (K * ipc, C, H, W), labels (K * ipc,))``.

    Raises:
        ValueError: ``ipc < 1`` or a class with fewer than ``ipc`` images.

    Example:
        >>> from lightning_distill.data import DigitsDataModule
        >>> x, y = random_real_subset(DigitsDataModule(), ipc=2, seed=0)
        >>> tuple(x.shape), y.tolist()[:4]
        ((20, 1, 8, 8), [0, 0, 1, 1])
    """
    if ipc < 1:
        raise ValueError(f"`ipc` must be >= 1, got {ipc}.")
    x, y = _labelled_train_images(datamodule)
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(_num_classes(datamodule, y)):
        pool = torch.nonzero(y == c).flatten()
        if pool.numel() < ipc:
            raise ValueError(f"Class {c} has {pool.numel()} training images, fewer than `ipc`={ipc}.")
        picks.append(pool[torch.randperm(pool.numel(), generator=generator)[:ipc]])
    index = torch.cat(picks)
    return x[index].clone(), y[index].clone()


@torch.no_grad()
def _features(feature_fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([feature_fn(chunk).flatten(1).float() for chunk in x.split(batch_size)])


def herding_subset(
    datamodule: L.LightningDataModule,
    ipc: int,
    feature_fn: Callable[[Tensor], Tensor],
    *,
    method: Literal["herding", "kcenter"] = "herding",
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """A coreset of ``ipc`` training images per class, chosen on features of a trained model.

    ``"herding"`` (Welling 2009; the coreset baseline of DC/DSA/DM): greedily add the image that
    brings the mean feature of the chosen images closest to the class mean. ``"kcenter"``: start
    from the image closest to the class mean, then repeatedly add the image farthest from the
    chosen ones (greedy k-center).

    Args:
        datamodule: provides ``train_images()``.
        ipc: images per class.
        feature_fn: images ``(B, C, H, W)`` -> features ``(B, D)``, e.g. the ``embed`` of a trained
            :class:`ConvNet` in eval mode; called without gradient.
        method: ``"herding"`` or ``"kcenter"``.
        batch_size: images per ``feature_fn`` call.

    Returns:
        ``(images (K * ipc, C, H, W), labels (K * ipc,))``, class-blocked, in selection order.

    Raises:
        ValueError: ``ipc < 1``, an unknown method, or a class with fewer than ``ipc`` images.
    """
    if ipc < 1:
        raise ValueError(f"`ipc` must be >= 1, got {ipc}.")
    if method not in ("herding", "kcenter"):
        raise ValueError(f"`method` must be 'herding' or 'kcenter', got {method!r}.")
    x, y = _labelled_train_images(datamodule)
    features = _features(feature_fn, x, batch_size)
    picks = []
    for c in range(_num_classes(datamodule, y)):
        pool = torch.nonzero(y == c).flatten()
        if pool.numel() < ipc:
            raise ValueError(f"Class {c} has {pool.numel()} training images, fewer than `ipc`={ipc}.")
        chosen = (_herding if method == "herding" else _kcenter)(features[pool], ipc)
        picks.append(pool[torch.tensor(chosen)])
    index = torch.cat(picks)
    return x[index].clone(), y[index].clone()


def _herding(features: Tensor, k: int) -> list[int]:
    """Indices of ``k`` rows whose running mean follows the mean of ``features`` ``(n, D)``."""
    mean = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mean)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for step in range(1, k + 1):
        distance = ((mean - (total + features) / step) ** 2).sum(1)
        distance[~available] = math.inf
        best = int(distance.argmin())
        chosen.append(best)
        available[best] = False
        total += features[best]
    return chosen


def _kcenter(features: Tensor, k: int) -> list[int]:
    """Greedy k-center: the row nearest the mean, then the row farthest from those chosen."""
    first = int(((features - features.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    nearest = ((features - features[first]) ** 2).sum(1)
    for _ in range(k - 1):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, ((features - features[nxt]) ** 2).sum(1))
    return chosen


@torch.no_grad()
def teacher_soft_labels(teacher: nn.Module, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """The teacher's logits ``(N, K)`` for ``images`` ``(N, C, H, W)``, in eval mode, without gradient.

    With :func:`random_real_subset` this gives the "random real + the same soft labels" baseline:
    evaluate the real subset with ``soft_labels=teacher_soft_labels(teacher, images)``. The
    teacher's train/eval mode is restored afterwards.
    """
    was_training = teacher.training
    teacher.eval()
    try:
        return torch.cat([teacher(chunk).float() for chunk in images.split(batch_size)])
    finally:
        teacher.train(was_training)
