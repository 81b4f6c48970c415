"""Scorers: each returns one score per sample, against an independent computation."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lightning_distill.losses.pointset import chamfer_distance
from lightning_distill.models.scorers import ChamferScorer, ClassifierScorer, FunctionScorer, NegativeChamfer


def test_chamfer_scorers_are_the_chamfer_distance_and_its_negative():
    g = torch.Generator().manual_seed(0)
    reference, samples = torch.randn(3, 5, 2, generator=g), torch.randn(3, 6, 2, generator=g)
    distance = chamfer_distance(samples, reference, reduction="none")
    assert_close(ChamferScorer(reference_key="points")(samples, {"points": reference}), distance)
    assert_close(ChamferScorer()(samples, reference), distance)
    assert_close(NegativeChamfer(reference_key="points")(samples, {"points": reference}), -distance)
    assert not ChamferScorer.higher_is_better and NegativeChamfer.higher_is_better
    with pytest.raises(ValueError, match="reference_key"):
        ChamferScorer(reference_key="points")(samples, {"other": reference})


def test_function_scorer_calls_the_function():
    scorer = FunctionScorer(lambda x, cond: x.flatten(1).sum(1), higher_is_better=True)
    assert scorer.higher_is_better
    assert_close(scorer(torch.ones(2, 3), None), torch.tensor([3.0, 3.0]))


def test_classifier_scorer_returns_the_class_probability_and_stays_frozen():
    model = nn.Linear(4, 3)
    scorer = ClassifierScorer(model, target_class="label")
    scorer.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 1, 0])
    expected = torch.softmax(model(x), dim=1)[torch.arange(5), labels]
    assert_close(scorer(x, {"label": labels}), expected)
    assert_close(ClassifierScorer(model, 2)(x, None), torch.softmax(model(x), dim=1)[:, 2])
    with pytest.raises(ValueError, match="target classes must lie"):
        scorer(x, {"label": torch.tensor([0, 1, 2, 3, 0])})
