"""Segmentation teachers trained on first use and cached (through ``cached_training``).

* :func:`trained_segmenter`: a segmenter trained with per-pixel cross-entropy on ``(x, y)`` batches
  (an ordinary teacher, or a student's supervised starting point).
* :func:`label_assisted_teacher`: Label-Assisted Distillation's teacher: the image plus a label
  channel (:func:`~lightning_distill.segmentation.label_coding.code_labels`, random per-class codes
  ``N(0, 1)`` per image, noise 0.03, x100), two independently coded passes per batch, trained with
  ``CE(o1) + CE(o2) + consistency_weight * (CWD(o1, o2) + CWD(o2, o1))``.
* :func:`trained_few_shot_segmenter`: a :class:`~lightning_distill.models.segmentation.MatchingSegmenter`
  trained on base-class episodes with cross-entropy on the binary query mask.

Each returns the module it is given with trained weights (from ``checkpoint``, the cache, or
trained now, AdamW with a one-cycle schedule) in eval mode, with ``distill_source`` set; the
cache record holds the validation mIoU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.losses.segmentation import mutual_cwd_loss
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.segmentation.label_coding import code_labels, fixed_label_values, random_label_values
from lightning_distill.segmentation.metrics import IoUTracker
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "copy_with_extra_input_channel",
    "label_assisted_teacher",
    "label_coded_input",
    "trained_few_shot_segmenter",
    "trained_segmenter",
]

StepLoss = Callable[[nn.Module, Any], Tensor]


def _fit(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    loss: StepLoss,
) -> None:
    """AdamW + one-cycle over ``epochs`` of ``data``'s training batches; ``loss(model, batch)`` per step.

    Raises:
        FloatingPointError: a non-finite loss (names the epoch and the step).
    """
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.15)
    model.train()
    step = 0
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            value = loss(model, batch)
            if not torch.isfinite(value):
                raise FloatingPointError(f"the training loss is {value.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            step += 1
    model.eval()


@torch.no_grad()
def _val_miou(
    data: L.LightningDataModule, predict: Callable[[Any], Tensor], labels_at: int = 1
) -> dict[str, float]:
    tracker = IoUTracker()
    for batch in data.val_dataloader():
        tracker.update("val", predict(batch), batch[labels_at])
    summary = tracker.compute("val")
    return {"val_miou": float(summary["miou"]), "val_miou_fg": float(summary["miou_fg"])}


def _from_checkpoint(model: nn.Module, checkpoint: str) -> nn.Module:
    load_weights(model, checkpoint)
    model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
    return model.eval()


def _need_data(data: Any, builder: str) -> None:
    if data is None:
        raise ValueError(
            f"`{builder}` needs `checkpoint` (your trained weights) or `data` (to train on first use); set "
            "`model.init_args.teacher.init_args.checkpoint` or `.data`."
        )


def _check_epochs(epochs: int) -> None:
    if epochs < 1:
        raise ValueError(
            f"`epochs` must be >= 1, got {epochs}; set `model.init_args.teacher.init_args.epochs`."
        )


def _finish(model: nn.Module, path: Any, info: dict[str, Any], what: str) -> nn.Module:
    model.distill_source = (
        f"{what} trained on first use, cached at {path} (val mIoU {info.get('val_miou', float('nan')):.3f})"
    )
    return model.eval()


def trained_segmenter(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 15,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """``model`` trained with per-pixel cross-entropy on ``data`` (``(x, y)`` batches), or loaded.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or ``epochs`` < 1.
        FloatingPointError: a non-finite loss or weights (nothing cached).
    """
    if checkpoint is not None:
        return _from_checkpoint(model, checkpoint)
    _need_data(data, "trained_segmenter")
    _check_epochs(epochs)
    settings = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "seed": seed, "objective": "ce"}

    def fit() -> dict[str, Any]:
        _fit(model, data, epochs=epochs, lr=lr, weight_decay=weight_decay,
             loss=lambda m, b: F.cross_entropy(m(b[0]), b[1], ignore_index=-1))  # fmt: skip
        return _val_miou(data, lambda b: model(b[0]))

    path, info = cached_training(
        model, data, settings, fit, seed=seed, what=f"{epochs} epochs", cache_dir=cache_dir, retrain=retrain
    )
    return _finish(model, path, info, "segmenter")


def label_coded_input(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    random_codes: bool,
    noise_std: float,
    scale: float = 100.0,
) -> Tensor:
    """``(B, C + 1, H, W)``: the images and the coded label channel (random or fixed per-class codes)."""
    values = (
        random_label_values(len(labels), num_classes) if random_codes else fixed_label_values(num_classes)
    )
    return torch.cat(
        [images, code_labels(labels, values, noise_std=noise_std, scale=scale).to(images.dtype)], dim=1
    )


def copy_with_extra_input_channel(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s weights into ``target``, which reads extra input channels.

    Tensors of equal shape are copied; a tensor that is wider in dimension 1 only (the first
    convolution's input channels) gets ``source``'s values in its first channels and zeros in the
    extra ones, so ``target`` computes what ``source`` did while the extra channels are zero.

    Raises:
        ValueError: the two state dicts do not have the same names, or a shape differs otherwise.
    """
    src, dst = source.state_dict(), target.state_dict()
    if set(src) != set(dst):
        raise ValueError(
            f"`init` ({type(source).__name__}) must have the teacher's architecture minus the label channel; the "
            f"parameter names differ (e.g. {sorted(set(src) ^ set(dst))[:3]})."
        )
    with torch.no_grad():
        for name, value in src.items():
            out = dst[name]
            if value.shape == out.shape:
                out.copy_(value)
            elif (
                value.ndim >= 2
                and value.shape[0] == out.shape[0]
                and value.shape[2:] == out.shape[2:]
                and out.shape[1] > value.shape[1]
            ):
                out.zero_()
                out[:, : value.shape[1]].copy_(value)
            else:
                raise ValueError(
                    f"`init`'s `{name}` has shape {tuple(value.shape)}, the teacher's {tuple(out.shape)}; only the input "
                    "channels of the first layer may differ."
                )


def label_assisted_teacher(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 15,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    consistency_weight: float = 5.0,
    temperature: float = 4.0,
    noise_std: float = 0.03,
    scale: float = 100.0,
    init: nn.Module | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Label-Assisted Distillation's teacher: ``model`` reads image + coded label channel.

    ``init`` is a trained segmenter of the same architecture without the label channel (e.g. from
    :func:`trained_segmenter`); its weights start the teacher, the label channel's input weights at
    zero (:func:`copy_with_extra_input_channel`), as the official code fine-tunes its trained
    baseline. Without it the teacher starts from a random initialisation.

    Per batch, two copies of the label channel are coded with independent random class values and
    noise; the loss is ``CE(o1) + CE(o2) + consistency_weight * (CWD(o1, o2) + CWD(o2, o1))`` at
    ``temperature`` (official defaults: 5, 4, noise 0.03, scale 100). The cache record's
    ``val_miou`` is measured with the fixed distillation-time codes (noise 0.02).

    Args:
        model: a segmenter with ``in_channels`` = image channels + 1 and a ``num_classes`` attribute.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``epochs`` < 1, or a model without ``num_classes``.
        FloatingPointError: a non-finite loss or weights (nothing cached).
    """
    if checkpoint is not None:
        return _from_checkpoint(model, checkpoint)
    _need_data(data, "label_assisted_teacher")
    _check_epochs(epochs)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError(
            f"`label_assisted_teacher` needs a model with an int `num_classes` attribute (to code labels), got "
            f"{type(model).__name__}."
        )
    settings = {
        "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "consistency_weight": consistency_weight,
        "temperature": temperature, "noise_std": noise_std, "scale": scale, "seed": seed, "objective": "label_assisted",
        "init": None if init is None else f"{init!r} from {getattr(init, 'distill_source', 'its constructor')}",
    }  # fmt: skip

    def step(m: nn.Module, batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        o1 = m(label_coded_input(x, y, num_classes, random_codes=True, noise_std=noise_std, scale=scale))
        o2 = m(label_coded_input(x, y, num_classes, random_codes=True, noise_std=noise_std, scale=scale))
        ce = F.cross_entropy(o1, y, ignore_index=-1) + F.cross_entropy(o2, y, ignore_index=-1)
        return ce + consistency_weight * mutual_cwd_loss(o1, o2, temperature=temperature)

    def fit() -> dict[str, Any]:
        if init is not None:
            copy_with_extra_input_channel(init, model)
        _fit(model, data, epochs=epochs, lr=lr, weight_decay=weight_decay, loss=step)
        return _val_miou(
            data,
            lambda b: model(
                label_coded_input(b[0], b[1], num_classes, random_codes=False, noise_std=0.02, scale=scale)
            ),
        )

    path, info = cached_training(
        model, data, settings, fit, seed=seed, stem=f"LabelAssisted{type(model).__name__}", what=f"{epochs} epochs",
        cache_dir=cache_dir, retrain=retrain,
    )  # fmt: skip
    return _finish(model, path, info, "label-assisted teacher")


def trained_few_shot_segmenter(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 10,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    foreground_weight: float = 1.0,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """A few-shot segmenter (``model(query, support_x, support_y) -> {"logits": (B, 2, H, W), ...}``)
    trained on ``data``'s base-class episodes with cross-entropy on the query mask, the foreground
    class weighted by ``foreground_weight`` (a digit covers a few percent of a canvas); the
    record's ``val_miou`` is the binary mIoU on novel-class episodes.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or ``epochs`` < 1.
        FloatingPointError: a non-finite loss or weights (nothing cached).
    """
    if checkpoint is not None:
        return _from_checkpoint(model, checkpoint)
    _need_data(data, "trained_few_shot_segmenter")
    _check_epochs(epochs)
    settings = {
        "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "foreground_weight": foreground_weight, "seed": seed,
        "objective": "episodes",
    }  # fmt: skip
    class_weight = torch.tensor([1.0, foreground_weight])

    def run(m: nn.Module, batch: Any) -> Tensor:
        return m(batch[0], batch[2], batch[3])["logits"]

    def step(m: nn.Module, batch: Any) -> Tensor:
        return F.cross_entropy(run(m, batch), batch[1], weight=class_weight.to(batch[1].device))

    def fit() -> dict[str, Any]:
        _fit(model, data, epochs=epochs, lr=lr, weight_decay=weight_decay, loss=step)
        return _val_miou(data, lambda b: run(model, b))

    path, info = cached_training(
        model, data, settings, fit, seed=seed, stem=f"FewShot{type(model).__name__}", what=f"{epochs} epochs",
        cache_dir=cache_dir, retrain=retrain,
    )  # fmt: skip
    return _finish(model, path, info, "few-shot segmenter")
