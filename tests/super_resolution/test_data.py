"""The paired SR datamodule: sizes, held-out pictures, seeds, bad sizes."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.super_resolution import HELD_OUT_IMAGES, TRAIN_IMAGES, SuperResolutionDataModule


def _dm(**kwargs) -> SuperResolutionDataModule:
    args = dict(scale=2, hr_size=16, patches_per_image=2, test_size=32, batch_size=4) | kwargs
    dm = SuperResolutionDataModule(**args)
    dm.setup()
    return dm


def test_pairs_have_lr_at_one_over_scale_and_a_set5_like_test_set():
    dm = _dm(scale=4)
    lr, hr = next(iter(dm.train_dataloader()))
    assert lr.shape == (4, 3, 4, 4) and hr.shape == (4, 3, 16, 16)
    assert dm.hr_images("test").shape == (len(HELD_OUT_IMAGES), 3, 32, 32)
    assert not set(HELD_OUT_IMAGES) & set(TRAIN_IMAGES)


def test_realistic_pairs_are_reproducible_from_the_seed_and_differ_across_seeds():
    first = _dm(degradation="realistic", seed=3)._dataset("val", augment=False)[1][0]
    again = _dm(degradation="realistic", seed=3)._dataset("val", augment=False)[1][0]
    other = _dm(degradation="realistic", seed=4)._dataset("val", augment=False)[1][0]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_training_augmentation_depends_on_epoch_and_index_only():
    ds = _dm(degradation="realistic")._dataset("train", augment=True)
    torch.testing.assert_close(ds[(1, 5)][0], ds[(1, 5)][0], rtol=0, atol=0)
    assert not torch.equal(ds[(1, 5)][0], ds[(2, 5)][0])


def test_digits_are_upsampled_to_hr_size():
    dm = _dm(source="digits")
    assert dm.hr_images("train").shape[1:] == (3, 16, 16)
    assert dm.hr_images("train").shape[0] > 1000


def test_hr_size_not_divisible_by_scale_is_rejected():
    with pytest.raises(ValueError, match="`hr_size`=30 is not divisible by `scale`=4"):
        SuperResolutionDataModule(scale=4, hr_size=30)
    with pytest.raises(ValueError, match="`test_size`"):
        SuperResolutionDataModule(scale=8, hr_size=32, test_size=36)
    with pytest.raises(ValueError, match="degradation"):
        SuperResolutionDataModule(degradation="gaussian")
