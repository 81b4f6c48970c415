"""A disk cache of a frozen teacher's outputs, with replayable random augmentation.

A frozen teacher gives the same output for the same input, so its forward pass only needs to run
once per (sample, augmentation). FKD (arXiv 2112.01528) and SRe2L's relabel step store the crop
box and flip flag of each sample together with the teacher's soft labels, and replay the stored
augmentation when the student trains. :class:`TeacherCache` does that with memory-mapped files:

- per sample ``i`` and epoch slot ``s = epoch % num_slots``: the teacher's logits (fp16, or the
  top-k values and class indices), the augmentation parameters that produced the input, and a
  "filled" flag;
- a manifest (JSON) with fingerprints of the dataset, the teacher and the augmentation and the
  output format; a cache that does not match is refused with an error that names what differs.

Augmentation parameters of a sample that is not cached yet are a pure function of
``(seed, slot, sample index)``, so any rank that writes a sample writes the same bytes: ranks of a
DDP job write only the samples of their own batches, and the duplicates that a
``DistributedSampler`` adds to even out the shards are harmless.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "IndexedDataset",
    "RandomResizedCropFlip",
    "ReplayableAugmentation",
    "TeacherCache",
    "TeacherCacheCallback",
    "TeacherCacheMismatchError",
    "counter_uniforms",
    "fingerprint_dataset",
    "fingerprint_module",
]

_FORMAT = "lightning_distill.TeacherCache"
_VERSION = 1
_MANIFEST = "manifest.json"
_DATA_FILES = ("values.npy", "classes.npy", "params.npy", "filled.npy")
_DTYPES = ("float16", "float32")


# --------------------------------------------------------------------------------------------------
# Counter-based random numbers: the same (seed, slot, index) always gives the same numbers.
# --------------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniforms(
    seed: int, slot: int, indices: np.ndarray | Tensor | Sequence[int], count: int
) -> Tensor:
    """Uniform numbers in ``[0, 1)`` that depend only on ``(seed, slot, index, j)``.

    A counter-based generator (SplitMix64 finaliser): no state, so a sample's augmentation does
    not depend on the batch it lands in, the rank that reads it or how many samples came before.

    Args:
        seed: Non-negative base seed.
        slot: Non-negative epoch slot.
        indices: Sample indices, shape ``(B,)``.
        count: How many numbers per sample.

    Returns:
        Float64 tensor of shape ``(B, count)`` on the CPU.

    Example:
        >>> u = counter_uniforms(0, 0, [3, 7, 3], 2)
        >>> u.shape, bool((u[0] == u[2]).all()), bool((u[0] != u[1]).all())
        (torch.Size([3, 2]), True, True)
    """
    if seed < 0 or slot < 0 or count < 0:
        raise ValueError(f"`seed`, `slot` and `count` must be >= 0, got {seed}, {slot} and {count}.")
    if isinstance(indices, Tensor):
        indices = indices.detach().cpu().numpy()
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)  # (B,)
    key = _splitmix64(np.full_like(idx, np.uint64(seed)))
    key = _splitmix64(key ^ np.uint64(slot))
    key = _splitmix64(key ^ idx)  # (B,)
    counters = np.arange(count, dtype=np.uint64)[None, :]  # (1, count)
    bits = _splitmix64(key[:, None] ^ (counters * np.uint64(0xD1B54A32D192ED03)))  # (B, count)
    return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53)


# --------------------------------------------------------------------------------------------------
# Replayable augmentation
# --------------------------------------------------------------------------------------------------
class ReplayableAugmentation(ABC):
    """A batched random augmentation that can sample its parameters or apply given ones.

    Subclasses say how many uniform numbers one sample needs (``num_uniforms``), turn them into a
    row of ``num_params`` float parameters, apply a batch of parameters to a batch of inputs, and
    describe themselves for the cache manifest (``config``).
    """

    num_params: int
    num_uniforms: int

    @abstractmethod
    def params_from_uniforms(self, uniforms: Tensor, height: int, width: int) -> Tensor:
        """Turn uniforms ``(B, num_uniforms)`` into parameters ``(B, num_params)`` (float32)."""

    @abstractmethod
    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Apply parameters ``(B, num_params)`` to ``images`` ``(B, C, H, W)``."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; a change invalidates cached teacher outputs."""

    def sample_params(
        self, batch_size: int, height: int, width: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample parameters ``(B, num_params)`` from a ``torch.Generator``."""
        uniforms = torch.rand((batch_size, self.num_uniforms), generator=generator, dtype=torch.float64)
        return self.params_from_uniforms(uniforms, height, width)

    def params_for(
        self, indices: Tensor | Sequence[int], *, seed: int, slot: int, height: int, width: int
    ) -> Tensor:
        """The parameters :class:`TeacherCache` gives a sample that is not cached yet, ``(B, num_params)``."""
        return self.params_from_uniforms(
            counter_uniforms(seed, slot, indices, self.num_uniforms), height, width
        )

    def __call__(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Sample parameters and apply them."""
        params = self.sample_params(images.shape[0], images.shape[-2], images.shape[-1], generator=generator)
        return self.apply(images, params.to(images.device))


class RandomResizedCropFlip(ReplayableAugmentation):
    """Random resized crop and horizontal flip, in pure torch, replayable from parameters.

    Sampling follows ``torchvision.transforms.RandomResizedCrop``: up to ten tries of an area
    fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, else a centre crop. The crop
    is resized with bilinear interpolation (``align_corners=False``, no antialiasing), so it equals
    ``F.interpolate(image[..., top:top + h, left:left + w], size, mode="bilinear")``.

    Parameters per sample (float32): ``[top, left, height, width, flip]``.

    Args:
        size: Output size, ``int`` or ``(height, width)``.
        scale: Range of the crop's area fraction, ``0 < low <= high <= 1``.
        ratio: Range of the crop's aspect ratio (width / height), ``0 < low <= high``.
        flip_p: Probability of a horizontal flip.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> aug = RandomResizedCropFlip(4)
        >>> images = torch.arange(64.0).view(1, 1, 8, 8)
        >>> params = torch.tensor([[2.0, 2.0, 4.0, 4.0, 1.0]])  # top, left, h, w, flip
        >>> aug.apply(images, params)[0, 0, 0]
        tensor([21., 20., 19., 18.])
    """

    num_params = 5
    _TRIES = 10
    num_uniforms = 4 * _TRIES + 1

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
    ):
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"`size` must be a positive int or (height, width), got {size}.")
        scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`scale` must be (low, high) with 0 < low <= high <= 1, got {scale}.")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must be (low, high) with 0 < low <= high, got {ratio}.")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"`flip_p` must be in [0, 1], got {flip_p}.")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_p = float(flip_p)

    def config(self) -> dict[str, Any]:
        return {
            "name": type(self).__name__,
            "size": list(self.size),
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip_p": self.flip_p,
        }

    def params_from_uniforms(self, uniforms: Tensor, height: int, width: int) -> Tensor:
        """Crop boxes and flip flags ``(B, 5)`` from uniforms ``(B, 41)``."""
        if uniforms.ndim != 2 or uniforms.shape[1] != self.num_uniforms:
            raise ValueError(
                f"`uniforms` must have shape (B, {self.num_uniforms}), got {tuple(uniforms.shape)}."
            )
        u = uniforms.to(torch.float64)
        tries = u[:, : 4 * self._TRIES].view(-1, self._TRIES, 4)  # (B, T, 4)
        area = height * width
        target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * tries[..., 0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
        w = torch.round(torch.sqrt(target_area * aspect))  # (B, T)
        h = torch.round(torch.sqrt(target_area / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top = torch.floor(tries[..., 2] * (height - h + 1))
        left = torch.floor(tries[..., 3] * (width - w + 1))
        first = torch.argmax(ok.to(torch.int8), dim=1)  # first valid try, (B,)
        rows = torch.arange(u.shape[0])
        box = torch.stack([top, left, h, w], dim=-1)[rows, first]  # (B, 4)
        fallback = torch.tensor(self._centre_crop(height, width), dtype=torch.float64)
        box = torch.where(ok.any(dim=1, keepdim=True), box, fallback)
        flip = (u[:, -1:] < self.flip_p).to(torch.float64)
        return torch.cat([box, flip], dim=1).to(torch.float32)

    def _centre_crop(self, height: int, width: int) -> list[float]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return [float((height - h) // 2), float((width - w) // 2), float(h), float(w)]

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Crop, resize and flip ``images`` ``(B, C, H, W)`` with ``params`` ``(B, 5)``.

        Returns:
            Shape ``(B, C, *size)``, the dtype of ``images``.

        Raises:
            ValueError: If the shapes do not match or a crop box leaves the image.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"`images` must be a float tensor (B, C, H, W), got {images.dtype} {tuple(images.shape)}."
            )
        if params.shape != (images.shape[0], self.num_params):
            raise ValueError(f"`params` must have shape ({images.shape[0]}, 5), got {tuple(params.shape)}.")
        height, width = images.shape[-2:]
        p = params.to(device=images.device, dtype=torch.float32)
        top, left, h, w, flip = p.unbind(dim=1)  # each (B,)
        if bool(((top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > height) | (left + w > width)).any()):
            raise ValueError(f"crop boxes must lie inside the {height}x{width} image, got {params.tolist()}.")
        batch, channels = images.shape[:2]
        out_h, out_w = self.size
        y0, y1, wy = self._axis(top, h, out_h)  # (B, out_h): input rows and the weight of y1
        x0, x1, wx = self._axis(left, w, out_w)  # (B, out_w)
        flipped = flip[:, None] > 0.5
        x0, x1, wx = (torch.where(flipped, t.flip(dims=[1]), t) for t in (x0, x1, wx))

        # Separable bilinear resampling: rows first, then columns.
        def pick_rows(index: Tensor) -> Tensor:  # (B, out_h) -> (B, C, out_h, W)
            return images.gather(2, index[:, None, :, None].expand(batch, channels, out_h, width))

        wy = wy[:, None, :, None].to(images.dtype)
        rows = pick_rows(y0) * (1 - wy) + pick_rows(y1) * wy  # (B, C, out_h, W)

        def pick_columns(index: Tensor) -> Tensor:  # (B, out_w) -> (B, C, out_h, out_w)
            return rows.gather(3, index[:, None, None, :].expand(batch, channels, out_h, out_w))

        wx = wx[:, None, None, :].to(images.dtype)
        return pick_columns(x0) * (1 - wx) + pick_columns(x1) * wx

    @staticmethod
    def _axis(start: Tensor, length: Tensor, out: int) -> tuple[Tensor, Tensor, Tensor]:
        """Bilinear taps resizing ``[start, start + length)`` to ``out`` pixels, as ``F.interpolate`` does.

        Returns:
            First and second input pixel (int64) and the weight of the second, each ``(B, out)``.
        """
        dst = torch.arange(out, device=start.device, dtype=torch.float32)
        src = ((dst[None, :] + 0.5) * (length[:, None] / out) - 0.5).clamp_min(0.0)
        first = src.floor()
        second = torch.minimum(first + 1, (length - 1)[:, None])
        weight = src - first
        return (start[:, None] + first).long(), (start[:, None] + second).long(), weight


# --------------------------------------------------------------------------------------------------
# Dataset utilities and fingerprints
# --------------------------------------------------------------------------------------------------
class IndexedDataset(Dataset):
    """Wrap a dataset so each sample also carries its index.

    A tuple sample ``(x, y)`` becomes ``(x, y, index)``, a mapping gets an ``"index"`` key, any
    other sample ``s`` becomes ``(s, index)``. After default collation the index is a ``(B,)``
    int64 tensor, the key :class:`TeacherCache` needs.

    Example:
        >>> data = IndexedDataset([(torch.zeros(2), 1), (torch.ones(2), 0)])
        >>> data[1]
        (tensor([1., 1.]), 0, 1)
    """

    def __init__(self, dataset: Any):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"`dataset` must support len() and indexing, got {type(dataset).__name__}.")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if isinstance(sample, tuple):
            return (*sample, index)
        if isinstance(sample, Mapping):
            return {**sample, "index": index}
        return (sample, index)


def _update_hash(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        value = value.detach().cpu().contiguous()
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("cannot fingerprint object arrays")
        h.update(f"A{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).view(np.uint8))
    elif isinstance(value, bool | int | float | complex | str | bytes | type(None) | np.generic):
        h.update(f"S{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, Mapping):
        h.update(b"M")
        for key in sorted(value, key=repr):
            _update_hash(h, key)
            _update_hash(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _update_hash(h, item)
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def fingerprint_dataset(dataset: Any, *, num_probes: int = 8) -> str:
    """A fingerprint of a dataset: its length and a hash of a few evenly spaced samples.

    Samples must be deterministic (no random transforms inside the dataset); use the cache's
    augmentation for randomness, or give the cache a ``dataset_id`` instead.

    Args:
        dataset: Supports ``len()`` and indexing; an :class:`IndexedDataset` is unwrapped.
        num_probes: How many samples to hash.

    Returns:
        ``"len=<N>;sha256=<hex>"``.

    Raises:
        ValueError: If a sample differs between two reads.
        TypeError: If a sample holds something that cannot be hashed.

    Example:
        >>> fingerprint_dataset([torch.zeros(2), torch.ones(2)])[:6]
        'len=2;'
    """
    while isinstance(dataset, IndexedDataset):
        dataset = dataset.dataset
    n = len(dataset)
    h = hashlib.sha256(f"len={n}".encode())
    if n == 0:
        return f"len=0;sha256={h.hexdigest()}"
    probes = sorted({int(round(p)) for p in np.linspace(0, n - 1, min(num_probes, n))})
    for position in probes:
        try:
            _update_hash(h, dataset[position])
        except TypeError as err:
            raise TypeError(
                f"{err} in dataset[{position}]; pass a `dataset_id` to the cache instead."
            ) from err
    first, again = hashlib.sha256(), hashlib.sha256()
    _update_hash(first, dataset[probes[0]])
    _update_hash(again, dataset[probes[0]])
    if first.digest() != again.digest():
        raise ValueError(
            f"dataset[{probes[0]}] differs between two reads, so the dataset applies random transforms: give "
            "the cache the random augmentation (a ReplayableAugmentation) instead, or pass a `dataset_id`."
        )
    return f"len={n};sha256={h.hexdigest()}"


def fingerprint_module(module: nn.Module) -> str:
    """A fingerprint of a module: a SHA-256 hash of its class name and ``state_dict`` tensors.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> fingerprint_module(a) == fingerprint_module(b)
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, Tensor):
            _update_hash(h, value)
        else:  # extra state
            h.update(repr(value).encode())
    return f"sha256={h.hexdigest()}"


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------
class TeacherCacheMismatchError(ValueError):
    """The cache on disk was built for another dataset, teacher, augmentation or output format."""


class TeacherCache:
    """Memory-mapped teacher outputs (and augmentation parameters) keyed by sample index and epoch slot.

    Files under ``directory``: ``manifest.json``, ``values.npy`` (``(S, N, C)`` logits or
    ``(S, N, k)`` top-k values), ``classes.npy`` (``(S, N, k)`` top-k class indices, only with
    ``top_k``), ``params.npy`` (``(S, N, P)`` float32 augmentation parameters, only with an
    augmentation) and ``filled.npy`` (``(S, N)`` uint8 flags), where ``S = num_slots``,
    ``N = len(dataset)``. Epoch ``e`` uses slot ``e % num_slots``: with ``num_slots=1`` every epoch
    replays the augmentation of the first; ``num_slots=E`` stores ``E`` different augmentations
    of each sample (FKD), filled during the first ``E`` epochs.

    In a multi-process job, let one process create the cache (``create=True``) and the others open
    it after a barrier (``create=False``); :class:`TeacherCacheCallback` does that. Each process
    then writes only the samples of its own batches.

    Args:
        directory: Where the files live; created if missing. Other files there are left alone.
        dataset: The training dataset (raw, un-augmented samples), for its length and fingerprint.
        teacher: The frozen teacher, for its fingerprint; or ``None`` with ``teacher_id``.
        output_dim: ``C``, the teacher's output width.
        top_k: Keep only the ``k`` largest logits and their class indices; the others read back
            as ``top_k_fill``.
        top_k_fill: Value of the dropped logits when reading top-k outputs; the default ``-inf``
            gives the renormalised top-k distribution under a softmax.
        dtype: Storage dtype of logits, ``"float16"`` or ``"float32"``.
        augmentation: A :class:`ReplayableAugmentation` applied in :meth:`teacher_outputs`, or
            ``None`` for deterministic inputs.
        num_slots: Number of epochs with distinct augmentations; must be 1 without augmentation.
        dataset_id: A user-given dataset identity that replaces the hash of probe samples.
        teacher_id: A user-given teacher identity that replaces the hash of its weights.
        seed: Seed of the augmentation parameters of samples not cached yet.
        rebuild: Delete and rebuild a cache whose manifest does not match instead of raising.
        create: Create the cache when it does not exist; ``False`` raises instead.

    Raises:
        TeacherCacheMismatchError: If the cache exists, does not match and ``rebuild`` is False.
        FileNotFoundError: If the cache does not exist and ``create`` is False.
        ValueError: If an argument is out of range.

    Example:
        >>> import tempfile
        >>> teacher, data = nn.Linear(4, 3), torch.randn(10, 4)
        >>> cache = TeacherCache(tempfile.mkdtemp(), data, teacher, output_dim=3)
        >>> idx = torch.tensor([0, 5])
        >>> _, out = cache.teacher_outputs(teacher, data[idx], idx, epoch=0)  # runs the teacher
        >>> cached, hit = cache.lookup(idx, epoch=1)
        >>> hit.tolist(), torch.equal(cached, out)
        ([True, True], True)
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        dataset: Any,
        teacher: nn.Module | None,
        *,
        output_dim: int,
        top_k: int | None = None,
        top_k_fill: float = float("-inf"),
        dtype: Literal["float16", "float32"] = "float16",
        augmentation: ReplayableAugmentation | None = None,
        num_slots: int = 1,
        dataset_id: str | None = None,
        teacher_id: str | None = None,
        seed: int = 0,
        rebuild: bool = False,
        create: bool = True,
    ):
        _check_options(output_dim, top_k, dtype, augmentation, num_slots, seed)
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"`dataset` must support len(), got {type(dataset).__name__}.")
        if (teacher is None) == (teacher_id is None):
            raise ValueError("give exactly one of `teacher` (to hash its weights) and `teacher_id`.")
        self.directory = Path(directory)
        self.num_samples = len(dataset)
        self.output_dim = int(output_dim)
        self.top_k = top_k
        self.top_k_fill = float(top_k_fill)
        self.dtype = dtype
        self.augmentation = augmentation
        self.num_slots = int(num_slots)
        self.seed = int(seed)
        self.num_params = augmentation.num_params if augmentation is not None else 0
        self.manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "dataset": {
                "num_samples": self.num_samples,
                "fingerprint": dataset_id or fingerprint_dataset(dataset),
            },
            "teacher": {"fingerprint": teacher_id or fingerprint_module(teacher)},
            "augmentation": augmentation.config() if augmentation is not None else None,
            "outputs": {
                "output_dim": self.output_dim,
                "top_k": top_k,
                "dtype": dtype,
                "num_slots": self.num_slots,
                "num_params": self.num_params,
            },
        }
        self._open(rebuild=rebuild, create=create)
        self.hits = 0
        self.lookups = 0

    # ------------------------------------------------------------------------------ files
    def _open(self, *, rebuild: bool, create: bool) -> None:
        manifest_path = self.directory / _MANIFEST
        if manifest_path.exists():
            stored = json.loads(manifest_path.read_text())
            problems = _manifest_differences(stored, self.manifest)
            if problems and not rebuild:
                raise TeacherCacheMismatchError(self._mismatch_message(problems))
            if not problems:
                try:
                    self._map_files(mode="r+")
                    return
                except (FileNotFoundError, TeacherCacheMismatchError):
                    if not (rebuild and create):
                        raise
        elif not create:
            raise FileNotFoundError(
                f"no teacher cache at {str(self.directory)!r} (no {_MANIFEST}); create it first."
            )
        if not create:
            raise TeacherCacheMismatchError(self._mismatch_message(problems))
        self._create()

    def _mismatch_message(self, problems: list[str]) -> str:
        names = sorted({p.split(":", 1)[0] for p in problems})
        files = ", ".join([_MANIFEST, *_DATA_FILES])
        return (
            f"the teacher cache at {str(self.directory)!r} was built for a different {' and '.join(names)}:\n  "
            + "\n  ".join(problems)
            + f"\nRebuild it with rebuild=True (TeacherCache(..., rebuild=True) or TeacherCacheCallback(rebuild=True), "
            f"i.e. `init_args.rebuild: true` in a config), or delete {files} in that directory."
        )

    def _shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        s, n = self.num_slots, self.num_samples
        width = self.top_k if self.top_k is not None else self.output_dim
        shapes = {"values.npy": ((s, n, width), self.dtype), "filled.npy": ((s, n), "uint8")}
        if self.top_k is not None:
            shapes["classes.npy"] = ((s, n, self.top_k), "int16" if self.output_dim <= 32767 else "int32")
        if self.augmentation is not None:
            shapes["params.npy"] = ((s, n, self.num_params), "float32")
        return shapes

    def _create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in (_MANIFEST, *_DATA_FILES):
            (self.directory / name).unlink(missing_ok=True)
        for name, (shape, dtype) in self._shapes().items():
            array = np.lib.format.open_memmap(self.directory / name, mode="w+", dtype=dtype, shape=shape)
            array.flush()
            del array
        tmp = self.directory / f"{_MANIFEST}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True))
        os.replace(tmp, self.directory / _MANIFEST)  # the manifest appears last, atomically
        self._map_files(mode="r+")

    def _map_files(self, mode: Literal["r+", "r"]) -> None:
        self._arrays: dict[str, np.memmap] = {}
        for name, (shape, dtype) in self._shapes().items():
            if not (self.directory / name).exists():
                raise FileNotFoundError(
                    f"{name} is missing from the teacher cache at {str(self.directory)!r}; the cache is damaged: "
                    "pass rebuild=True or delete the directory."
                )
            array = np.load(self.directory / name, mmap_mode=mode)
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise TeacherCacheMismatchError(
                    f"{name} in {str(self.directory)!r} has shape {array.shape} and dtype {array.dtype}, the manifest "
                    f"says {shape} and {dtype}; the cache is damaged: delete the directory or pass rebuild=True."
                )
            self._arrays[name] = array

    def flush(self) -> None:
        """Write pending changes to disk."""
        for array in self._arrays.values():
            array.flush()

    def close(self) -> None:
        """Flush and unmap the files; the object cannot be used afterwards."""
        self.flush()
        self._arrays = {}

    # ------------------------------------------------------------------------------ access
    def slot(self, epoch: int) -> int:
        """The slot of ``epoch``: ``epoch % num_slots``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative int, got {epoch!r}.")
        return epoch % self.num_slots

    def _indices(self, indices: Tensor | Sequence[int]) -> np.ndarray:
        if isinstance(indices, Tensor):
            if indices.is_floating_point() or indices.ndim != 1:
                raise ValueError(
                    f"`indices` must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}."
                )
            idx = indices.detach().cpu().numpy().astype(np.int64)
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ValueError(
                f"`indices` must lie in [0, {self.num_samples}), got min {idx.min()} and max {idx.max()}."
            )
        return idx

    def _decode(self, values: np.ndarray, classes: np.ndarray | None) -> Tensor:
        """Dense float32 outputs ``(B, C)`` from stored rows."""
        values_t = torch.from_numpy(np.asarray(values, dtype=np.float32))
        if classes is None:
            return values_t
        dense = torch.full((values_t.shape[0], self.output_dim), self.top_k_fill, dtype=torch.float32)
        return dense.scatter_(1, torch.from_numpy(np.asarray(classes, dtype=np.int64)), values_t)

    def lookup(
        self, indices: Tensor | Sequence[int], epoch: int, *, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Cached teacher outputs of samples at ``epoch``.

        Args:
            indices: Sample indices ``(B,)``.
            epoch: The epoch (its slot is ``epoch % num_slots``).
            device: Device of the returned tensors; CPU by default.

        Returns:
            ``(outputs, hit_mask)``: float32 ``(B, C)`` outputs (rows of misses are NaN) and a
            ``(B,)`` bool mask of cached samples.
        """
        idx, slot = self._indices(indices), self.slot(epoch)
        hit = torch.from_numpy(self._arrays["filled.npy"][slot, idx] == 1)
        classes = self._arrays["classes.npy"][slot, idx] if self.top_k is not None else None
        outputs = self._decode(self._arrays["values.npy"][slot, idx], classes)
        outputs[~hit] = float("nan")
        return outputs.to(device or "cpu"), hit.to(device or "cpu")

    def lookup_params(
        self, indices: Tensor | Sequence[int], epoch: int, *, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Stored augmentation parameters ``(B, P)`` (NaN rows for misses) and the ``(B,)`` hit mask.

        Raises:
            ValueError: If the cache has no augmentation.
        """
        if self.augmentation is None:
            raise ValueError("this cache has no augmentation, so it stores no augmentation parameters.")
        idx, slot = self._indices(indices), self.slot(epoch)
        hit = torch.from_numpy(self._arrays["filled.npy"][slot, idx] == 1)
        params = torch.from_numpy(np.array(self._arrays["params.npy"][slot, idx], dtype=np.float32))
        params[~hit] = float("nan")
        return params.to(device or "cpu"), hit.to(device or "cpu")

    def store(
        self,
        indices: Tensor | Sequence[int],
        epoch: int,
        outputs: Tensor,
        aug_params: Tensor | None = None,
    ) -> Tensor:
        """Store teacher outputs (and augmentation parameters) of samples at ``epoch``.

        Args:
            indices: Sample indices ``(B,)``; write only the samples this process owns.
            epoch: The epoch (its slot is ``epoch % num_slots``).
            outputs: Teacher outputs ``(B, C)``.
            aug_params: Augmentation parameters ``(B, P)``; required iff the cache has an
                augmentation.

        Returns:
            The outputs as they will read back (fp16-rounded, top-k filled), float32 ``(B, C)``
            on the device of ``outputs``.

        Raises:
            ValueError: If a shape is wrong, ``aug_params`` is missing or unexpected, or an output
                is not finite in the storage dtype.
        """
        idx, slot = self._indices(indices), self.slot(epoch)
        if not isinstance(outputs, Tensor) or tuple(outputs.shape) != (idx.size, self.output_dim):
            shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"`outputs` must have shape ({idx.size}, {self.output_dim}), got {shape}.")
        if (aug_params is None) != (self.augmentation is None):
            raise ValueError(
                "`aug_params` must be given exactly when the cache has an augmentation "
                f"(augmentation={self.augmentation!r}, got aug_params={'None' if aug_params is None else 'a tensor'})."
            )
        if aug_params is not None and tuple(aug_params.shape) != (idx.size, self.num_params):
            raise ValueError(
                f"`aug_params` must have shape ({idx.size}, {self.num_params}), got {tuple(aug_params.shape)}."
            )
        torch_dtype = torch.float16 if self.dtype == "float16" else torch.float32
        if self.top_k is not None:
            top = outputs.detach().float().topk(self.top_k, dim=1)
            values, classes = top.values.to(torch_dtype).cpu(), top.indices.cpu()
        else:
            values, classes = outputs.detach().to(torch_dtype).cpu(), None
        if not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"teacher outputs are not finite in {self.dtype} (max |x| {outputs.abs().max().item():.3g})."
            )
        values_np = values.numpy()
        self._arrays["values.npy"][slot, idx] = values_np
        if classes is not None:
            self._arrays["classes.npy"][slot, idx] = classes.numpy().astype(self._arrays["classes.npy"].dtype)
        if aug_params is not None:
            self._arrays["params.npy"][slot, idx] = aug_params.detach().cpu().numpy().astype(np.float32)
        self._arrays["filled.npy"][slot, idx] = (
            1  # the flag last: a reader never sees half an entry as filled
        )
        decoded = self._decode(values_np, classes.numpy() if classes is not None else None)
        return decoded.to(outputs.device)

    def teacher_outputs(
        self, teacher: Callable[[Tensor], Tensor], inputs: Tensor, indices: Tensor | Sequence[int], epoch: int
    ) -> tuple[Tensor, Tensor]:
        """Augment a batch and return the teacher's outputs, running the teacher only on misses.

        1. Look the samples up at ``epoch``'s slot.
        2. Augment: cached samples replay their stored parameters; the others get parameters
           from :func:`counter_uniforms` of ``(seed, slot, index)``.
        3. Run ``teacher`` under ``torch.no_grad()`` on the augmented misses and store its outputs.

        Hits and misses return the outputs as stored (fp16-rounded, top-k filled), so a run reads
        the same teacher outputs whether or not the cache was warm.

        Args:
            teacher: The frozen teacher (any callable ``(B', ...) -> (B', C)``).
            inputs: Raw inputs ``(B, ...)``; ``(B, C, H, W)`` float images with an augmentation.
            indices: Sample indices ``(B,)``.
            epoch: The current epoch.

        Returns:
            ``(augmented_inputs, outputs)``; outputs are float32 ``(B, C)`` on ``inputs.device``.
        """
        idx = self._indices(indices)
        if not isinstance(inputs, Tensor) or inputs.shape[0] != idx.size:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"`inputs` must be a tensor with batch size {idx.size}, got {shape}.")
        outputs, hit = self.lookup(idx, epoch)
        params = None
        if self.augmentation is not None:
            params, _ = self.lookup_params(idx, epoch)  # (B, P), NaN rows for misses
            if not bool(hit.all()):
                params[~hit] = self.augmentation.params_for(
                    idx[~hit.numpy()],
                    seed=self.seed,
                    slot=self.slot(epoch),
                    height=inputs.shape[-2],
                    width=inputs.shape[-1],
                )
            inputs = self.augmentation.apply(inputs, params.to(inputs.device))
        outputs = outputs.to(inputs.device)
        miss = ~hit
        num_miss = int(miss.sum())
        if num_miss:
            miss_dev = miss.to(inputs.device)
            with torch.no_grad():
                raw = teacher(inputs[miss_dev])
            outputs[miss_dev] = self.store(
                idx[miss.numpy()], epoch, raw, None if params is None else params[miss]
            )
        self.hits += idx.size - num_miss
        self.lookups += idx.size
        return inputs, outputs

    def filled_fraction(self, epoch: int) -> float:
        """Fraction of samples cached at ``epoch``'s slot."""
        return float(self._arrays["filled.npy"][self.slot(epoch)].mean())


def _check_options(
    output_dim: int,
    top_k: int | None,
    dtype: str,
    augmentation: ReplayableAugmentation | None,
    num_slots: int,
    seed: int | None,
) -> None:
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
        raise ValueError(f"`output_dim` must be a positive int, got {output_dim!r}.")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= output_dim
    ):
        raise ValueError(f"`top_k` must be None or an int in [1, output_dim={output_dim}], got {top_k!r}.")
    if dtype not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {_DTYPES}, got {dtype!r}.")
    if augmentation is not None and not isinstance(augmentation, ReplayableAugmentation):
        raise TypeError(
            f"`augmentation` must be a ReplayableAugmentation or None, got {type(augmentation).__name__}."
        )
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
        raise ValueError(f"`num_slots` must be a positive int, got {num_slots!r}.")
    if augmentation is None and num_slots != 1:
        raise ValueError(
            f"`num_slots` must be 1 without an augmentation (outputs do not change), got {num_slots}."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")


def _manifest_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences, each prefixed by the section name."""
    problems = []
    if stored.get("format") != current["format"] or stored.get("version") != current["version"]:
        problems.append(
            f"format: stored {stored.get('format')} v{stored.get('version')}, current {current['format']} v{current['version']}"
        )
    for section in ("dataset", "teacher", "augmentation", "outputs"):
        if stored.get(section) != current[section]:
            problems.append(
                f"{section}: stored {json.dumps(stored.get(section))}, current {json.dumps(current[section])}"
            )
    return problems


# --------------------------------------------------------------------------------------------------
# Lightning integration
# --------------------------------------------------------------------------------------------------
class TeacherCacheCallback(Callback):
    """Open a :class:`TeacherCache` for the training run and log its hit rate as ``cache/hit_rate``.

    At ``on_train_start`` (when the train DataLoader exists) rank 0 creates or checks the cache
    for ``trainer.train_dataloader.dataset`` and ``pl_module.<teacher_attribute>``; the other ranks
    open it after a barrier. In ``training_step`` call :meth:`teacher_outputs` with the raw batch
    and its sample indices (wrap the dataset in :class:`IndexedDataset`).

    Args:
        directory: Where the cache files live.
        output_dim: The teacher's output width ``C``.
        top_k: Store only the top-k logits; see :class:`TeacherCache`.
        dtype: ``"float16"`` or ``"float32"``.
        augmentation: A :class:`ReplayableAugmentation` or ``None``.
        num_slots: Number of epochs with distinct augmentations.
        dataset_id: Use this id instead of hashing dataset samples.
        teacher_id: Use this id instead of hashing the teacher's weights.
        teacher_attribute: Name of the teacher attribute of the LightningModule.
        seed: Seed of new augmentation parameters; ``None`` takes ``seed_everything``'s (or 0).
        rebuild: Rebuild a cache that does not match instead of raising.
        log_prefix: Prefix of the logged hit rate.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        output_dim: int,
        top_k: int | None = None,
        dtype: Literal["float16", "float32"] = "float16",
        augmentation: ReplayableAugmentation | None = None,
        num_slots: int = 1,
        dataset_id: str | None = None,
        teacher_id: str | None = None,
        teacher_attribute: str = "teacher",
        seed: int | None = None,
        rebuild: bool = False,
        log_prefix: str = "cache",
    ):
        _check_options(output_dim, top_k, dtype, augmentation, num_slots, seed)
        self.directory = Path(directory)
        self.output_dim = output_dim
        self.top_k = top_k
        self.dtype = dtype
        self.augmentation = augmentation
        self.num_slots = num_slots
        self.dataset_id = dataset_id
        self.teacher_id = teacher_id
        self.teacher_attribute = teacher_attribute
        self.rebuild = rebuild
        self.log_prefix = log_prefix
        self._seed = seed
        self._cache: TeacherCache | None = None
        self._trainer: pl.Trainer | None = None
        self._pl_module: pl.LightningModule | None = None
        self._batch_counts: tuple[int, int] | None = None  # (hits, lookups) of the current batch

    @property
    def state_key(self) -> str:
        return self._generate_state_key(directory=str(self.directory))

    @property
    def seed(self) -> int:
        if self._seed is None:
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._seed

    @property
    def cache(self) -> TeacherCache:
        """The open cache (after ``on_train_start``)."""
        if self._cache is None:
            raise RuntimeError("the teacher cache opens at on_train_start; it is not open yet.")
        return self._cache

    def teacher_outputs(
        self,
        inputs: Tensor,
        indices: Tensor,
        *,
        teacher: Callable[[Tensor], Tensor] | None = None,
        epoch: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`TeacherCache.teacher_outputs` with the module's teacher and the current epoch."""
        cache = self.cache
        if teacher is None:
            teacher = getattr(self._pl_module, self.teacher_attribute)
        if epoch is None:
            epoch = self._trainer.current_epoch if self._trainer is not None else 0
        before = (cache.hits, cache.lookups)
        augmented, outputs = cache.teacher_outputs(teacher, inputs, indices, epoch)
        hits, lookups = self._batch_counts or (0, 0)
        self._batch_counts = (hits + self.cache.hits - before[0], lookups + self.cache.lookups - before[1])
        return augmented, outputs

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._pl_module = trainer, pl_module
        if self.teacher_id is None and not isinstance(
            getattr(pl_module, self.teacher_attribute, None), nn.Module
        ):
            raise ValueError(
                f"{type(pl_module).__name__} has no nn.Module attribute {self.teacher_attribute!r}; set "
                "`teacher_attribute` to the name of its teacher, or give `teacher_id`."
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise ValueError(
                f"TeacherCacheCallback needs a single training DataLoader to key the cache, got {type(loader).__name__}."
            )
        teacher = None if self.teacher_id is not None else getattr(pl_module, self.teacher_attribute)
        kwargs = dict(
            output_dim=self.output_dim,
            top_k=self.top_k,
            dtype=self.dtype,
            augmentation=self.augmentation,
            num_slots=self.num_slots,
            dataset_id=self.dataset_id,
            teacher_id=self.teacher_id,
            seed=self.seed,
        )
        if trainer.is_global_zero:
            self._cache = TeacherCache(
                self.directory, loader.dataset, teacher, rebuild=self.rebuild, **kwargs
            )
        trainer.strategy.barrier("teacher_cache_created")
        if not trainer.is_global_zero:
            self._cache = TeacherCache(self.directory, loader.dataset, teacher, create=False, **kwargs)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_counts = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_counts is None or self._batch_counts[1] == 0:
            return
        hits, lookups = self._batch_counts
        pl_module.log(
            f"{self.log_prefix}/hit_rate", hits / lookups, on_step=False, on_epoch=True, batch_size=lookups
        )
        self._batch_counts = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._cache is not None:
            self._cache.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        self._trainer = self._pl_module = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "seed" in state_dict:
            self._seed = int(state_dict["seed"])
