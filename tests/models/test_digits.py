"""The digits classifier of the toy benches: trained on first use, then loaded from the cache."""

from __future__ import annotations

import pytest
from torch.testing import assert_close

from lightning_distill.diffusion.frechet import FrechetClassifierDistance
from lightning_distill.models.digits import digits_classifier


@pytest.mark.filterwarnings("ignore:The teacher cached at .* looks broken")
@pytest.mark.filterwarnings("ignore:The cached teacher .* was flagged when it was trained")
def test_digits_classifier_is_trained_and_cached(tmp_path) -> None:
    model = digits_classifier(size=8, width=8, depth=1, epochs=1, cache_dir=str(tmp_path))
    assert "val acc" in model.distill_source
    again = digits_classifier(size=8, width=8, depth=1, epochs=1, cache_dir=str(tmp_path))
    assert_close(again.head.weight, model.head.weight)
    metric = FrechetClassifierDistance(model, image_size=8)
    assert metric.num_features == 8
