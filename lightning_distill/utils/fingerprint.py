"""Fingerprints and cache keys: the one place that turns weights, data and settings into hashes.

- :func:`fingerprint_module`: the weights of a module (a teacher's identity in checkpoints and in
  the teacher-output cache's manifest).
- :func:`fingerprint`: any tensors, arrays and nested containers of them (training data).
- :func:`fingerprint_dataset`: a dataset, by its length and a few probed samples.
- :func:`config_hash`: a JSON-serialisable description of settings (train-on-first-use cache keys).
- :func:`file_sha256`: the bytes of a file (a user-given checkpoint).

These values key files on disk (``LIGHTNING_DISTILL_CACHE``) and are recorded in checkpoints:
changing how one is computed invalidates what was stored with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "config_hash",
    "file_sha256",
    "fingerprint",
    "fingerprint_dataset",
    "fingerprint_module",
    "update_hash",
]


def update_hash(h: Any, value: Any) -> None:
    """Feed ``value`` into the hash object ``h`` (``hashlib.sha256()``), with its type and shape.

    Tensors (any dtype, any device), NumPy arrays, scalars, strings, bytes, ``None`` and nested
    mappings (in sorted key order), lists and tuples; each item is prefixed by its kind, dtype and
    shape, so a float32 and a float64 tensor, or ``1`` and ``1.0``, hash differently (a list and a
    tuple with the same items hash alike).

    Raises:
        TypeError: ``value`` (or something inside it) is of another type.
    """
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
            update_hash(h, key)
            update_hash(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for item in value:
            update_hash(h, item)
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def fingerprint(value: Any, *, length: int | None = None) -> str:
    """SHA-256 hex digest of tensors, arrays, scalars and nested containers of them.

    Args:
        value: anything :func:`update_hash` accepts, e.g. ``(images, labels)``.
        length: keep the first ``length`` hex digits (``None``: all 64).

    Example:
        >>> fingerprint((torch.zeros(2), torch.tensor([1])), length=16) == fingerprint(
        ...     (torch.zeros(2), torch.tensor([1])), length=16)
        True
        >>> fingerprint(torch.zeros(2)) == fingerprint(torch.zeros(2, dtype=torch.float64))
        False
    """
    h = hashlib.sha256()
    update_hash(h, value)
    return h.hexdigest()[:length]


def fingerprint_module(module: nn.Module) -> str:
    """A fingerprint of a module's weights: SHA-256 of its class name and ``state_dict`` entries.

    Names, dtypes, shapes and bytes of every parameter and buffer (bfloat16 included) enter the
    hash, in sorted name order; extra state enters as its ``repr``. The teacher-output cache
    keys its manifest with it and :class:`~lightning_distill.DistillationModule` records it in
    checkpoints.

    Returns:
        ``"sha256=<64 hex digits>"``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.

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
            update_hash(h, value)
        else:  # extra state
            h.update(repr(value).encode())
    return f"sha256={h.hexdigest()}"


def fingerprint_dataset(dataset: Any, *, num_probes: int = 8) -> str:
    """A fingerprint of a dataset: its length and a hash of a few evenly spaced samples.

    Samples must be deterministic (no random transforms inside the dataset); use the cache's
    augmentation for randomness, or give the cache a ``dataset_id`` instead.

    Args:
        dataset: Supports ``len()`` and indexing. Pass the raw dataset, not an
            :class:`~lightning_distill.data.IndexedDataset` around it (the teacher-output cache
            unwraps one before it calls this).
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
    n = len(dataset)
    h = hashlib.sha256(f"len={n}".encode())
    if n == 0:
        return f"len=0;sha256={h.hexdigest()}"
    probes = sorted({int(round(p)) for p in np.linspace(0, n - 1, min(num_probes, n))})
    for position in probes:
        try:
            update_hash(h, dataset[position])
        except TypeError as err:
            raise TypeError(
                f"{err} in dataset[{position}]; pass a `dataset_id` to the cache instead."
            ) from err
    first, again = hashlib.sha256(), hashlib.sha256()
    update_hash(first, dataset[probes[0]])
    update_hash(again, dataset[probes[0]])
    if first.digest() != again.digest():
        raise ValueError(
            f"dataset[{probes[0]}] differs between two reads, so the dataset applies random transforms: give "
            "the cache the random augmentation (a ReplayableAugmentation) instead, or pass a `dataset_id`."
        )
    return f"len={n};sha256={h.hexdigest()}"


def config_hash(
    spec: Mapping[str, Any], *, length: int = 16, default: Callable[[Any], Any] | None = None
) -> str:
    """SHA-256 of the JSON form of ``spec`` (keys sorted), the key of a train-on-first-use cache.

    Args:
        spec: a JSON-serialisable mapping of everything that changes the cached result.
        length: how many hex digits to keep.
        default: ``json.dumps``'s ``default``, to serialise other values (e.g. ``str``).

    Example:
        >>> config_hash({"lr": 0.1, "epochs": 5}) == config_hash({"epochs": 5, "lr": 0.1})
        True
        >>> len(config_hash({"lr": 0.1}))
        16
    """
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=default).encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, *, length: int = 16) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks; the first ``length`` hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
