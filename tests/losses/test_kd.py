"""Tests for the logit distillation losses in ``lightning_distill.losses.kd``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon
from torch.testing import assert_close

from lightning_distill.losses.kd import (
    dkd_loss,
    js_divergence,
    kd_loss,
    logit_discriminator_loss,
    soft_cross_entropy,
    symmetric_kl,
)

B, C = 6, 5


def _logits(seed: int, scale: float = 2.0, shape: tuple[int, int] = (B, C)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scale


def _labels(seed: int = 7) -> torch.Tensor:
    return torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed))


def _softmax_np(logits: torch.Tensor, temperature: float) -> np.ndarray:
    z = logits.double().numpy() / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _kl_np(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


# Every loss with the arguments it needs, as f(student, teacher, **options).
LOSSES = {
    "kd_loss": lambda s, t, **kw: kd_loss(s, t, **kw),
    "soft_cross_entropy": lambda s, t, **kw: soft_cross_entropy(s, t, target_is_logits=True, **kw),
    "js_divergence": lambda s, t, **kw: js_divergence(s, t, **kw),
    "symmetric_kl": lambda s, t, **kw: symmetric_kl(s, t, **kw),
    "dkd_loss": lambda s, t, **kw: dkd_loss(s, t, _labels(), **kw),
}
DIVERGENCES = ["kd_loss", "js_divergence", "symmetric_kl", "dkd_loss"]


# ---------------------------------------------------------------- reference implementations


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_torch_kl_div_batchmean(temperature: float) -> None:
    s, t = _logits(0), _logits(1)
    expected = (
        F.kl_div(
            F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean"
        )
        * temperature**2
    )
    assert_close(kd_loss(s, t, temperature=temperature), expected)


def test_kd_loss_per_sample_matches_numpy_loop() -> None:
    s, t = _logits(2), _logits(3)
    p_s, p_t = _softmax_np(s, 3.0), _softmax_np(t, 3.0)
    expected = torch.tensor([9.0 * _kl_np(p_t[i], p_s[i]) for i in range(B)], dtype=torch.float32)
    per_sample = kd_loss(s, t, temperature=3.0, reduction="none")
    assert per_sample.shape == (B,)
    assert_close(per_sample, expected)
    assert_close(kd_loss(s, t, temperature=3.0, reduction="sum"), expected.sum())
    assert_close(kd_loss(s, t, temperature=3.0, reduction="mean"), expected.mean())


def test_soft_cross_entropy_matches_torch_cross_entropy_with_probability_targets() -> None:
    s, t = _logits(4), _logits(5)
    expected = F.cross_entropy(s / 2.0, F.softmax(t / 2.0, dim=1), reduction="none") * 4.0
    assert_close(soft_cross_entropy(s, t, target_is_logits=True, temperature=2.0, reduction="none"), expected)


def test_soft_cross_entropy_with_probabilities_matches_numpy_loop() -> None:
    s = _logits(6)
    q = torch.softmax(_logits(7), dim=1)
    log_p_s = np.log(_softmax_np(s, 1.0))
    q_np = q.double().numpy()
    expected = [-sum(q_np[i, c] * log_p_s[i, c] for c in range(C)) for i in range(B)]
    result = soft_cross_entropy(s, q, target_is_logits=False, reduction="none")
    assert_close(result, torch.tensor(expected, dtype=torch.float32))


def test_soft_cross_entropy_gives_the_same_loss_for_probabilities_and_logits_at_any_temperature() -> None:
    s, t = _logits(8), _logits(9)
    for temperature in (0.5, 1.0, 3.0):
        from_logits = soft_cross_entropy(s, t, target_is_logits=True, temperature=temperature)
        from_probs = soft_cross_entropy(s, t.softmax(dim=1), target_is_logits=False, temperature=temperature)
        assert_close(from_probs, from_logits)


def test_js_divergence_matches_scipy_jensenshannon() -> None:
    s, t = _logits(10), _logits(11)
    p_s, p_t = _softmax_np(s, 2.0), _softmax_np(t, 2.0)
    # scipy returns the Jensen-Shannon *distance*, the square root of the divergence (natural log).
    expected = torch.tensor([4.0 * jensenshannon(p_s[i], p_t[i]) ** 2 for i in range(B)], dtype=torch.float32)
    assert_close(js_divergence(s, t, temperature=2.0, reduction="none"), expected, atol=1e-6, rtol=1e-5)


def test_symmetric_kl_matches_average_of_both_kl_div_directions() -> None:
    s, t = _logits(12), _logits(13)
    log_s, log_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    forward = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    backward = F.kl_div(log_t, log_s, reduction="batchmean", log_target=True)
    assert_close(symmetric_kl(s, t), (forward + backward) / 2)


def _dkd_reference(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, alpha, beta, temperature) -> list:
    """DKD straight from the paper's definitions, one sample at a time in float64."""
    p_s, p_t = _softmax_np(s, temperature), _softmax_np(t, temperature)
    losses = []
    for i, y in enumerate(labels.tolist()):
        b_s = [p_s[i, y], 1.0 - p_s[i, y]]
        b_t = [p_t[i, y], 1.0 - p_t[i, y]]
        others = [c for c in range(s.shape[1]) if c != y]
        hat_s = [p_s[i, c] / (1.0 - p_s[i, y]) for c in others]
        hat_t = [p_t[i, c] / (1.0 - p_t[i, y]) for c in others]
        tckd, nckd = _kl_np(b_t, b_s), _kl_np(hat_t, hat_s)
        losses.append(temperature**2 * (alpha * tckd + beta * nckd))
    return losses


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_loss_matches_paper_definitions(alpha: float, beta: float, temperature: float) -> None:
    s, t, labels = _logits(14), _logits(15), _labels()
    expected = torch.tensor(_dkd_reference(s, t, labels, alpha, beta, temperature), dtype=torch.float32)
    result = dkd_loss(s, t, labels, alpha=alpha, beta=beta, temperature=temperature, reduction="none")
    assert_close(result, expected)
    assert_close(dkd_loss(s, t, labels, alpha=alpha, beta=beta, temperature=temperature), expected.mean())


def test_dkd_terms_recombine_into_kd_as_in_the_paper() -> None:
    # The paper's reformulation (Section 3.1): KD = TCKD + (1 - p_t^T) NCKD, with p_t^T the teacher's target probability.
    s, t, labels = _logits(16), _logits(17), _labels()
    tckd = dkd_loss(s, t, labels, alpha=1.0, beta=0.0, temperature=2.0, reduction="none")
    nckd = dkd_loss(s, t, labels, alpha=0.0, beta=1.0, temperature=2.0, reduction="none")
    teacher_target = F.softmax(t / 2.0, dim=1).gather(1, labels[:, None]).squeeze(1)
    expected = kd_loss(s, t, temperature=2.0, reduction="none")
    assert_close(tckd + (1.0 - teacher_target) * nckd, expected)


# ---------------------------------------------------------------- hand-computed values


def test_kd_loss_two_class_hand_value() -> None:
    s = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2) at any temperature
    t = torch.tensor([[0.0, 2.0 * math.log(3.0)]])  # (1/4, 3/4) at T = 2
    expected = 4.0 * (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_soft_cross_entropy_two_class_hand_value() -> None:
    s = torch.tensor([[0.0, math.log(3.0)]])  # (1/4, 3/4)
    q = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(s, q, target_is_logits=False).item() == pytest.approx(expected, rel=1e-6)


def test_js_divergence_two_class_hand_value() -> None:
    s = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    t = torch.tensor([[0.0, math.log(3.0)]])  # q = (1/4, 3/4); m = (3/8, 5/8)
    kl_pm = 0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)
    kl_qm = 0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
    assert js_divergence(s, t).item() == pytest.approx(0.5 * (kl_pm + kl_qm), rel=1e-5)


def test_symmetric_kl_two_class_hand_value() -> None:
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    kl_ts = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_st = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert symmetric_kl(s, t).item() == pytest.approx(0.5 * (kl_ts + kl_st), rel=1e-6)


def test_dkd_loss_three_class_hand_value() -> None:
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # teacher (1/2, 1/4, 1/4)
    s = torch.tensor([[0.0, 0.0, math.log(2.0)]])  # student (1/4, 1/4, 1/2)
    # b_t = (1/2, 1/2), b_s = (1/4, 3/4); hat p_t = (1/2, 1/2), hat p_s = (1/3, 2/3).
    tckd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    nckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    result = dkd_loss(s, t, torch.tensor([0]), alpha=1.0, beta=8.0, temperature=1.0)
    assert result.item() == pytest.approx(tckd + 8.0 * nckd, rel=1e-6)


def test_dkd_loss_with_two_classes_is_alpha_times_kd() -> None:
    # With two classes the non-target distribution has one class, so NCKD = 0 and TCKD = KD.
    s, t = _logits(18, shape=(B, 2)), _logits(19, shape=(B, 2))
    labels = torch.randint(0, 2, (B,), generator=torch.Generator().manual_seed(0))
    assert_close(dkd_loss(s, t, labels, alpha=0.7, beta=8.0), 0.7 * kd_loss(s, t))


# ---------------------------------------------------------------- edge cases and properties


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_of_identical_inputs_is_zero(name: str) -> None:
    t = _logits(20)
    assert_close(LOSSES[name](t.clone(), t, reduction="none"), torch.zeros(B))


def test_soft_cross_entropy_of_identical_inputs_is_teacher_entropy() -> None:
    t = _logits(21)
    p = F.softmax(t, dim=1)
    entropy = -(p * p.log()).sum(dim=1)
    assert_close(soft_cross_entropy(t, t, target_is_logits=True, reduction="none"), entropy)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_kd_loss_temperature_scales_by_t_squared(temperature: float) -> None:
    # Dividing logits multiplied by T by the temperature T gives back the T = 1 distributions.
    s, t = _logits(22), _logits(23)
    scaled = kd_loss(s * temperature, t * temperature, temperature=temperature)
    assert_close(scaled, temperature**2 * kd_loss(s, t, temperature=1.0))


def test_soft_cross_entropy_and_kd_loss_have_the_same_gradient() -> None:
    t = _logits(24)
    s1 = _logits(25).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    kd_loss(s1, t, temperature=3.0).backward()
    soft_cross_entropy(s2, t, target_is_logits=True, temperature=3.0).backward()
    assert_close(s1.grad, s2.grad)


def test_js_divergence_is_bounded_by_log_two() -> None:
    s = torch.tensor([[30.0, -30.0]])
    t = torch.tensor([[-30.0, 30.0]])
    assert 0.0 < js_divergence(s, t).item() <= math.log(2.0) + 1e-6
    assert js_divergence(s, t, temperature=2.0).item() <= 4.0 * math.log(2.0) + 1e-6


def test_masked_teacher_class_gives_finite_loss_and_gradient() -> None:
    # A class the teacher rules out (-inf logit, e.g. vocabulary padding) adds nothing.
    t = _logits(26)
    t[:, -1] = float("-inf")
    s = _logits(27).requires_grad_(True)
    loss = kd_loss(s, t, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all()
    # Direct value: the teacher's distribution over the other classes against the full student softmax.
    log_q = F.log_softmax(s.detach() / 2.0, dim=1)[:, :-1]
    p = F.softmax(t[:, :-1] / 2.0, dim=1)
    direct = 4.0 * (p * (p.log() - log_q)).sum(dim=1).mean()
    assert_close(loss.detach(), direct)


def test_dkd_loss_is_finite_when_the_student_is_certain() -> None:
    t = _logits(28)
    s = torch.zeros(B, C)
    labels = _labels()
    s[torch.arange(B), labels] = 200.0  # p_y = 1 - exp(-200) in float32: log(1 - p_y) underflows naively
    s.requires_grad_(True)
    loss = dkd_loss(s, t, labels, temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_reaches_student_and_never_teacher(name: str) -> None:
    s = _logits(30).requires_grad_(True)
    t = _logits(31).requires_grad_(True)
    LOSSES[name](s, t).backward()
    assert s.grad is not None
    assert s.grad.abs().sum() > 0
    assert t.grad is None


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_inputs_give_the_fp32_result(name: str) -> None:
    s, t = _logits(32, scale=4.0).bfloat16(), _logits(33, scale=4.0).bfloat16()
    result = LOSSES[name](s, t, reduction="none")
    assert result.dtype == torch.float32
    assert_close(result, LOSSES[name](s.float(), t.float(), reduction="none"), rtol=1e-6, atol=1e-7)


def test_bf16_arithmetic_would_fail_the_fp32_tolerance() -> None:
    # Guards the test above: computing the softmaxes in bf16 is visibly off at that tolerance.
    s, t = _logits(32, scale=4.0).bfloat16(), _logits(33, scale=4.0).bfloat16()
    in_bf16 = F.kl_div(
        F.log_softmax(s / 4.0, dim=1), F.log_softmax(t / 4.0, dim=1), reduction="none", log_target=True
    )
    in_bf16 = in_bf16.sum(dim=1).float() * 16.0
    with pytest.raises(AssertionError):
        assert_close(in_bf16, kd_loss(s, t, reduction="none"), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize("name", list(LOSSES))
def test_mismatched_shapes_raise_with_shapes(name: str) -> None:
    teacher_name = "target" if name == "soft_cross_entropy" else "teacher_logits"
    with pytest.raises(ValueError, match=rf"{teacher_name}.*\(6, 5\) and \(6, 4\)"):
        LOSSES[name](_logits(0), _logits(1, shape=(B, 4)))


@pytest.mark.parametrize("name", list(LOSSES))
def test_logits_that_are_not_2d_raise(name: str) -> None:
    with pytest.raises(ValueError, match=r"student_logits.*\(B, C\).*flatten"):
        LOSSES[name](torch.zeros(2, 3, 5), torch.zeros(2, 3, 5))


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_temperature_raises(name: str, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        LOSSES[name](_logits(0), _logits(1), temperature=temperature)


@pytest.mark.parametrize("name", list(LOSSES))
def test_unknown_reduction_raises(name: str) -> None:
    with pytest.raises(ValueError, match=r"reduction.*'batchmean'"):
        LOSSES[name](_logits(0), _logits(1), reduction="batchmean")


def test_integer_logits_raise_type_error() -> None:
    with pytest.raises(TypeError, match="student_logits"):
        kd_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))


def test_soft_cross_entropy_requires_a_bool_target_is_logits() -> None:
    with pytest.raises(TypeError, match="target_is_logits"):
        soft_cross_entropy(_logits(0), _logits(1), target_is_logits=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target_is_logits"):
        soft_cross_entropy(_logits(0), _logits(1))  # type: ignore[call-arg]


def test_dkd_loss_rejects_bad_labels() -> None:
    s, t = _logits(0), _logits(1)
    with pytest.raises(ValueError, match=r"labels.*\[0, 5\).*from 0 to 5"):
        dkd_loss(s, t, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="labels.*from -1"):
        dkd_loss(s, t, torch.tensor([0, 1, 2, 3, 4, -1]))
    with pytest.raises(ValueError, match=r"labels.*\(6,\)"):
        dkd_loss(s, t, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        dkd_loss(s, t, torch.zeros(6))


def test_dkd_loss_rejects_negative_weights_and_one_class() -> None:
    s, t, labels = _logits(0), _logits(1), _labels()
    with pytest.raises(ValueError, match="alpha"):
        dkd_loss(s, t, labels, alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        dkd_loss(s, t, labels, beta=-0.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))


def test_labelled_cross_entropy_averages_over_labelled_samples_only():
    from lightning_distill.losses import labelled_cross_entropy

    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, -1, 2, -1, 1])
    keep = labels >= 0
    expected = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(labelled_cross_entropy(logits, labels), expected)
    none = labelled_cross_entropy(logits, torch.full((5,), -1))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        labelled_cross_entropy(logits[0], labels)


# ------------------------------------------------------------------ MEAL V2 discriminator loss
def _bce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Element-wise binary cross-entropy from logits, written out."""
    return -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z)))


def test_logit_discriminator_loss_matches_bce_on_the_official_targets():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    # Independent: student rows have target (1, 0), teacher rows (0, 1); mean over 2B x 2 entries.
    per_entry = torch.cat([_bce(s, torch.tensor([1.0, 0.0])), _bce(t, torch.tensor([0.0, 1.0]))])
    assert_close(logit_discriminator_loss(s, t), per_entry.mean())
    assert_close(logit_discriminator_loss(s, t, reduction="none"), per_entry.mean(dim=1))
    assert_close(logit_discriminator_loss(s, t, reduction="sum"), per_entry.mean(dim=1).sum())


def test_logit_discriminator_loss_hand_value_and_gradients():
    zeros = torch.zeros(2, 2, requires_grad=True)
    teacher = torch.zeros(2, 2, requires_grad=True)
    loss = logit_discriminator_loss(zeros, teacher)
    assert_close(loss, torch.tensor(math.log(2.0)))
    loss.backward()
    # d/dz of mean BCE at z = 0: (sigmoid(0) - y) / 8 = +-1/16.
    assert_close(zeros.grad, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) / 16)
    assert_close(teacher.grad, torch.tensor([[1.0, -1.0], [1.0, -1.0]]) / 16)


def test_logit_discriminator_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        logit_discriminator_loss(torch.randn(3, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        logit_discriminator_loss(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="reduction"):
        logit_discriminator_loss(torch.randn(3, 2), torch.randn(3, 2), reduction="max")
