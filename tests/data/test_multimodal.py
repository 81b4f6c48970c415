"""Multi-modal street views: shapes, geometry of depth and normals, the labelled fraction, determinism."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.multimodal import MultiModalSceneDataModule, render_views


def small(**kwargs) -> MultiModalSceneDataModule:
    settings = {
        "image_size": (16, 24),
        "num_cameras": 2,
        "num_train_scenes": 4,
        "num_eval_scenes": 1,
        "batch_size": 4,
    }
    return MultiModalSceneDataModule(**(settings | kwargs))


def test_views_hold_four_aligned_modalities():
    views = render_views(0, image_size=(16, 24), num_cameras=2, max_depth=30.0, expert_noise=0.0)
    assert views["rgb"].shape == (2, 3, 16, 24) and views["depth"].shape == (2, 1, 16, 24)
    assert views["normals"].shape == (2, 3, 16, 24) and views["semantic"].shape == (2, 16, 24)
    sky = views["semantic"] < 0
    norms = views["normals"].norm(dim=1)
    torch.testing.assert_close(norms[~sky], torch.ones_like(norms[~sky]))  # unit normals on surfaces
    assert bool((norms[sky] == 0).all()) and bool((views["depth"][:, 0][sky] == 30.0).all())
    assert float(views["depth"].min()) > 0 and float(views["depth"].max()) <= 30.0
    road = views["semantic"] == 0  # the road faces up: -y in OpenCV camera axes
    assert float(views["normals"][:, 1][road].mean()) < -0.9


def test_labelled_fraction_hides_labels_of_the_other_training_views():
    data = small(labelled_fraction=0.25)
    train = data.split("train")
    assert len(train["rgb"]) == 8 and int(train["labelled"].sum()) == 2
    hidden = ~train["labelled"]
    assert bool((train["semantic"][hidden] == -1).all()) and bool((train["depth"][hidden] == 0).all())
    assert bool(data.split("test")["labelled"].all())
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"rgb", "depth", "normals", "semantic", "labelled"}


def test_the_same_seed_gives_the_same_views_and_another_seed_others():
    a, b, c = small().split("val"), small().split("val"), small(seed=1).split("val")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["rgb"], c["rgb"])
    assert not torch.equal(a["rgb"], small().split("test")["rgb"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image_size": (15, 24)}, "image_size"),
        ({"labelled_fraction": 0.0}, "labelled_fraction"),
        ({"num_train_scenes": 0}, "num_train_scenes"),
        ({"expert_noise": -1.0}, "expert_noise"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)
