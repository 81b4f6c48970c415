"""PHG-MAE machinery: a masked autoencoder over whole modalities, hyperedge masks and mask ensembles.

PHG-MAE (arXiv 2510.10068) reads a set of per-pixel modalities (here RGB, depth, surface normals,
semantic labels; :class:`~lightning_distill.data.multimodal.MultiModalSceneDataModule`) and masks
*whole modalities*: the visible subset of one forward pass is a hyperedge of the hypergraph whose
nodes are the modalities, so each pass samples one hyperedge. The network reconstructs every
modality from the visible ones, so the same loss is pretraining (rebuilding the inputs) and
fine-tuning (predicting the task layers) in one loop. At inference, the predictions of several
hyperedges are averaged (the ensemble).

* :func:`encode_modalities`: a batch dict -> per-modality input planes (depth divided by
  ``max_depth``, semantic labels one-hot, zero where ignored).
* :func:`available_modalities`: which modalities each sample has (task layers only when labelled).
* :func:`sample_hyperedges`: a random visible subset per sample, inside what it has, never empty.
* :func:`enumerate_hyperedges`: every non-empty subset of some modalities (the inference ensemble).
* :class:`MultiModalMAE`: masked modalities + mask indicator planes -> every modality, on a
  :class:`~lightning_distill.models.segmentation.SmallSegNet`; :meth:`MultiModalMAE.ensemble`.
* :func:`phg_mae_teacher`: a :class:`MultiModalMAE` trained on first use and cached.
* :class:`MultiModalPictures`: RGB | label | the student's prediction overlays for dict batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.losses.multimodal import masked_l1, modality_reconstruction_losses
from lightning_distill.models.first_use_cache import cached_training
from lightning_distill.models.segmentation import SmallSegNet
from lightning_distill.segmentation.metrics import IoUTracker
from lightning_distill.segmentation.pictures import SegmentationPictures, _image_loggers, overlay_picture
from lightning_distill.segmentation.teachers import _check_epochs, _fit, _from_checkpoint, _need_data
from lightning_distill.utils.checks import check_option

__all__ = [
    "TASK_MODALITIES",
    "MultiModalMAE",
    "MultiModalPictures",
    "available_modalities",
    "encode_modalities",
    "enumerate_hyperedges",
    "phg_mae_teacher",
    "sample_hyperedges",
]

#: Layers that only labelled samples carry (the others are there for every view).
TASK_MODALITIES: tuple[str, ...] = ("depth", "semantic")


def encode_modalities(batch: Mapping[str, Tensor], num_classes: int, max_depth: float) -> dict[str, Tensor]:
    """Input planes ``(B, C, H, W)`` per modality: rgb, depth / ``max_depth``, normals, one-hot semantic.

    Raises:
        ValueError: a modality missing from ``batch``.
    """
    missing = [k for k in ("rgb", "depth", "normals", "semantic") if k not in batch]
    if missing:
        raise ValueError(f"A multi-modal batch needs rgb, depth, normals and semantic; missing {missing}.")
    labels = batch["semantic"]
    one_hot = F.one_hot(labels.clamp(min=0), num_classes).permute(0, 3, 1, 2).float()
    one_hot = one_hot * (labels >= 0).unsqueeze(1)
    return {
        "rgb": batch["rgb"].float(),
        "depth": batch["depth"].float() / max_depth,
        "normals": batch["normals"].float(),
        "semantic": one_hot,
    }


def available_modalities(batch: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """``(B, M)`` bool: every sample has the non-task layers; the task layers only if ``labelled``."""
    labelled = batch["labelled"].bool()
    columns = [labelled if n in TASK_MODALITIES else torch.ones_like(labelled) for n in names]
    return torch.stack(columns, dim=1)


def sample_hyperedges(
    available: Tensor, keep_prob: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """A visible subset per sample: each available modality kept with ``keep_prob``; a sample left
    with nothing visible keeps one available modality drawn uniformly. Never all masked.

    Args:
        available: ``(B, M)`` bool.
        keep_prob: probability of keeping an available modality.
        generator: random source (CPU).

    Returns:
        ``(B, M)`` bool, a non-empty subset of ``available`` per row.

    Raises:
        ValueError: ``keep_prob`` outside (0, 1], or a sample with no modality at all.
    """
    check_option(0 < keep_prob <= 1, "keep_prob", keep_prob, "in (0, 1]")
    if available.ndim != 2 or available.dtype != torch.bool or not bool(available.any(dim=1).all()):
        raise ValueError("`available` must be (B, M) bool with at least one modality per sample.")
    draws = torch.rand(available.shape, generator=generator).to(available.device)
    visible = available & (draws < keep_prob)
    empty = ~visible.any(dim=1)
    if bool(empty.any()):
        scores = torch.rand(available.shape, generator=generator).to(available.device)
        scores = scores.masked_fill(~available, -1.0)
        pick = F.one_hot(scores.argmax(dim=1), available.shape[1]).bool()
        visible = torch.where(empty[:, None], pick, visible)
    return visible


def enumerate_hyperedges(names: Sequence[str], inputs: Sequence[str]) -> Tensor:
    """``(E, M)`` bool: every non-empty subset of ``inputs`` as a mask over ``names`` (the ensemble).

    Raises:
        ValueError: an input not in ``names`` or no input.
    """
    unknown = [n for n in inputs if n not in names]
    if not inputs or unknown:
        raise ValueError(f"`inputs` must be a non-empty subset of {list(names)}, got {list(inputs)}.")
    columns = [names.index(n) for n in inputs]
    edges = []
    for size in range(1, len(columns) + 1):
        for subset in itertools.combinations(columns, size):
            row = torch.zeros(len(names), dtype=torch.bool)
            row[list(subset)] = True
            edges.append(row)
    return torch.stack(edges)


class MultiModalMAE(nn.Module):
    """Masked autoencoder over whole modalities: ``(visible modalities, mask) -> every modality``.

    The input is the modalities' planes, each multiplied by its visibility, followed by one
    indicator plane per modality (1 where visible), so a masked layer and a layer of zeros differ.
    The output holds, per modality, its planes (logits for ``semantic``).

    Args:
        num_classes: semantic classes ``K``.
        width: the backbone's first-level width.
        names: the modalities, in order.
        channels: planes per modality (``semantic`` takes ``num_classes``).

    Example:
        >>> mae = MultiModalMAE(num_classes=3, width=4)
        >>> x = {"rgb": torch.rand(1, 3, 8, 8), "depth": torch.rand(1, 1, 8, 8),
        ...      "normals": torch.rand(1, 3, 8, 8), "semantic": torch.rand(1, 3, 8, 8)}
        >>> mae(x, torch.tensor([[True, False, True, False]]))["semantic"].shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        num_classes: int = 6,
        width: int = 16,
        names: Sequence[str] = ("rgb", "depth", "normals", "semantic"),
        channels: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.names = tuple(names)
        sizes = {"rgb": 3, "depth": 1, "normals": 3, "semantic": num_classes} | dict(channels or {})
        unknown = [n for n in self.names if n not in sizes]
        if unknown:
            raise ValueError(f"`channels` needs the planes of {unknown}.")
        self.channels = {n: int(sizes[n]) for n in self.names}
        self.num_classes = num_classes
        total = sum(self.channels.values())
        self.backbone = SmallSegNet(total + len(self.names), total, width=width)

    def forward(self, inputs: Mapping[str, Tensor], visible: Tensor) -> dict[str, Tensor]:
        """``inputs``: per modality ``(B, C, H, W)``; ``visible``: ``(B, M)`` bool. Returns per modality.

        Raises:
            ValueError: ``visible`` not ``(B, M)``.
        """
        first = inputs[self.names[0]]
        if visible.shape != (first.shape[0], len(self.names)):
            raise ValueError(
                f"`visible` must be (B, M) = ({first.shape[0]}, {len(self.names)}), got {tuple(visible.shape)}."
            )
        gate = visible.to(first.dtype)[:, :, None, None]
        planes = [inputs[n] * gate[:, m : m + 1] for m, n in enumerate(self.names)]
        indicators = gate.expand(-1, -1, *first.shape[-2:])
        out = self.backbone(torch.cat([*planes, indicators], dim=1))
        return dict(zip(self.names, torch.split(out, list(self.channels.values()), dim=1)))

    @torch.no_grad()
    def ensemble(self, inputs: Mapping[str, Tensor], hyperedges: Tensor) -> tuple[Tensor, Tensor]:
        """Mean over ``hyperedges`` ``(E, M)`` of the semantic probabilities ``(B, K, H, W)`` and of
        the (normalised) depth ``(B, 1, H, W)``; only modalities some hyperedge shows are read."""
        batch = inputs[self.names[0]].shape[0]
        shown = hyperedges.any(dim=0)
        safe = {
            n: (inputs[n] if bool(shown[m]) else torch.zeros_like(inputs[n]))
            for m, n in enumerate(self.names)
        }
        probs, depth = 0.0, 0.0
        for edge in hyperedges:
            out = self(safe, edge.to(inputs[self.names[0]].device).expand(batch, -1))
            probs = probs + out["semantic"].float().softmax(dim=1)
            depth = depth + out["depth"].float()
        return probs / len(hyperedges), depth / len(hyperedges)


def _mae_loss(model: MultiModalMAE, batch: Any, max_depth: float, keep_prob: float, generator) -> Tensor:
    inputs = encode_modalities(batch, model.num_classes, max_depth)
    available = available_modalities(batch, model.names)
    visible = sample_hyperedges(available, keep_prob, generator)
    targets = dict(inputs, semantic=batch["semantic"])
    terms = modality_reconstruction_losses(model(inputs, visible), targets, available, model.names)
    return sum(terms.values())


@torch.no_grad()
def _evaluate(
    model: MultiModalMAE, data: L.LightningDataModule, inputs: Sequence[str], max_depth: float
) -> dict:
    tracker, errors = IoUTracker(), []
    edges = enumerate_hyperedges(model.names, inputs)
    for batch in data.val_dataloader():
        probs, depth = model.ensemble(encode_modalities(batch, model.num_classes, max_depth), edges)
        tracker.update("val", probs, batch["semantic"])
        errors.append(float(masked_l1(depth * max_depth, batch["depth"], batch["semantic"] >= 0)))
    return {"val_miou": float(tracker.compute("val")["miou"]), "val_depth_mae": sum(errors) / len(errors)}


def phg_mae_teacher(
    model: MultiModalMAE,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 40,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    keep_prob: float = 0.5,
    max_depth: float = 40.0,
    inputs: Sequence[str] = ("rgb", "normals"),
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> MultiModalMAE:
    """``model`` trained as PHG-MAE on ``data`` (one hyperedge per sample and step, every modality
    reconstructed), or loaded; the record holds the ensemble's validation mIoU and depth error
    (over the non-empty subsets of ``inputs``).

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``epochs`` < 1 or ``keep_prob`` outside (0, 1].
        FloatingPointError: a non-finite loss (nothing cached).
    """
    if checkpoint is not None:
        return _from_checkpoint(model, checkpoint)
    _need_data(data, "phg_mae_teacher")
    _check_epochs(epochs)
    check_option(0 < keep_prob <= 1, "keep_prob", keep_prob, "in (0, 1]")
    settings = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "keep_prob": keep_prob,
                "max_depth": max_depth, "inputs": list(inputs), "seed": seed, "objective": "phg_mae"}  # fmt: skip

    def fit() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        _fit(model, data, epochs=epochs, lr=lr, weight_decay=weight_decay,
             loss=lambda m, b: _mae_loss(m, b, max_depth, keep_prob, generator))  # fmt: skip
        return _evaluate(model, data, inputs, max_depth)

    path, info = cached_training(
        model, data, settings, fit, seed=seed, what=f"{epochs} epochs", cache_dir=cache_dir, retrain=retrain
    )
    model.distill_source = f"PHG-MAE trained on first use, cached at {path} (val ensemble mIoU {info.get('val_miou', float('nan')):.3f})"
    return model.eval()


class MultiModalPictures(SegmentationPictures):
    """:class:`~lightning_distill.segmentation.pictures.SegmentationPictures` for multi-modal dict
    batches: RGB | semantic label | the module's ``student_predict`` classes, each validation."""

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        loggers = _image_loggers(trainer)
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not loggers:
            return
        few = {k: v[: self.max_images] for k, v in batch.items()}
        logits = pl_module.student_predict(few)[0]
        picture = overlay_picture(
            few["rgb"], few["semantic"], logits.argmax(dim=1), num_classes=logits.shape[1], zoom=self.zoom
        )
        self.last_picture = picture
        if not trainer.is_global_zero:
            return
        for logger in loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"val/{self.key}", images=[picture], step=trainer.global_step)
            else:
                logger.experiment.add_image(
                    f"val/{self.key}", picture, global_step=trainer.global_step, dataformats="HWC"
                )
