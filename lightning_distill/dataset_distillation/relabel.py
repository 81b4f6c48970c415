"""The relabel step of SRe2L / CDA: a cache of teacher soft labels for replayed crops, and training on it.

After recovery, SRe2L relabels the synthetic images the FKD way (Shen & Xing, arXiv 2112.01528):
for every epoch the student will train, the images are shuffled into batches, every image gets a
random resized crop (and flip), each batch may be mixed (CutMix or Mixup), and the teacher's
logits on exactly those inputs are stored in fp16 together with the crop boxes, flips and mix
parameters. The student then replays the stored augmentation and learns from the stored logits
with a KL loss at temperature ``T``; the teacher is not needed any more.

* :func:`build_relabel_cache` -> :class:`RelabelCache`: the per-epoch batches, crops, mix
  parameters and fp16 logits; saved and loaded with ``torch.save``/``torch.load(weights_only=True)``;
  :attr:`RelabelCache.label_bytes` and :attr:`RelabelCache.nbytes` give the storage.
* :meth:`RelabelCache.batch` replays one stored batch: ``(inputs, soft logits, sample indices)``.
* :func:`retrain_on_relabel_cache` / :func:`evaluate_relabel_cache`: evaluation by retraining on
  the cache (the same :class:`~lightning_distill.dataset_distillation.RetrainClassifier` as
  :func:`~lightning_distill.dataset_distillation.evaluate_synthetic`, with the stored inputs and soft labels
  instead of DSA and per-image labels).

The crops are :class:`~lightning_distill.callbacks.RandomResizedCropFlip` parameters (the same
sampler and resize as the teacher-output cache). The cache is per batch rather than per sample,
because a mixed input depends on its batch; for unmixed per-sample caching of a large dataset on
disk, :class:`~lightning_distill.callbacks.TeacherCache` stores the same crops and logits
memory-mapped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_distill.dataset_distillation.evaluate import (
    EvalResult,
    RetrainClassifier,
    classification_accuracy,
    fit_fresh_model,
)
from lightning_distill.utils.augment import RandomResizedCropFlip

__all__ = ["RelabelCache", "build_relabel_cache", "evaluate_relabel_cache", "retrain_on_relabel_cache"]

Mix = Literal["none", "cutmix", "mixup"]
_MIXES = ("none", "cutmix", "mixup")
_FORMAT = "lightning_distill.relabel_cache"


@dataclass
class RelabelCache:
    """Stored teacher soft labels with the augmentation that produced each input, per epoch and batch.

    Epoch ``e``'s batch ``b`` holds the samples ``order[e, b * batch_size : (b + 1) * batch_size]``
    (the last batch may be smaller); every per-sample tensor is indexed by that position.

    Attributes:
        order: ``(E, N)`` int64, a permutation of the sample indices per epoch.
        crops: ``(E, N, 5)`` int16, ``[top, left, height, width, flip]`` of each position's crop.
        logits: ``(E, N, K)`` the teacher's logits (float16 by default).
        batch_size: samples per batch.
        crop: the crop's settings (``RandomResizedCropFlip.config()``).
        mix: ``"none"``, ``"cutmix"`` or ``"mixup"``.
        partner: ``(E, N)`` int64, the position (within its batch) of the image mixed into each
            position, or ``None`` without mixing.
        lam: ``(E, num_batches)`` float32 mix coefficients (the kept fraction), or ``None``.
        box: ``(E, num_batches, 4)`` int16 CutMix boxes ``[top, left, bottom, right]``, or ``None``.
    """

    order: Tensor
    crops: Tensor
    logits: Tensor
    batch_size: int
    crop: dict[str, Any]
    mix: str = "none"
    partner: Tensor | None = None
    lam: Tensor | None = None
    box: Tensor | None = None

    def __post_init__(self) -> None:
        if self.order.ndim != 2 or self.crops.shape != (*self.order.shape, 5) or self.logits.ndim != 3:
            raise ValueError(
                f"Inconsistent cache shapes: order {tuple(self.order.shape)}, crops {tuple(self.crops.shape)}, "
                f"logits {tuple(self.logits.shape)}; expected (E, N), (E, N, 5), (E, N, K)."
            )
        if self.logits.shape[:2] != self.order.shape:
            raise ValueError(f"`logits` must be (E, N, K) with (E, N)={tuple(self.order.shape)}.")
        if self.mix not in _MIXES:
            raise ValueError(f"`mix` must be one of {_MIXES}, got {self.mix!r}.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}.")
        if (self.mix == "none") != (self.partner is None or self.lam is None):
            raise ValueError(f"`partner` and `lam` must be given exactly when mixing (mix={self.mix!r}).")
        if self.mix == "cutmix" and self.box is None:
            raise ValueError("CutMix needs the stored `box`es.")

    # ------------------------------------------------------------------ sizes
    @property
    def epochs(self) -> int:
        """``E``, the number of stored epochs (epoch ``e`` replays stored epoch ``e % E``)."""
        return int(self.order.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.order.shape[1])

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        return -(-self.num_samples // self.batch_size)

    @property
    def label_bytes(self) -> int:
        """Bytes of the stored logits alone."""
        return self.logits.numel() * self.logits.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes of everything stored: logits, batch order, crops and mix parameters."""
        tensors = [self.order, self.crops, self.logits, self.partner, self.lam, self.box]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    # ------------------------------------------------------------------ replay
    def augmentation(self) -> RandomResizedCropFlip:
        """The crop the cache was built with."""
        return RandomResizedCropFlip(
            self.crop["size"], scale=self.crop["scale"], ratio=self.crop["ratio"], flip_p=self.crop["flip_p"]
        )

    def positions(self, batch: int) -> slice:
        """Positions of batch ``batch`` within an epoch.

        Raises:
            ValueError: ``batch`` outside ``[0, num_batches)``.
        """
        if not 0 <= batch < self.num_batches:
            raise ValueError(f"`batch` must be in [0, {self.num_batches}), got {batch}.")
        return slice(batch * self.batch_size, min((batch + 1) * self.batch_size, self.num_samples))

    def batch(self, images: Tensor, epoch: int, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Replay stored batch ``batch`` of epoch ``epoch`` (stored epoch ``epoch % E``).

        Args:
            images: the ``(N, C, H, W)`` images the cache was built for.
            epoch: the training epoch (>= 0).
            batch: the batch index within the epoch.

        Returns:
            ``(inputs (B, C, h, w), soft logits (B, K) float32, sample indices (B,))``.

        Raises:
            ValueError: ``images`` does not have ``N`` rows, or ``epoch < 0``.
        """
        if images.ndim != 4 or images.shape[0] != self.num_samples:
            raise ValueError(f"`images` must be (N={self.num_samples}, C, H, W), got {tuple(images.shape)}.")
        if epoch < 0:
            raise ValueError(f"`epoch` must be >= 0, got {epoch}.")
        e, pos = epoch % self.epochs, self.positions(batch)
        index = self.order[e, pos]
        params = self.crops[e, pos].float().to(images.device)
        x = self.augmentation().apply(images[index.to(images.device)], params)
        if self.mix != "none":
            partner = self.partner[e, pos].to(images.device)
            x = _mix(
                x,
                partner,
                float(self.lam[e, batch]),
                self.mix,
                None if self.box is None else self.box[e, batch],
            )
        return x, self.logits[e, pos].float().to(images.device), index

    # ------------------------------------------------------------------ artifact
    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache to ``path`` (``torch.save`` of plain tensors and values)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "format": _FORMAT,
            "batch_size": self.batch_size,
            "mix": self.mix,
            "crop_size": list(self.crop["size"]),
            "crop_scale": list(self.crop["scale"]),
            "crop_ratio": list(self.crop["ratio"]),
            "crop_flip_p": float(self.crop["flip_p"]),
        }
        for name in ("order", "crops", "logits", "partner", "lam", "box"):
            value = getattr(self, name)
            if value is not None:
                payload[name] = value.contiguous()
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelabelCache:
        """Read a cache written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a relabel cache.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No relabel cache at {str(path)!r}.")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a relabel cache written by `RelabelCache.save`.")
        crop = {
            "name": "RandomResizedCropFlip",
            "size": list(payload["crop_size"]),
            "scale": list(payload["crop_scale"]),
            "ratio": list(payload["crop_ratio"]),
            "flip_p": payload["crop_flip_p"],
        }
        return cls(
            order=payload["order"],
            crops=payload["crops"],
            logits=payload["logits"],
            batch_size=int(payload["batch_size"]),
            crop=crop,
            mix=payload["mix"],
            partner=payload.get("partner"),
            lam=payload.get("lam"),
            box=payload.get("box"),
        )


def _mix(x: Tensor, partner: Tensor, lam: float, mix: str, box: Tensor | None) -> Tensor:
    """CutMix (paste ``box`` from the partner) or Mixup (``lam x + (1 - lam) x_partner``) of a batch."""
    if mix == "mixup":
        return lam * x + (1.0 - lam) * x[partner]
    top, left, bottom, right = (int(v) for v in box)
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[partner][:, :, top:bottom, left:right]
    return out


@torch.no_grad()
def build_relabel_cache(
    teacher: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    epochs: int,
    batch_size: int,
    crop: RandomResizedCropFlip | None = None,
    mix: Mix = "none",
    mix_alpha: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    chunk: int = 1024,
) -> RelabelCache:
    """Relabel ``images`` for ``epochs`` epochs: batches, crops, mix parameters and teacher logits.

    Per epoch: a random permutation split into batches of ``batch_size``; per image a crop (and
    flip) from ``crop``; per batch a mix (CutMix: ``lam ~ Beta(a, a)`` with ``a`` = 1, a box of area
    ``1 - lam`` at a uniform centre, clipped, pasted from a permuted partner; Mixup: ``a`` = 0.8,
    ``lam x + (1 - lam) x_partner``); then the teacher's logits on those inputs, stored in ``dtype``.
    The official ``generate_soft_label.py`` with ``--use-fp16``.

    Args:
        teacher: the frozen teacher ``(B, C, h, w) -> (B, K)`` (an ``nn.Module`` is put in eval
            mode for the call and restored afterwards).
        images: the ``(N, C, H, W)`` images to relabel.
        epochs: stored epochs ``E``.
        batch_size: images per batch (the student later trains with the same batches).
        crop: the crop; default ``RandomResizedCropFlip((H, W), scale=(0.08, 1))`` with flips.
        mix: ``"none"``, ``"cutmix"`` or ``"mixup"``.
        mix_alpha: the Beta parameter (default 1.0 for CutMix, 0.8 for Mixup).
        seed: seed of every random choice.
        dtype: storage dtype of the logits.
        chunk: images per teacher call.

    Returns:
        The :class:`RelabelCache`.

    Raises:
        ValueError: bad sizes or an unknown ``mix``.

    Example:
        >>> teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> cache = build_relabel_cache(teacher, torch.randn(5, 1, 4, 4), epochs=2, batch_size=2, mix="cutmix")
        >>> cache.logits.shape, cache.logits.dtype, cache.num_batches
        (torch.Size([2, 5, 3]), torch.float16, 3)
        >>> x, soft, index = cache.batch(torch.randn(5, 1, 4, 4), epoch=3, batch=0)
        >>> x.shape, soft.shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2, 3]))
    """
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"`images` must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if mix not in _MIXES:
        raise ValueError(f"`mix` must be one of {_MIXES}, got {mix!r}.")
    n, _, h, w = images.shape
    crop = crop if crop is not None else RandomResizedCropFlip((h, w))
    alpha = mix_alpha if mix_alpha is not None else (1.0 if mix == "cutmix" else 0.8)
    if mix != "none" and not alpha > 0:
        raise ValueError(f"`mix_alpha` must be > 0, got {alpha}.")
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_batches = -(-n // batch_size)
    order = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])  # (E, N)
    crops = torch.stack(
        [crop.sample_params(n, h, w, generator=generator) for _ in range(epochs)]
    )  # (E, N, 5)
    partner = lam = box = None
    if mix != "none":
        partner = torch.empty(epochs, n, dtype=torch.int64)
        lam = torch.from_numpy(rng.beta(alpha, alpha, size=(epochs, num_batches)).astype(np.float32))
        box = torch.zeros(epochs, num_batches, 4, dtype=torch.int16)
        out_h, out_w = crop.size
        for e in range(epochs):
            for b in range(num_batches):
                size = min(batch_size, n - b * batch_size)
                partner[e, b * batch_size : b * batch_size + size] = torch.randperm(size, generator=generator)
                if mix == "cutmix":
                    box[e, b] = torch.tensor(_cutmix_box(out_h, out_w, float(lam[e, b]), rng))
    cache_logits: Tensor | None = None
    cache = RelabelCache(
        order=order,
        crops=crops.round().to(torch.int16),
        logits=torch.zeros(epochs, n, 1, dtype=dtype),  # filled below
        batch_size=batch_size,
        crop=crop.config(),
        mix=mix,
        partner=partner,
        lam=lam,
        box=box,
    )
    was_training = teacher.training if isinstance(teacher, nn.Module) else None
    if isinstance(teacher, nn.Module):
        teacher.eval()
    try:
        rows = []
        for e in range(epochs):
            inputs = torch.cat([cache.batch(images, e, b)[0] for b in range(num_batches)])  # (N, C, h, w)
            rows.append(torch.cat([teacher(part).float() for part in inputs.split(chunk)]).to(dtype))
        cache_logits = torch.stack(rows)  # (E, N, K)
    finally:
        if was_training is not None:
            teacher.train(was_training)
    if not bool(torch.isfinite(cache_logits).all()):
        raise ValueError(f"Teacher logits are not finite in {dtype}; store them in float32 instead.")
    cache.logits = cache_logits
    return cache


def _cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> list[int]:
    """A box of area about ``(1 - lam) H W`` at a uniform centre, clipped to the image (``rand_bbox``)."""
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return [top, left, bottom, right]


# ---------------------------------------------------------------------------- training on the cache
class _CachedBatches(Dataset):
    """Item ``(epoch, batch)``: the replayed inputs, the hard labels and the stored soft logits."""

    def __init__(self, images: Tensor, labels: Tensor, cache: RelabelCache) -> None:
        self.images, self.labels, self.cache = images, labels, cache

    def __len__(self) -> int:
        return self.cache.num_batches

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        epoch, batch = item
        x, soft, index = self.cache.batch(self.images, epoch, batch)
        return x, self.labels[index], soft


class _EpochBatches(Sampler):
    """Yields ``(epoch, b)`` for ``b = 0 .. num_batches - 1``; Lightning calls ``set_epoch``."""

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return iter((self.epoch, b) for b in range(self.num_batches))


def retrain_on_relabel_cache(
    images: Tensor,
    labels: Tensor,
    cache: RelabelCache,
    model_fn: Callable[[], nn.Module],
    *,
    epochs: int,
    lr: float = 0.01,
    seed: int = 0,
    temperature: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    accelerator: str = "cpu",
    devices: int | list[int] = 1,
) -> nn.Module:
    """Train a fresh model on the cache's replayed inputs with ``T^2 KL`` at ``temperature`` to its logits.

    The optimizer and schedule are those of :class:`~lightning_distill.dataset_distillation.RetrainClassifier`
    (SGD, lr / 10 at half time); no further augmentation. Training epoch ``e`` replays stored epoch
    ``e % cache.epochs``. The global random state is seeded with ``seed`` before ``model_fn()`` and
    restored afterwards.

    Returns:
        The trained model, on the CPU, in eval mode.

    Raises:
        ValueError: ``images``/``labels`` do not match the cache.
    """
    if images.ndim != 4 or labels.shape != (images.shape[0],) or images.shape[0] != cache.num_samples:
        raise ValueError(
            f"`images` (N, C, H, W) and `labels` (N,) must have N={cache.num_samples} rows like the cache, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}."
        )
    images = images.detach().cpu().float().clone()
    labels = labels.detach().cpu().long().clone()
    loader = DataLoader(
        _CachedBatches(images, labels, cache), batch_size=None, sampler=_EpochBatches(cache.num_batches)
    )

    def wrap(model: nn.Module) -> RetrainClassifier:
        return RetrainClassifier(
            model,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            augment=None,
            temperature=temperature,
            seed=seed,
        )

    return fit_fresh_model(
        model_fn, wrap, loader, epochs=epochs, seed=seed, accelerator=accelerator, devices=devices
    )


def evaluate_relabel_cache(
    images: Tensor,
    labels: Tensor,
    cache: RelabelCache,
    datamodule: L.LightningDataModule,
    model_fn: Callable[[], nn.Module],
    *,
    epochs: int,
    seeds: Sequence[int] = (0, 1, 2),
    **kwargs: Any,
) -> EvalResult:
    """:func:`retrain_on_relabel_cache` per seed; accuracy on ``datamodule``'s real test split.

    Args:
        images, labels, cache, model_fn, epochs: as in :func:`retrain_on_relabel_cache`.
        datamodule: supplies ``test_dataloader()``.
        seeds: one model per seed.
        **kwargs: ``lr``, ``temperature``, ``momentum``, ``weight_decay``, ``accelerator``.

    Raises:
        ValueError: no seed.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    datamodule.setup("test")
    accuracies = []
    for seed in seeds:
        model = retrain_on_relabel_cache(images, labels, cache, model_fn, epochs=epochs, seed=seed, **kwargs)
        accuracies.append(classification_accuracy(model, datamodule.test_dataloader()))
    return EvalResult(tuple(accuracies), seeds)
