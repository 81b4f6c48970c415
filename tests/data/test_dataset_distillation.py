"""Class-balanced real batches: class-blocked, reproducible, and the wrapped splits for evaluation."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data import ClassBalancedBatches, ClassBalancedDataModule, DigitsDataModule


def test_batches_are_class_blocked_without_repeats():
    dm = ClassBalancedDataModule(DigitsDataModule(), per_class=8, steps_per_epoch=2, seed=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 2
    x_all, y_all = dm.train_images()
    for x, y in batches:
        assert torch.equal(y, torch.arange(10).repeat_interleave(8))
        # Each image is a training image of its class, and no image repeats within a class.
        for c in range(10):
            block = x[c * 8 : (c + 1) * 8].flatten(1)
            pool = x_all[y_all == c].flatten(1)
            matches = (block[:, None] == pool[None]).all(-1)
            assert matches.any(1).all()
            assert len({int(row.nonzero()[0]) for row in matches}) == 8
    assert not torch.equal(batches[0][0], batches[1][0])
    assert dm.num_classes == 10 and dm.image_shape == (1, 8, 8)
    assert next(iter(dm.test_dataloader()))[0].shape[1:] == (1, 8, 8)


def test_a_batch_is_a_function_of_seed_epoch_and_index():
    x, y = torch.randn(30, 1, 2, 2), torch.arange(3).repeat(10)
    a = ClassBalancedBatches(x, y, 3, 4, steps=5, seed=1)
    b = ClassBalancedBatches(x, y, 3, 4, steps=5, seed=1)
    assert torch.equal(a[2][0], b[2][0])
    b.set_epoch(1)
    assert not torch.equal(a[2][0], b[2][0])


def test_small_classes_are_drawn_with_replacement_and_empty_ones_rejected():
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 0, 1, 1, 1])
    xb, yb = ClassBalancedBatches(x, y, 2, 4, steps=1)[0]
    assert xb.shape[0] == 8 and torch.equal(yb, torch.tensor([0] * 4 + [1] * 4))
    with pytest.raises(ValueError, match="no training image"):
        ClassBalancedBatches(x, y, 3, 2, steps=1)
    with pytest.raises(ValueError, match="per_class"):
        ClassBalancedDataModule(DigitsDataModule(), per_class=0)
