"""Canvases, masks and few-shot episodes: deterministic, well-formed, novel classes unseen in training."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.segmentation import (
    MEAN,
    STD,
    DigitCanvasDataModule,
    FewShotCanvasDataModule,
    FewShotTaskDataModule,
    load_glyphs,
)
from lightning_distill.segmentation.canvas import render_canvases

SMALL = dict(size=16, glyph_size=8)


def test_canvases_are_a_function_of_the_seed():
    a = DigitCanvasDataModule(**SMALL, num_train=6, num_eval=2)
    b = DigitCanvasDataModule(**SMALL, num_train=6, num_eval=2)
    c = DigitCanvasDataModule(**SMALL, num_train=6, num_eval=2, seed=1)
    xa, ya = a._prepare()["train"]
    xb, yb = b._prepare()["train"]
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, c._prepare()["train"][0])


def test_masks_mark_exactly_the_glyph_pixels_with_their_class():
    glyphs = torch.zeros(1, 4, 4)
    glyphs[0, 1:3, 1:3] = 1.0
    images, masks = render_canvases(glyphs, torch.tensor([7]), num_images=3, size=8, glyphs_per_image=1,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert images.min() >= 0 and images.max() <= 1
    for m in masks:
        assert int((m == 8).sum()) == 4 and set(m.unique().tolist()) == {0, 8}


def test_glyph_splits_are_disjoint_and_cover_every_digit():
    train, val = load_glyphs("digits", 8, "train"), load_glyphs("digits", 8, "val")
    assert set(train[1].tolist()) == set(range(10)) == set(val[1].tolist())
    flat_train = {tuple(g.flatten().tolist()) for g in train[0][:200]}
    assert not any(tuple(g.flatten().tolist()) in flat_train for g in val[0][:200])


def test_episodes_pair_support_and_query_of_one_class_and_training_never_shows_novel_digits():
    dm = FewShotCanvasDataModule(**SMALL, shots=2, num_train=40, episodes_per_epoch=8, num_eval=30,
                                 num_eval_episodes=6, batch_size=4)  # fmt: skip
    train_images, train_masks = dm._prepare()["train"]
    assert set(train_masks.unique().tolist()) <= {0} | {d + 1 for d in dm.base_classes}
    for qx, qy, sx, sy, cls in dm.train_dataloader():
        assert sx.shape[1] == 2 and sy.shape == (qx.shape[0], 2, 16, 16)
        assert set(cls.tolist()) <= set(dm.base_classes)
        assert (qy.flatten(1).amax(1) == 1).all() and (
            sy.flatten(2).amax(2) == 1
        ).all()  # the class is in each
        assert set(qy.unique().tolist()) <= {0, 1}
    qx, qy, sx, sy, cls = dm._prepare()["test"]
    assert set(cls.tolist()) <= set(dm.novel_classes)
    assert (sy.flatten(2).amax(2) == 1).all() and (qy.flatten(1).amax(1) == 1).all()


def test_task_support_set_holds_every_class_and_differs_from_the_test_images():
    dm = FewShotTaskDataModule(classes=(6, 7, 8), shots=2, num_pool=30, num_eval=5, **SMALL)
    images, labels = dm.support_set()
    for k in (1, 2, 3):
        assert int((labels == k).flatten(1).any(1).sum()) >= 2
    test_x, test_y = dm._prepare()["test"]
    assert int(test_y.max()) <= 3 and not any(torch.equal(t, s) for t in test_x for s in images)
    x, y, index = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(x, images[index])


def test_pixels_are_normalised_with_the_fixed_constants():
    x, _ = DigitCanvasDataModule(**SMALL, num_train=4, num_eval=2)._prepare()["train"]
    raw = x * STD + MEAN
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": 30}, "size"),
        ({"base_classes": (1, 2), "novel_classes": (2, 3)}, "disjoint"),
        ({"shots": 0}, "shots"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FewShotCanvasDataModule(**kwargs)
