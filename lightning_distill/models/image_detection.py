"""A 2D image detector trained on first use (through ``cached_training``) or loaded from a checkpoint.

:func:`trained_image_detector` returns the
:class:`~lightning_distill.detection.image_detector.ImageDetector` it is given, trained with CenterNet's
loss on the camera images of a detection data module and their per-camera 2D boxes (the stand-in for
a 2D detector pretrained on a labelled image corpus; LiSe uses GroundingDINO), or with weights from
``checkpoint``. The cache record holds the validation 2D AP at IoU 0.5 (class mean).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_distill.data.detection import collate_detection
from lightning_distill.detection.metrics import average_precision
from lightning_distill.detection.pseudo_labels import box_iou_2d
from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["camera_targets", "image_ap", "trained_image_detector"]


def camera_targets(batch: dict[str, Any]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Every camera image of a detection batch ``(B·C, 3, H, W)`` with its visible 2D boxes and classes."""
    images = batch["images"]
    b, c = images.shape[:2]
    boxes, labels = [], []
    for i in range(b):
        for cam in range(c):
            seen = batch["visible_2d"][i][:, cam]
            boxes.append(batch["boxes_2d"][i][seen, cam])
            labels.append(batch["labels"][i][seen])
    return images.flatten(0, 1), boxes, labels


@torch.no_grad()
def image_ap(model: nn.Module, loader: Any, iou: float = 0.5) -> dict[str, float]:
    """Class-mean 2D AP of ``model`` at IoU ``iou`` over ``loader``'s batches (greedy matching by score)."""
    was_training = model.training
    model.eval()
    per_class: dict[int, tuple[list[float], list[bool], int]] = {}
    for batch in loader:
        images, boxes, labels = camera_targets(batch)
        for det, gt, gl in zip(model.detect(model(images)), boxes, labels):
            for k in range(model.num_classes):
                scores, hits, total = per_class.setdefault(k, ([], [], 0))
                d, g = det["boxes_2d"][det["labels"] == k], gt[gl == k]
                order = det["scores"][det["labels"] == k].argsort(descending=True)
                used = torch.zeros(len(g), dtype=torch.bool)
                overlap = box_iou_2d(d[order], g) if len(d) and len(g) else torch.zeros(len(d), len(g))
                for j, row in zip(order.tolist(), overlap):
                    row = torch.where(used, torch.zeros_like(row), row)
                    hit = bool(len(row)) and float(row.max()) >= iou
                    if hit:
                        used[int(row.argmax())] = True
                    scores.append(float(det["scores"][det["labels"] == k][j])), hits.append(hit)
                per_class[k] = (scores, hits, total + len(g))
    model.train(was_training)
    aps = [
        float(
            average_precision(
                torch.tensor(s),
                torch.tensor(h, dtype=torch.bool),
                n,
                recall_points=torch.linspace(1 / 40, 1, 40),
            )
        )
        if n
        else float("nan")
        for s, h, n in per_class.values()
    ]
    valid = [a for a in aps if a == a]
    return {"ap_2d": sum(valid) / len(valid) if valid else float("nan")}


#: Scene seeds of the held-out scenes (far from every split's seeds, ``seed · 10⁶ + offset + i``).
HELD_OUT_SEED = 900_000_000


def held_out_loader(data: Any, scenes: int, batch_size: int = 4, seed: int = 0) -> DataLoader:
    """Batches of ``scenes`` scenes drawn by ``data``'s own generator from seeds no split uses (shuffled)."""
    frames = [f for i in range(scenes) for f in data.make_scene(HELD_OUT_SEED + i, i)]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        frames, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_detection
    )


def fit_image_detector(model: nn.Module, data: L.LightningDataModule, *, epochs: int, lr: float = 2e-3,
                       weight_decay: float = 1e-4, box_weight: float = 0.1, held_out_scenes: int = 0) -> None:  # fmt: skip
    """Train ``model`` on camera images with CenterNet's loss (AdamW, one-cycle).

    The images are ``data``'s training split, or with ``held_out_scenes`` > 0 that many other scenes of the
    same generator (:func:`held_out_loader`), so that the detector never sees the images it later labels.

    Raises:
        FloatingPointError: a non-finite loss (names the epoch and the step).
    """
    if held_out_scenes > 0:
        loader = held_out_loader(data, held_out_scenes)
    else:
        data.setup("fit")
        loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.3)
    model.train()
    step = 0
    for epoch in range(epochs):
        for batch in loader:
            images, boxes, labels = camera_targets(batch)
            terms = model.loss(model(images), boxes, labels)
            value = terms["heatmap"] + box_weight * terms["box"]
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"the 2D detector's loss is {value.item()} at epoch {epoch}, step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            step += 1
    model.eval()


def _check_images(data: L.LightningDataModule) -> None:
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    if "images" not in batch or "boxes_2d" not in batch:
        raise ValueError(
            "`trained_image_detector` needs batches with 'images', 'boxes_2d' and 'visible_2d' (the detection data "
            "module's camera views); set `model.init_args.teacher.init_args.data`."
        )


def trained_image_detector(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 30,
    lr: float = 2e-3,
    held_out_scenes: int = 0,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """``model`` (an ``ImageDetector``) trained on ``data``'s camera views on first use, or loaded from ``checkpoint``.

    With ``held_out_scenes`` > 0 it trains on that many scenes of ``data``'s generator that no split holds
    (the images a 2D detector pretrained elsewhere would have seen), else on ``data``'s training split.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``epochs`` < 1, or data without camera images.
        FloatingPointError: a non-finite loss or weights (nothing cached).
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_image_detector` needs `checkpoint` (your 2D detector's weights) or `data` (to train on first "
            "use); set `model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if epochs < 1:
        raise ValueError(
            f"`epochs` must be >= 1, got {epochs}; set `model.init_args.teacher.init_args.epochs`."
        )
    _check_images(data)
    settings = {
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "held_out_scenes": held_out_scenes,
        "objective": "centernet_2d",
    }

    def fit() -> dict[str, Any]:
        fit_image_detector(model, data, epochs=epochs, lr=lr, held_out_scenes=held_out_scenes)
        data.setup("validate")
        return {f"val_{k}": v for k, v in image_ap(model, data.val_dataloader()).items()}

    path, _ = cached_training(
        model, data, settings, fit, seed=seed, stem=f"ImageDetector{type(model).__name__}", what=f"{epochs} epochs",
        cache_dir=cache_dir, retrain=retrain,
    )  # fmt: skip
    model.distill_source = f"2D detector trained on first use, cached at {path}"
    return model.eval()
