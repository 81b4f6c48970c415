"""Feature distillation losses: FitNets hints, attention transfer, CWD, RKD, similarity preserving.

All functions take a student and a teacher feature tensor with the batch first, compute in
float32 whatever the input dtype, detach the teacher side, and return a float32 tensor.
Losses that compare samples one by one take ``reduction``: ``"none"`` gives one value per
sample, shape ``(B,)``; ``"mean"`` and ``"sum"`` average or add those over the batch. The
relational losses (RKD, similarity preserving) compare samples with each other, so they
return one value per batch and take no ``reduction``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import kl_rows, reduce
from lightning_distill.utils.checks import (
    Reduction,
    check_positive,
    check_reduction,
    check_same_batch,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "attention_transfer_loss",
    "cwd_loss",
    "hint_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
]

_ADAPTER_HINT = (
    "Project the student feature to the teacher's shape first with an adapter "
    "(see `lightning_distill.models.adapters`, e.g. a 1x1 convolution or a linear layer), "
    "and resize spatial maps if they differ."
)

# Squared lengths below this count as zero when a direction is normalised (as in F.normalize).
_EPS = 1e-12


def hint_loss(
    student_feature: Tensor,
    teacher_feature: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""FitNets hint loss: mean squared error to the teacher's hint layer.

    "FitNets: Hints for Thin Deep Nets" (Romero et al.; arXiv 1412.6550). For a student feature
    already mapped by the regressor :math:`r` to the teacher's shape, per sample:

    .. math::
        L = \frac{1}{N} \, \| r(v_s) - u_t \|_2^2

    where ``N`` is the number of elements per sample. The paper writes
    :math:`\tfrac12 \| u_t - r(v_s) \|^2`; like RepDistiller and torchdistill (``nn.MSELoss``)
    this averages over elements instead, so the scale does not grow with the feature size.
    ``reduction="mean"`` equals ``F.mse_loss(student, teacher)``.

    Args:
        student_feature: Projected student feature, shape ``(B, *)``, e.g. ``(B, C, H, W)``;
            receives the gradient.
        teacher_feature: Teacher feature of the same shape; detached.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a feature is not a floating-point tensor.
        ValueError: If a feature has fewer than 2 dimensions, the shapes differ (put an adapter
            from ``lightning_distill.models.adapters`` in front of the student), or ``reduction``
            is unknown.

    Example:
        >>> import torch
        >>> s = torch.zeros(2, 3, 4, 4)
        >>> hint_loss(s, s + 2.0).item()  # every element is 2 away
        4.0
        >>> hint_loss(s, s).item()
        0.0
    """
    check_tensor("student_feature", student_feature, min_ndim=2)
    check_tensor("teacher_feature", teacher_feature, min_ndim=2)
    check_same_shape(
        "student_feature", student_feature, "teacher_feature", teacher_feature, hint=_ADAPTER_HINT
    )
    check_reduction(reduction)

    squared_error = (student_feature.float() - teacher_feature.detach().float()).pow(2)
    per_sample = squared_error.flatten(1).mean(dim=1)
    return reduce(per_sample, reduction)


def attention_transfer_loss(
    student_feature: Tensor,
    teacher_feature: Tensor,
    *,
    p: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Activation-based attention transfer.

    "Paying More Attention to Attention: Improving the Performance of Convolutional Neural
    Networks via Attention Transfer" (Zagoruyko & Komodakis; arXiv 1612.03928). The attention
    map of a feature ``f`` of shape ``(C, *S)`` is :math:`a = \frac1C \sum_c |f_c|^p`, flattened
    to ``N = prod(S)`` positions and L2-normalised, :math:`Q = a / \|a\|_2`. Per sample:

    .. math::
        L = \frac{1}{N} \, \| Q_s - Q_t \|_2^2

    This is the official code's ``(at(x) - at(y)).pow(2).mean()``: the norm is **squared** and
    averaged over positions, whereas the paper writes the unsquared norm
    :math:`\| Q_s - Q_t \|_p`. The paper's weight (``beta = 1000``, applied as ``beta / 2`` per
    layer) was tuned with the code's form. Channel counts may differ; spatial sizes may not.

    Args:
        student_feature: Student feature, shape ``(B, C_s, *S)``, e.g. ``(B, C_s, H, W)``;
            receives the gradient.
        teacher_feature: Teacher feature, shape ``(B, C_t, *S)``; detached.
        p: Exponent of the activation magnitudes, ``>= 1`` (``p < 1`` has an infinite gradient at
            zero activations).
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a feature is not a floating-point tensor, or ``p`` is not a number.
        ValueError: If a feature has fewer than 3 dimensions, the batch or spatial sizes differ,
            ``p < 1``, or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> t = torch.randn(2, 8, 4, 4)
        >>> s = torch.cat([t, -t], dim=1) * 3.0  # other channel count, same attention map
        >>> attention_transfer_loss(s, t).item() < 1e-12
        True
    """
    check_tensor("student_feature", student_feature, min_ndim=3)
    check_tensor("teacher_feature", teacher_feature, min_ndim=3)
    check_same_batch("student_feature", student_feature, "teacher_feature", teacher_feature)
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ValueError(
            "`student_feature` and `teacher_feature` must have the same spatial size (dimensions 2 and "
            f"up), got shapes {tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}; resize one "
            "of them, e.g. with `F.adaptive_avg_pool2d` or `F.interpolate`."
        )
    p = check_positive("p", p)
    if p < 1:
        raise ValueError(f"`p` must be >= 1, got {p}.")
    check_reduction(reduction)

    q_student = _attention_map(student_feature.float(), p)
    q_teacher = _attention_map(teacher_feature.detach().float(), p)
    per_sample = (q_student - q_teacher).pow(2).mean(dim=1)
    return reduce(per_sample, reduction)


def _attention_map(feature: Tensor, p: float) -> Tensor:
    """L2-normalised channel mean of ``|f|^p``, shape ``(B, N)``."""
    magnitude = feature.pow(2) if p == 2.0 else feature.abs().pow(p)
    return F.normalize(magnitude.mean(dim=1).flatten(1), dim=1, eps=_EPS)


def cwd_loss(
    student_feature: Tensor,
    teacher_feature: Tensor,
    *,
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Channel-wise distillation: KL between per-channel spatial distributions.

    "Channel-wise Knowledge Distillation for Dense Prediction" (Shu et al., ICCV 2021;
    arXiv 2011.13256). Each channel ``c`` of a map ``y`` of shape ``(C, *S)`` becomes a
    distribution over the ``N = prod(S)`` positions, :math:`\phi(y_c)_i = \mathrm{softmax}_i(y_{c,i} / \tau)`.
    Per sample:

    .. math::
        L = \frac{\tau^2}{C} \sum_{c=1}^{C} \sum_{i=1}^{N}
            \phi(y^t_c)_i \, \log \frac{\phi(y^t_c)_i}{\phi(y^s_c)_i}

    ``reduction="mean"`` divides the sum over batch and channels by ``B * C``, as MMRazor's
    ``ChannelWiseDivergence`` does. The paper uses ``tau = 4`` for segmentation (the default).

    Args:
        student_feature: Student map (logits or features), shape ``(B, C, *S)``, e.g.
            ``(B, C, H, W)``; receives the gradient.
        teacher_feature: Teacher map of the same shape; detached.
        temperature: Softmax temperature ``tau > 0``.
        reduction: ``"none"`` for per-sample values ``(B,)``, or ``"mean"``/``"sum"`` over the batch.

    Returns:
        The loss in float32: a scalar, or shape ``(B,)`` for ``reduction="none"``.

    Raises:
        TypeError: If a feature is not a floating-point tensor, or ``temperature`` is not a number.
        ValueError: If a feature has fewer than 3 dimensions, the shapes differ (put an adapter
            from ``lightning_distill.models.adapters`` in front of the student),
            ``temperature <= 0``, or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> t = torch.randn(2, 3, 4, 4)
        >>> s = t + torch.randn(2, 3, 1, 1)  # a constant per channel leaves the softmax unchanged
        >>> cwd_loss(s, t).item() < 1e-5
        True
    """
    check_tensor("student_feature", student_feature, min_ndim=3)
    check_tensor("teacher_feature", teacher_feature, min_ndim=3)
    check_same_shape(
        "student_feature", student_feature, "teacher_feature", teacher_feature, hint=_ADAPTER_HINT
    )
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)

    log_p_student = F.log_softmax(student_feature.float().flatten(2) / temperature, dim=-1)  # (B, C, N)
    log_p_teacher = F.log_softmax(teacher_feature.detach().float().flatten(2) / temperature, dim=-1)
    per_sample = kl_rows(log_p_teacher, log_p_student).mean(dim=1) * temperature**2
    return reduce(per_sample, reduction)


def rkd_distance_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    r"""Distance-wise relational knowledge distillation (RKD-D).

    "Relational Knowledge Distillation" (Park et al., CVPR 2019; arXiv 1904.05068). With
    embeddings ``x`` flattened per sample, the distance potential is
    :math:`\psi_D(i, j) = \|x_i - x_j\|_2 / \mu`, :math:`\mu` the mean distance over the pairs
    ``i != j``, and

    .. math::
        L = \frac{1}{B^2} \sum_{i, j} \ell_\delta\big(\psi^s_D(i, j), \psi^t_D(i, j)\big)

    with the Huber loss :math:`\ell_\delta` at ``delta = 1`` (``F.smooth_l1_loss``). As in the
    official code the mean runs over all ``B**2`` ordered pairs, the diagonal adding zero; the
    paper's mean over the ``B(B-1)`` distinct pairs is ``B / (B - 1)`` times larger. The paper's
    weight (25) was tuned with the code's form. Coincident embeddings have distance 0 and get a
    zero (not NaN) gradient. Feature sizes may differ between student and teacher.

    Args:
        student_feature: Student embeddings, shape ``(B, *)``, flattened to ``(B, D_s)``;
            receives the gradient.
        teacher_feature: Teacher embeddings, shape ``(B, *)``, flattened to ``(B, D_t)``; detached.

    Returns:
        The scalar loss in float32.

    Raises:
        TypeError: If a feature is not a floating-point tensor.
        ValueError: If a feature has fewer than 2 dimensions, the batch sizes differ, or ``B < 2``.

    Example:
        >>> import torch
        >>> t = torch.randn(6, 4)
        >>> s = 3.0 * t @ torch.linalg.qr(torch.randn(4, 4)).Q  # rotated and scaled: same relations
        >>> rkd_distance_loss(s, t).item() < 1e-8
        True
    """
    student, teacher = _flat_embeddings(student_feature, teacher_feature, min_batch=2)
    distance_student = _normalised_distances(student)
    with torch.no_grad():
        distance_teacher = _normalised_distances(teacher)
    return F.smooth_l1_loss(distance_student, distance_teacher, reduction="mean", beta=1.0)


def rkd_angle_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    r"""Angle-wise relational knowledge distillation (RKD-A).

    "Relational Knowledge Distillation" (Park et al., CVPR 2019; arXiv 1904.05068). With
    embeddings ``x`` flattened per sample and :math:`e_{ij} = (x_i - x_j) / \|x_i - x_j\|_2`,
    the angle potential is the cosine of the angle at vertex ``j`` of each triplet,
    :math:`\psi_A(i, j, k) = \langle e_{ij}, e_{kj} \rangle`, and

    .. math::
        L = \frac{1}{B^3} \sum_{i, j, k} \ell_\delta\big(\psi^s_A(i, j, k), \psi^t_A(i, j, k)\big)

    with the Huber loss at ``delta = 1``. As in the official code the mean runs over all
    ``B**3`` ordered triplets; degenerate ones (two indices equal) give the same cosine (0 or 1)
    to student and teacher and add zero, unless two embeddings coincide in one model only.
    Where two embeddings coincide (squared distance below 1e-12) the direction between them
    is taken as 0 with a zero gradient, so there is no NaN. The paper's weight (50) was tuned
    with the code's form. Feature sizes may differ between student and teacher. Memory grows
    as ``B**2 * D + B**3``.

    Args:
        student_feature: Student embeddings, shape ``(B, *)``, flattened to ``(B, D_s)``;
            receives the gradient.
        teacher_feature: Teacher embeddings, shape ``(B, *)``, flattened to ``(B, D_t)``; detached.

    Returns:
        The scalar loss in float32.

    Raises:
        TypeError: If a feature is not a floating-point tensor.
        ValueError: If a feature has fewer than 2 dimensions, the batch sizes differ, or ``B < 3``.

    Example:
        >>> import torch
        >>> t = torch.randn(5, 3)
        >>> s = 2.0 * t + 1.0  # scaled and shifted: same angles
        >>> rkd_angle_loss(s, t).item() < 1e-8
        True
    """
    student, teacher = _flat_embeddings(student_feature, teacher_feature, min_batch=3)
    angle_student = _triplet_cosines(student)
    with torch.no_grad():
        angle_teacher = _triplet_cosines(teacher)
    return F.smooth_l1_loss(angle_student, angle_teacher, reduction="mean", beta=1.0)


def similarity_preserving_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    r"""Similarity-preserving knowledge distillation.

    "Similarity-Preserving Knowledge Distillation" (Tung & Mori, ICCV 2019; arXiv 1907.09682).
    With features ``F`` flattened to ``(B, D)``, the batch similarity :math:`G = F F^\top` is
    L2-normalised row by row, :math:`\tilde G_{i\cdot} = G_{i\cdot} / \|G_{i\cdot}\|_2`, and

    .. math::
        L = \frac{1}{B^2} \, \| \tilde G_s - \tilde G_t \|_F^2

    for one layer pair (the paper sums over layer pairs and weighs the sum by ``gamma``, 3000 on
    CIFAR-10). Feature sizes may differ between student and teacher.

    Args:
        student_feature: Student feature, shape ``(B, *)``, e.g. ``(B, C_s, H_s, W_s)``;
            receives the gradient.
        teacher_feature: Teacher feature, shape ``(B, *)``; detached.

    Returns:
        The scalar loss in float32.

    Raises:
        TypeError: If a feature is not a floating-point tensor.
        ValueError: If a feature has fewer than 2 dimensions, or the batch sizes differ.

    Example:
        >>> import torch
        >>> t = torch.randn(4, 8, 2, 2)
        >>> s = 5.0 * t.flatten(1).flip(1)  # other layout and scale, same similarities
        >>> similarity_preserving_loss(s, t).item() < 1e-10
        True
    """
    student, teacher = _flat_embeddings(student_feature, teacher_feature, min_batch=1)
    similarity_student = _normalised_gram(student)
    similarity_teacher = _normalised_gram(teacher.detach())
    batch = student.shape[0]
    return (similarity_student - similarity_teacher).pow(2).sum() / batch**2


def _flat_embeddings(
    student_feature: Tensor, teacher_feature: Tensor, *, min_batch: int
) -> tuple[Tensor, Tensor]:
    """Validated float32 ``(B, D)`` views of both features; the teacher detached."""
    check_tensor("student_feature", student_feature, min_ndim=2)
    check_tensor("teacher_feature", teacher_feature, min_ndim=2)
    check_same_batch("student_feature", student_feature, "teacher_feature", teacher_feature)
    if student_feature.shape[0] < min_batch:
        raise ValueError(
            f"`student_feature` must hold at least {min_batch} samples for this relational loss, "
            f"got shape {tuple(student_feature.shape)}."
        )
    return student_feature.float().flatten(1), teacher_feature.detach().float().flatten(1)


def _normalised_distances(x: Tensor) -> Tensor:
    """Pairwise distances ``(B, B)`` divided by their mean over ``i != j``."""
    # The loop kernel gives exact zeros on the diagonal and a zero gradient at zero distance.
    distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    batch = x.shape[0]
    mean_distance = distance.sum() / (batch * (batch - 1))  # the diagonal is zero
    return distance / mean_distance.clamp_min(_EPS)


def _triplet_cosines(x: Tensor) -> Tensor:
    """``cos[j, i, k]``: cosine of the angle at ``x_j`` between ``x_i`` and ``x_k``, shape ``(B, B, B)``."""
    offsets = x.unsqueeze(0) - x.unsqueeze(1)  # (B, B, D): offsets[j, i] = x_i - x_j
    squared_length = offsets.pow(2).sum(dim=-1, keepdim=True)
    distinct = squared_length > _EPS
    length = torch.where(distinct, squared_length, torch.ones_like(squared_length)).sqrt()
    unit = torch.where(distinct, offsets / length, torch.zeros_like(offsets))
    return unit @ unit.transpose(1, 2)


def _normalised_gram(x: Tensor) -> Tensor:
    """Row-L2-normalised ``x @ x.T``, shape ``(B, B)``."""
    return F.normalize(x @ x.T, dim=1, eps=_EPS)
