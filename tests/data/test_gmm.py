"""GMMDataModule: deterministic splits from a seed, labels, and the same mixture for the teacher."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lightning_distill.data import UNLABELLED
from lightning_distill.data.gmm import GMMDataModule
from lightning_distill.diffusion.gmm import GaussianMixture


def test_splits_are_a_function_of_the_seed_and_independent_of_other_sizes() -> None:
    a = GMMDataModule("grid", num_train=100, num_val=50, num_test=20, seed=3)
    b = GMMDataModule("grid", num_train=300, num_val=50, num_test=20, seed=3)
    c = GMMDataModule("grid", num_train=100, num_val=50, num_test=20, seed=4)
    assert torch.equal(a.split("val")[0], b.split("val")[0])  # a bigger train set leaves val alone
    assert not torch.equal(a.split("val")[0], c.split("val")[0])
    assert not torch.equal(a.split("train")[0][:50], a.split("val")[0])
    x, y = a.split("train")
    assert x.shape == (100, 2) and x.dtype == torch.float32
    assert bool((y == UNLABELLED).all())


def test_conditional_labels_are_the_classes_of_the_modes() -> None:
    dm = GMMDataModule("ring", num_classes=4, conditional=True, num_train=400, seed=0)
    x, y = dm.split("train")
    gmm = dm.mixture
    nearest = gmm.mahalanobis(x).argmin(1)
    assert torch.equal(gmm.class_of_mode[nearest], y)
    assert torch.bincount(y, minlength=4).min() > 60


def test_loaders_serve_point_batches_and_the_mixture_matches_the_data() -> None:
    dm = GMMDataModule("blobs", options={"dim": 8, "k": 4}, num_train=64, num_val=40, batch_size=16)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 8) and y.shape == (16,)
    assert len(dm.train_dataloader()) == 4
    vx = torch.cat([b[0] for b in dm.val_dataloader()])
    assert torch.equal(vx, dm.split("val")[0])
    assert dm.dim == 8
    assert isinstance(dm.mixture, GaussianMixture)
    assert_close(dm.mixture.means, GaussianMixture.blobs(dim=8, k=4).means)


def test_bad_arguments_name_the_config_key() -> None:
    with pytest.raises(ValueError, match="set `data.init_args.num_classes`"):
        GMMDataModule("ring", conditional=True)
    with pytest.raises(ValueError, match="`num_train` must be >= 1"):
        GMMDataModule("ring", num_train=0)
    with pytest.raises(ValueError, match="`preset` must be one of"):
        GMMDataModule("moons")
    with pytest.raises(ValueError, match="unknown \\['radius_'\\]"):
        GMMDataModule("ring", options={"radius_": 2.0})
