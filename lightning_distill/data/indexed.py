"""A dataset wrapper that adds each sample's index (the key of per-sample caches)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a dataset so each sample also carries its index.

    A tuple sample ``(x, y)`` becomes ``(x, y, index)``, a mapping gets an ``"index"`` key, any
    other sample ``s`` becomes ``(s, index)``. After default collation the index is a ``(B,)``
    int64 tensor, the key :class:`~lightning_distill.models.TeacherCache` needs.

    Example:
        >>> import torch
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
