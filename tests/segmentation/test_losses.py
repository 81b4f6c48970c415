"""Segmentation losses of Label-Assisted Distillation and DistillFSS against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.losses.feature import cwd_loss
from lightning_distill.losses.segmentation import coarse_map_mse, focal_loss, mutual_cwd_loss


def _naive_focal(logits, target, gamma):
    total, count = 0.0, 0
    b, k, h, w = logits.shape
    for n in range(b):
        for i in range(h):
            for j in range(w):
                z = logits[n, :, i, j].double()
                p = float((z.exp() / z.exp().sum())[int(target[n, i, j])])
                total += -((1 - p) ** gamma) * math.log(p)
                count += 1
    return total / count


def _naive_cwd(s, t, temperature):
    b, c = s.shape[:2]
    total = 0.0
    for n in range(b):
        for ch in range(c):
            ps = torch.softmax(s[n, ch].flatten().double() / temperature, 0)
            pt = torch.softmax(t[n, ch].flatten().double() / temperature, 0)
            total += float((pt * (pt.log() - ps.log())).sum())
    return total / (b * c) * temperature**2


def test_focal_loss_matches_a_pixel_by_pixel_reference():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    for gamma in (0.0, 2.0):
        assert float(focal_loss(logits, target, gamma=gamma)) == pytest.approx(
            _naive_focal(logits, target, gamma), rel=1e-5
        )


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_down_weights_easy_pixels():
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    ce = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), ce)
    assert focal_loss(logits, target, gamma=2.0) < ce


def test_focal_loss_rejects_a_wrong_target_shape():
    with pytest.raises(ValueError, match="target"):
        focal_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), gamma=-1.0)


def test_cwd_one_direction_matches_the_reference_and_is_asymmetric():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert float(cwd_loss(s, t, temperature=4.0)) == pytest.approx(_naive_cwd(s, t, 4.0), rel=1e-5)
    assert float(cwd_loss(t, s, temperature=4.0)) == pytest.approx(_naive_cwd(t, s, 4.0), rel=1e-5)
    assert float(cwd_loss(s, t)) != pytest.approx(float(cwd_loss(t, s)), rel=1e-3)


def test_mutual_cwd_is_both_directions_and_each_side_learns_from_the_other_only():
    torch.manual_seed(2)
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = mutual_cwd_loss(a, b, temperature=4.0)
    expected = _naive_cwd(a.detach(), b.detach(), 4.0) + _naive_cwd(b.detach(), a.detach(), 4.0)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    value.backward()
    # a's gradient is that of CWD(a, sg(b)) alone: the direction where b is the target.
    a2 = a.detach().clone().requires_grad_(True)
    cwd_loss(a2, b.detach(), temperature=4.0).backward()
    torch.testing.assert_close(a.grad, a2.grad)


def test_coarse_map_mse_averages_levels_and_never_reaches_the_teacher():
    s = [torch.zeros(1, 2, 4, 4, requires_grad=True), torch.zeros(1, 2, 2, 2, requires_grad=True)]
    t = [torch.ones(1, 2, 4, 4, requires_grad=True), torch.full((1, 2, 2, 2), 2.0, requires_grad=True)]
    value = coarse_map_mse(s, t)
    assert float(value.detach()) == pytest.approx((1.0 + 4.0) / 2)
    value.backward()
    assert all(m.grad is not None for m in s) and all(m.grad is None for m in t)
    with pytest.raises(ValueError, match="levels"):
        coarse_map_mse(s, t[:1])
