"""DataDAM's attention map and matching losses against loop-by-loop computations."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.dataset_distillation import attention_map, attention_matching_loss, classwise_mean_discrepancy


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
