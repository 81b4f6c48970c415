"""The source zoo: task labels, first-use training through the cache, the target-class linear probe."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from lightning_distill.vision_language.source_zoo import (
    SourceModel,
    fit_linear_probe,
    source_model,
    source_task_labels,
)


def test_source_task_labels():
    digits = torch.tensor([0, 3, 6, 9])
    assert source_task_labels(digits, "parity", range(10)).tolist() == [0, 1, 0, 1]
    assert source_task_labels(digits, "loops", range(10)).tolist() == [1, 0, 1, 1]
    assert source_task_labels(torch.tensor([5, 7, 9]), "digits", (5, 7, 9)).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "colour"}, "task"),
        ({"classes": [1, 1]}, "classes"),
        ({"classes": [10]}, "classes"),
        ({"domains": ["moon"]}, "domain"),
        ({"task": "parity", "classes": [0, 2]}, "fewer than two labels"),
    ],
)
def test_source_model_rejects_bad_tasks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        source_model(**kwargs)


def test_source_model_trains_once_and_loads_the_same_weights(tmp_path):
    kwargs = dict(
        domains=["digits"], classes=[0, 1], width=4, depth=1, size=8, epochs=1, cache_dir=str(tmp_path)
    )
    first = source_model(**kwargs)
    assert isinstance(first, SourceModel) and first.head.out_features == 2
    assert len(list((tmp_path / "teachers").glob("SourceModel-*.pt"))) == 1
    again = source_model(**kwargs)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert first(torch.zeros(3, 3, 8, 8)).shape == (3, 2)
    assert first.features(torch.zeros(3, 3, 8, 8)).shape == (3, first.num_features)


def test_linear_probe_predicts_like_scikit_learn_and_masks_absent_classes():
    torch.manual_seed(0)
    x = torch.randn(40, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 2.0
    y = torch.arange(40) % 3  # classes 0..2 of 4: class 3 absent
    probe = fit_linear_probe(x, y, num_classes=4)
    mean, std = x.double().mean(0), x.double().std(0, unbiased=False)
    clf = LogisticRegression(max_iter=2000).fit(((x.double() - mean) / std).numpy(), y.numpy())
    expected = clf.predict_proba(((x.double() - mean) / std).numpy())
    got = torch.softmax(probe(x).double(), -1)
    torch.testing.assert_close(got[:, :3], torch.as_tensor(expected), atol=1e-4, rtol=1e-4)
    assert float(got[:, 3].max()) < 1e-6
    assert not any(p.requires_grad for p in probe.parameters())
    binary = fit_linear_probe(x, (y > 0).long(), num_classes=2)
    clf2 = LogisticRegression(max_iter=2000).fit(((x.double() - mean) / std).numpy(), (y > 0).numpy())
    torch.testing.assert_close(
        torch.softmax(binary(x).double(), -1), torch.as_tensor(clf2.predict_proba(((x.double() - mean) / std).numpy())),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip
    with pytest.raises(ValueError, match="labels"):
        fit_linear_probe(x, torch.zeros(40, dtype=torch.long), num_classes=4)
