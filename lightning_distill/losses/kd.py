"""Logit distillation losses: Hinton KD, soft cross-entropy, JS and symmetric KL, DKD.

All functions take student and teacher logits of shape ``(B, C)`` (classes last), compute the
softmaxes in float32 whatever the input dtype, detach the teacher side, and return a float32
tensor. ``reduction="none"`` gives one value per sample, shape ``(B,)``; ``"mean"`` and ``"sum"``
average or add those over the batch. Temperature-softened losses are multiplied by ``T**2`` so
that their gradients keep the same scale when ``T`` changes (Hinton et al., Section 2).

Logits with more dimensions (tokens ``(B, S, V)`` or dense maps ``(B, C, H, W)``) are refused
rather than guessed at: flatten them to rows first, e.g. ``logits.flatten(0, -2)`` or
``logits.movedim(1, -1).flatten(0, -2)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import kl_rows, reduce
from lightning_distill.utils.checks import (
    Reduction,
    check_non_negative,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "dkd_loss",
    "js_divergence",
    "kd_loss",
    "labelled_cross_entropy",
    "logit_discriminator_loss",
    "soft_cross_entropy",
    "symmetric_kl",
]

_RESHAPE_HINT = (
    "Logits must be (B, C) with classes last; flatten token or dense logits to rows first, "
    "e.g. `logits.flatten(0, -2)` for (B, S, V) or `logits.movedim(1, -1).flatten(0, -2)` for (B, C, H, W)."
)


def _check_logit_pair(student_logits: Tensor, teacher_name: str, teacher: Tensor) -> None:
    for name, value in (("student_logits", student_logits), (teacher_name, teacher)):
        check_tensor(name, value)
        if value.ndim != 2:
            raise ValueError(f"`{name}` must have shape (B, C), got {tuple(value.shape)}. {_RESHAPE_HINT}")
    check_same_shape("student_logits", student_logits, teacher_name, teacher)


def _log_softmax_fp32(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Knowledge distillation loss of Hinton et al.

    "Distilling the Knowledge in a Neural Network" (Hinton, Vinyals, Dean; arXiv 1503.02531):

    .. math::
        L = T^2 \, \mathrm{KL}\big(\mathrm{softmax}(z_t / T) \,\|\, \mathrm{softmax}(z_s / T)\big)
          = T^2 \sum_c p^t_c \, (\log p^t_c - \log p^s_c)

    summed over classes per sample. The paper leaves ``T`` to the user; the default 4.0 is the
    value of the common CIFAR-100 KD baselines (RepDistiller, mdistiller). Recipes set the value
    of their paper. ``reduction="mean"`` is PyTorch's ``kl_div(..., reduction="batchmean")``.

    Args:
        student_logits: Student logits, shape ``(B, C)``; receives the gradient.
        teacher_logits: Teacher logits, shape ``(B, C)``; detached.
        temperature: Softmax temperature ``T > 0``.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a logit tensor is not a floating-point tensor, or ``temperature`` is not a number.
        ValueError: If the logits are not 2-D with equal shapes, ``temperature <= 0``, or
            ``reduction`` is unknown.

    Example:
        >>> import math, torch
        >>> s = torch.tensor([[0.0, 0.0]])  # student: (1/2, 1/2)
        >>> t = torch.tensor([[0.0, math.log(3.0)]])  # teacher: (1/4, 3/4)
        >>> round(kd_loss(s, t, temperature=1.0).item(), 4)  # 1/4 log(1/2) + 3/4 log(3/2)
        0.1308
        >>> kd_loss(t, t).item()
        0.0
    """
    _check_logit_pair(student_logits, "teacher_logits", teacher_logits)
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)

    log_p_student = _log_softmax_fp32(student_logits, temperature)
    log_p_teacher = _log_softmax_fp32(teacher_logits.detach(), temperature)
    per_sample = kl_rows(log_p_teacher, log_p_student) * temperature**2
    return reduce(per_sample, reduction)


def soft_cross_entropy(
    student_logits: Tensor,
    target: Tensor,
    *,
    target_is_logits: bool,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cross-entropy of the student against soft teacher targets.

    The soft-target term of "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531), and
    the loss of MEAL V2 (arXiv 2009.08453, ``T = 1``, target = the average of the teachers'
    softmax outputs):

    .. math::
        L = -T^2 \sum_c p^t_c \, \log \mathrm{softmax}(z_s / T)_c

    With ``target_is_logits=True``, :math:`p^t = \mathrm{softmax}(z_t / T)`. With probabilities
    :math:`q` (``target_is_logits=False``) the same temperature is applied as
    :math:`p^t \propto q^{1/T}`, so that passing ``softmax(z_t)`` or ``z_t`` gives the same loss at
    every ``T``. It differs from :func:`kd_loss` by the teacher entropy, a constant, so the two
    have the same gradient.

    Args:
        student_logits: Student logits, shape ``(B, C)``; receives the gradient.
        target: Teacher logits or probabilities, shape ``(B, C)``; detached. Probabilities must
            be non-negative and sum to 1 over ``C`` (not checked, to avoid a device sync).
        target_is_logits: Whether ``target`` holds logits (``True``) or probabilities (``False``).
            Required, so that the two are never confused.
        temperature: Softmax temperature ``T > 0``.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a tensor is not floating-point, ``temperature`` is not a number, or
            ``target_is_logits`` is not a bool.
        ValueError: If the tensors are not 2-D with equal shapes, ``temperature <= 0``, or
            ``reduction`` is unknown.

    Example:
        >>> import math, torch
        >>> s = torch.tensor([[0.0, 0.0]])  # student: (1/2, 1/2)
        >>> q = torch.tensor([[0.25, 0.75]])
        >>> round(soft_cross_entropy(s, q, target_is_logits=False).item(), 4)  # log 2
        0.6931
        >>> z = q.log()
        >>> round(soft_cross_entropy(s, z, target_is_logits=True).item(), 4)
        0.6931
    """
    _check_logit_pair(student_logits, "target", target)
    if not isinstance(target_is_logits, bool):
        raise TypeError(f"`target_is_logits` must be a bool, got {type(target_is_logits).__name__}.")
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)

    target_logits = target.detach().float()
    if not target_is_logits:
        target_logits = target_logits.log()  # log 0 = -inf: a class with no mass keeps none
    p_teacher = F.softmax(target_logits / temperature, dim=-1)
    log_p_student = _log_softmax_fp32(student_logits, temperature)
    # Where the target has no mass the term is zero, also if the student's log-probability is -inf.
    cross = torch.where(p_teacher > 0, p_teacher * log_p_student, torch.zeros_like(log_p_student))
    per_sample = -cross.sum(dim=-1) * temperature**2
    return reduce(per_sample, reduction)


def js_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Jensen-Shannon divergence between the student's and the teacher's softmax outputs.

    Named as the loss of SSLD, "Beyond Self-Supervision: A Simple Yet Effective Network
    Distillation Alternative to Improve Backbones" (Cui et al.; arXiv 2103.05959):

    .. math::
        L = T^2 \Big( \tfrac12 \mathrm{KL}(p^s \| m) + \tfrac12 \mathrm{KL}(p^t \| m) \Big),
        \quad m = \tfrac12 (p^s + p^t), \quad p = \mathrm{softmax}(z / T)

    in nats, so ``0 <= L / T**2 <= log 2``. Note: PaddleClas's SSLD code, which the paper calls
    "JS div loss", computes :math:`\tfrac12 (\mathrm{KL}(p^t\|p^s) + \mathrm{KL}(p^s\|p^t))`
    instead; that is :func:`symmetric_kl`.

    Args:
        student_logits: Student logits, shape ``(B, C)``; receives the gradient.
        teacher_logits: Teacher logits, shape ``(B, C)``; detached.
        temperature: Softmax temperature ``T > 0``.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a logit tensor is not a floating-point tensor, or ``temperature`` is not a number.
        ValueError: If the logits are not 2-D with equal shapes, ``temperature <= 0``, or
            ``reduction`` is unknown.

    Example:
        >>> import math, torch
        >>> s = torch.tensor([[0.0, -1e4]])  # student: (1, 0)
        >>> t = torch.tensor([[-1e4, 0.0]])  # teacher: (0, 1), disjoint support
        >>> math.isclose(js_divergence(s, t).item(), math.log(2.0), rel_tol=1e-6)
        True
        >>> js_divergence(t, t).item()
        0.0
    """
    _check_logit_pair(student_logits, "teacher_logits", teacher_logits)
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)

    log_p_student = _log_softmax_fp32(student_logits, temperature)
    log_p_teacher = _log_softmax_fp32(teacher_logits.detach(), temperature)
    log_m = torch.logaddexp(log_p_student, log_p_teacher) - math.log(2.0)
    per_sample = 0.5 * (kl_rows(log_p_student, log_m) + kl_rows(log_p_teacher, log_m))
    return reduce(per_sample * temperature**2, reduction)


def symmetric_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Average of the two KL directions between teacher and student softmax outputs.

    .. math::
        L = \tfrac{T^2}{2} \Big( \mathrm{KL}(p^t \| p^s) + \mathrm{KL}(p^s \| p^t) \Big),
        \quad p = \mathrm{softmax}(z / T)

    This is the mutual loss of "Deep Mutual Learning" (Zhang et al.; arXiv 1706.00384) as
    PaddleClas implements it (``DMLLoss``), and what PaddleClas's SSLD code
    (arXiv 2103.05959) computes under the name "JS div loss". It is half of Jeffreys' divergence.
    Both directions are differentiated through the student; the teacher is detached.

    Args:
        student_logits: Student logits, shape ``(B, C)``; receives the gradient.
        teacher_logits: Teacher logits, shape ``(B, C)``; detached.
        temperature: Softmax temperature ``T > 0``.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a logit tensor is not a floating-point tensor, or ``temperature`` is not a number.
        ValueError: If the logits are not 2-D with equal shapes, ``temperature <= 0``, or
            ``reduction`` is unknown.

    Example:
        >>> import math, torch
        >>> s = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
        >>> t = torch.tensor([[0.0, math.log(3.0)]])  # (1/4, 3/4)
        >>> round(symmetric_kl(s, t).item(), 4)  # (KL(t||s) + KL(s||t)) / 2 = (0.1308 + 0.1438) / 2
        0.1373
        >>> symmetric_kl(t, t).item()
        0.0
    """
    _check_logit_pair(student_logits, "teacher_logits", teacher_logits)
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)

    log_p_student = _log_softmax_fp32(student_logits, temperature)
    log_p_teacher = _log_softmax_fp32(teacher_logits.detach(), temperature)
    per_sample = 0.5 * (kl_rows(log_p_teacher, log_p_student) + kl_rows(log_p_student, log_p_teacher))
    return reduce(per_sample * temperature**2, reduction)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Decoupled knowledge distillation: target-class plus non-target-class KD.

    "Decoupled Knowledge Distillation" (Zhao et al., CVPR 2022; arXiv 2203.08679). With
    :math:`p = \mathrm{softmax}(z / T)` and ``y`` the label, the binary distribution
    :math:`b = (p_y, 1 - p_y)` and the distribution over the other classes
    :math:`\hat p_c = p_c / (1 - p_y)`, :math:`c \ne y`:

    .. math::
        \mathrm{TCKD} = \mathrm{KL}(b^t \| b^s), \quad
        \mathrm{NCKD} = \mathrm{KL}(\hat p^t \| \hat p^s), \quad
        L = T^2 (\alpha \, \mathrm{TCKD} + \beta \, \mathrm{NCKD})

    Defaults are the paper's CIFAR-100 values (``alpha=1``, ``beta=8``, ``T=4``; ImageNet uses
    ``beta=0.5``, ``T=1``). The official code's linear warm-up of the loss over the first
    epochs belongs to the recipe. Here :math:`\log(1 - p_y)` is computed as a log-sum-exp over
    the other classes, so a saturated ``p_y`` gives a finite loss.

    Args:
        student_logits: Student logits, shape ``(B, C)`` with ``C >= 2``; receives the gradient.
        teacher_logits: Teacher logits, shape ``(B, C)``; detached.
        labels: Ground-truth class indices, integer tensor of shape ``(B,)`` with values in ``[0, C)``.
        alpha: Weight of TCKD, ``>= 0``.
        beta: Weight of NCKD, ``>= 0``.
        temperature: Softmax temperature ``T > 0``.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If the logits are not floating-point, ``labels`` is not an integer tensor, or
            a hyper-parameter is not a number.
        ValueError: If the shapes disagree, ``C < 2``, a label is out of range (this check reads
            the labels' min and max, a device sync), ``temperature <= 0``, ``alpha`` or
            ``beta < 0``, or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> z = torch.tensor([[2.0, 1.0, 0.0]])
        >>> dkd_loss(z, z, torch.tensor([0])).item()
        0.0
        >>> s = torch.tensor([[2.0, 0.0, 1.0]])  # same target probability, other classes swapped
        >>> tckd = dkd_loss(s, z, torch.tensor([0]), alpha=1.0, beta=0.0)
        >>> abs(tckd.item()) < 1e-6
        True
    """
    _check_logit_pair(student_logits, "teacher_logits", teacher_logits)
    num_classes = student_logits.shape[1]
    if num_classes < 2:
        raise ValueError(
            f"`student_logits` must have at least 2 classes, got shape {tuple(student_logits.shape)}."
        )
    _check_labels(labels, student_logits)
    alpha = check_non_negative("alpha", alpha)
    beta = check_non_negative("beta", beta)
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)

    target_mask = F.one_hot(labels.long(), num_classes).bool()  # (B, C)
    tckd_s, nckd_log_s = _dkd_parts(student_logits.float() / temperature, target_mask)
    tckd_t, nckd_log_t = _dkd_parts(teacher_logits.detach().float() / temperature, target_mask)
    tckd = kl_rows(tckd_t, tckd_s)
    nckd = kl_rows(nckd_log_t, nckd_log_s)
    per_sample = (alpha * tckd + beta * nckd) * temperature**2
    return reduce(per_sample, reduction)


def _dkd_parts(scaled_logits: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Log binary (target, rest) probabilities ``(B, 2)`` and log non-target distribution ``(B, C)``."""
    masked = scaled_logits.masked_fill(target_mask, float("-inf"))  # target removed
    log_norm = torch.logsumexp(scaled_logits, dim=-1)
    log_p_target = scaled_logits.masked_select(target_mask) - log_norm
    log_p_rest = torch.logsumexp(masked, dim=-1) - log_norm
    log_binary = torch.stack([log_p_target, log_p_rest], dim=-1)
    log_non_target = F.log_softmax(masked, dim=-1)  # -inf at the target class
    return log_binary, log_non_target


def _check_labels(labels: object, logits: Tensor) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"`labels` must be an integer tensor of class indices, got dtype {labels.dtype}.")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"`labels` must have shape (B,) = {tuple(logits.shape[:1])} to match `student_logits` "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}."
        )
    if labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(
                f"`labels` must lie in [0, {logits.shape[1]}) for {logits.shape[1]} classes, "
                f"got values from {low} to {high}."
            )


def labelled_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -1,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Cross-entropy averaged over the labelled samples only; 0 (with a graph) when none is labelled.

    Semi-supervised and label-free recipes mark unlabelled samples with ``-1``. Unlike
    ``F.cross_entropy(..., ignore_index=-1)``, a batch without any label gives 0 instead of NaN:

    .. math::
        L = \frac{\sum_i m_i \, \mathrm{CE}(z_i, y_i)}{\max(1, \sum_i m_i)}, \quad m_i = [y_i \ne -1]

    Args:
        logits: ``(B, C)`` logits.
        labels: ``(B,)`` class indices, ``ignore_index`` for unlabelled samples.
        ignore_index: the label of unlabelled samples.
        label_smoothing: as in ``F.cross_entropy``.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: ``logits`` is not 2-D or ``labels`` is not ``(B,)``.

    Example:
        >>> import torch
        >>> round(labelled_cross_entropy(torch.zeros(2, 4), torch.tensor([1, -1])).item(), 4)  # log 4
        1.3863
        >>> labelled_cross_entropy(torch.zeros(2, 4), torch.tensor([-1, -1])).item()
        0.0
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"`logits` must be (B, C) and `labels` (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    labelled = (labels != ignore_index).float()
    safe = torch.where(labels == ignore_index, torch.zeros_like(labels), labels)
    per_sample = F.cross_entropy(logits.float(), safe, reduction="none", label_smoothing=label_smoothing)
    return (per_sample * labelled).sum() / labelled.sum().clamp_min(1.0)


def logit_discriminator_loss(
    scores_student: Tensor, scores_teacher: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    r"""MEAL V2's discriminator loss: BCE-with-logits of a two-way student/teacher classifier.

    From "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks"
    (arXiv 2009.08453; ``loss.py::discriminatorLoss`` of szq0214/MEAL-V2). A discriminator ``D``
    scores student logits and averaged teacher logits with two outputs each; student rows have the
    target ``(1, 0)``, teacher rows ``(0, 1)``:

    .. math::
        L_D = \frac{1}{4B} \sum_{i=1}^{2B} \sum_{j=1}^{2}
              -\left[y_{ij} \log \sigma(s_{ij}) + (1 - y_{ij}) \log(1 - \sigma(s_{ij}))\right]

    where ``s = [D(z_S); D(z_T)]`` (``2B x 2``). Neither input is detached: ``D`` learns from
    both, and the student's gradient (minimised in the official code, reversed in an adversarial
    reading) is the recipe's choice.

    Args:
        scores_student: ``D``'s outputs for the student's logits, shape ``(B, 2)``.
        scores_teacher: ``D``'s outputs for the teachers' averaged logits, shape ``(B, 2)``.
        reduction: ``"mean"`` over the ``2B x 2`` entries (the official ``BCEWithLogitsLoss``),
            ``"sum"`` of the per-row values, or ``"none"`` for per-row means over the two outputs,
            shape ``(2B,)`` (student rows first).

    Returns:
        The loss in float32: a scalar, or shape ``(2B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a score tensor is not floating-point.
        ValueError: If the scores are not both ``(B, 2)`` or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> zeros = torch.zeros(3, 2)  # sigma(0) = 1/2 everywhere: log 2 per entry
        >>> round(logit_discriminator_loss(zeros, zeros).item(), 4)
        0.6931
        >>> logit_discriminator_loss(zeros, zeros, reduction="none").shape
        torch.Size([6])
    """
    check_tensor("scores_student", scores_student, exact_ndim=2)
    check_tensor("scores_teacher", scores_teacher, exact_ndim=2)
    if scores_student.shape != scores_teacher.shape or scores_student.shape[1] != 2:
        raise ValueError(
            f"Discriminator scores must both be (B, 2), got {tuple(scores_student.shape)} and "
            f"{tuple(scores_teacher.shape)}."
        )
    check_reduction(reduction)
    scores = torch.cat([scores_student, scores_teacher]).float()  # (2B, 2)
    b = scores_student.shape[0]
    target = torch.zeros_like(scores)
    target[:b, 0] = 1.0
    target[b:, 1] = 1.0
    if reduction == "mean":
        return F.binary_cross_entropy_with_logits(scores, target)
    per_row = F.binary_cross_entropy_with_logits(scores, target, reduction="none").mean(dim=1)  # (2B,)
    return reduce(per_row, reduction)
