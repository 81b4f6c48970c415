"""Task similarity (GBC), source weights and the normalised feature loss against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from lightning_distill.losses.task_similarity import gbc_score, normalised_feature_mse, source_weights


def naive_gbc(x: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """GBC with explicit loops and full (diagonal) covariance matrices and determinants."""
    classes = sorted(set(y.tolist()))
    stats = {}
    for c in classes:
        xc = x[y == c]
        stats[c] = (xc.mean(0), np.diag(xc.var(0) + eps))
    total = 0.0
    for i in classes:
        for j in classes:
            if i == j:
                continue
            (mi, si), (mj, sj) = stats[i], stats[j]
            s = (si + sj) / 2
            d = mi - mj
            db = d @ np.linalg.inv(s) @ d / 8 + 0.5 * math.log(
                np.linalg.det(s) / math.sqrt(np.linalg.det(si) * np.linalg.det(sj))
            )
            total += math.exp(-db)
    return -total


def hand_example():
    x = torch.tensor(
        [
            [0.0, 1.0],
            [0.5, 1.5],
            [1.0, 0.0],
            [2.0, 0.5],
            [2.5, 1.0],
            [1.0, 2.0],
            [0.2, 0.1],
            [1.5, 1.7],
            [0.9, 0.4],
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    return x, y


def test_gbc_matches_the_loop_formula_on_a_hand_example():
    x, y = hand_example()
    got = float(gbc_score(x, y, num_components=None))
    assert got == pytest.approx(naive_gbc(x.numpy(), y.numpy()), rel=1e-9)
    assert -6.0 <= got <= 0.0  # 3 classes: at most C(C-1) = 6 overlapping ordered pairs


def test_gbc_pca_step_matches_sklearn_pca():
    torch.manual_seed(0)
    x = torch.randn(30, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    y = torch.arange(30) % 3
    projected = PCA(n_components=2).fit_transform(x.numpy())  # signs of components do not matter
    got = float(gbc_score(x, y, num_components=2))
    assert got == pytest.approx(naive_gbc(projected, y.numpy()), rel=1e-7)


def test_gbc_extremes_separated_is_zero_identical_is_minus_c_times_c_minus_one():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    far = torch.tensor([[0.0], [0.1], [100.0], [100.1], [200.0], [200.1]])
    assert float(gbc_score(far, y, num_components=None)) == pytest.approx(0.0, abs=1e-9)
    same = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]])
    assert float(gbc_score(same, y, num_components=None)) == pytest.approx(-6.0)


@pytest.mark.parametrize(
    "features, labels, match",
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "features"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), "labels"),
        (torch.zeros(4, 2), torch.tensor([0, 1, -1, 1]), "labels"),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), "two classes"),
        (torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1]), "NaN"),
    ],
)
def test_gbc_rejects_bad_input(features, labels, match):
    with pytest.raises(ValueError, match=match):
        gbc_score(features, labels)


def test_gbc_rejects_bad_components():
    x, y = hand_example()
    with pytest.raises(ValueError, match="num_components"):
        gbc_score(x, y, num_components=0)


def test_source_weights_one_is_the_argmax_and_k_is_a_softmax_of_the_best():
    scores = torch.tensor([-3.0, -0.5, -1.0, -7.0])
    torch.testing.assert_close(source_weights(scores, 1), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    w = source_weights(scores, 3, temperature=2.0)
    e = [math.exp(s / 2.0) for s in (-3.0, -0.5, -1.0)]
    expected = torch.tensor([e[0], e[1], e[2], 0.0]) / sum(e)
    torch.testing.assert_close(w, expected)
    ties = source_weights(torch.tensor([1.0, 2.0, 2.0]), 1)
    torch.testing.assert_close(ties, torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    "scores, k, t, match",
    [
        (torch.zeros(2, 2), 1, 1.0, "scores"),
        (torch.tensor([0.0, float("inf")]), 1, 1.0, "finite"),
        (torch.zeros(3), 4, 1.0, "num_sources"),
        (torch.zeros(3), 0, 1.0, "num_sources"),
        (torch.zeros(3), 1, 0.0, "temperature"),
    ],
)
def test_source_weights_rejects_bad_input(scores, k, t, match):
    with pytest.raises(ValueError, match=match):
        source_weights(scores, k, t)


def test_normalised_feature_mse_is_two_minus_two_cosine_and_reaches_the_student_only():
    torch.manual_seed(0)
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    loss = normalised_feature_mse(s, t)
    cos = torch.nn.functional.cosine_similarity(s, t, dim=-1)
    torch.testing.assert_close(loss, (2 - 2 * cos).mean())
    loss.backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="student"):
        normalised_feature_mse(torch.zeros(2, 3), torch.zeros(2, 4))
