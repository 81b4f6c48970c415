"""Tests for the feature distillation losses in ``lightning_distill.losses.feature``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lightning_distill.losses.feature import (
    attention_transfer_loss,
    cwd_loss,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _huber(x: float) -> float:
    x = abs(x)
    return 0.5 * x * x if x <= 1.0 else x - 0.5


# name -> (loss, student shape, teacher shape, takes reduction)
LOSSES = {
    "hint_loss": (hint_loss, (4, 3, 5, 5), (4, 3, 5, 5), True),
    "attention_transfer_loss": (attention_transfer_loss, (4, 3, 5, 5), (4, 6, 5, 5), True),
    "cwd_loss": (cwd_loss, (4, 3, 5, 5), (4, 3, 5, 5), True),
    "rkd_distance_loss": (rkd_distance_loss, (6, 7), (6, 9), False),
    "rkd_angle_loss": (rkd_angle_loss, (6, 7), (6, 9), False),
    "similarity_preserving_loss": (similarity_preserving_loss, (4, 3, 2, 2), (4, 5, 3, 3), False),
}


def _pair(name: str, seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    _, student_shape, teacher_shape, _ = LOSSES[name]
    return _randn(seed, *student_shape, scale=scale), _randn(seed + 1, *teacher_shape, scale=scale)


# ---------------------------------------------------------------- hint (FitNets)


def test_hint_loss_matches_mse_loss_and_per_sample_loop() -> None:
    s, t = _randn(0, 3, 4, 2, 2), _randn(1, 3, 4, 2, 2)
    assert_close(hint_loss(s, t), F.mse_loss(s, t))
    expected = torch.stack([((s[i] - t[i]) ** 2).sum() / 16 for i in range(3)])
    assert_close(hint_loss(s, t, reduction="none"), expected)
    assert_close(hint_loss(s, t, reduction="sum"), expected.sum())


def test_hint_loss_2x2_hand_value() -> None:
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [3.0, 1.0]]]])
    assert hint_loss(s, t).item() == pytest.approx((0 + 4 + 0 + 9) / 4)


def test_hint_loss_shape_mismatch_points_to_adapters() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) and \(2, 8, 4, 4\).*adapters"):
        hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 8, 4, 4))


# ---------------------------------------------------------------- attention transfer


def _attention_reference(s: torch.Tensor, t: torch.Tensor, p: float) -> list[float]:
    """Per-sample AT loss with explicit loops over positions and channels (float64)."""
    losses = []
    for i in range(s.shape[0]):
        maps = []
        for feature in (s[i].double().numpy(), t[i].double().numpy()):
            channels, height, width = feature.shape
            a = np.array(
                [
                    sum(abs(feature[c, y, x]) ** p for c in range(channels)) / channels
                    for y in range(height)
                    for x in range(width)
                ]
            )
            maps.append(a / math.sqrt(sum(v * v for v in a)))
        losses.append(float(((maps[0] - maps[1]) ** 2).sum() / maps[0].size))
    return losses


@pytest.mark.parametrize("p", [2.0, 1.0, 4.0])
def test_attention_transfer_matches_loop_reference(p: float) -> None:
    s, t = _randn(2, 3, 4, 3, 5), _randn(3, 3, 7, 3, 5)
    expected = torch.tensor(_attention_reference(s, t, p), dtype=torch.float32)
    assert_close(attention_transfer_loss(s, t, p=p, reduction="none"), expected)
    assert_close(attention_transfer_loss(s, t, p=p), expected.mean())


def test_attention_transfer_mean_equals_official_squared_form() -> None:
    # Official code: at(x) = F.normalize(x.pow(2).mean(1).view(B, -1)); loss = (at(s) - at(t)).pow(2).mean().
    s, t = _randn(4, 2, 3, 4, 4), _randn(5, 2, 5, 4, 4)
    diff = F.normalize(s.pow(2).mean(1).view(2, -1)) - F.normalize(t.pow(2).mean(1).view(2, -1))
    assert_close(attention_transfer_loss(s, t), diff.pow(2).mean())


def test_attention_transfer_1x2_hand_value() -> None:
    s = torch.tensor([[[[1.0, 0.0]]]])  # map (1, 0) -> Q = (1, 0)
    t = torch.tensor([[[[1.0, 1.0]]]])  # map (1, 1) -> Q = (1/sqrt 2, 1/sqrt 2)
    # ((1 - 1/sqrt 2)^2 + (1/sqrt 2)^2) / 2 = 1 - 1/sqrt 2
    assert attention_transfer_loss(s, t).item() == pytest.approx(1.0 - 1.0 / math.sqrt(2.0), rel=1e-6)


def test_attention_transfer_of_dead_features_has_finite_gradient() -> None:
    s = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = attention_transfer_loss(s, _randn(6, 2, 3, 4, 4))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all()


def test_attention_transfer_rejects_spatial_mismatch_and_small_p() -> None:
    with pytest.raises(ValueError, match=r"spatial size.*\(2, 3, 4, 4\) and \(2, 3, 8, 8\)"):
        attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="batch size"):
        attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="`p`"):
        attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), p=0.5)
    with pytest.raises(ValueError, match="student_feature.*at least 3"):
        attention_transfer_loss(torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------- channel-wise distillation


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_per_channel_kl_div_loop(tau: float) -> None:
    s, t = _randn(7, 3, 4, 3, 3, scale=3.0), _randn(8, 3, 4, 3, 3, scale=3.0)
    per_sample = []
    for i in range(3):
        channel_losses = [
            F.kl_div(
                F.log_softmax(s[i, c].reshape(-1) / tau, dim=0),
                F.softmax(t[i, c].reshape(-1) / tau, dim=0),
                reduction="sum",
            )
            for c in range(4)
        ]
        per_sample.append(tau**2 * torch.stack(channel_losses).mean())
    expected = torch.stack(per_sample)
    assert_close(cwd_loss(s, t, temperature=tau, reduction="none"), expected)
    # MMRazor's ChannelWiseDivergence: the sum over batch, channels and positions divided by B * C.
    assert_close(cwd_loss(s, t, temperature=tau), expected.sum() / 3)


def test_cwd_two_position_hand_value() -> None:
    s = torch.tensor([[[[0.0, 0.0]]]])  # uniform over the two positions
    t = torch.tensor([[[[0.0, 4.0 * math.log(3.0)]]]])  # (1/4, 3/4) at tau = 4
    expected = 16.0 * (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert cwd_loss(s, t, temperature=4.0).item() == pytest.approx(expected, rel=1e-6)


def test_cwd_rejects_channel_mismatch_and_bad_temperature() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) and \(2, 5, 4, 4\).*adapter"):
        cwd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="temperature"):
        cwd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), temperature=0.0)


# ---------------------------------------------------------------- RKD


def _rkd_distance_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    """RKD-D with explicit pair loops in float64: mean over i != j normalises, Huber averaged over B^2."""
    b = s.shape[0]
    potentials = []
    for x in (s.double().numpy(), t.double().numpy()):
        d = np.array([[math.dist(x[i], x[j]) for j in range(b)] for i in range(b)])
        mu = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        potentials.append(d / mu)
    return sum(_huber(potentials[0][i, j] - potentials[1][i, j]) for i in range(b) for j in range(b)) / b**2


def _cosine_at(x: np.ndarray, i: int, j: int, k: int) -> float:
    u, v = x[i] - x[j], x[k] - x[j]
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return 0.0
    return float(u @ v / (nu * nv))


def _rkd_angle_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    """RKD-A with explicit triplet loops in float64, averaged over all B^3 ordered triplets."""
    xs, xt = s.double().numpy(), t.double().numpy()
    b = xs.shape[0]
    total = 0.0
    for i, j, k in itertools.product(range(b), repeat=3):
        total += _huber(_cosine_at(xs, i, j, k) - _cosine_at(xt, i, j, k))
    return total / b**3


def test_rkd_distance_matches_loop_reference() -> None:
    s, t = _randn(9, 6, 7, scale=2.0), _randn(10, 6, 9)
    assert rkd_distance_loss(s, t).item() == pytest.approx(_rkd_distance_reference(s, t), rel=1e-5)


def test_rkd_angle_matches_loop_reference() -> None:
    s, t = _randn(11, 6, 7), _randn(12, 6, 9, scale=0.5)
    assert rkd_angle_loss(s, t).item() == pytest.approx(_rkd_angle_reference(s, t), rel=1e-5)


def test_rkd_distance_collinear_versus_equilateral_hand_value() -> None:
    t = torch.tensor([[0.0], [1.0], [2.0]])  # distances 1, 2, 1; mean 4/3 -> 3/4, 3/2, 3/4
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2]])  # all distances 1
    # Four entries off by 1/4 (Huber 1/32), two off by 1/2 (Huber 1/8), over 9 entries.
    assert rkd_distance_loss(s, t).item() == pytest.approx((4 / 32 + 2 / 8) / 9, rel=1e-5)


def test_rkd_angle_collinear_versus_equilateral_hand_value() -> None:
    t = torch.tensor([[0.0], [1.0], [2.0]])  # cosines: -1 at the middle point, 1 at the ends
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2]])  # every cosine 1/2
    # Two triplets off by 3/2 (Huber 1), four off by 1/2 (Huber 1/8); degenerate triplets agree.
    assert rkd_angle_loss(s, t).item() == pytest.approx((2 * 1.0 + 4 / 8) / 27, rel=1e-5)


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_has_no_nan_gradient_when_student_embeddings_coincide(loss) -> None:
    s = _randn(13, 5, 4)
    s[3] = s[1]
    s.requires_grad_(True)
    t = _randn(14, 5, 4)
    value = loss(s, t)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(s.grad).all()
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_with_coincident_embeddings_matches_reference(loss) -> None:
    s, t = _randn(15, 5, 4), _randn(16, 5, 3)
    s[4] = s[0]
    t[2] = t[3]
    reference = _rkd_distance_reference if loss is rkd_distance_loss else _rkd_angle_reference
    assert loss(s, t).item() == pytest.approx(reference(s, t), rel=1e-5)


def test_rkd_distance_is_exact_for_coincident_embeddings_in_a_large_batch() -> None:
    # Above 25 rows torch.cdist switches to a Gram-matrix formula by default, whose zero distances
    # come out as rounding noise; the loss must keep exact zeros and finite gradients there too.
    s, t = _randn(23, 30, 16, scale=10.0), _randn(24, 30, 8)
    s[7] = s[3]
    s[29] = s[3]
    s.requires_grad_(True)
    value = rkd_distance_loss(s, t)
    value.backward()
    assert torch.isfinite(s.grad).all()
    assert value.item() == pytest.approx(_rkd_distance_reference(s.detach(), t), rel=1e-6)


def test_rkd_rejects_too_small_batches() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        rkd_distance_loss(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 3 samples"):
        rkd_angle_loss(torch.zeros(2, 4), torch.zeros(2, 4))


# ---------------------------------------------------------------- similarity preserving


def test_similarity_preserving_matches_loop_reference() -> None:
    s, t = _randn(17, 5, 3, 2, 2), _randn(18, 5, 4, 3, 3)
    normalised = []
    for x in (s.double().flatten(1).numpy(), t.double().flatten(1).numpy()):
        g = np.array([[float(np.dot(x[i], x[j])) for j in range(5)] for i in range(5)])
        normalised.append(np.stack([row / math.sqrt(sum(v * v for v in row)) for row in g]))
    expected = float(((normalised[0] - normalised[1]) ** 2).sum()) / 25
    assert similarity_preserving_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_similarity_preserving_two_sample_hand_value() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G = I
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G = all ones -> rows (1/sqrt 2, 1/sqrt 2)
    # (2 (1 - 1/sqrt 2)^2 + 2 (1/sqrt 2)^2) / 4 = 1 - 1/sqrt 2
    assert similarity_preserving_loss(s, t).item() == pytest.approx(1.0 - 1.0 / math.sqrt(2.0), rel=1e-6)


# ---------------------------------------------------------------- shared properties


@pytest.mark.parametrize("name", list(LOSSES))
def test_identical_features_give_zero(name: str) -> None:
    loss, shape, _, _ = LOSSES[name]
    t = _randn(19, *shape)
    assert loss(t.clone(), t).abs().item() < 1e-6


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_reaches_student_and_never_teacher(name: str) -> None:
    loss, _, _, _ = LOSSES[name]
    s, t = _pair(name, seed=20)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss(s, t).backward()
    assert s.grad is not None
    assert s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_inputs_give_the_fp32_result(name: str) -> None:
    loss, _, _, _ = LOSSES[name]
    s, t = _pair(name, seed=21, scale=3.0)
    s, t = s.bfloat16(), t.bfloat16()
    result = loss(s, t)
    assert result.dtype == torch.float32
    assert_close(result, loss(s.float(), t.float()), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n, spec in LOSSES.items() if spec[3]])
def test_reductions_agree_with_per_sample_values(name: str) -> None:
    loss, _, _, _ = LOSSES[name]
    s, t = _pair(name, seed=22)
    per_sample = loss(s, t, reduction="none")
    assert per_sample.shape == (s.shape[0],)
    assert_close(loss(s, t, reduction="mean"), per_sample.mean())
    assert_close(loss(s, t, reduction="sum"), per_sample.sum())
    with pytest.raises(ValueError, match=r"reduction.*'batchmean'"):
        loss(s, t, reduction="batchmean")


@pytest.mark.parametrize("name", list(LOSSES))
def test_batch_mismatch_raises_with_shapes(name: str) -> None:
    loss, student_shape, teacher_shape, _ = LOSSES[name]
    teacher_shape = (teacher_shape[0] + 1, *teacher_shape[1:])
    with pytest.raises(ValueError, match=r"teacher_feature.*\(" + str(teacher_shape[0])):
        loss(torch.zeros(student_shape), torch.zeros(teacher_shape))


@pytest.mark.parametrize("name", list(LOSSES))
def test_integer_features_raise_type_error(name: str) -> None:
    loss, shape, _, _ = LOSSES[name]
    with pytest.raises(TypeError, match="student_feature"):
        loss(torch.zeros(shape, dtype=torch.long), torch.zeros(shape))
