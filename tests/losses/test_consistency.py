"""Consistency losses against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.losses.consistency import bootstrap_loss, pseudo_huber_loss


def test_pseudo_huber_matches_a_hand_computed_value_per_element():
    pred = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    c = 0.5
    per_sample = [
        (math.sqrt(1 + c * c) - c + math.sqrt(4 + c * c) - c) / 2,
        (math.sqrt(0.25 + c * c) - c + 0.0) / 2,
    ]
    torch.testing.assert_close(
        pseudo_huber_loss(pred, target, c=c, reduction="none"), torch.tensor(per_sample)
    )
    torch.testing.assert_close(pseudo_huber_loss(pred, target, c=c), torch.tensor(sum(per_sample) / 2))


def test_pseudo_huber_per_sample_norm_form_of_ict():
    pred, target = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    c = 0.03
    expected = ((pred - target).reshape(3, -1).square().sum(1) + c * c).sqrt() - c
    torch.testing.assert_close(
        pseudo_huber_loss(pred, target, c=c, per_element=False, reduction="none"), expected
    )


def test_pseudo_huber_is_quadratic_for_small_and_linear_for_large_errors():
    c = 1.0
    small = pseudo_huber_loss(torch.tensor([[1e-2]]), torch.zeros(1, 1), c=c)
    large = pseudo_huber_loss(torch.tensor([[1e3]]), torch.zeros(1, 1), c=c)
    assert abs(small.item() / 0.5e-4 - 1) < 1e-2  # d²/(2c)
    assert abs(large.item() - (1e3 - 1)) < 1e-3


def test_pseudo_huber_gradient_reaches_only_the_prediction_and_bad_input_is_refused():
    pred = torch.randn(2, 3, requires_grad=True)
    target = torch.randn(2, 3, requires_grad=True)
    pseudo_huber_loss(pred, target).backward()
    assert pred.grad is not None and target.grad is None
    with pytest.raises(ValueError, match="shape"):
        pseudo_huber_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="c"):
        pseudo_huber_loss(torch.zeros(2, 3), torch.zeros(2, 3), c=-1.0)


def test_bootstrap_loss_matches_the_ddim_step_in_signal_space():
    g_s, g_t, x0 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    delta = torch.tensor([0.1, 0.2, 0.5, 1.0])
    target = g_t + delta[:, None] * (x0 - g_t)
    expected = (((g_s - target) / delta[:, None]) ** 2).mean(1)
    torch.testing.assert_close(bootstrap_loss(g_s, g_t, x0, delta, reduction="none"), expected)
    with pytest.raises(ValueError, match="δ"):
        bootstrap_loss(g_s, g_t, x0, 0.0)
