"""Preference pairs from a student's own samples, judged by a non-differentiable score.

Size: one callback and its result type (the scorers are in :mod:`lightning_distill.models.scorers`);
the rest is the per-draw seeding and the condition batching helpers it needs.

Distillation-DPO (arXiv 2504.11447) draws two completions per condition from the one-step student,
with noises ``eps`` and ``1.1 * eps``, and calls the one with the lower Chamfer distance to the
ground truth the winner. Flash-DMD scores samples with a reward model. :class:`PreferencePairs`
is the shared part: it draws ``K`` candidates per condition under ``torch.no_grad()``, scores them
with any :class:`Scorer`, and returns (winner, loser) pairs with their scores and margins. It is
also a Lightning :class:`~lightning.pytorch.callbacks.Callback` that logs statistics of the last
draw and keeps its seed in the checkpoint.

Determinism: every draw uses its own ``torch.Generator`` seeded from
``(seed, stage, global_step, rank, n)``, where ``stage`` tells training from validation, test and
predict, and ``n`` counts the draws made since ``global_step`` last changed (several draws in a
step, or micro-batches under gradient accumulation, get different noises). A resumed run
therefore draws the same noises at the same step as the uninterrupted run; different steps and
ranks draw different ones; nothing depends on the global RNG state or on ``batch_idx`` (which a
mid-epoch resume renumbers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_distill.models.scorers import (
    ChamferScorer,
    ClassifierScorer,
    FunctionScorer,
    NegativeChamfer,
    Scorer,
)

__all__ = [
    "ChamferScorer",
    "ClassifierScorer",
    "FunctionScorer",
    "NegativeChamfer",
    "Pairs",
    "PreferencePairs",
    "Scorer",
]

_NOISES = ("independent", "scaled")
_PAIRINGS = ("best_worst", "all")
_STAGE_CODES = {"train": 0, "validation": 1, "test": 2, "predict": 3}


# --------------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pairs:
    """(winner, loser) pairs drawn by :class:`PreferencePairs`; ``P`` pairs, ``P`` may be 0.

    Attributes:
        winner: Preferred samples, ``(P, ...)``.
        loser: Rejected samples, ``(P, ...)``.
        winner_noise: The noise each winner was sampled from, ``(P, *noise_shape)``.
        loser_noise: The noise each loser was sampled from, ``(P, *noise_shape)``.
        winner_score: Scores of the winners, ``(P,)``, as the scorer returned them.
        loser_score: Scores of the losers, ``(P,)``.
        margin: How much better the winner scored, ``(P,)``, always > 0.
        index: Which condition of the batch each pair belongs to, ``(P,)`` (int64).
        winner_candidate: Candidate number ``k`` of each winner, ``(P,)``; with ``noise="scaled"``
            the winner's noise is ``scales[k] * eps``.
        loser_candidate: Candidate number of each loser, ``(P,)``.
        scores: Scores of all candidates, ``(B, K)``, before any filtering.
    """

    winner: Tensor
    loser: Tensor
    winner_noise: Tensor
    loser_noise: Tensor
    winner_score: Tensor
    loser_score: Tensor
    margin: Tensor
    index: Tensor
    winner_candidate: Tensor
    loser_candidate: Tensor
    scores: Tensor

    @property
    def empty(self) -> bool:
        """``True`` when the margin filter dropped every pair."""
        return self.index.numel() == 0

    def __len__(self) -> int:
        return self.index.numel()

    def gather(self, cond: Any) -> Any:
        """Select the condition of each pair from the batch's conditions.

        Args:
            cond: The conditions passed to :meth:`PreferencePairs.draw` (batch size ``B``).

        Returns:
            The same structure with batch size ``P``.
        """
        return _gather(cond, self.index)


# --------------------------------------------------------------------------------------------------
# PreferencePairs
# --------------------------------------------------------------------------------------------------
class PreferencePairs(Callback):
    """Draw candidates per condition, score them, and return (winner, loser) pairs.

    Call :meth:`draw` inside a training step with the student's sampler. Add the instance to
    ``configure_callbacks()`` or ``trainer.callbacks`` so that the statistics of the last draw are
    logged at the end of each training batch (``pairs/win_margin_mean``, ``pairs/kept_fraction``,
    ``pairs/score_mean``, ``pairs/score_std`` and, for scaled noise, ``pairs/winner_scale_fraction``:
    the fraction of pairs whose winner had the larger noise scale) and the seed is checkpointed.

    Args:
        scorer: A :class:`Scorer`: ``scorer(samples, cond) -> (B,)``.
        noise: ``"independent"``: ``K`` independent standard normal noises per condition;
            ``"scaled"``: one ``eps`` per condition and the candidates ``scales[k] * eps``.
        num_candidates: ``K`` for independent noise (default 2). For scaled noise ``K`` is
            ``len(scales)``; leave it ``None`` or equal to that.
        scales: Noise scales for ``noise="scaled"``; default ``(1.0, 1.1)`` as in Distillation-DPO.
        higher_is_better: Whether higher scores win. ``None`` takes ``scorer.higher_is_better``.
        pairing: ``"best_worst"``: one pair per condition, best vs worst candidate; ``"all"``:
            every pair of candidates, ordered by score (``K * (K - 1) / 2`` per condition).
        min_margin: Pairs whose margin is below this are dropped; ties (margin 0) are always
            dropped.
        seed: Base seed. ``None`` takes the seed of ``seed_everything`` (``PL_GLOBAL_SEED``) or 0.
        log_prefix: Prefix of the logged statistics.

    Raises:
        TypeError: If ``scorer`` is not callable.
        ValueError: If an option is out of range or inconsistent with ``noise``.

    Example:
        >>> pairs_part = PreferencePairs(FunctionScorer(lambda x, c: -x.abs().sum(1), higher_is_better=True))
        >>> sampler = lambda cond, noise: cond + noise
        >>> pairs = pairs_part.draw(sampler, torch.zeros(4, 3), noise_shape=(3,), step=0)
        >>> pairs.winner.shape, bool((pairs.margin > 0).all())
        (torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        noise: Literal["independent", "scaled"] = "scaled",
        num_candidates: int | None = None,
        scales: Sequence[float] | None = None,
        higher_is_better: bool | None = None,
        pairing: Literal["best_worst", "all"] = "best_worst",
        min_margin: float = 0.0,
        seed: int | None = None,
        log_prefix: str = "pairs",
    ):
        if not callable(scorer):
            raise TypeError(
                f"`scorer` must be callable as scorer(samples, cond), got {type(scorer).__name__}."
            )
        if noise not in _NOISES:
            raise ValueError(f"`noise` must be one of {_NOISES}, got {noise!r}.")
        if pairing not in _PAIRINGS:
            raise ValueError(f"`pairing` must be one of {_PAIRINGS}, got {pairing!r}.")
        if noise == "scaled":
            scales = (1.0, 1.1) if scales is None else tuple(float(s) for s in scales)
            if len(scales) < 2 or len(set(scales)) != len(scales):
                raise ValueError(f"`scales` must hold at least two distinct values, got {scales}.")
            if num_candidates is not None and num_candidates != len(scales):
                raise ValueError(
                    f"`num_candidates` must be None or len(scales)={len(scales)} for scaled noise, got {num_candidates}."
                )
            num_candidates = len(scales)
        else:
            if scales is not None:
                raise ValueError(
                    f"`scales` is only used with noise='scaled', got scales={scales} with noise={noise!r}."
                )
            num_candidates = 2 if num_candidates is None else num_candidates
            if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 2:
                raise ValueError(f"`num_candidates` must be an int >= 2, got {num_candidates!r}.")
        if higher_is_better is None:
            higher_is_better = getattr(scorer, "higher_is_better", None)
            if not isinstance(higher_is_better, bool):
                raise ValueError(
                    f"{type(scorer).__name__} has no bool `higher_is_better` attribute; pass higher_is_better=True "
                    "or False to PreferencePairs."
                )
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"`higher_is_better` must be a bool or None, got {higher_is_better!r}.")
        if not min_margin >= 0:
            raise ValueError(f"`min_margin` must be >= 0, got {min_margin}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"`seed` must be a non-negative int or None, got {seed!r}.")

        self.scorer = scorer
        self.noise = noise
        self.num_candidates = int(num_candidates)
        self.scales: tuple[float, ...] | None = scales if noise == "scaled" else None
        self.higher_is_better = higher_is_better
        self.pairing = pairing
        self.min_margin = float(min_margin)
        self.log_prefix = log_prefix
        self._seed = seed
        self._trainer: pl.Trainer | None = None
        self._stage = _STAGE_CODES["train"]
        self._draw_key: tuple[int, int] | None = None  # (stage, step) of the last draw
        self._draws_at_key = 0
        self._last_stats: dict[str, Tensor] | None = None
        self._last_batch_size = 0

    # ---------------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The base seed (resolved from ``seed_everything`` on first use when not given)."""
        if self._seed is None:
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._seed

    @property
    def state_key(self) -> str:
        return self._generate_state_key(noise=self.noise, log_prefix=self.log_prefix)

    def generator(
        self, step: int, *, device: torch.device | str = "cpu", rank: int | None = None
    ) -> torch.Generator:
        """The generator for the next draw at ``step``; advances the draw counter.

        Args:
            step: Optimizer step (``trainer.global_step``).
            device: Device of the generator (that of the noise).
            rank: Process rank; ``None`` takes it from the trainer or ``torch.distributed``.
        """
        stage = self._stage if self._trainer is not None else _STAGE_CODES["train"]
        key = (stage, int(step))
        if key != self._draw_key:
            self._draw_key, self._draws_at_key = key, 0
        entropy = [
            self.seed,
            stage,
            int(step),
            self._rank() if rank is None else int(rank),
            self._draws_at_key,
        ]
        self._draws_at_key += 1
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        generator = torch.Generator(device=torch.device(device))
        generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
        return generator

    def draw_noise(
        self, batch_size: int, noise_shape: Sequence[int], *, generator: torch.Generator, dtype: torch.dtype
    ) -> Tensor:
        """Draw the noises of all candidates, shape ``(K, B, *noise_shape)``.

        Override to use another noise structure; ``noise="scaled"`` gives ``scales[k] * eps``.
        """
        shape = (batch_size, *noise_shape)
        if self.noise == "independent":
            return torch.randn(
                (self.num_candidates, *shape), generator=generator, device=generator.device, dtype=dtype
            )
        eps = torch.randn(
            shape, generator=generator, device=generator.device, dtype=dtype
        )  # (B, *noise_shape)
        return torch.stack([scale * eps for scale in self.scales])  # (K, B, *noise_shape)

    @torch.no_grad()
    def draw(
        self,
        sampler: Callable[[Any, Tensor], Tensor],
        cond: Any,
        noise_shape: Sequence[int],
        *,
        step: int | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Pairs:
        """Draw ``K`` candidates per condition, score them and pair them.

        The sampler is called once, on ``K * B`` inputs laid out candidate-major (row
        ``k * B + b`` is candidate ``k`` of condition ``b``); the scorer likewise. Both run under
        ``torch.no_grad()``.

        Args:
            sampler: ``sampler(cond, noise) -> samples``; ``cond`` repeated ``K`` times along its
                batch dimension, ``noise`` of shape ``(K * B, *noise_shape)``, samples ``(K * B, ...)``.
            cond: Conditions of ``B`` samples: a tensor ``(B, ...)``, a mapping, list or tuple of
                such (0-d tensors pass unchanged), a list of ``B`` non-tensor items (e.g. prompts),
                or ``None`` for unconditional sampling (then give ``batch_size``).
            noise_shape: Shape of one sample's noise, e.g. ``(N, 3)`` or ``(C, H, W)``.
            step: Optimizer step for the seed; defaults to ``trainer.global_step`` when the
                callback is attached to a trainer.
            batch_size: ``B``; inferred from ``cond`` when ``None``.
            device: Device of the noise; defaults to that of the first tensor in ``cond``, else CPU.
            dtype: Floating dtype of the noise.

        Returns:
            The :class:`Pairs`; check ``.empty`` before using them.

        Raises:
            ValueError: If ``step`` is needed and missing, the sampler or scorer returns the wrong
                shape, or a score is not finite.
            TypeError: If ``cond`` has an unsupported type or the sampler does not return a tensor.
        """
        if step is None:
            if self._trainer is None:
                raise ValueError("`step` is required when PreferencePairs is not attached to a trainer.")
            step = self._trainer.global_step
        batch = _batch_size(cond) if batch_size is None else int(batch_size)
        if batch is None or batch < 1:
            raise ValueError(f"could not infer a batch size >= 1 from `cond`; pass batch_size=, got {batch}.")
        if device is None:
            leaf = _first_tensor(cond)
            device = leaf.device if leaf is not None else torch.device("cpu")
        k = self.num_candidates

        # 1. Noises, one generator per draw: (K, B, *noise_shape).
        noise = self.draw_noise(
            batch, tuple(noise_shape), generator=self.generator(step, device=device), dtype=dtype
        )
        # 2. Candidates and scores, candidate-major.
        cond_k = _repeat(cond, k)
        samples = sampler(cond_k, noise.flatten(0, 1))
        if not isinstance(samples, Tensor):
            raise TypeError(f"the sampler must return a tensor, got {type(samples).__name__}.")
        if samples.shape[0] != k * batch:
            raise ValueError(
                f"the sampler must return {k * batch} = K * B samples, got shape {tuple(samples.shape)}."
            )
        scores = self.scorer(samples, cond_k)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != (k * batch,):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"the scorer must return a tensor of shape ({k * batch},), got {shape}.")
        scores = scores.detach().float().view(k, batch)  # (K, B)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"the scorer returned non-finite scores: {scores.flatten().tolist()}.")
        # 3. Pairs: oriented scores so that larger always wins.
        oriented = scores if self.higher_is_better else -scores
        win_k, lose_k, index = self._candidate_pairs(oriented)  # each (Q,)
        margin = oriented[win_k, index] - oriented[lose_k, index]
        total = margin.numel()
        keep = (margin > 0) & (margin >= self.min_margin)
        win_k, lose_k, index, margin = win_k[keep], lose_k[keep], index[keep], margin[keep]

        samples = samples.reshape(k, batch, *samples.shape[1:])
        pairs = Pairs(
            winner=samples[win_k, index],
            loser=samples[lose_k, index],
            winner_noise=noise[win_k, index],
            loser_noise=noise[lose_k, index],
            winner_score=scores[win_k, index],
            loser_score=scores[lose_k, index],
            margin=margin,
            index=index,
            winner_candidate=win_k,
            loser_candidate=lose_k,
            scores=scores.t().contiguous(),
        )
        self._record(pairs, scores, total)
        return pairs

    def last_statistics(self) -> dict[str, Tensor]:
        """Statistics of the last draw (the values that are logged), or an empty dict."""
        return dict(self._last_stats or {})

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        _ = self.seed

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stage = _STAGE_CODES["train"]
        self._last_stats = None

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._stage = _STAGE_CODES["validation"] + 4 * dataloader_idx

    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._stage = _STAGE_CODES["test"] + 4 * dataloader_idx

    def on_predict_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._stage = _STAGE_CODES["predict"] + 4 * dataloader_idx

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._last_stats:
            return
        for name, value in self._last_stats.items():
            pl_module.log(
                f"{self.log_prefix}/{name}",
                value,
                on_step=True,
                on_epoch=False,
                batch_size=self._last_batch_size,
            )
        self._last_stats = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "seed" in state_dict:
            self._seed = int(state_dict["seed"])

    # ------------------------------------------------------------------------------------ helpers
    def _rank(self) -> int:
        if self._trainer is not None:
            return self._trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    def _candidate_pairs(self, oriented: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Winner candidate, loser candidate and condition index of every candidate pair."""
        k, batch = oriented.shape
        device = oriented.device
        if self.pairing == "best_worst":
            index = torch.arange(batch, device=device)
            return oriented.argmax(dim=0), oriented.argmin(dim=0), index
        first, second = torch.triu_indices(k, k, offset=1, device=device)  # (Q,), (Q,)
        first_wins = oriented[first] >= oriented[second]  # (Q, B)
        win = torch.where(first_wins, first[:, None], second[:, None]).t().flatten()  # (B * Q,)
        lose = torch.where(first_wins, second[:, None], first[:, None]).t().flatten()
        index = torch.arange(batch, device=device).repeat_interleave(first.numel())
        return win, lose, index

    def _record(self, pairs: Pairs, scores: Tensor, total: int) -> None:
        stats = {
            "kept_fraction": torch.tensor(len(pairs) / total, device=scores.device),
            "score_mean": scores.mean(),
            "score_std": scores.std(),
        }
        if not pairs.empty:
            stats["win_margin_mean"] = pairs.margin.mean()
            if self.scales is not None:
                scales = torch.tensor(self.scales, device=scores.device)
                larger = scales[pairs.winner_candidate] > scales[pairs.loser_candidate]
                stats["winner_scale_fraction"] = larger.float().mean()
        self._last_stats = stats
        self._last_batch_size = scores.shape[1]


# --------------------------------------------------------------------------------------------------
# Condition structures: repeat K times (candidate-major) and gather rows.
# --------------------------------------------------------------------------------------------------
def _is_per_sample_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and not any(
        isinstance(v, Tensor | Mapping | list | tuple) for v in value
    )


def _rebuild(seq: list | tuple, items: list) -> list | tuple:
    if hasattr(seq, "_fields"):  # namedtuple
        return type(seq)(*items)
    return type(seq)(items)


def _repeat(cond: Any, k: int) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond if cond.ndim == 0 else cond.repeat(k, *([1] * (cond.ndim - 1)))
    if isinstance(cond, Mapping):
        return {key: _repeat(value, k) for key, value in cond.items()}
    if _is_per_sample_list(cond):
        return _rebuild(cond, list(cond) * k)
    if isinstance(cond, list | tuple):
        return _rebuild(cond, [_repeat(value, k) for value in cond])
    raise TypeError(f"`cond` must be a tensor, mapping, list, tuple or None, got {type(cond).__name__}.")


def _gather(cond: Any, index: Tensor) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond if cond.ndim == 0 else cond[index.to(cond.device)]
    if isinstance(cond, Mapping):
        return {key: _gather(value, index) for key, value in cond.items()}
    if _is_per_sample_list(cond):
        return _rebuild(cond, [cond[i] for i in index.tolist()])
    if isinstance(cond, list | tuple):
        return _rebuild(cond, [_gather(value, index) for value in cond])
    raise TypeError(f"`cond` must be a tensor, mapping, list, tuple or None, got {type(cond).__name__}.")


def _batch_size(cond: Any) -> int | None:
    if isinstance(cond, Tensor):
        return cond.shape[0] if cond.ndim > 0 else None
    if isinstance(cond, Mapping):
        values = list(cond.values())
    elif _is_per_sample_list(cond):
        return len(cond)
    elif isinstance(cond, list | tuple):
        values = list(cond)
    else:
        return None
    for value in values:
        size = _batch_size(value)
        if size is not None:
            return size
    return None


def _first_tensor(cond: Any) -> Tensor | None:
    if isinstance(cond, Tensor):
        return cond
    values = cond.values() if isinstance(cond, Mapping) else cond if isinstance(cond, list | tuple) else ()
    for value in values:
        leaf = _first_tensor(value)
        if leaf is not None:
            return leaf
    return None
