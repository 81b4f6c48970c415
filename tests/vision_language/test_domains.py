"""The multi-domain digits: domains are disjoint and fixed, splits hold out what they say, batches mix labels."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.domains import DOMAINS, DigitDomainsDataModule, domain_images


def test_domains_are_fixed_rgb_images_in_unit_range():
    for name in ("digits", "colour", "inverted"):
        x, y = domain_images(name, 8)
        assert x.shape[1:] == (3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
        torch.testing.assert_close(domain_images(name, 8)[0], x)  # deterministic
    mnist, _ = domain_images("mnist", 8)
    inverted, _ = domain_images("inverted", 8)
    assert len(mnist) == len(inverted) == 1000
    # disjoint MNIST parts: no inverted image is the inversion of an mnist image
    assert not torch.isclose(1 - inverted[:50, None], mnist[None, :]).flatten(2).all(-1).any()


def test_leave_one_domain_out_tests_only_the_held_out_domain():
    dm = DigitDomainsDataModule(domains=("digits", "inverted"), test_domains=("inverted",), size=8)
    _, _, d_train = dm.split("train")
    _, _, d_val = dm.split("val")
    _, _, d_test = dm.split("test")
    assert set(d_train.tolist()) == {0} and set(d_val.tolist()) == {0} and set(d_test.tolist()) == {1}
    _, _, d_all = dm.split("all_train")
    assert set(d_all.tolist()) == {0, 1}


def test_labelled_fraction_hides_labels_and_batches_mix_both_parts():
    dm = DigitDomainsDataModule(
        domains=("digits",), size=8, labelled_fraction=0.1, batch_size=16, labelled_batch_size=4
    )
    _, y, _ = dm.split("train")
    labelled = int((y >= 0).sum())
    assert labelled == pytest.approx(0.1 * len(y), abs=10) and set(y[y >= 0].tolist()) == set(range(10))
    for x, yb, _ in list(dm.train_dataloader())[:3]:
        assert x.shape[0] == 20 and int((yb[:16] < 0).sum()) == 16 and int((yb[16:] >= 0).sum()) == 4


def test_held_out_classes_leave_training_and_validation_but_not_test():
    dm = DigitDomainsDataModule(domains=("digits",), size=8, held_out_classes=(8, 9))
    assert dm.seen_classes() == list(range(8))
    assert int(dm.split("train")[1].max()) == 7 and int(dm.split("val")[1].max()) == 7
    assert {8, 9} <= set(dm.split("test")[1].tolist())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"domains": ("digits", "sketch")}, "Unknown domain"),
        ({"domains": ("digits",), "test_domains": ("digits",)}, "test_domains"),
        ({"labelled_fraction": 0.0}, "labelled_fraction"),
        ({"held_out_classes": tuple(range(10))}, "held_out_classes"),
        ({"val_fraction": 0.6}, "val_fraction"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitDomainsDataModule(**kwargs)


def test_every_domain_is_known():
    assert DOMAINS == ("digits", "mnist", "colour", "rotated", "noisy", "inverted")
