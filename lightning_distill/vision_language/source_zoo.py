"""A zoo of source models for DistillNearest / DistillWeighted, each trained on first use on its own task.

Borup et al. (arXiv 2304.12314) distil from a collection of source models, each trained on another
source task, into a small target model that has a few labelled and many unlabelled target images.
Here a source task is a set of digit domains (:mod:`lightning_distill.data.domains`), a subset of the
digit classes and what is predicted:

* ``task="digits"``: the digit, among ``classes`` (a class-subset task when ``classes`` is not all ten);
* ``task="parity"``: even or odd (an auxiliary task with other labels than the target's);
* ``task="loops"``: whether the digit has a closed loop (0, 4, 6, 8, 9; again auxiliary).

:func:`source_model` returns a :class:`SourceModel` (an :class:`~.encoders.ImageEncoder` plus a linear
head over the source task's labels) trained with cross-entropy through
:func:`~lightning_distill.models.first_use_cache.cached_training`, or loaded from ``checkpoint``.
:func:`fit_linear_probe` fits the target-class linear classifier on a source's features of the few
labelled target images (scikit-learn's L2 logistic regression); the recipe turns its predictions on
unlabelled images into pseudo-labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.data.domains import DOMAINS, DigitDomainsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.vision_language.encoders import ImageEncoder

__all__ = ["SOURCE_TASKS", "SourceModel", "fit_linear_probe", "source_model", "source_task_labels"]

#: Label of each digit 0..9 under the auxiliary tasks.
SOURCE_TASKS: dict[str, tuple[int, ...]] = {
    "parity": (0, 1, 0, 1, 0, 1, 0, 1, 0, 1),
    "loops": (1, 0, 0, 0, 1, 0, 1, 0, 1, 1),
}


def source_task_labels(digits: Tensor, task: str, classes: Sequence[int]) -> Tensor:
    """Labels of ``digits`` under a source task: index into ``classes`` (``"digits"``) or :data:`SOURCE_TASKS`."""
    if task == "digits":
        lookup = torch.full((10,), -1, dtype=torch.long)
        lookup[torch.as_tensor(list(classes))] = torch.arange(len(classes))
        return lookup[digits]
    return torch.as_tensor(SOURCE_TASKS[task], dtype=torch.long)[digits]


class SourceModel(nn.Module):
    """A source model: features ``(B, F)`` from :meth:`features`, source-task logits from ``forward``.

    Args:
        encoder: the feature extractor (``num_features`` attribute).
        num_classes: labels of the source task.
        name: a short description of the source task (shown in logs and the benchmark).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, name: str = "source") -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = int(encoder.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        self.name = name

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def _fit_source(model: SourceModel, data: DigitDomainsDataModule, task: str, classes: Sequence[int], *,
                epochs: int, lr: float, batch_size: int) -> dict[str, Any]:  # fmt: skip
    """Cross-entropy with AdamW and a one-cycle schedule on the source task's training images."""
    x, digits, _ = data.split("train")
    y = source_task_labels(digits, task, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = max(1, len(y) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.15
    )
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for k in range(steps):
            idx = order[k * batch_size : (k + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the cross-entropy loss is {loss.item()} at epoch {epoch}, step {k}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    xv, dv, _ = data.split("val")
    with torch.no_grad():
        val_acc = float((model(xv).argmax(-1) == source_task_labels(dv, task, classes)).float().mean())
    rank_zero_info(f"Trained source {model.name}: val acc {val_acc:.4f}")
    return {"val_acc": val_acc, "val_images": len(dv)}


def source_model(
    domains: Sequence[str] = ("mnist",),
    classes: Sequence[int] | None = None,
    task: Literal["digits", "parity", "loops"] = "digits",
    width: int = 32,
    depth: int = 2,
    size: int = 16,
    epochs: int = 6,
    lr: float = 3e-3,
    batch_size: int = 64,
    split_seed: int = 0,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> SourceModel:
    """A source model (SmallCNN features + linear head) trained on first use on one source task.

    Args:
        domains: the digit domains of the source task.
        classes: the digits of the source task (``None``: all ten); with ``task="digits"`` the head
            predicts among them, with an auxiliary task only their images are used.
        task: ``"digits"``, ``"parity"`` or ``"loops"`` (see the module docstring).
        width: SmallCNN stem width (features: ``width * 2**(depth-1)``).
        depth: SmallCNN stages.
        size: image side.
        epochs: training epochs.
        lr: AdamW peak learning rate (one-cycle).
        batch_size: training batch size.
        split_seed: seed of the train/val/test split of the domains (keep it equal to the target
            data's ``seed`` when a source shares the target's domain, so that the source never trains
            on target test images).
        seed: seed of the initialisation and the data order.
        checkpoint: the user's trained weights for this architecture instead of training.
        cache_dir: where trained sources are cached (default: the teacher cache).
        retrain: ignore a cached source and train again.

    Raises:
        ValueError: an unknown ``task`` or domain, classes outside 0..9 or repeated, or fewer than two
            labels in the source task.
    """
    if task not in ("digits", *SOURCE_TASKS):
        raise ValueError(f"`task` must be 'digits', 'parity' or 'loops', got {task!r}.")
    classes = tuple(range(10)) if classes is None else tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or any(not 0 <= c < 10 for c in classes):
        raise ValueError(f"`classes` must be distinct digits in 0..9, got {list(classes)}.")
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"Unknown domain {d!r} in `domains`; choose from {list(DOMAINS)}.")
    num_labels = len(classes) if task == "digits" else len(set(SOURCE_TASKS[task][c] for c in classes))
    if num_labels < 2:
        raise ValueError(f"The source task {task!r} on classes {list(classes)} has fewer than two labels.")
    name = f"{task}[{','.join(map(str, classes))}]@{'+'.join(domains)}"
    model = SourceModel(ImageEncoder(SmallCNN(in_channels=3, width=width, depth=depth)), num_labels, name)
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint}"
        return model.eval()
    held_out = tuple(c for c in range(10) if c not in classes)
    data = DigitDomainsDataModule(
        domains=tuple(domains), size=size, held_out_classes=held_out, seed=split_seed
    )
    settings = {"task": task, "classes": list(classes), "epochs": epochs, "lr": lr, "batch_size": batch_size,
                "seed": seed}  # fmt: skip
    weights, info = cached_training(
        model,
        data,
        settings,
        lambda: _fit_source(model, data, task, classes, epochs=epochs, lr=lr, batch_size=batch_size),
        seed=seed,
        stem="SourceModel",
        what=f"{epochs} epochs on {name}",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    model.distill_source = (
        f"trained on first use: {name} (cached {weights.name}, val acc {info['val_acc']:.3f})"
    )
    model.val_acc = float(info["val_acc"])
    return model.eval()


@torch.no_grad()
def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int, c: float = 1.0) -> nn.Linear:
    """A linear classifier ``(B, F) -> (B, num_classes)`` fitted on labelled features (L2 logistic regression).

    scikit-learn's ``LogisticRegression(C=c)`` on standardised features, folded back into one
    ``nn.Linear`` on the raw features. Classes absent from ``labels`` get a bias of -1e4.

    Raises:
        ValueError: shapes that do not match, labels outside ``0..num_classes-1``, fewer than two classes.
    """
    from sklearn.linear_model import LogisticRegression

    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"`features` (N, F) and `labels` (N,) must match, got {features.shape} and {labels.shape}."
        )
    if bool((labels < 0).any() or (labels >= num_classes).any()) or labels.unique().numel() < 2:
        raise ValueError(f"`labels` must lie in 0..{num_classes - 1} and hold at least two classes.")
    x = features.double().cpu()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    clf = LogisticRegression(C=c, max_iter=2000).fit(((x - mean) / std).numpy(), labels.cpu().numpy())
    coef = torch.as_tensor(clf.coef_, dtype=torch.float64)
    bias = torch.as_tensor(clf.intercept_, dtype=torch.float64)
    if coef.shape[0] == 1:  # binary: scikit-learn keeps one row for the second class
        coef, bias = torch.cat([-coef / 2, coef / 2]), torch.cat([-bias / 2, bias / 2])
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    full_bias = torch.full((num_classes,), -1e4, dtype=torch.float64)
    present = torch.as_tensor(clf.classes_, dtype=torch.long)
    weight[present] = coef / std
    full_bias[present] = bias - (coef / std) @ mean
    probe = nn.Linear(x.shape[1], num_classes).to(features.device)
    probe.weight.copy_(weight.float())
    probe.bias.copy_(full_bias.float())
    return probe.requires_grad_(False)
