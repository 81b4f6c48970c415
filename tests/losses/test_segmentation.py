"""Semi-supervised segmentation losses (LaserMix / LaserMix++) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.losses.segmentation import (
    ignore_index_cross_entropy,
    paired_cosine_distance,
    probability_mse,
)


def _softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def test_cross_entropy_averages_only_the_labelled_points():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, -1, 2, -1])
    expected = -(math.log(_softmax_row([2.0, 0.0, -1.0])[0]) + math.log(_softmax_row([0.0, 3.0, 1.0])[2])) / 2
    torch.testing.assert_close(ignore_index_cross_entropy(logits, labels), torch.tensor(expected))


def test_cross_entropy_of_an_all_ignored_batch_is_a_differentiable_zero():
    logits = torch.randn(5, 3, requires_grad=True)
    loss = ignore_index_cross_entropy(logits, torch.full((5,), -1))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_probability_mse_matches_a_loop_and_detaches_the_teacher():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 3, generator=g, requires_grad=True)
    teacher = torch.randn(4, 3, generator=g, requires_grad=True)
    total = 0.0
    for i in range(4):
        p = _softmax_row(student[i].tolist())
        q = _softmax_row(teacher[i].tolist())
        total += sum((a - b) ** 2 for a, b in zip(p, q))
    torch.testing.assert_close(probability_mse(student, teacher), torch.tensor(total / 12))
    probability_mse(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_paired_cosine_distance_by_hand():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    # 1 - cos = 1 (orthogonal) and 0 (parallel)
    torch.testing.assert_close(paired_cosine_distance(student, target), torch.tensor(0.5))
    empty = torch.zeros(0, 2, requires_grad=True)
    assert float(paired_cosine_distance(empty, torch.zeros(0, 2)).detach()) == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="logits"):
        ignore_index_cross_entropy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="student_logits"):
        probability_mse(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="student"):
        paired_cosine_distance(torch.zeros(3, 2), torch.zeros(2, 2))
