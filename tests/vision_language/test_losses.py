"""The vision-language losses against independent, naive computations on hand-sized examples."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.losses.vision_language import (
    feature_l2_loss,
    image_contrastive_loss,
    negative_cosine_loss,
    text_classifier_loss,
    topk_text_alignment_loss,
)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_text_classifier_loss_is_cross_entropy_of_scaled_cosines():
    s, c, y = torch.randn(5, 4), torch.randn(3, 4), torch.tensor([0, 2, 1, 1, 0])
    logits = [[float(_unit(s[i]) @ _unit(c[k])) / 0.07 for k in range(3)] for i in range(5)]
    naive = sum(-(logits[i][y[i]] - math.log(sum(math.exp(v) for v in logits[i]))) for i in range(5)) / 5
    assert text_classifier_loss(s, c, y).item() == pytest.approx(naive, rel=1e-5)


def test_text_classifier_loss_hand_value():
    # cos = (1, 0) at tau = 1: CE = log(1 + e^-1)
    loss = text_classifier_loss(torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([0]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_topk_alignment_is_kl_over_the_teacher_top_k_on_correct_images():
    torch.manual_seed(0)
    s, v, c = torch.randn(6, 4), torch.randn(6, 4), torch.randn(5, 4)
    t_logits = _unit(v) @ _unit(c).t() / 0.07
    y = t_logits.argmax(-1).clone()
    y[:2] = (y[:2] + 1) % 5  # the teacher gets the first two images wrong: they are dropped
    s_logits = _unit(s) @ _unit(c).t() / 0.07
    total = 0.0
    for i in range(2, 6):
        ids = sorted(range(5), key=lambda k: -float(t_logits[i, k]))[:3]
        p = torch.softmax(t_logits[i, ids], 0)
        q = torch.softmax(s_logits[i, ids], 0)
        total += float((p * (p.log() - q.log())).sum())
    loss = topk_text_alignment_loss(s, v, c, y, top_k=3)
    assert loss.item() == pytest.approx(total / 4, rel=1e-4)


def test_topk_alignment_without_correct_images_is_zero_with_a_graph():
    s = torch.randn(2, 3, requires_grad=True)
    c = torch.eye(3)
    v = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    loss = topk_text_alignment_loss(s, v, c, torch.tensor([2, 2]), top_k=2)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None


def test_topk_alignment_rejects_bad_k_and_shapes():
    with pytest.raises(ValueError, match="top_k"):
        topk_text_alignment_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 3), top_k=0)
    with pytest.raises(ValueError, match="teacher_features"):
        topk_text_alignment_loss(torch.randn(2, 3), torch.randn(3, 3), torch.randn(4, 3), top_k=2)


def test_feature_l2_is_squared_distance_of_unit_vectors():
    s, v = torch.randn(4, 5), torch.randn(4, 5)
    naive = sum(float(((_unit(s[i]) - _unit(v[i])) ** 2).sum()) for i in range(4)) / 4
    assert feature_l2_loss(s, v).item() == pytest.approx(naive, rel=1e-5)
    # = 2 - 2 cos
    cos = torch.nn.functional.cosine_similarity(s, v)
    torch.testing.assert_close(feature_l2_loss(s, v, reduction="none"), 2 - 2 * cos)


def test_image_contrastive_is_the_mean_of_both_directions():
    s, v = torch.randn(4, 3), torch.randn(4, 3)
    m = _unit(s) @ _unit(v).t() / 0.07

    def ce_rows(mat):
        return (
            sum(-(float(mat[i, i]) - math.log(sum(math.exp(float(x)) for x in mat[i]))) for i in range(4)) / 4
        )

    assert image_contrastive_loss(s, v).item() == pytest.approx(0.5 * (ce_rows(m) + ce_rows(m.t())), rel=1e-4)


def test_negative_cosine_hand_value_and_teacher_detached():
    p = torch.tensor([[3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[4.0, 3.0]], requires_grad=True)
    loss = negative_cosine_loss(p, t)
    assert loss.item() == pytest.approx(-24 / 25)
    loss.backward()
    assert p.grad is not None and t.grad is None


def test_teacher_side_gets_no_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    v = torch.randn(3, 4, requires_grad=True)
    c = torch.randn(5, 4, requires_grad=True)
    (
        topk_text_alignment_loss(s, v, c, None, top_k=2)
        + feature_l2_loss(s, v)
        + image_contrastive_loss(s, v)
        + text_classifier_loss(s, c, torch.tensor([0, 1, 2]))
    ).backward()
    assert s.grad is not None and v.grad is None and c.grad is None
