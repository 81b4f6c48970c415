"""Evaluation by retraining and its baselines: subsets, herding/k-center, soft labels, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation import (
    ConvNet,
    evaluate_synthetic,
    full_training_set,
    herding_subset,
    random_real_subset,
    teacher_soft_labels,
)
from lightning_distill.dataset_distillation.baselines import _herding, _kcenter


def tiny_convnet() -> ConvNet:
    return ConvNet(in_channels=1, num_classes=10, image_size=8, width=8, depth=2)


def test_random_real_subset_is_class_blocked_and_seeded():
    dm = DigitsDataModule()
    x, y = random_real_subset(dm, ipc=3, seed=0)
    assert x.shape == (30, 1, 8, 8) and torch.equal(y, torch.arange(10).repeat_interleave(3))
    assert torch.equal(x, random_real_subset(dm, ipc=3, seed=0)[0])
    assert not torch.equal(x, random_real_subset(dm, ipc=3, seed=1)[0])
    full_x, full_y = full_training_set(dm)
    assert full_x.shape[0] == full_y.shape[0] > 1000
    with pytest.raises(ValueError, match="fewer than"):
        random_real_subset(dm, ipc=10_000)


def test_herding_matches_brute_force_greedy_on_a_small_set():
    features = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    mean = features.mean(0)
    chosen: list[int] = []
    for _ in range(3):  # the greedy herding rule, written directly
        best = min(
            (i for i in range(7) if i not in chosen),
            key=lambda i: float(((mean - features[[*chosen, i]].mean(0)) ** 2).sum()),
        )
        chosen.append(best)
    assert _herding(features, 3) == chosen


def test_kcenter_covers_with_the_greedy_farthest_point():
    points = torch.tensor([[0.0], [0.1], [5.0], [10.0], [-3.0]])
    # The mean is 2.42, nearest is 0.1 (index 1); farthest from it is 10 (3); then 5 (2), at 4.9 from both.
    assert _kcenter(points, 3) == [1, 3, 2]
    # Greedy k-center is a 2-approximation of the smallest covering radius.
    radius = lambda s: max(min(abs(float(p) - float(points[j])) for j in s) for p in points)  # noqa: E731
    best = min(radius(list(s)) for s in itertools.combinations(range(5), 3))
    assert best <= radius([1, 3, 2]) <= 2 * best


def test_herding_subset_uses_the_features():
    dm = DigitsDataModule()
    x, y = herding_subset(dm, 2, lambda images: images.flatten(1))
    assert x.shape == (20, 1, 8, 8) and torch.equal(y, torch.arange(10).repeat_interleave(2))
    x_k, _ = herding_subset(dm, 2, lambda images: images.flatten(1), method="kcenter")
    assert not torch.equal(x, x_k)


def test_retraining_is_deterministic_per_seed_and_soft_labels_run():
    dm = DigitsDataModule()
    x, y = random_real_subset(dm, ipc=2, seed=0)
    kwargs = dict(epochs=3, lr=0.05, augment="crop", seeds=(0, 1))
    first = evaluate_synthetic(x, y, dm, tiny_convnet, **kwargs)
    second = evaluate_synthetic(x, y, dm, tiny_convnet, **kwargs)
    assert first.accuracies == second.accuracies and first.seeds == (0, 1)
    teacher = tiny_convnet()
    soft = teacher_soft_labels(teacher, x)
    assert soft.shape == (20, 10) and teacher.training  # the teacher's mode is restored
    soft_result = evaluate_synthetic(x, y, dm, tiny_convnet, soft_labels=soft, temperature=2.0, **kwargs)
    assert len(soft_result.accuracies) == 2
    with pytest.raises(ValueError, match="soft_labels"):
        evaluate_synthetic(x, y, dm, tiny_convnet, soft_labels=soft[:3], **kwargs)


def test_retraining_learns_from_real_images():
    dm = DigitsDataModule()
    x, y = random_real_subset(dm, ipc=10, seed=0)
    result = evaluate_synthetic(x, y, dm, tiny_convnet, epochs=40, lr=0.05, augment=None, seeds=(0,))
    assert result.mean > 0.6  # 100 real digits; chance is 0.1
