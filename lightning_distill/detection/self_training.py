"""LiSe's self-paced self-training parts: adaptive sampling of pseudo-boxes and weak-model aggregation.

Neither part is in the official release (Ruiyang-061X/LiSe runs MODEST's self-training script:
each round re-labels the training set with the last model's detections above a score threshold);
both follow our reading of the paper:

* :func:`adaptive_sample`: the detector's candidate boxes are binned by distance range and size;
  the bins share the label budget in proportion to ``count^(1 - power)``, so ``power = 0`` keeps the
  detector's own (near- and large-object heavy) distribution and ``power = 1`` gives every bin the
  same share; within a bin the highest scores are kept. The recipe raises ``power`` round by round
  (self-paced: easy objects first, then a more balanced mix).
* :func:`average_into`: the weak models of the rounds are aggregated by averaging their weights
  (and normalisation statistics) into one model, a running mean over rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_distill.utils.checks import check_option

__all__ = ["adaptive_sample", "average_into", "refresh_batch_norm", "sampling_bins"]


def sampling_bins(
    boxes: Tensor, *, distance_edges: Sequence[float] = (20.0, 40.0), small_area: float = 2.0
) -> Tensor:
    """Bin ``(M,)`` of each box: distance range (``distance_edges``) x BEV area below / above ``small_area`` m²."""
    distance = boxes[:, :2].norm(dim=1)
    d = torch.bucketize(distance, torch.tensor(list(distance_edges), dtype=distance.dtype), right=True)
    small = (boxes[:, 3] * boxes[:, 4] < small_area).long()
    return d * 2 + small


def adaptive_sample(scores: Tensor, bins: Tensor, *, budget: int, power: float) -> Tensor:
    """Indices of the pseudo-boxes kept: ``budget`` boxes shared over bins in proportion to ``count^(1 - power)``.

    Each bin's quota is ``floor(budget · n_b^(1-power) / Σ n^(1-power))``, at most ``n_b``; the slots left (rounding,
    full bins) go to the best remaining scores. Within a bin the highest scores are kept.

    Args:
        scores: ``(M,)`` candidate scores.
        bins: ``(M,)`` int64 bin of each candidate (e.g. :func:`sampling_bins`).
        budget: boxes to keep (at most ``M``).
        power: ``0`` keeps the candidates' distribution, ``1`` balances the bins.

    Raises:
        ValueError: ``power`` outside ``[0, 1]``, a negative ``budget`` or mismatched shapes.
    """
    check_option(0.0 <= power <= 1.0, "power", power, "in [0, 1]")
    check_option(budget >= 0, "budget", budget, ">= 0")
    if scores.shape != bins.shape or scores.ndim != 1:
        raise ValueError(
            f"`scores` and `bins` must both be (M,), got {tuple(scores.shape)} and {tuple(bins.shape)}."
        )
    budget = min(budget, len(scores))
    if budget == 0:
        return torch.zeros(0, dtype=torch.long)
    present = bins.unique()
    counts = torch.stack([(bins == b).sum() for b in present]).double()
    share = counts.pow(1.0 - power)
    quota = torch.minimum(torch.floor(budget * share / share.sum() + 1e-9), counts).long()
    chosen = []
    for b, q in zip(present.tolist(), quota.tolist()):
        members = (bins == b).nonzero().squeeze(1)
        chosen.append(members[scores[members].argsort(descending=True, stable=True)[:q]])
    kept = torch.cat(chosen)
    if len(kept) < budget:  # fill from the best remaining candidates
        rest = torch.ones(len(scores), dtype=torch.bool)
        rest[kept] = False
        others = rest.nonzero().squeeze(1)
        kept = torch.cat(
            [kept, others[scores[others].argsort(descending=True, stable=True)[: budget - len(kept)]]]
        )
    return kept.sort().values


@torch.no_grad()
def average_into(aggregate: nn.Module, model: nn.Module, count: int) -> None:
    """``aggregate ← (count · aggregate + model) / (count + 1)`` over parameters and float buffers (ints: copied).

    ``count`` is the number of models already averaged into ``aggregate`` (0: ``aggregate`` becomes ``model``).

    Raises:
        ValueError: ``count`` < 0 or the two modules' state dicts differ in keys.
    """
    check_option(count >= 0, "count", count, ">= 0")
    target, source = aggregate.state_dict(), model.state_dict()
    if target.keys() != source.keys():
        raise ValueError(
            "`aggregate` and `model` must be the same architecture (their state dict keys differ)."
        )
    for key, value in target.items():
        new = source[key].to(value.device)
        if value.is_floating_point():
            value.mul_(count / (count + 1)).add_(new.to(value.dtype), alpha=1 / (count + 1))
        else:
            value.copy_(new)


@torch.no_grad()
def refresh_batch_norm(model: nn.Module, batches: Iterable[tuple[Any, ...]]) -> None:
    """Recompute every BatchNorm's running statistics as the plain mean over ``batches`` (``model(*batch)`` each).

    What ``torch.optim.swa_utils.update_bn`` does for an averaged model (the averaged weights do not match any
    model's statistics), for models whose ``forward`` takes several arguments; also used before a model labels
    data after a short round (BatchNorm momentum 0.01 leaves the statistics near their start for hundreds of
    steps). The model's train / eval mode is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for batch in batches:
        model(*batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
