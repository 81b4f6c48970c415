"""GMMDataModule: deterministic splits from a seed, labels, and the same mixture for the teacher."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from lightning_distill.data import UNLABELLED
from lightning_distill.data.gmm import GMMDataModule
from lightning_distill.diffusion import NoiseSchedule
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture


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


def own_mixture(**changes) -> GaussianMixture:
    args = dict(
        means=[[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], stds=0.2, weights=[0.2, 0.3, 0.5], class_of_mode=[0, 1, 1]
    )
    args.update(changes)
    return GaussianMixture(**args)


def run_with(teacher) -> SimpleNamespace:
    """What `setup` reads of a Trainer: the module's teacher."""
    return SimpleNamespace(lightning_module=SimpleNamespace(teacher=teacher))


def test_a_mixture_of_ones_own_is_served_like_a_preset() -> None:
    gmm = own_mixture()
    dm = GMMDataModule(gmm=gmm, conditional=True, num_train=3000, seed=1)
    x, y = dm.split("train")
    assert x.shape == (3000, 2) and set(y.tolist()) == {0, 1}
    assert_close(
        torch.bincount(y).double() / 3000, torch.tensor([0.2, 0.8], dtype=torch.float64), atol=0.03, rtol=0
    )
    assert dm.mixture is not gmm and torch.equal(dm.mixture.means, gmm.means)
    assert torch.equal(
        x, GMMDataModule(gmm=own_mixture(), conditional=True, num_train=3000, seed=1).split("train")[0]
    )


def test_gmm_with_a_preset_or_without_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        GMMDataModule("grid", gmm=own_mixture())
    with pytest.raises(ValueError, match="with num_classes"):
        GMMDataModule(gmm=own_mixture(), num_classes=2)
    with pytest.raises(ValueError, match="needs a mixture with classes"):
        GMMDataModule(gmm=own_mixture(class_of_mode=None), conditional=True)


def test_setup_refuses_a_teacher_whose_mixture_differs_and_names_both() -> None:
    schedule = NoiseSchedule.ddpm()
    dm = GMMDataModule(gmm=own_mixture(), conditional=True, num_train=16, num_val=8, num_test=8)
    dm.trainer = run_with(AnalyticTeacher(own_mixture(), schedule))
    dm.setup("fit")  # the same mixture, built twice
    for other, what in (
        (own_mixture(stds=0.3), "`covs` differ"),
        (own_mixture(weights=[1.0, 1.0, 1.0]), "`weights` differ"),
        (own_mixture(class_of_mode=[0, 0, 1]), "classes of the modes"),
        (make_mixture("ring", num_classes=2), "8 modes"),
    ):
        dm.trainer = run_with(AnalyticTeacher(other, schedule))
        with pytest.raises(ValueError, match=what) as error:
            dm.setup("fit")
        assert "data (`data.init_args`) 3 modes" in str(error.value)
        assert "teacher (`model.init_args.teacher.init_args.gmm`)" in str(error.value)
    # unconditional data does not care about the classes; a network teacher is not checked
    unconditional = GMMDataModule(gmm=own_mixture(), num_train=16, num_val=8, num_test=8)
    unconditional.check_teacher(AnalyticTeacher(own_mixture(class_of_mode=[0, 0, 1]), schedule))
    unconditional.check_teacher(torch.nn.Linear(2, 2))
    preset = GMMDataModule("ring", num_classes=4, options={"k": 8}, conditional=True)
    preset.check_teacher(AnalyticTeacher(make_mixture("ring", num_classes=4, options={"k": 8}), schedule))
    with pytest.raises(ValueError, match="`means` differ"):
        preset.check_teacher(
            AnalyticTeacher(make_mixture("ring", num_classes=4, options={"k": 8, "radius": 5.0}), schedule)
        )
