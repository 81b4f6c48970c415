import numpy as np
import pytest
import torch

from lightning_distill.losses.representation import (
    masked_patch_mse,
    normalized_feature_l1,
    normalized_patches,
    visible_smooth_l1,
)


def test_masked_patch_mse_is_the_mean_over_masked_patches_of_per_patch_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    values = [
        ((pred[b, i] - target[b, i]) ** 2).mean() for b in range(2) for i in range(3) if mask[b, i] == 1
    ]
    torch.testing.assert_close(masked_patch_mse(pred, target, mask), torch.stack(values).mean())
    torch.testing.assert_close(
        masked_patch_mse(pred, target, mask, reduction="sum"), torch.stack(values).sum()
    )
    assert masked_patch_mse(pred, target, mask, reduction="none").shape == (2, 3)


def test_masked_patch_mse_hand_value_and_target_detached():
    pred = torch.zeros(1, 2, 2, requires_grad=True)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]], requires_grad=True)
    loss = masked_patch_mse(pred, target, torch.tensor([[0.0, 1.0]]))
    assert float(loss.detach()) == 4.0
    loss.backward()
    assert target.grad is None and pred.grad is not None


def test_normalized_patches_match_numpy_with_unbiased_variance():
    x = torch.randn(2, 5, 6)
    a = x.numpy()
    expected = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalized_patches(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_normalized_feature_l1_matches_an_elementwise_mean():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sn = s / s.norm(dim=-1, keepdim=True)
    tn = t / t.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(normalized_feature_l1(s, t), (sn - tn).abs().mean())
    torch.testing.assert_close(normalized_feature_l1(s, t, reduction="none"), (sn - tn).abs().sum(-1))
    assert float(normalized_feature_l1(torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]]))) == 0.0


def test_visible_smooth_l1_is_quadratic_below_beta_and_linear_above():
    pred = torch.zeros(1, 1, 3)
    target = torch.tensor([[[1.0, -3.0, 2.0]]])
    # 0.5 * 1 / 2 = 0.25; 3 - 1 = 2; at |d| = beta: 2 - 1 = 1
    torch.testing.assert_close(visible_smooth_l1(pred, target), torch.tensor((0.25 + 2.0 + 1.0) / 3))
    with pytest.raises(ValueError, match="beta"):
        visible_smooth_l1(pred, target, beta=0.0)


def test_bad_shapes_are_rejected_with_the_shapes():
    with pytest.raises(ValueError, match="mask"):
        masked_patch_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="masks no patch"):
        masked_patch_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="Project the student"):
        normalized_feature_l1(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        visible_smooth_l1(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
