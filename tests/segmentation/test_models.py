"""Segmentation networks, the few-shot combination rule, IoU through torchmetrics, overlays."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.models.segmentation import (
    ClassHeads,
    MatchingSegmenter,
    SegformerSegmenter,
    SmallSegNet,
)
from lightning_distill.segmentation.few_shot import class_masks, combine_class_logits
from lightning_distill.segmentation.metrics import IoUTracker
from lightning_distill.segmentation.pictures import overlay_picture


@pytest.mark.parametrize("net", [SmallSegNet(3, 5, width=4), SegformerSegmenter(3, 5)])
def test_segmenters_give_logits_at_the_input_resolution(net):
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 5, 16, 16)
    with pytest.raises(ValueError, match="in_channels"):
        net(torch.randn(2, 4, 16, 16))


def test_segformer_exposes_its_encoder_features():
    features = SegformerSegmenter(3, 5, hidden_sizes=(8, 16)).features(torch.randn(1, 3, 16, 16))
    assert [tuple(f.shape) for f in features] == [(1, 8, 8, 8), (1, 16, 4, 4)]


def test_coarse_map_is_the_attention_weighted_support_mask():
    torch.manual_seed(0)
    net = MatchingSegmenter(3, width=2, temperature=0.5)
    q = [torch.randn(1, 4, 2, 2)]
    s = [torch.randn(1, 2, 4, 2, 2)]
    masks = torch.randint(0, 2, (1, 2, 1, 2, 2)).float()
    out = net.coarse_maps(q, s, masks)[0]
    keys = torch.nn.functional.normalize(s[0][0], dim=1).permute(0, 2, 3, 1).reshape(-1, 4)  # (M*hw, C)
    values = masks[0, :, 0].reshape(-1)
    for i in range(2):
        for j in range(2):
            query = torch.nn.functional.normalize(q[0][0, :, i, j], dim=0)
            weights = torch.softmax(keys @ query / 0.5, dim=0)
            torch.testing.assert_close(out[0, 0, i, j], (weights * values).sum())


def test_combination_takes_each_foreground_and_the_background_of_the_winning_class():
    pairs = torch.randn(2, 3, 2, 4, 4)
    out = combine_class_logits(pairs)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                best = int(pairs[b, :, 1, i, j].argmax())
                assert out[b, 0, i, j] == pairs[b, best, 0, i, j]
                assert torch.equal(out[b, 1:, i, j], pairs[b, :, 1, i, j])
    assert class_masks(torch.tensor([[[0, 1, 3]]]), 3)[0, :, 0, :].tolist() == [
        [0, 1, 0],
        [0, 0, 0],
        [0, 0, 1],
    ]


def test_heads_give_one_map_per_class_and_level():
    heads = ClassHeads(3, (4, 8))
    maps = heads([torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)])
    assert [tuple(m.shape) for m in maps] == [(2, 3, 8, 8), (2, 3, 4, 4)]
    with pytest.raises(ValueError, match="channels"):
        heads([torch.randn(2, 5, 8, 8), torch.randn(2, 8, 4, 4)])


def test_iou_is_counted_over_the_whole_evaluation():
    tracker = IoUTracker()
    labels = torch.tensor([[[0, 0, 1, 1]], [[1, 1, 2, 2]]])
    predictions = torch.tensor([[[0, 1, 1, 1]], [[1, 1, 2, 0]]])
    logits = torch.nn.functional.one_hot(predictions, 3).permute(0, 3, 1, 2).float()
    tracker.update("val", logits[:1], labels[:1])
    tracker.update("val", logits[1:], labels[1:])
    summary = tracker.compute("val")
    # class 0: inter 1, union 3; class 1: inter 4, union 5; class 2: inter 1, union 2
    torch.testing.assert_close(summary["iou_0"], torch.tensor(1 / 3))
    torch.testing.assert_close(summary["iou_1"], torch.tensor(4 / 5))
    torch.testing.assert_close(summary["miou"], torch.tensor((1 / 3 + 4 / 5 + 1 / 2) / 3))
    torch.testing.assert_close(summary["miou_fg"], torch.tensor((4 / 5 + 1 / 2) / 2))
    assert not tracker.has("val")


def test_overlay_shows_image_label_and_prediction_side_by_side():
    picture = overlay_picture(torch.rand(3, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.long),
                              torch.ones(3, 8, 8, dtype=torch.long), num_classes=2, zoom=2)  # fmt: skip
    assert picture.shape == (48, 48, 3) and picture.dtype.name == "uint8"
