"""Distillation-DPO's losses (losses/lidar_generation.py) against independent computations."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.losses.lidar_generation import (
    noise_prediction_loss,
    preference_score_distillation_loss,
    score_distillation_loss,
)


def test_noise_prediction_loss_is_the_per_sample_mse():
    torch.manual_seed(0)
    pred, noise = torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    per_sample = torch.stack([((p - n) ** 2).sum() / 15 for p, n in zip(pred, noise)])
    torch.testing.assert_close(noise_prediction_loss(pred, noise, reduction="none"), per_sample)
    torch.testing.assert_close(noise_prediction_loss(pred, noise), per_sample.mean())
    torch.testing.assert_close(noise_prediction_loss(pred, noise, reduction="sum"), per_sample.sum())


def test_score_distillation_gradient_is_the_score_difference_and_nothing_reaches_the_scores():
    torch.manual_seed(1)
    x0 = torch.randn(2, 4, 3, requires_grad=True)
    teacher, fake = torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)
    score_distillation_loss(x0, teacher, fake).backward()
    torch.testing.assert_close(x0.grad, (teacher - fake).detach() / (2 * 12))
    assert teacher.grad is None and fake.grad is None


def test_preference_loss_is_winner_minus_loser_by_hand():
    torch.manual_seed(2)
    xw, xl = torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)
    tw, aw, tl, al = (torch.randn(2, 4, 3) for _ in range(4))
    loss = preference_score_distillation_loss(xw, xl, tw, aw, tl, al)
    expected = ((tw - aw) * xw).flatten(1).mean(1) - ((tl - al) * xl).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected.mean())
    loss.backward()
    torch.testing.assert_close(xw.grad, (tw - aw) / 24)
    torch.testing.assert_close(xl.grad, -(tl - al) / 24)


def test_the_released_form_has_zero_gradient_and_ours_does_not():
    """The official code multiplies by x_t − x_0 (the added noise): no path to the student's weights."""
    torch.manual_seed(3)
    weight = torch.randn(3, 3, requires_grad=True)  # a stand-in student: x̂0 = inputs @ weight
    inputs, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    x0 = inputs @ weight
    direction = torch.randn(2, 4, 3)
    released = (direction * ((x0 + 0.5 * noise) - x0)).mean()
    (grad_released,) = torch.autograd.grad(released, weight, retain_graph=True)
    assert float(grad_released.abs().max()) < 1e-6
    (grad_ours,) = torch.autograd.grad(
        score_distillation_loss(x0, direction, torch.zeros_like(direction)), weight
    )
    assert float(grad_ours.abs().max()) > 1e-3


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: noise_prediction_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "pred"),
        (lambda: noise_prediction_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg"), "reduction"),
        (
            lambda: score_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4)),
            "fake_eps",
        ),
        (
            lambda: preference_score_distillation_loss(
                *(torch.zeros(1, 2, 3),) * 1, torch.zeros(1, 3, 3), *(torch.zeros(1, 2, 3),) * 4
            ),
            "x0_loser",
        ),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
