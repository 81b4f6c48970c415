"""DynamicCity's losses against independent computations: Lovász-softmax from its definition, KL, CE, masked MSE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from lightning_distill.losses.lidar_generation import (
    gaussian_kl_loss,
    lovasz_softmax_loss,
    masked_denoising_loss,
    occupancy_vae_losses,
)


def jaccard_loss_of_set(mispredicted: set[int], foreground: set[int]) -> float:
    """Δ_J(M) = |M| / |F ∪ M|, the Jaccard loss of a set of mispredicted elements."""
    union = foreground | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def lovasz_reference(probs: torch.Tensor, labels: torch.Tensor, classes: str = "present") -> float:
    """The Lovász extension of Δ_J at the error vector, by its definition (greedy sets, python loops)."""
    out = []
    for c in range(probs.shape[1]):
        foreground = {i for i in range(len(labels)) if int(labels[i]) == c}
        if classes == "present" and not foreground:
            continue
        errors = [abs(float(int(labels[i]) == c) - float(probs[i, c])) for i in range(len(labels))]
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        value = 0.0
        for k in range(1, len(order) + 1):
            gain = jaccard_loss_of_set(set(order[:k]), foreground) - jaccard_loss_of_set(
                set(order[: k - 1]), foreground
            )
            value += errors[order[k - 1]] * gain
        out.append(value)
    return sum(out) / len(out)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_softmax_equals_the_lovasz_extension_by_its_definition(seed, classes):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 3, 2, generator=g) * 2  # (B, K, H, W)
    target = torch.randint(0, 3, (2, 3, 2), generator=g)  # class 3 absent
    probs = logits.softmax(1).movedim(1, -1).reshape(-1, 4)
    expected = lovasz_reference(probs, target.reshape(-1), classes)
    torch.testing.assert_close(lovasz_softmax_loss(logits, target, classes=classes), torch.tensor(expected))


def test_lovasz_softmax_of_a_hard_prediction_is_one_minus_the_mean_iou():
    target = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2, 0, 0]])
    logits = 1e4 * F.one_hot(pred, 3).permute(0, 2, 1).float()
    ious = []
    for c in range(3):
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        ious.append(inter / union)
    expected = 1 - sum(ious) / 3
    torch.testing.assert_close(lovasz_softmax_loss(logits, target), torch.tensor(expected))


def test_lovasz_softmax_leaves_out_ignored_voxels_and_has_a_finite_gradient():
    logits = torch.randn(1, 3, 6, requires_grad=True)
    target = torch.tensor([[0, 1, 2, 255, 255, 1]])
    kept = lovasz_softmax_loss(logits[..., [0, 1, 2, 5]], target[..., [0, 1, 2, 5]])
    loss = lovasz_softmax_loss(logits, target, ignore_index=255)
    torch.testing.assert_close(loss, kept)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[..., 3:5].abs().sum() == 0


def test_lovasz_softmax_rejects_bad_input():
    with pytest.raises(ValueError, match="must match"):
        lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="class ids"):
        lovasz_softmax_loss(torch.randn(2, 3, 4), torch.full((2, 4), 3))
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), classes="some")


def test_gaussian_kl_matches_torch_distributions():
    mean, logvar = torch.randn(3, 5), torch.randn(3, 5)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl_loss(mean, logvar, reduction="none"), expected)
    torch.testing.assert_close(gaussian_kl_loss(mean, logvar), expected.mean())
    torch.testing.assert_close(gaussian_kl_loss(mean, logvar, reduction="sum"), expected.sum())
    with pytest.raises(ValueError, match="one shape"):
        gaussian_kl_loss(mean, logvar[:2])


def test_vae_terms_are_voxel_cross_entropy_lovasz_and_kl():
    g = torch.Generator().manual_seed(0)
    logits, target = (
        torch.randn(2, 4, 2, 3, 3, 2, generator=g),
        torch.randint(0, 4, (2, 2, 3, 3, 2), generator=g),
    )
    mean, logvar = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    terms = occupancy_vae_losses(logits, target, mean, logvar)
    flat_logits = logits.movedim(1, -1).reshape(-1, 4)
    ce = -flat_logits.log_softmax(-1).gather(1, target.reshape(-1, 1)).mean()
    torch.testing.assert_close(terms["ce"], ce)
    torch.testing.assert_close(
        terms["lovasz"], torch.tensor(lovasz_reference(flat_logits.softmax(-1), target.reshape(-1)))
    )
    torch.testing.assert_close(terms["kl"], gaussian_kl_loss(mean, logvar))


def test_masked_denoising_loss_averages_over_the_planes_only():
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = torch.zeros(4, 4)
    mask[:2, :3] = 1.0
    expected = torch.stack([(pred[b, :, :2, :3] - target[b, :, :2, :3]).square().mean() for b in range(2)])
    torch.testing.assert_close(masked_denoising_loss(pred, target, mask, reduction="none"), expected)
    torch.testing.assert_close(masked_denoising_loss(pred, target, mask), expected.mean())
    with pytest.raises(ValueError, match="mask"):
        masked_denoising_loss(pred, target, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="prediction"):
        masked_denoising_loss(pred, target[:, :2], mask)


def test_reference_itself_on_a_two_element_case():
    # class 0: F = {0}, errors (0.8, 0.7), Δ({0}) = 1, Δ({0, 1}) = 1 -> 0.8
    # class 1: F = {1}, errors (0.8, 0.7), Δ({0}) = 1/2, Δ({0, 1}) = 1 -> 0.8 / 2 + 0.7 / 2
    probs = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    expected = (0.8 + (0.8 * 0.5 + 0.7 * 0.5)) / 2
    assert lovasz_reference(probs, torch.tensor([0, 1]), "all") == pytest.approx(expected)
    logits = probs.log().T.unsqueeze(0)  # (1, K, N)
    torch.testing.assert_close(
        lovasz_softmax_loss(logits, torch.tensor([[0, 1]]), classes="all"), torch.tensor(expected)
    )
