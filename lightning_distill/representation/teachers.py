"""An MAE teacher trained on first use: :func:`trained_mae`.

Pretrains a :class:`transformers.ViTMAEForPreTraining` with MAE's objective (random masks at
``mask_ratio``, MSE on the masked patches to per-patch normalised pixels) on a datamodule's
training images, through :func:`~lightning_distill.models.first_use_cache.cached_training` (keyed
by architecture, data and these settings; file lock; deterministic; finite weights only). The
record holds the teacher's linear-probe and k-NN accuracy on the validation images, and a
teacher whose probe is near chance is flagged. A user's own weights load from ``checkpoint``
(a state_dict or Lightning checkpoint) or come from :func:`~lightning_distill.models.vit.mae_vit`
with ``pretrained=<local folder>`` (then leave ``data`` unset).

Example config (``model.init_args.teacher``)::

    class_path: lightning_distill.representation.trained_mae
    init_args:
      model: {class_path: lightning_distill.models.vit.mae_vit, init_args: {hidden_size: 96, num_layers: 6}}
      data: {class_path: lightning_distill.data.MNIST5kDataModule, init_args: {size: 16}}
      epochs: 8
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch import nn

from lightning_distill.losses.representation import masked_patch_mse, normalized_patches
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.models.pretrained import chance_margin
from lightning_distill.representation.encoding import decode, encode, num_patches_of
from lightning_distill.representation.evaluation import probe_accuracy
from lightning_distill.representation.masking import random_masks
from lightning_distill.utils.checks import check_int, check_positive
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["mae_step_loss", "trained_mae"]


def mae_step_loss(
    model: nn.Module, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """MAE's loss on one batch: random masks, decoder prediction, masked-patch MSE to normalised pixels."""
    mask = random_masks(x.shape[0], num_patches_of(model), mask_ratio, generator=generator).to(x.device)
    prediction = decode(model, encode(model, x, mask))
    return masked_patch_mse(prediction, normalized_patches(model.patchify(x)), mask)


def _pretrain(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    mask_ratio: float,
    seed: int,
) -> dict[str, Any]:
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    loss = torch.tensor(float("nan"))
    for epoch in range(epochs):
        for batch in loader:
            loss = mae_step_loss(model, batch[0], mask_ratio, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the MAE loss is {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    model.eval()
    scores = probe_accuracy(model, data, split="val", max_train_images=2000)
    num_classes = int(getattr(data, "num_classes", 10))
    return {
        "final_mae_loss": float(loss.detach()),
        "val_probe_acc": scores["acc"],
        "val_knn_acc": scores["knn_acc"],
        "num_classes": num_classes,
        "steps": step,
    }


def _near_chance(result: dict[str, Any]) -> str | None:
    k = result.get("num_classes", 10)
    chance = 1.0 / max(k, 2)
    if result["val_probe_acc"] < chance + chance_margin(k, 200):
        return f"linear-probe accuracy {result['val_probe_acc']:.3f} is near chance ({chance:.3f})"
    return None


def trained_mae(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 10,
    lr: float = 1.5e-3,
    weight_decay: float = 0.05,
    mask_ratio: float = 0.75,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
    near_chance: Literal["warn", "error"] = "warn",
) -> nn.Module:
    """Return ``model`` (a ViT-MAE) pretrained with MAE: from ``checkpoint``, the cache, or trained now.

    Args:
        model: a ``ViTMAEForPreTraining`` (e.g. :func:`~lightning_distill.models.vit.mae_vit`).
        data: datamodule whose training images the teacher pretrains on (labels unused); its
            validation images score the teacher's probe for the record.
        checkpoint: the user's weights (then ``data`` is not needed).
        epochs: pretraining epochs.
        lr: peak learning rate (one-cycle), AdamW with MAE's betas (0.9, 0.95).
        weight_decay: AdamW weight decay (MAE: 0.05).
        mask_ratio: MAE's masked fraction (0.75).
        seed: seed of the initialisation, the masks and the data order.
        cache_dir: cache folder (default ``$LIGHTNING_DISTILL_CACHE`` or ``~/.cache/lightning_distill``).
        retrain: ignore a cached teacher.
        near_chance: ``"warn"`` or ``"error"`` when the teacher's probe accuracy is near chance.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, or bad settings.
        FileNotFoundError / RuntimeError: an unusable ``checkpoint``.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_mae` needs `checkpoint` (your weights) or `data` (to pretrain the teacher on first use); "
            "set `model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    check_int("epochs", epochs, low=1)
    check_positive("lr", lr)
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"`mask_ratio` must be in [0, 1), got {mask_ratio}.")
    settings = {
        "objective": "mae",
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "mask_ratio": mask_ratio,
        "seed": seed,
    }
    path, info = cached_training(
        model,
        data,
        settings,
        lambda: _pretrain(
            model, data, epochs=epochs, lr=lr, weight_decay=weight_decay, mask_ratio=mask_ratio, seed=seed
        ),
        seed=seed,
        stem="ViTMAE",
        what=f"{epochs} epochs of MAE pretraining",
        cache_dir=cache_dir,
        retrain=retrain,
        check=_near_chance,
        on_check_failure=near_chance,
    )
    model.distill_source = (
        f"trained_mae cache {path} (val probe acc {info.get('val_probe_acc', float('nan')):.3f})"
    )
    return model.eval()
