"""Counter-based random numbers: the same ``(seed, slot, index)`` always gives the same numbers.

A stateless generator (the SplitMix64 finaliser applied to a key built from the seed, an epoch slot
and a sample index), so a sample's random numbers do not depend on the batch it lands in, the
rank that reads it or how many samples came before. :class:`~lightning_distill.models.TeacherCache`
draws the augmentation of a sample that is not cached yet from it, so every rank of a DDP job
writes the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["counter_uniforms", "stable_seed"]


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


def stable_seed(*parts: int | str) -> int:
    """A 47-bit seed from ``parts`` that every process computes alike.

    Python's ``hash`` of a string changes from process to process (``PYTHONHASHSEED``), so
    ``hash((seed, epoch, index, "flip"))`` gives each DDP rank, and each rerun, other random
    numbers. This hashes the parts' ``repr`` with BLAKE2b instead.

    Example:
        >>> stable_seed(0, 3, "flip") == stable_seed(0, 3, "flip")
        True
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF
