import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.preference_pairs import Pairs, PreferencePairs
from lightning_distill.losses.pointset import chamfer_distance
from lightning_distill.models.scorers import ChamferScorer, FunctionScorer, NegativeChamfer


def _identity_sampler(cond, noise):
    return cond + noise


def _norm_scorer(higher_is_better=False):
    return FunctionScorer(lambda x, cond: x.flatten(1).norm(dim=1), higher_is_better=higher_is_better)


def _assert_pairs_equal(a: Pairs, b: Pairs):
    for name in (
        "winner",
        "loser",
        "winner_noise",
        "loser_noise",
        "winner_score",
        "loser_score",
        "margin",
        "index",
    ):
        assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_same_seed_and_step_give_the_same_pairs():
    cond = torch.zeros(6, 4)
    first = PreferencePairs(_norm_scorer(), noise="independent", num_candidates=3, seed=7)
    second = PreferencePairs(_norm_scorer(), noise="independent", num_candidates=3, seed=7)
    torch.manual_seed(0)  # the global RNG must not matter
    a = first.draw(_identity_sampler, cond, (4,), step=5)
    torch.manual_seed(1)
    b = second.draw(_identity_sampler, cond, (4,), step=5)
    _assert_pairs_equal(a, b)


def test_different_step_seed_or_rank_give_different_noise():
    cond = torch.zeros(4, 3)
    part = PreferencePairs(_norm_scorer(), noise="independent", seed=0)
    noise = [part.draw(_identity_sampler, cond, (3,), step=s).scores for s in (0, 1)]
    assert not torch.equal(noise[0], noise[1])
    other_seed = PreferencePairs(_norm_scorer(), noise="independent", seed=1).draw(
        _identity_sampler, cond, (3,), step=0
    )
    assert not torch.equal(noise[0], other_seed.scores)
    g0 = PreferencePairs(_norm_scorer(), seed=0).generator(0, rank=0)
    g1 = PreferencePairs(_norm_scorer(), seed=0).generator(0, rank=1)
    assert not torch.equal(torch.randn(5, generator=g0), torch.randn(5, generator=g1))


def test_second_draw_in_the_same_step_differs_and_is_reproducible():
    cond = torch.zeros(4, 3)
    part = PreferencePairs(_norm_scorer(), noise="independent", seed=3)
    first, second = (part.draw(_identity_sampler, cond, (3,), step=2).scores for _ in range(2))
    assert not torch.equal(first, second)
    again = PreferencePairs(_norm_scorer(), noise="independent", seed=3)
    assert torch.equal(again.draw(_identity_sampler, cond, (3,), step=2).scores, first)
    assert torch.equal(again.draw(_identity_sampler, cond, (3,), step=2).scores, second)


def test_scaled_noise_is_exactly_c_times_eps():
    seen = {}

    def sampler(cond, noise):
        seen["noise"] = noise
        return cond + noise

    part = PreferencePairs(_norm_scorer(), noise="scaled", seed=0, min_margin=0.0)
    part.draw(sampler, torch.zeros(5, 2, 3), (2, 3), step=0)
    noise = seen["noise"].view(2, 5, 2, 3)  # candidate-major
    assert_close(noise[1], 1.1 * noise[0], rtol=0, atol=0)

    part = PreferencePairs(_norm_scorer(), noise="scaled", scales=(0.5, 1.0, 2.0), seed=0)
    pairs = part.draw(sampler, torch.zeros(5, 2, 3), (2, 3), step=0)
    noise = seen["noise"].view(3, 5, 2, 3)
    eps = noise[1]
    assert_close(noise[0], 0.5 * eps, rtol=0, atol=0)
    assert_close(noise[2], 2.0 * eps, rtol=0, atol=0)
    # The pairs carry the noise of the candidate they came from.
    assert_close(pairs.winner_noise, noise[pairs.winner_candidate, pairs.index], rtol=0, atol=0)
    assert_close(pairs.loser_noise, noise[pairs.loser_candidate, pairs.index], rtol=0, atol=0)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_winner_is_the_argmax_or_argmin_of_the_scores(higher_is_better):
    cond = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    part = PreferencePairs(
        _norm_scorer(higher_is_better),
        noise="independent",
        num_candidates=4,
        seed=11,
        higher_is_better=higher_is_better,
    )
    samples_seen = {}

    def sampler(c, noise):
        samples_seen["x"] = c + noise
        return c + noise

    pairs = part.draw(sampler, cond, (4,), step=0)
    samples = samples_seen["x"].view(4, 8, 4)
    scores = samples.norm(dim=2)  # (K, B), computed independently
    best = scores.argmax(0) if higher_is_better else scores.argmin(0)
    worst = scores.argmin(0) if higher_is_better else scores.argmax(0)
    assert pairs.index.tolist() == list(range(8))
    assert pairs.winner_candidate.tolist() == best.tolist()
    assert pairs.loser_candidate.tolist() == worst.tolist()
    assert_close(pairs.winner, samples[best, torch.arange(8)])
    assert_close(pairs.loser, samples[worst, torch.arange(8)])
    assert_close(pairs.winner_score, scores[best, torch.arange(8)])
    assert_close(pairs.margin, (scores.max(0).values - scores.min(0).values))
    assert_close(pairs.scores, scores.t())


def test_all_pairs_are_ordered_by_score():
    values = torch.tensor([[3.0, 1.0, 2.0]])  # one condition, K = 3: the candidate score is its noise value

    part = PreferencePairs(
        FunctionScorer(lambda x, c: x[:, 0], higher_is_better=True),
        noise="independent",
        num_candidates=3,
        pairing="all",
    )
    part.draw_noise = lambda batch, shape, generator, dtype: values.t()[:, :, None].expand(3, 1, 1).clone()
    pairs = part.draw(lambda c, n: n, None, (1,), step=0, batch_size=1)
    got = sorted(zip(pairs.winner_candidate.tolist(), pairs.loser_candidate.tolist(), pairs.margin.tolist()))
    assert got == [(0, 1, 2.0), (0, 2, 1.0), (2, 1, 1.0)]


def test_min_margin_drops_pairs_and_reports_empty():
    # Candidate scores: noise value of each candidate, margins chosen by hand.
    noise = torch.tensor([[0.0, 0.5, 3.0], [1.0, 0.2, 0.0]])  # (K=2, B=3)
    part = PreferencePairs(
        FunctionScorer(lambda x, c: x[:, 0], higher_is_better=True), noise="independent", min_margin=1.0
    )
    part.draw_noise = lambda batch, shape, generator, dtype: noise[:, :, None].clone()
    pairs = part.draw(lambda c, n: n, None, (1,), step=0, batch_size=3)
    assert pairs.index.tolist() == [0, 2]  # margins 1.0 (kept, == min_margin), 0.3 (dropped), 3.0
    assert_close(pairs.margin, torch.tensor([1.0, 3.0]))
    assert_close(part.last_statistics()["kept_fraction"], torch.tensor(2 / 3))

    part.min_margin = 10.0
    empty = part.draw(lambda c, n: n, None, (1,), step=1, batch_size=3)
    assert empty.empty and len(empty) == 0
    assert empty.winner.shape == (0, 1) and empty.margin.shape == (0,)
    assert "win_margin_mean" not in part.last_statistics()


def test_ties_are_never_pairs():
    part = PreferencePairs(FunctionScorer(lambda x, c: torch.zeros(x.shape[0]), higher_is_better=True))
    assert part.draw(_identity_sampler, torch.zeros(3, 2), (2,), step=0).empty


def test_no_gradient_flows_through_sampling():
    student = nn.Linear(3, 3)
    part = PreferencePairs(_norm_scorer(), noise="independent", seed=0)
    pairs = part.draw(lambda c, n: student(c + n), torch.randn(4, 3), (3,), step=0)
    assert not pairs.winner.requires_grad and not pairs.loser.requires_grad
    # The recipe's loss on the pairs reaches the student only through a new forward pass.
    loss = (student(pairs.winner_noise) - pairs.winner).square().mean()
    loss.backward()
    assert student.weight.grad is not None
    with pytest.raises(RuntimeError):
        pairs.winner.sum().backward()


def test_cond_structures_are_repeated_and_gathered():
    received = {}

    def sampler(cond, noise):
        received["cond"] = cond
        return noise

    cond = {"points": torch.arange(3.0)[:, None], "prompt": ["a", "b", "c"], "scale": torch.tensor(2.0)}
    part = PreferencePairs(_norm_scorer(), noise="independent", num_candidates=2, seed=0)
    pairs = part.draw(sampler, cond, (1,), step=0)
    assert received["cond"]["prompt"] == ["a", "b", "c", "a", "b", "c"]
    assert received["cond"]["points"].flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert received["cond"]["scale"].ndim == 0
    picked = pairs.gather(cond)
    assert picked["prompt"] == ["abc"[i] for i in pairs.index.tolist()]
    assert_close(picked["points"], cond["points"][pairs.index])


def test_chamfer_scorers_rank_by_distance_to_the_reference():
    reference = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(0))
    cond = {"points": reference}

    def sampler(c, noise):
        return c["points"] + noise  # noise (K*B, 16, 3)

    for scorer in (ChamferScorer(reference_key="points"), NegativeChamfer(reference_key="points")):
        part = PreferencePairs(scorer, noise="scaled", scales=(0.1, 1.0), seed=0)
        pairs = part.draw(sampler, cond, (16, 3), step=0)
        # Less noise is closer to the reference, whichever sign the scorer uses.
        assert pairs.winner_candidate.tolist() == [0, 0]
        distance = chamfer_distance(pairs.winner, reference, reduction="none")
        expected = distance if not scorer.higher_is_better else -distance
        assert_close(pairs.winner_score, expected)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="higher_is_better"):
        PreferencePairs(lambda x, c: x.sum(1))
    with pytest.raises(ValueError, match="scales"):
        PreferencePairs(_norm_scorer(), noise="scaled", scales=(1.0,))
    with pytest.raises(ValueError, match="scales"):
        PreferencePairs(_norm_scorer(), noise="independent", scales=(1.0, 1.1))
    with pytest.raises(ValueError, match="num_candidates"):
        PreferencePairs(_norm_scorer(), noise="independent", num_candidates=1)
    with pytest.raises(ValueError, match="min_margin"):
        PreferencePairs(_norm_scorer(), min_margin=-1.0)
    with pytest.raises(ValueError, match="noise"):
        PreferencePairs(_norm_scorer(), noise="gaussian")
    part = PreferencePairs(_norm_scorer())
    with pytest.raises(ValueError, match="step"):
        part.draw(_identity_sampler, torch.zeros(2, 2), (2,))
    with pytest.raises(ValueError, match="scorer must return"):
        PreferencePairs(FunctionScorer(lambda x, c: x, higher_is_better=True)).draw(
            _identity_sampler, torch.zeros(2, 2), (2,), step=0
        )
    with pytest.raises(ValueError, match="non-finite"):
        PreferencePairs(FunctionScorer(lambda x, c: x[:, 0] / 0 * 0, higher_is_better=True)).draw(
            _identity_sampler, torch.zeros(2, 2), (2,), step=0
        )


class _GeneratorModule(pl.LightningModule):
    """A toy one-step generator trained on preference pairs, with the part in configure_callbacks."""

    def __init__(self):
        super().__init__()
        self.student = nn.Linear(3, 3)
        self.pairs = PreferencePairs(NegativeChamfer(), noise="scaled", seed=0)
        self.drawn = []

    def configure_callbacks(self):
        return [self.pairs]

    def sample(self, cond, noise):
        return self.student(noise) + cond

    def training_step(self, batch, batch_idx):
        (points,) = batch  # (B, N, 3), the reference
        pairs = self.pairs.draw(self.sample, points, noise_shape=points.shape[1:])
        self.drawn.append(pairs.winner_noise)
        if pairs.empty:
            return None
        cond = pairs.gather(points)
        winner = self.sample(cond, pairs.winner_noise)
        loser = self.sample(cond, pairs.loser_noise)
        return (winner - pairs.winner).square().mean() - 0.1 * (loser - pairs.loser).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.01)


def _fit(tmp_path, max_steps, ckpt_path=None):
    data = TensorDataset(torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(0)))
    model = _GeneratorModule()
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return model, trainer


def test_logging_keys_present_after_a_tiny_fit(tmp_path):
    model, trainer = _fit(tmp_path, max_steps=2)
    keys = {"win_margin_mean", "kept_fraction", "score_mean", "score_std", "winner_scale_fraction"}
    assert {f"pairs/{k}" for k in keys} <= set(trainer.callback_metrics)
    assert 0.0 <= float(trainer.callback_metrics["pairs/winner_scale_fraction"]) <= 1.0
    assert float(trainer.callback_metrics["pairs/kept_fraction"]) == pytest.approx(1.0)


def test_resumed_run_draws_the_same_noise_at_the_same_step(tmp_path):
    full, _ = _fit(tmp_path / "full", max_steps=4)
    first, trainer = _fit(tmp_path / "first", max_steps=2)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, _ = _fit(tmp_path / "resumed", max_steps=4, ckpt_path=ckpt)
    assert len(resumed.drawn) == 2
    for a, b in zip(full.drawn[2:], resumed.drawn):
        assert_close(a, b, rtol=0, atol=0)
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any(v == {"seed": 0} for k, v in state.items() if k.startswith("PreferencePairs"))
