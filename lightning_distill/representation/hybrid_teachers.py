"""Discriminative ViT teachers trained on first use: supervised (:func:`trained_supervised_vit`) and
contrastive (:func:`trained_contrastive_vit`), the "supervised/CL" teachers of Hybrid Distill next
to the MIM teacher (:func:`~lightning_distill.representation.teachers.trained_mae`).

* Supervised (DeiT's role): the ViT and a linear head on the final cls token, cross-entropy on the
  datamodule's labelled training images (its own shift augmentation); the head is dropped after.
* Contrastive (SimCLR's recipe, CLIP/MoCo's role): two random views of every image (kornia:
  resized crop, small affine, brightness/contrast jitter, noise), the cls token through a 2-layer
  projector, NT-Xent (:func:`~lightning_distill.losses.representation.nt_xent`) with the other
  ``2N - 2`` views of the batch as negatives; the projector is dropped after. Labels unused.

Both go through :func:`~lightning_distill.models.first_use_cache.cached_training` (keyed by the
architecture, the data and these settings; locked; deterministic; finite weights only); the
record holds the backbone's validation linear-probe and k-NN accuracy and a teacher near chance
is flagged. ``checkpoint=`` loads a user's backbone weights instead (a DeiT/CLIP-vision ViT saved
as a state_dict), or build the model with ``pretrained=<local folder>`` and leave ``data`` unset.
The model is any transformers ViT (``ViTModel`` from :func:`~lightning_distill.models.vit.vit_backbone`
or a ViT-MAE encoder); it is switched to eager attention, so that recipes can read its attention maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from lightning_distill.losses.representation import nt_xent
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.models.pretrained import chance_margin
from lightning_distill.representation.evaluation import probe_accuracy
from lightning_distill.representation.token_relations import run_vit, use_eager_attention
from lightning_distill.utils.checks import check_int, check_positive
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["contrastive_views", "trained_contrastive_vit", "trained_supervised_vit"]


def _width(model: nn.Module) -> int:
    return int(getattr(model, "vit", model).config.hidden_size)


def cls_features(model: nn.Module, x: Tensor) -> Tensor:
    """The final cls token ``(B, D)`` of a ViT on whole images."""
    return run_vit(model, x, attentions=False).tokens[:, 0]


class _Trainee(nn.Module):
    """The backbone and the head trained with it (cached together, the head dropped after)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head


def contrastive_views(image_size: int, *, strength: float = 1.0) -> nn.Module:
    """SimCLR-style random views for small grey or colour images (kornia): ``(B, C, H, W) -> (B, C, H, W)``.

    Resized crop (scale 0.5-1), affine (15 degrees, 10% shifts), brightness/contrast jitter (p 0.8) and
    Gaussian noise (p 0.5); ``strength`` scales the jitter, rotation and noise.
    """
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.5, 1.0)),
        K.RandomAffine(degrees=15.0 * strength, translate=(0.1, 0.1)),
        K.ColorJiggle(brightness=0.3 * strength, contrast=0.3 * strength, p=0.8),
        K.RandomGaussianNoise(std=0.05 * strength, p=0.5),
    )


def _fit(
    trainee: _Trainee,
    data: L.LightningDataModule,
    step_loss: Callable[[Any], Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    what: str,
) -> dict[str, Any]:
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    trainee.train()
    step, loss = 0, torch.tensor(float("nan"))
    for epoch in range(epochs):
        for batch in loader:
            loss = step_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the {what} loss is {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    trainee.eval()
    scores = probe_accuracy(trainee.backbone, data, split="val", max_train_images=2000)
    return {
        f"final_{what}_loss": float(loss.detach()),
        "val_probe_acc": scores["acc"],
        "val_knn_acc": scores["knn_acc"],
        "num_classes": int(getattr(data, "num_classes", 10)),
        "steps": step,
    }


def _near_chance(result: dict[str, Any]) -> str | None:
    k = result.get("num_classes", 10)
    chance = 1.0 / max(k, 2)
    if result["val_probe_acc"] < chance + chance_margin(k, 200):
        return f"linear-probe accuracy {result['val_probe_acc']:.3f} is near chance ({chance:.3f})"
    return None


def _from_checkpoint(model: nn.Module, checkpoint: str) -> nn.Module:
    load_weights(model, checkpoint)
    model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
    return use_eager_attention(model).eval()


def _check_common(name: str, data: Any, epochs: int, lr: float) -> None:
    if data is None:
        raise ValueError(
            f"`{name}` needs `checkpoint` (your weights) or `data` (to train the teacher on first use); set "
            "`model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    check_int("epochs", epochs, low=1)
    check_positive("lr", lr)


def trained_supervised_vit(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
    near_chance: Literal["warn", "error"] = "warn",
) -> nn.Module:
    """Return ``model`` (a transformers ViT) trained as a classifier on ``data``'s labels (on first use).

    Args:
        model: a ``ViTModel`` (e.g. :func:`~lightning_distill.models.vit.vit_backbone`) or ViT-MAE encoder.
        data: labelled datamodule (its training images and augmentation); validation scores the record.
        checkpoint: the user's backbone weights instead (then ``data`` is not needed).
        epochs: training epochs.
        lr: peak learning rate (one-cycle AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing (DeiT: 0.1).
        seed: seed of the initialisation and the data order.
        cache_dir: cache folder (default ``$LIGHTNING_DISTILL_CACHE`` or ``~/.cache/lightning_distill``).
        retrain: ignore a cached teacher.
        near_chance: ``"warn"`` or ``"error"`` when the teacher's probe accuracy is near chance.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or bad settings.
    """
    if checkpoint is not None:
        return _from_checkpoint(model, checkpoint)
    _check_common("trained_supervised_vit", data, epochs, lr)
    use_eager_attention(model)
    num_classes = int(getattr(data, "num_classes", 10))
    trainee = _Trainee(model, nn.Linear(_width(model), num_classes))

    def step_loss(batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        keep = y >= 0
        logits = trainee.head(cls_features(model, x[keep]))
        return nn.functional.cross_entropy(logits, y[keep], label_smoothing=label_smoothing)

    settings = {
        "objective": "supervised",
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "seed": seed,
    }
    return _cached(trainee, data, settings, step_loss, "supervised", seed, cache_dir, retrain, near_chance)


def trained_contrastive_vit(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    temperature: float = 0.2,
    projection_dim: int = 64,
    augment_strength: float = 1.0,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
    near_chance: Literal["warn", "error"] = "warn",
) -> nn.Module:
    """Return ``model`` (a transformers ViT) pretrained with SimCLR's NT-Xent on ``data``'s images (on first use).

    Args:
        model: a ``ViTModel`` (e.g. :func:`~lightning_distill.models.vit.vit_backbone`) or ViT-MAE encoder.
        data: datamodule whose training images (labels unused) make the views; validation scores the record.
        checkpoint: the user's backbone weights instead (then ``data`` is not needed).
        epochs: training epochs.
        lr: peak learning rate (one-cycle AdamW).
        weight_decay: AdamW weight decay.
        temperature: NT-Xent temperature (SimCLR: 0.1-0.5).
        projection_dim: output width of the 2-layer projector (dropped after training).
        augment_strength: scales the views' jitter, rotation and noise (:func:`contrastive_views`).
        seed: seed of the initialisation, the views and the data order.
        cache_dir: cache folder.
        retrain: ignore a cached teacher.
        near_chance: ``"warn"`` or ``"error"`` when the teacher's probe accuracy is near chance.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or bad settings.
    """
    if checkpoint is not None:
        return _from_checkpoint(model, checkpoint)
    _check_common("trained_contrastive_vit", data, epochs, lr)
    check_positive("temperature", temperature)
    check_int("projection_dim", projection_dim, low=1)
    use_eager_attention(model)
    width = _width(model)
    projector = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, projection_dim))
    trainee = _Trainee(model, projector)
    image_size = int(getattr(model, "vit", model).config.image_size)
    views = contrastive_views(image_size, strength=augment_strength)

    def step_loss(batch: Any) -> Tensor:
        x = batch[0]
        with torch.no_grad():
            first, second = views(x), views(x)
        return nt_xent(
            projector(cls_features(model, first)),
            projector(cls_features(model, second)),
            temperature=temperature,
        )

    settings = {
        "objective": "simclr",
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "temperature": temperature,
        "projection_dim": projection_dim,
        "augment_strength": augment_strength,
        "seed": seed,
    }
    return _cached(trainee, data, settings, step_loss, "contrastive", seed, cache_dir, retrain, near_chance)


def _cached(
    trainee: _Trainee,
    data: L.LightningDataModule,
    settings: dict[str, Any],
    step_loss: Callable[[Any], Tensor],
    what: str,
    seed: int,
    cache_dir: str | None,
    retrain: bool,
    near_chance: Literal["warn", "error"],
) -> nn.Module:
    lr, weight_decay, epochs = settings["lr"], settings["weight_decay"], settings["epochs"]
    path, info = cached_training(
        trainee,
        data,
        settings,
        lambda: _fit(trainee, data, step_loss, epochs=epochs, lr=lr, weight_decay=weight_decay, what=what),
        seed=seed,
        stem=f"ViT-{what}",
        what=f"{epochs} epochs of {what} training",
        cache_dir=cache_dir,
        retrain=retrain,
        check=_near_chance,
        on_check_failure=near_chance,
    )
    model = trainee.backbone
    model.distill_source = (
        f"trained_{what}_vit cache {path} (val probe acc {info.get('val_probe_acc', float('nan')):.3f})"
    )
    return model.eval()
