"""R1 penalty against a hand computation and a finite-difference gradient."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.losses.video import r1_penalty


def test_r1_of_a_quadratic_discriminator_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    logits = (x**2).sum(1)  # ∇ = 2x, ‖∇‖² = 4‖x‖²
    torch.testing.assert_close(r1_penalty(logits, x, reduction="none"), torch.tensor([20.0, 40.0]))
    torch.testing.assert_close(r1_penalty((x**2).sum(1), x), torch.tensor(30.0))


def test_r1_is_differentiable_in_the_discriminator_weights():
    w = torch.tensor([0.5, -2.0], requires_grad=True)
    x = torch.randn(4, 2, requires_grad=True)
    r1_penalty(x @ w, x).backward()  # 4 · ‖w‖² / 4 -> d/dw = 2w
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_r1_rejects_bad_input():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(x.sum(1), x)
    with pytest.raises(ValueError, match="logits"):
        r1_penalty(torch.zeros(2), x.requires_grad_(True))
