"""How good are a 3D backbone's features? Linear probing and few-label fine-tuning for segmentation.

* :func:`linear_probe`: freeze the backbone, compute per-point features once, train a linear
  classifier on them (standardised features, full-batch Adam), report test mIoU (SLidR's linear
  evaluation protocol).
* :func:`finetune`: train a copy of the backbone plus a linear head end to end on a fraction of the
  labelled training scans (the paper's 1% nuScenes / 1% SemanticKITTI protocol); with
  ``labelled_fraction=1.0`` it is full supervision.
* :func:`segmentation_metrics`: mIoU and per-class IoU through torchmetrics'
  ``MulticlassJaccardIndex``.

Loaders yield batches as in :mod:`lightning_distill.lidar.batches` (``points``, ``labels``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from lightning_distill.lidar.networks import sparse_point_features

__all__ = ["SegmentationResult", "extract_point_features", "finetune", "linear_probe", "segmentation_metrics"]


@dataclass
class SegmentationResult:
    """Test metrics of a segmentation model.

    Attributes:
        miou: mean IoU over the classes present in the test labels, in [0, 1].
        iou: ``(K,)`` IoU per class (NaN for a class absent from labels and predictions).
        accuracy: point accuracy.
    """

    miou: float
    iou: Tensor
    accuracy: float


def segmentation_metrics(
    preds: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = -1
) -> SegmentationResult:
    """mIoU, per-class IoU and accuracy of point predictions (torchmetrics ``MulticlassJaccardIndex``).

    Args:
        preds: ``(N,)`` predicted classes.
        target: ``(N,)`` true classes; ``ignore_index`` entries are left out.
        num_classes: ``K``.
        ignore_index: label to ignore.

    Returns:
        :class:`SegmentationResult`; the mean is over classes that occur in ``target``.

    Raises:
        ValueError: shapes differ.

    Example:
        >>> r = segmentation_metrics(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2)
        >>> round(r.miou, 4), [round(v, 4) for v in r.iou.tolist()]
        (0.5833, [0.5, 0.6667])
    """
    from torchmetrics.classification import MulticlassJaccardIndex

    if preds.shape != target.shape:
        raise ValueError(
            f"`preds` and `target` must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}."
        )
    keep = target != ignore_index
    preds, target = preds[keep].long(), target[keep].long()
    metric = MulticlassJaccardIndex(num_classes=num_classes, average=None, zero_division=float("nan"))
    iou = metric(preds, target).float()
    present = torch.bincount(target, minlength=num_classes) > 0
    miou = float(iou[present].nanmean()) if present.any() else math.nan
    accuracy = float((preds == target).float().mean()) if len(target) else math.nan
    return SegmentationResult(miou=miou, iou=iou, accuracy=accuracy)


@torch.no_grad()
def extract_point_features(
    backbone: nn.Module, loader: Iterable, *, voxel_size: float, input_features: str = "ones"
) -> tuple[Tensor, Tensor]:
    """Per-point features ``(N, C)`` and labels ``(N,)`` over a whole loader, backbone in eval mode.

    The backbone's training mode is restored afterwards.
    """
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for batch in loader:
        features.append(
            sparse_point_features(
                backbone, batch["points"], voxel_size=voxel_size, input_features=input_features
            )
        )
        labels.append(batch["labels"])
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


def linear_probe(
    backbone: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    num_classes: int,
    voxel_size: float,
    input_features: str = "ones",
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> SegmentationResult:
    """Linear probing of a frozen 3D backbone for per-point semantic segmentation.

    Features are standardised with the training mean and standard deviation; a linear layer is
    trained full-batch with Adam and cross-entropy for ``steps`` steps.

    Args:
        backbone: sparse 3D backbone (not modified).
        train_loader: labelled training batches.
        test_loader: test batches.
        num_classes: ``K``.
        voxel_size: voxel edge the backbone expects.
        input_features: ``"ones"`` or ``"intensity"``.
        steps: optimisation steps.
        lr: Adam learning rate.
        seed: initialisation of the linear layer.

    Returns:
        :class:`SegmentationResult` on the test points.

    Raises:
        ValueError: ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}.")
    x_train, y_train = extract_point_features(
        backbone, train_loader, voxel_size=voxel_size, input_features=input_features
    )
    x_test, y_test = extract_point_features(
        backbone, test_loader, voxel_size=voxel_size, input_features=input_features
    )
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    keep = y_train >= 0
    x_train, y_train = x_train[keep], y_train[keep]
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        preds = head(x_test).argmax(dim=1)
    return segmentation_metrics(preds, y_test, num_classes)


def finetune(
    backbone: nn.Module,
    train_loader: DataLoader,
    test_loader: Iterable,
    *,
    num_classes: int,
    voxel_size: float,
    input_features: str = "ones",
    labelled_fraction: float = 0.01,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[SegmentationResult, nn.Module]:
    """Fine-tune a copy of the backbone with a linear head on a fraction of the labelled scans.

    Args:
        backbone: sparse 3D backbone (copied, not modified).
        train_loader: a ``DataLoader`` over training samples; its dataset is subsampled.
        test_loader: test batches.
        num_classes: ``K``.
        voxel_size: voxel edge the backbone expects.
        input_features: ``"ones"`` or ``"intensity"``.
        labelled_fraction: fraction of training scans with labels (at least one scan), in (0, 1].
        epochs: passes over the labelled scans.
        lr: AdamW learning rate of backbone and head.
        seed: which scans are labelled, head initialisation and data order.

    Returns:
        The test :class:`SegmentationResult` and the fine-tuned ``nn.Sequential(backbone, head)``-like
        pair as a ``nn.ModuleDict`` with keys ``backbone`` and ``head``.

    Raises:
        ValueError: ``labelled_fraction`` outside (0, 1] or ``epochs`` < 1.
    """
    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"`labelled_fraction` must be in (0, 1], got {labelled_fraction}.")
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    generator = torch.Generator().manual_seed(seed)
    dataset = train_loader.dataset
    count = max(1, round(labelled_fraction * len(dataset)))
    chosen = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    loader = DataLoader(
        Subset(dataset, chosen),
        batch_size=train_loader.batch_size,
        shuffle=True,
        collate_fn=train_loader.collate_fn,
        generator=generator,
    )
    model = nn.ModuleDict(
        {"backbone": copy.deepcopy(backbone), "head": nn.Linear(backbone.out_channels, num_classes)}
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in loader:
            features = sparse_point_features(
                model["backbone"], batch["points"], voxel_size=voxel_size, input_features=input_features
            )
            logits = model["head"](features)
            loss = F.cross_entropy(logits, batch["labels"], ignore_index=-1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in test_loader:
            features = sparse_point_features(
                model["backbone"], batch["points"], voxel_size=voxel_size, input_features=input_features
            )
            preds.append(model["head"](features).argmax(dim=1))
            labels.append(batch["labels"])
    return segmentation_metrics(torch.cat(preds), torch.cat(labels), num_classes), model
