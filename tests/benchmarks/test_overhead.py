"""benchmarks/overhead.py: the hand-written loop does the recipe's math (same losses as the Lightning run)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def overhead(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("LIGHTNING_DISTILL_CACHE", str(tmp_path / "cache"))
    import overhead

    return overhead


@pytest.mark.filterwarnings("ignore:The distilled set was not saved")
@pytest.mark.parametrize("slug", ["kd", "dmd2", "datadam"])
def test_hand_loop_matches_the_recipe_under_lightning(overhead, slug: str, tmp_path) -> None:
    # 6 steps: DMD2's generator turn (iteration 0 and 5) and fake-score turns, optimizer state in use.
    prepared = overhead.prepare(overhead.CASES[slug], "tiny", 0, overhead.CHECK_STEPS, tmp_path)
    _, lightning = overhead.lightning_run(prepared, record=True)
    _, hand = overhead.hand_run(prepared, record=True)
    assert len(lightning) == len(hand) == overhead.CHECK_STEPS
    assert overhead.compare_losses(lightning, hand) == 0.0  # bitwise: same ops in the same order
    if slug == "dmd2":
        assert "loss_generator" in hand[0] and "loss_generator" not in hand[1]
        assert {"dm", "gen_cls", "fake", "guidance_cls", "loss_fake_score"} <= hand[0].keys()


def test_compare_losses_catches_a_difference(overhead) -> None:
    with pytest.raises(AssertionError, match="step 1 loss"):
        overhead.compare_losses([{"loss": 1.0}, {"loss": 2.0}], [{"loss": 1.0}, {"loss": 2.1}])
    with pytest.raises(AssertionError, match="logged"):
        overhead.compare_losses([{"loss": 1.0}], [{"kd": 1.0}])
