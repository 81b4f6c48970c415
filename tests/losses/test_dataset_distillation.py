"""Dataset-distillation losses against independent computations (loops, hand values, official formulas)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.losses.dataset_distillation import (
    attention_map,
    attention_matching_loss,
    bn_matching_loss,
    classwise_mean_discrepancy,
    soft_label_loss,
    trajectory_matching_loss,
)


def reference_attention(features: torch.Tensor, power: float) -> torch.Tensor:
    b, c, h, w = features.shape
    out = torch.zeros(b, h * w, dtype=torch.float64)
    for i in range(b):
        v = [
            sum(abs(float(features[i, k, y, x])) ** power for k in range(c))
            for y in range(h)
            for x in range(w)
        ]
        norm = math.sqrt(sum(t * t for t in v))
        out[i] = torch.tensor([t / norm for t in v], dtype=torch.float64)
    return out.float()


def reference_discrepancy(real: torch.Tensor, syn: torch.Tensor, k: int) -> float:
    n, m = real.shape[0] // k, syn.shape[0] // k
    total = 0.0
    for c in range(k):
        r = real[c * n : (c + 1) * n].reshape(n, -1).double().mean(0)
        s = syn[c * m : (c + 1) * m].reshape(m, -1).double().mean(0)
        total += float(((r - s) ** 2).sum())
    return total


@pytest.mark.parametrize("power", [1.0, 2.0, 4.0])
def test_attention_map_is_normalised_channel_sum_of_powers(power):
    features = torch.randn(3, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attention_map(features, power), reference_attention(features, power))


def test_attention_map_hand_value():
    f = torch.tensor([[[[2.0, 0.0]], [[0.0, -1.0]]]])  # |f|^4 summed over channels: (16, 1)
    expected = torch.tensor([[16.0, 1.0]]) / math.sqrt(257.0)
    torch.testing.assert_close(attention_map(f, power=4.0), expected)


def test_classwise_discrepancy_matches_per_class_loop():
    gen = torch.Generator().manual_seed(1)
    real, syn = torch.randn(3 * 5, 2, 2, generator=gen), torch.randn(3 * 2, 2, 2, generator=gen)
    value = classwise_mean_discrepancy(real, syn, 3)
    torch.testing.assert_close(value, torch.tensor(reference_discrepancy(real, syn, 3), dtype=torch.float32))


def test_attention_matching_loss_sums_layers():
    gen = torch.Generator().manual_seed(2)
    real = [torch.randn(2 * 4, 3, 4, 4, generator=gen), torch.randn(2 * 4, 5, 2, 2, generator=gen)]
    syn = [torch.randn(2 * 1, 3, 4, 4, generator=gen), torch.randn(2 * 1, 5, 2, 2, generator=gen)]
    expected = sum(
        reference_discrepancy(reference_attention(r, 4.0), reference_attention(s, 4.0), 2)
        for r, s in zip(real, syn)
    )
    value = attention_matching_loss(real, syn, 2, power=4.0)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float32))


def test_identical_batches_give_zero_and_gradient_reaches_synthetic_only():
    real = torch.randn(4, 2, 3, 3)
    syn = real.reshape(2, 2, 2, 3, 3).mean(1).clone().requires_grad_(True)  # the per-class means
    # The mean of attention maps is not the attention of the mean image: not zero in general...
    loss = attention_matching_loss([real], [syn], 2)
    loss.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0
    # ...but equal per-class batches give exactly zero.
    assert float(attention_matching_loss([real], [real.clone()], 2)) == 0.0
    assert float(classwise_mean_discrepancy(real, real.clone(), 2)) == 0.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="multiples"):
        classwise_mean_discrepancy(torch.zeros(5, 2), torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="feature shape"):
        classwise_mean_discrepancy(torch.zeros(4, 2), torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="power"):
        attention_map(torch.zeros(1, 1, 2, 2), power=0.0)
    with pytest.raises(ValueError, match="number of layers"):
        attention_matching_loss([torch.zeros(2, 1, 2, 2)], [], 2)


# ---------------------------------------------------------------------------- BatchNorm statistics
def test_bn_loss_matches_a_hand_computation():
    # Layer 0: batch (N=2, C=1, H=1, W=2) of [1, 3] and [5, 7]: mean 4, var 5 (biased).
    x0 = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])
    # Layer 1: two channels.
    x1 = torch.tensor([[[[0.0]], [[2.0]]], [[[2.0]], [[6.0]]]])  # means (1, 4), vars (1, 4)
    stats = [(x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)) for x in (x0, x1)]
    running = [
        (torch.tensor([1.0]), torch.tensor([1.0])),
        (torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])),
    ]
    # |4 - 1| + |5 - 1| = 7 (weighted by 10); ||(0, 3)|| + ||(0, 4)|| = 3 + 4 = 7.
    loss = bn_matching_loss(stats, running, first_multiplier=10.0)
    torch.testing.assert_close(loss, torch.tensor(10 * 7.0 + 7.0))
    torch.testing.assert_close(bn_matching_loss(stats, running, first_multiplier=1.0), torch.tensor(14.0))
    with pytest.raises(ValueError, match="layers"):
        bn_matching_loss(stats, running[:1])


def test_first_bn_multiplier_weighs_only_the_first_layer():
    stats = [(torch.ones(2), torch.ones(2)), (torch.ones(3), torch.ones(3))]
    running = [(torch.zeros(2), torch.ones(2)), (torch.zeros(3), torch.ones(3))]
    d0, d1 = math.sqrt(2), math.sqrt(3)
    for m in (0.0, 1.0, 10.0):
        torch.testing.assert_close(
            bn_matching_loss(stats, running, first_multiplier=m),
            torch.tensor(m * d0 + d1, dtype=torch.float32),
        )


# ---------------------------------------------------------------------------- trajectory matching
def test_trajectory_matching_loss_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    student, start, end = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    expected = sum((a - b) ** 2 for a, b in zip(student.tolist(), end.tolist())) / sum(
        (a - b) ** 2 for a, b in zip(start.tolist(), end.tolist())
    )
    assert float(trajectory_matching_loss(student, start, end)) == pytest.approx(expected, rel=1e-6)
    # The official code divides numerator and denominator by P first: the same value.
    official = (F.mse_loss(student, end, reduction="sum") / 50) / (
        F.mse_loss(start, end, reduction="sum") / 50
    )
    torch.testing.assert_close(trajectory_matching_loss(student, start, end), official.float())
    with pytest.raises(ValueError, match="one length"):
        trajectory_matching_loss(student, start, end[:3])


# ---------------------------------------------------------------------------- soft labels
def test_soft_label_losses_match_a_direct_computation():
    logits, target = torch.randn(3, 4), torch.randn(3, 4)
    p = torch.exp(target / 2) / torch.exp(target / 2).sum(1, keepdim=True)
    q = torch.exp(logits / 2) / torch.exp(logits / 2).sum(1, keepdim=True)
    kl = 4 * (p * (p.log() - q.log())).sum(1)
    torch.testing.assert_close(soft_label_loss(logits, target, kind="kl", temperature=2.0), kl.mean())
    torch.testing.assert_close(
        soft_label_loss(logits, target, kind="kl", temperature=2.0, reduction="none"), kl
    )
    q1, p1 = logits.softmax(1), target.softmax(1)
    torch.testing.assert_close(soft_label_loss(logits, target, kind="mse"), ((q1 - p1) ** 2).mean())
    logits.requires_grad_(True)
    target.requires_grad_(True)
    soft_label_loss(logits, target).backward()
    assert logits.grad is not None and target.grad is None  # the target is detached
    with pytest.raises(ValueError, match="kind"):
        soft_label_loss(logits, target, kind="l1")
    with pytest.raises(ValueError, match="shape|\\(B, K\\)"):
        soft_label_loss(logits, target[:, :3])
