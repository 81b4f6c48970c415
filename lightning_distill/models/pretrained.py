"""Getting a trained teacher: from the user's checkpoint, or trained on first use and cached.

:func:`trained_classifier` (alias :func:`trained_teacher`) returns the module it is given,
with trained weights; it serves teachers, and students that start from a supervised checkpoint. Use it as a
``class_path`` in a recipe config so that the config runs on a fresh clone::

    teacher:
      class_path: lightning_distill.models.trained_classifier
      init_args:
        model: {class_path: lightning_distill.models.SmallCNN, init_args: {width: 64}}
        data: {class_path: lightning_distill.data.DigitsDataModule, init_args: {size: 16}}
        epochs: 30

The cache is keyed by everything that decides the weights (architecture, data settings,
training settings, seed), so a changed teacher config trains a new teacher. Point
``checkpoint`` at your own weights to skip training (a raw ``state_dict`` or a Lightning
checkpoint; loaded with ``weights_only=True``).

What the cache guarantees (:func:`cached_training`):

* **Deterministic**: first-use training re-initialises the model from ``seed`` in a forked random
  state and runs on :data:`TRAINING_THREADS` CPU thread(s), so the same key gives the same weights
  in any process, whatever the global random state or ``torch.get_num_threads()`` there.
* **Never poisoned**: weights with NaN/inf are refused (nothing is written), and a trained
  classifier whose validation accuracy is near chance is flagged (``near_chance="warn"``, the
  warning is repeated whenever the cached teacher is loaded) or refused (``near_chance="error"``).
* **Self-healing**: a cached file that cannot be read, does not fit the model or holds non-finite
  values is moved aside to ``<name>.corrupt-<time>``, a warning says so, and the teacher is
  trained again under the same file lock.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_distill.models.first_use_cache import (  # noqa: F401  (re-exported: the public API)
    TRAINING_THREADS,
    _cache_key,
    _data_settings,
    cached_training,
    default_cache_dir,
    file_lock,
    load_weights,
    reinitialize,
)
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "TRAINING_THREADS",
    "cached_training",
    "chance_margin",
    "default_cache_dir",
    "file_lock",
    "load_weights",
    "reinitialize",
    "trained_classifier",
    "trained_teacher",
]


def _fit_classifier(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float,
) -> tuple[float, int, int]:
    """Plain supervised training with AdamW + cosine decay.

    Returns:
        Validation accuracy, the number of validation images and the number of logits (classes).

    Raises:
        FloatingPointError: the loss is not finite (names the epoch and the step).
    """
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.15)
    model.train()
    step = 0
    for epoch in range(epochs):
        for batch in loader:
            x, y = batch[0], batch[1]
            keep = y >= 0
            if not keep.any():
                continue
            loss = F.cross_entropy(model(x[keep]), y[keep], label_smoothing=label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the cross-entropy loss is {loss.item()} at epoch {epoch}, step {step}"
                )
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    correct = seen = classes = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            x, y = batch[0], batch[1]
            logits = model(x)
            classes = logits.shape[-1]
            correct += int((logits.argmax(-1) == y).sum())
            seen += y.numel()
    return correct / max(seen, 1), seen, classes


def chance_margin(num_classes: int, num_images: int) -> float:
    """How far above chance (``1 / num_classes``) a classifier's accuracy must be to count as trained.

    Three binomial standard errors of a guessing classifier's accuracy on ``num_images`` images,
    ``3 * sqrt(p * (1 - p) / n)`` with ``p = 1 / num_classes``, and at least 0.02: a classifier that
    guesses scores above ``p + margin`` with probability about 0.1%, so an accuracy below that line
    cannot be told apart from guessing. (Digits' 270 validation images, 10 classes: 0.055, so the
    line is at 0.155; our toy teachers reach 0.8 to 0.99.)
    """
    p = 1.0 / num_classes
    return max(0.02, 3.0 * math.sqrt(p * (1.0 - p) / max(num_images, 1)))


def _near_chance(result: dict[str, Any]) -> str | None:
    acc, n, k = result.get("val_acc"), result.get("val_images", 0), result.get("num_classes", 0)
    if acc is None or n < 1 or k < 2:
        return None
    chance, margin = 1.0 / k, chance_margin(k, n)
    if acc < chance + margin:
        return (
            f"validation accuracy {acc:.4f} on {n} images is within {margin:.3f} of chance ({chance:.3f} for "
            f"{k} classes)"
        )
    return None


def trained_classifier(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 30,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
    near_chance: Literal["warn", "error"] = "warn",
) -> nn.Module:
    """Return ``model`` with trained weights: from ``checkpoint``, from the cache, or trained now.

    With ``checkpoint`` the weights are loaded from that file. Otherwise the model is trained
    with cross-entropy on the labelled training images of ``data`` (a plain AdamW loop, weights
    re-initialised from ``seed``) and cached under ``cache_dir`` by a key of the architecture, the
    data settings and these arguments; a later call with the same settings loads the cached
    weights. A file lock makes concurrent processes (DDP ranks) train it once.

    The returned module carries ``distill_source``, a string saying where its weights came from,
    which :class:`~lightning_distill.DistillationModule` records in checkpoints.

    Args:
        model: the teacher architecture (any classifier ``(B, C, H, W) -> (B, K)``).
        data: a datamodule serving ``(x, y)`` batches; required unless ``checkpoint`` is given.
        checkpoint: path of the user's trained weights.
        epochs: training epochs when training.
        lr: peak learning rate (one-cycle schedule).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        seed: seed for the re-initialisation and the data order.
        cache_dir: where cached teachers live (default :func:`default_cache_dir`).
        retrain: ignore a cached teacher and train again.
        near_chance: what to do when the trained teacher's validation accuracy is below chance plus
            :func:`chance_margin`: ``"warn"`` (cache it, flag it in the record and warn on every load)
            or ``"error"`` (raise, cache nothing). Does not change the cache key.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        RuntimeError: ``checkpoint`` cannot be read or does not fit ``model``; or the teacher is near
            chance and ``near_chance="error"``.
        FloatingPointError: training produced a non-finite loss or non-finite weights (nothing cached).
        ValueError: neither ``checkpoint`` nor ``data`` is given, ``epochs`` < 1, or a bad ``near_chance``.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_teacher` needs `checkpoint` (your trained weights) or `data` (to train the teacher "
            "on first use); set `model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    if near_chance not in ("warn", "error"):
        raise ValueError(
            f"`near_chance` must be 'warn' or 'error', got {near_chance!r}; set "
            "`model.init_args.teacher.init_args.near_chance`."
        )
    settings = {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "seed": seed,
    }

    def fit() -> dict[str, Any]:
        val_acc, val_images, num_classes = _fit_classifier(
            model, data, epochs=epochs, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing
        )
        rank_zero_info(f"Trained {type(model).__name__}: val acc {val_acc:.4f}")
        return {"val_acc": val_acc, "val_images": val_images, "num_classes": num_classes}

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        what=f"{epochs} epochs",
        cache_dir=cache_dir,
        retrain=retrain,
        check=_near_chance,
        on_check_failure=near_chance,
    )
    acc = info.get("val_acc")
    model.distill_source = f"trained_teacher cache {weights}" + (
        f" (val acc {acc:.4f})" if acc is not None else ""
    )
    return model.eval()


trained_teacher = trained_classifier
"""Alias of :func:`trained_classifier`, for configs that read better with it."""
