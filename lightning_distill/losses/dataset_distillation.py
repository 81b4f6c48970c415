"""Dataset-distillation losses (pure functions, no Lightning).

One home for the losses of the dataset-distillation recipes; the toolkit
(:mod:`lightning_distill.dataset_distillation`) re-exports them.

Matching real and synthetic batches (DM, arXiv 2110.04181; DataDAM, arXiv 2310.00093). Both inputs
are *class-blocked*: rows ``c * n`` to ``(c + 1) * n - 1`` of the real batch and rows ``c * m`` to
``(c + 1) * m - 1`` of the synthetic batch belong to class ``c`` (``n`` real and ``m`` synthetic
images per class); the losses compare per-class means:

* :func:`classwise_mean_discrepancy`: ``sum_c || mean_{i in c} r_i - mean_{j in c} s_j ||^2`` (DM's
  loss; DataDAM's ``L_MMD`` on the final embeddings);
* :func:`attention_map`: DataDAM's spatial attention ``a = normalise_2(sum_channels |f|^p)``;
* :func:`attention_matching_loss`: DataDAM's ``L_SAM``, the discrepancy of per-class mean attention
  maps summed over layers.

Inverting a BatchNorm teacher (SRe2L, arXiv 2306.13092; CDA, arXiv 2311.18838):

* :func:`bn_matching_loss`: ``sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2)``.

Matching training trajectories (MTT, arXiv 2203.11932; FTD, arXiv 2211.11004):

* :func:`trajectory_matching_loss`: ``||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2``.

Soft labels (HeLlO, arXiv 2408.08201):

* :func:`soft_label_loss`: KL or MSE between a softmax and soft labels given as log-probabilities.

Everything is computed in fp32 whatever the input precision (``|f|^4`` overflows fp16 quickly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LabelLoss",
    "attention_map",
    "attention_matching_loss",
    "bn_matching_loss",
    "classwise_mean_discrepancy",
    "soft_label_loss",
    "trajectory_matching_loss",
]

LabelLoss = Literal["kl", "mse"]


# --------------------------------------------------------- matching real and synthetic batches
def classwise_mean_discrepancy(real: Tensor, synthetic: Tensor, num_classes: int) -> Tensor:
    r"""Squared distance between the per-class means of two class-blocked batches, summed over classes.

    .. math::
        L = \sum_{c=1}^{K} \Big\| \frac{1}{n}\sum_{i \in c} r_i - \frac{1}{m}\sum_{j \in c} s_j \Big\|_2^2

    The "MSE_B" error of the official DataDAM code (a sum, not a mean, over classes and features).

    Args:
        real: ``(K * n, ...)`` real features (detach them: only the synthetic side learns).
        synthetic: ``(K * m, ...)`` synthetic features, the same trailing shape.
        num_classes: ``K``.

    Returns:
        A scalar (fp32).

    Raises:
        ValueError: trailing shapes differ, or a batch size is not a multiple of ``num_classes``.

    Example:
        >>> import torch
        >>> real = torch.tensor([[1.0], [3.0], [0.0], [0.0]])  # class 0: mean 2; class 1: mean 0
        >>> syn = torch.tensor([[1.0], [1.0]])  # one image per class
        >>> classwise_mean_discrepancy(real, syn, num_classes=2)  # (2 - 1)^2 + (0 - 1)^2
        tensor(2.)
    """
    if real.shape[1:] != synthetic.shape[1:]:
        raise ValueError(
            f"`real` and `synthetic` must have the same feature shape, got {tuple(real.shape)} and "
            f"{tuple(synthetic.shape)}."
        )
    if num_classes < 1 or real.shape[0] % num_classes or synthetic.shape[0] % num_classes:
        raise ValueError(
            f"Batch sizes {real.shape[0]} (real) and {synthetic.shape[0]} (synthetic) must be positive multiples "
            f"of `num_classes`={num_classes} (class-blocked batches)."
        )
    real_mean = real.float().reshape(num_classes, real.shape[0] // num_classes, -1).mean(1)
    syn_mean = synthetic.float().reshape(num_classes, synthetic.shape[0] // num_classes, -1).mean(1)
    return (real_mean - syn_mean).pow(2).sum()


def attention_map(features: Tensor, power: float = 4.0) -> Tensor:
    r"""DataDAM's spatial attention: ``a = v / ||v||_2`` with ``v = vec(sum_c |f_c|^p)``.

    Args:
        features: activations ``(B, C, H, W)`` (or ``(B, C, *spatial)``).
        power: the exponent ``p`` (paper 4; the official code uses 1).

    Returns:
        ``(B, H * W)`` attention vectors of unit L2 norm (fp32).

    Raises:
        ValueError: ``features`` has fewer than 3 dimensions, or ``power <= 0``.

    Example:
        >>> import torch
        >>> f = torch.tensor([[[[1.0, -2.0]], [[0.0, 1.0]]]])  # (B=1, C=2, H=1, W=2)
        >>> attention_map(f, power=1.0)  # v = (1, 3) / sqrt(10)
        tensor([[0.3162, 0.9487]])
    """
    if features.ndim < 3:
        raise ValueError(f"`features` must be (B, C, *spatial), got shape {tuple(features.shape)}.")
    if not power > 0:
        raise ValueError(f"`power` must be > 0, got {power}.")
    v = features.float().abs().pow(power).sum(dim=1).flatten(1)
    return F.normalize(v, p=2.0, dim=1)


def attention_matching_loss(
    real_features: Sequence[Tensor],
    synthetic_features: Sequence[Tensor],
    num_classes: int,
    *,
    power: float = 4.0,
) -> Tensor:
    r"""DataDAM's spatial attention matching, summed over layers.

    .. math::
        L_{SAM} = \sum_{l} \sum_{c=1}^{K} \Big\| \frac{1}{n}\sum_{i \in c} a_l(x_i)
                  - \frac{1}{m}\sum_{j \in c} a_l(s_j) \Big\|_2^2

    with :func:`attention_map` ``a_l`` of layer ``l``.

    Args:
        real_features: per layer, real activations ``(K * n, C_l, H_l, W_l)`` (no gradient needed).
        synthetic_features: per layer, synthetic activations ``(K * m, C_l, H_l, W_l)``.
        num_classes: ``K``.
        power: the exponent ``p``.

    Returns:
        A scalar (fp32).

    Raises:
        ValueError: different numbers of layers, no layer, or the errors of the helpers.
    """
    if len(real_features) != len(synthetic_features) or not real_features:
        raise ValueError(
            f"Need the same, non-zero number of layers for real and synthetic features, got "
            f"{len(real_features)} and {len(synthetic_features)}."
        )
    losses = [
        classwise_mean_discrepancy(attention_map(r, power), attention_map(s, power), num_classes)
        for r, s in zip(real_features, synthetic_features)
    ]
    return sum(losses[1:], losses[0])


# -------------------------------------------------- BatchNorm statistics (SRe2L / CDA recover)
def bn_matching_loss(
    batch_stats: Sequence[tuple[Tensor, Tensor]],
    running: Sequence[tuple[Tensor, Tensor]],
    *,
    first_multiplier: float = 10.0,
) -> Tensor:
    r"""The BatchNorm-statistics loss of SRe2L / CDA (DeepInversion's feature-distribution prior).

    .. math::
        L_{BN} = \sum_l w_l \big(\lVert \mu_l(x) - \hat\mu_l \rVert_2
                 + \lVert \sigma^2_l(x) - \hat\sigma^2_l \rVert_2\big),
        \quad w_0 = \text{first\_multiplier},\ w_{l > 0} = 1

    where ``mu_l(x)``/``sigma^2_l(x)`` are the per-channel mean and biased variance of the batch at
    the *input* of BatchNorm layer ``l`` and the hats its running statistics. Norms, not squared
    norms, as the official ``BNFeatureHook``.

    Args:
        batch_stats: per layer, ``(mean (C_l,), var (C_l,))`` of the batch (e.g. FeatureHooks taps
            with the ``bn_stats`` transform); they carry the gradient.
        running: per layer, ``(running_mean (C_l,), running_var (C_l,))``; treated as constants.
        first_multiplier: weight ``w_0`` of the first layer (>= 0).

    Returns:
        A scalar in float32.

    Raises:
        ValueError: no layer, a different number of layers on the two sides, mismatched shapes, or
            ``first_multiplier < 0``.

    Example:
        >>> stats = [(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]))]
        >>> target = [(torch.zeros(2), torch.ones(2))]  # distances sqrt(2) and sqrt(2)
        >>> round(bn_matching_loss(stats, target, first_multiplier=1.0).item(), 4)
        2.8284
    """
    if len(batch_stats) == 0:
        raise ValueError("`batch_stats` is empty: the network has no BatchNorm layer to match.")
    if len(batch_stats) != len(running):
        raise ValueError(
            f"`batch_stats` has {len(batch_stats)} layers but `running` has {len(running)}; give one pair per layer."
        )
    if not first_multiplier >= 0:
        raise ValueError(f"`first_multiplier` must be >= 0, got {first_multiplier}.")
    total: Tensor | None = None
    for layer, ((mean, var), (r_mean, r_var)) in enumerate(zip(batch_stats, running)):
        if mean.shape != r_mean.shape or var.shape != r_var.shape:
            raise ValueError(
                f"Layer {layer}: batch statistics {tuple(mean.shape)}/{tuple(var.shape)} do not match the running "
                f"statistics {tuple(r_mean.shape)}/{tuple(r_var.shape)}."
            )
        distance = torch.linalg.vector_norm(
            mean.float() - r_mean.detach().float()
        ) + torch.linalg.vector_norm(var.float() - r_var.detach().float())
        weighted = distance * (first_multiplier if layer == 0 else 1.0)
        total = weighted if total is None else total + weighted
    return total  # type: ignore[return-value]


# ------------------------------------------------------------- trajectory matching (MTT / FTD)
def trajectory_matching_loss(student_end: Tensor, expert_start: Tensor, expert_end: Tensor) -> Tensor:
    """The MTT/FTD loss ``||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2``.

    The student starts at the expert's epoch ``s`` (``expert_start``), takes ``N`` steps on the
    synthetic set and ends at ``student_end``; the expert reached ``expert_end`` after ``M``
    epochs on the real data. The denominator normalises by how far the expert moved (the official
    code divides both by ``P`` first, which cancels). The experts are constants: only
    ``student_end`` carries a graph.

    Args:
        student_end: ``theta_N`` ``(P,)``.
        expert_start: ``theta*_s`` ``(P,)``.
        expert_end: ``theta*_{s+M}`` ``(P,)``.

    Returns:
        A scalar.

    Raises:
        ValueError: the three are not 1-D vectors of one length.

    Example:
        >>> start, end = torch.zeros(2), torch.tensor([3.0, 4.0])
        >>> trajectory_matching_loss(torch.tensor([3.0, 0.0]), start, end)  # 16 / 25
        tensor(0.6400)
    """
    shapes = {tuple(t.shape) for t in (student_end, expert_start, expert_end)}
    if len(shapes) != 1 or student_end.ndim != 1:
        raise ValueError(
            "`student_end`, `expert_start` and `expert_end` must be flat vectors (P,) of one length, got "
            f"{tuple(student_end.shape)}, {tuple(expert_start.shape)} and {tuple(expert_end.shape)}."
        )
    expert_start, expert_end = expert_start.detach().float(), expert_end.detach().float()
    numerator = (student_end.float() - expert_end).pow(2).sum()
    return numerator / (expert_start - expert_end).pow(2).sum()


# ------------------------------------------------------------------------- soft labels (HeLlO)
def soft_label_loss(
    logits: Tensor,
    target_log_probs: Tensor,
    *,
    kind: LabelLoss = "kl",
    temperature: float = 1.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """Distance between ``softmax(logits / T)`` and soft labels given as log-probabilities.

    ``kind="kl"``: ``T^2 KL(p || softmax(logits / T))`` with ``p = softmax(target_log_probs / T)``
    (summed over classes). ``kind="mse"``: ``mean_k (softmax(logits / T)_k - p_k)^2`` (HeLlO's
    projector and student objectives are written with MSE). Computed in fp32; the target is detached.

    Args:
        logits: ``(B, K)``.
        target_log_probs: ``(B, K)`` (e.g. :class:`WeakTeacherEnsemble` output, or any teacher logits).
        kind: ``"kl"`` or ``"mse"``.
        temperature: ``T``.
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` ``(B,)``.

    Raises:
        ValueError: shapes differ, an unknown ``kind``/``reduction``, or ``temperature <= 0``.

    Example:
        >>> z = torch.tensor([[0.0, 0.0]])
        >>> float(soft_label_loss(z, z)), float(soft_label_loss(z, torch.tensor([[0.0, -1e9]]), kind="mse"))
        (0.0, 0.25)
    """
    if logits.shape != target_log_probs.shape or logits.ndim != 2:
        raise ValueError(
            f"`logits` and `target_log_probs` must both be (B, K), got {tuple(logits.shape)} and "
            f"{tuple(target_log_probs.shape)}."
        )
    if kind not in ("kl", "mse"):
        raise ValueError(f"`kind` must be 'kl' or 'mse', got {kind!r}.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(target_log_probs.detach().float() / temperature, dim=-1)
    if kind == "kl":
        per_sample = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    else:
        per_sample = ((log_q.exp() - log_p.exp()) ** 2).mean(-1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()
