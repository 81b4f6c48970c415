"""IndexedDataset: samples carry their index, the key of per-sample caches."""

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.data.indexed import IndexedDataset


def test_indexed_dataset_appends_the_index():
    assert IndexedDataset([(1, 2)])[0] == (1, 2, 0)
    assert IndexedDataset([{"x": 1}])[0] == {"x": 1, "index": 0}
    assert IndexedDataset(["a", "b"])[1] == ("b", 1)
    batch = next(iter(DataLoader(IndexedDataset(TensorDataset(torch.zeros(3, 2))), batch_size=3)))
    assert batch[1].tolist() == [0, 1, 2]
