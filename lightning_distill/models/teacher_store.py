"""A memory-mapped disk store of a frozen teacher's outputs, with replayable random augmentation.

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
``(seed, slot, sample index)`` (:func:`~lightning_distill.utils.random.counter_uniforms`), so any
rank that writes a sample writes the same bytes: ranks of a DDP job write only the samples of their
own batches, and the duplicates that a ``DistributedSampler`` adds to even out the shards are
harmless. Plain PyTorch and NumPy; :class:`~lightning_distill.callbacks.TeacherCacheCallback`
opens one for a Lightning run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_distill.data.indexed import IndexedDataset
from lightning_distill.utils.augment import ReplayableAugmentation
from lightning_distill.utils.checks import check_choice, check_int
from lightning_distill.utils.fingerprint import fingerprint_dataset, fingerprint_module

__all__ = ["TeacherCache", "TeacherCacheMismatchError", "check_cache_options"]

_FORMAT = "lightning_distill.TeacherCache"
_VERSION = 1
_MANIFEST = "manifest.json"
_DATA_FILES = ("values.npy", "classes.npy", "params.npy", "filled.npy")
_DTYPES = ("float16", "float32")


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
        check_cache_options(output_dim, top_k, dtype, augmentation, num_slots, seed)
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
                "fingerprint": dataset_id or fingerprint_dataset(_unwrap(dataset)),
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


def check_cache_options(
    output_dim: int,
    top_k: int | None,
    dtype: str,
    augmentation: ReplayableAugmentation | None,
    num_slots: int,
    seed: int | None,
) -> None:
    """Check the options of :class:`TeacherCache` (and its callback) at construction.

    Raises:
        ValueError: an option out of range, or ``num_slots != 1`` without an augmentation.
        TypeError: ``augmentation`` is not a :class:`~lightning_distill.utils.augment.ReplayableAugmentation`.
    """
    check_int("output_dim", output_dim, low=1)
    check_int("top_k", top_k, low=1, high=output_dim, optional=True, high_name=f"output_dim={output_dim}")
    check_choice("dtype", dtype, _DTYPES)
    if augmentation is not None and not isinstance(augmentation, ReplayableAugmentation):
        raise TypeError(
            f"`augmentation` must be a ReplayableAugmentation or None, got {type(augmentation).__name__}."
        )
    check_int("num_slots", num_slots, low=1)
    if augmentation is None and num_slots != 1:
        raise ValueError(
            f"`num_slots` must be 1 without an augmentation (outputs do not change), got {num_slots}."
        )
    if seed is not None:
        check_int("seed", seed, low=0)


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


def _unwrap(dataset: Any) -> Any:
    """The raw dataset inside :class:`~lightning_distill.data.IndexedDataset` wrappers."""
    while isinstance(dataset, IndexedDataset):
        dataset = dataset.dataset
    return dataset
