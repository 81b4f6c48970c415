"""3D-detection losses: CenterPoint's heatmap focal loss and box regression, PointDistiller's
re-weighted local-structure loss.

* :func:`heatmap_focal_loss`: the penalty-reduced pixel-wise focal loss of CenterNet (Zhou et al.,
  arXiv 1904.07850) that CenterPoint (Yin et al., arXiv 2006.11275) uses on its BEV class heatmaps.
* :func:`box_regression_l1`: CenterPoint's L1 loss on the box code at ground-truth centres, each
  code entry weighted (``code_weights``), averaged over the objects.
* :func:`local_structure_loss`: PointDistiller's (Zhang et al., arXiv 2205.11098) loss between the
  teacher's and the student's local graph features, re-weighted per graph:
  ``2 · mean_{n,c,k}(w_n (G_t - G_s)²)``.
* :func:`bev_imitation_loss`, :func:`takd_residual_loss` (with :func:`minmax_normalize` and
  :func:`takd_residual_target`): MonoTAKD's (Liu et al., arXiv 2404.04910) imitation of the teaching
  assistant's BEV map and regression of the thresholded teacher-minus-assistant residual.

Pure functions of tensors; computed in float32 whatever the input dtype.

Size: the one home of the detection family's losses (one per paper step, each short and standalone);
split by paper they would repeat the shared shape checks and imports in several small files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.utils.checks import (
    Reduction,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "bev_imitation_loss",
    "box_regression_l1",
    "depth_bin_loss",
    "heatmap_distillation_loss",
    "heatmap_focal_loss",
    "keypoint_relation",
    "local_structure_loss",
    "masked_feature_loss",
    "minmax_normalize",
    "saliency_weights",
    "takd_residual_loss",
    "takd_residual_target",
    "unidistill_feature_loss",
    "unidistill_relation_loss",
    "unidistill_response_loss",
]


def heatmap_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = 1e-4,
) -> Tensor:
    r"""CenterNet's penalty-reduced focal loss on a heatmap of logits, as CenterPoint trains its BEV head.

    With ``p = clamp(sigmoid(logits), eps, 1 - eps)`` and Gaussian targets ``y`` (exactly 1 at
    object centres):

    .. math::
        L = -\frac{1}{\max(1, N_{pos})} \sum \begin{cases}
            (1 - p)^{\alpha} \log p & y = 1 \\
            (1 - y)^{\beta} p^{\alpha} \log(1 - p) & \text{otherwise}
        \end{cases}

    Args:
        logits: ``(B, K, H, W)`` class logits (any shape works, the target's).
        target: same shape, values in ``[0, 1]``; 1 marks a centre.
        alpha: focusing exponent (2 in CenterNet / CenterPoint).
        beta: penalty reduction near centres (4).
        eps: probability clamp (1e-4, as CenterPoint's ``_sigmoid``).

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes differ, or the target leaves ``[0, 1]``.

    Example:
        >>> target = torch.zeros(1, 1, 3, 3); target[0, 0, 1, 1] = 1.0
        >>> round(float(heatmap_focal_loss(torch.full((1, 1, 3, 3), -4.0), target)), 3)
        3.875
    """
    check_tensor("logits", logits)
    check_tensor("target", target)
    check_same_shape("logits", logits, "target", target)
    if target.numel() and (float(target.min()) < 0 or float(target.max()) > 1):
        raise ValueError(
            f"`target` must hold heatmap values in [0, 1], got [{float(target.min())}, {float(target.max())}]."
        )
    p = torch.sigmoid(logits.float()).clamp(eps, 1 - eps)
    target = target.float()
    pos = target.eq(1).float()
    pos_term = torch.log(p) * (1 - p).pow(alpha) * pos
    neg_term = torch.log(1 - p) * p.pow(alpha) * (1 - target).pow(beta) * (1 - pos)
    return -(pos_term.sum() + neg_term.sum()) / pos.sum().clamp(min=1.0)


def box_regression_l1(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    code_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    r"""CenterPoint's box-code L1 loss at object centres.

    .. math::
        L = \frac{1}{\max(1, \sum m)} \sum_{b, j} m_{bj} \sum_c w_c \, |\hat r_{bjc} - r_{bjc}|

    Args:
        pred: ``(B, M, C)`` box codes read from the regression maps at the target centres.
        target: ``(B, M, C)`` encoded boxes (offset, z, log size, sin/cos yaw: ``C = 8``).
        mask: ``(B, M)`` 1 for real objects, 0 for padding.
        code_weights: ``C`` weights per code entry (CenterPoint: all 1.0); ``None`` for ones.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes differ, ``mask`` is not ``(B, M)`` or ``code_weights`` has the wrong length.

    Example:
        >>> pred, target = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
        >>> float(box_regression_l1(pred, target, torch.tensor([[1.0, 0.0]])))
        3.0
    """
    check_tensor("pred", pred, exact_ndim=3)
    check_tensor("target", target, exact_ndim=3)
    check_same_shape("pred", pred, "target", target)
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"`mask` must be (B, M) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}.")
    weights = (
        torch.ones(pred.shape[-1])
        if code_weights is None
        else torch.as_tensor(code_weights, dtype=torch.float32)
    )
    if weights.shape != (pred.shape[-1],):
        raise ValueError(f"`code_weights` must have {pred.shape[-1]} entries, got {tuple(weights.shape)}.")
    m = mask.float()
    err = (pred.float() - target.float()).abs() * weights.to(pred.device)
    return (err.sum(-1) * m).sum() / m.sum().clamp(min=1.0)


def local_structure_loss(
    teacher_graph: Tensor,
    student_graph: Tensor,
    weights: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""PointDistiller's re-weighted local-structure loss between graph features.

    .. math::
        L = 2 \cdot \frac{1}{N C K} \sum_{n, c, k} w_n \, (G^t_{nck} - G^s_{nck})^2

    where ``G`` are the adapted kNN-graph features of the ``N`` sampled voxels (``C`` channels,
    ``K`` neighbours) and ``w = N · softmax(saliency / τ)`` (the factor 2 and the mean follow the
    official code). The teacher graph is not detached here: in PointDistiller the teacher's graph
    goes through a *trainable* adapter, so gradients reach that adapter (never the teacher's
    features, which the caller computes without gradient).

    Args:
        teacher_graph: ``(N, C, K)`` (any shape ``(N, ...)``).
        student_graph: same shape.
        weights: ``(N,)`` per-graph weights, or ``None`` for ones.
        reduction: ``"mean"`` (the loss above), ``"sum"`` (``2 Σ``) or ``"none"`` (``(N,)`` per graph,
            ``2 w_n mean_{c,k}``).

    Raises:
        ValueError: shapes differ, ``weights`` is not ``(N,)``, or an unknown ``reduction``.

    Example:
        >>> t, s = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)
        >>> float(local_structure_loss(t, s, torch.tensor([1.5, 0.5])))
        2.0
    """
    check_tensor("teacher_graph", teacher_graph)
    check_tensor("student_graph", student_graph)
    check_same_shape("teacher_graph", teacher_graph, "student_graph", student_graph)
    check_reduction(reduction)
    n = teacher_graph.shape[0]
    per = F.mse_loss(student_graph.float(), teacher_graph.float(), reduction="none").reshape(n, -1)
    if weights is not None:
        if weights.shape != (n,):
            raise ValueError(f"`weights` must be (N,) = ({n},), got {tuple(weights.shape)}.")
        per = per * weights.float().unsqueeze(1)
    if reduction == "mean":
        return 2.0 * per.mean()
    if reduction == "sum":
        return 2.0 * per.sum()
    return 2.0 * per.mean(dim=1)


def saliency_weights(saliency: Tensor, *, temperature: float = 0.01) -> Tensor:
    """PointDistiller's re-weighting ``w = N · softmax(saliency / τ)`` over the ``N`` sampled voxels.

    Args:
        saliency: ``(N,)`` points per voxel (or any saliency score).
        temperature: ``τ`` (0.01 in the paper and the official code).

    Returns:
        ``(N,)`` float32 weights summing to ``N``.

    Example:
        >>> saliency_weights(torch.tensor([3.0, 3.0])).tolist()
        [1.0, 1.0]
    """
    check_tensor("saliency", saliency.float(), exact_ndim=1)
    check_positive("temperature", temperature)
    return torch.softmax(saliency.float() / temperature, dim=0) * saliency.shape[0]


def minmax_normalize(bev: Tensor, *, eps: float = 1e-12) -> Tensor:
    r"""MonoTAKD's BEV normalisation: ``(F - min F) / (max F - min F)`` over the whole tensor, in float32.

    The official code (``cmkd_TAKD.py::normalize_``) computes this on a detached copy, which cuts the
    student's gradient; here the graph is kept (``min``/``max`` included), so a student map normalised
    with it still learns.

    Args:
        bev: ``(B, C, X, Y)`` BEV features (any shape).
        eps: floor of the range ``max - min`` (a constant map becomes zeros).

    Raises:
        ValueError: an empty tensor.

    Example:
        >>> minmax_normalize(torch.tensor([[1.0, 3.0], [2.0, 5.0]])).tolist()
        [[0.0, 0.5], [0.25, 1.0]]
    """
    check_tensor("bev", bev)
    if bev.numel() == 0:
        raise ValueError("`bev` is empty; a BEV map needs at least one cell.")
    bev = bev.float()
    low = bev.amin()
    return (bev - low) / (bev.amax() - low).clamp(min=eps)


def takd_residual_target(teacher_bev: Tensor, assistant_bev: Tensor, *, threshold: float = 0.6) -> Tensor:
    r"""MonoTAKD's 3D spatial cues: the teacher-minus-assistant residual, kept only where it is large.

    .. math::
        R = |F_T - F_{TA}|, \qquad R_{i} \leftarrow 0 \text{ where } R_{i} < \theta \max R

    (``max`` over the whole batch tensor, ``θ = 0.6`` as the official ``3/5 * bev_diff.max()``; entries at
    or above the threshold keep their value). Computed without gradient: it is a target.

    Args:
        teacher_bev: ``(B, C, X, Y)`` the LiDAR teacher's BEV features.
        assistant_bev: same shape, the teaching assistant's (the official code min-max normalises it first;
            the caller decides, see :func:`takd_residual_loss`).
        threshold: ``θ`` in ``[0, 1]``; 0 keeps the whole residual.

    Returns:
        ``(B, C, X, Y)`` float32, detached.

    Raises:
        ValueError: shapes differ or ``threshold`` outside ``[0, 1]``.

    Example:
        >>> t, a = torch.tensor([[0.0, 1.0, 5.0, 10.0]]), torch.zeros(1, 4)
        >>> takd_residual_target(t, a).tolist()
        [[0.0, 0.0, 0.0, 10.0]]
        >>> takd_residual_target(t, a, threshold=0.5).tolist()
        [[0.0, 0.0, 5.0, 10.0]]
    """
    check_tensor("teacher_bev", teacher_bev)
    check_tensor("assistant_bev", assistant_bev)
    check_same_shape("teacher_bev", teacher_bev, "assistant_bev", assistant_bev)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"`threshold` must lie in [0, 1] (a share of the largest residual), got {threshold}."
        )
    with torch.no_grad():
        residual = (teacher_bev.float() - assistant_bev.float()).abs()
        if residual.numel():
            residual = torch.where(
                residual < threshold * residual.max(), torch.zeros_like(residual), residual
            )
    return residual


def bev_imitation_loss(
    student_bev: Tensor,
    target_bev: Tensor,
    *,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""BEV feature imitation: MSE between the student's BEV map and a frozen model's, both min-max normalised.

    .. math::
        L = \operatorname{mean}\big(\operatorname{norm}(F_S) - \operatorname{sg}[\operatorname{norm}(F_{tgt})]\big)^2

    MonoTAKD's intra-modal term (the target is the camera teaching assistant's BEV) and, with the LiDAR
    teacher's BEV as the target, the direct cross-modal imitation it is compared with (CMKD's BEV loss).
    ``norm`` is :func:`minmax_normalize` (the official code's ``normalize_``), applied with the graph kept:
    the gradient reaches the student's map (the official in-place version detaches it, so the term
    trains nothing there).

    Args:
        student_bev: ``(B, C, X, Y)`` the student's BEV features.
        target_bev: same shape, the teaching assistant's (or teacher's); detached here.
        normalize: min-max normalise both maps first (the official code does); ``False``: plain MSE.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per entry).

    Raises:
        ValueError: shapes differ or an unknown ``reduction``.

    Example:
        >>> s, t = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 1.0]])
        >>> float(bev_imitation_loss(s, t)), float(bev_imitation_loss(s, t, normalize=False))
        (0.0, 0.5)
    """
    check_tensor("student_bev", student_bev)
    check_tensor("target_bev", target_bev)
    check_same_shape(
        "student_bev", student_bev, "target_bev", target_bev, hint="Match the BEV grids and channels."
    )
    check_reduction(reduction)
    target = target_bev.detach().float()
    student = student_bev.float()
    if normalize:
        student, target = minmax_normalize(student), minmax_normalize(target)
    return F.mse_loss(student, target, reduction=reduction)


def takd_residual_loss(
    student_residual: Tensor,
    teacher_bev: Tensor,
    assistant_bev: Tensor,
    *,
    threshold: float = 0.6,
    normalize_assistant: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""MonoTAKD's spatial-cue term: the student's residual branch regresses the thresholded teacher-TA residual.

    .. math::
        L = \operatorname{mean}\big(\hat R_S - R\big)^2, \qquad
        R = \text{threshold}_\theta\big(|F_T - \operatorname{norm}(F_{TA})|\big)

    with ``R`` from :func:`takd_residual_target` (no gradient). As in the official code the assistant's
    map is min-max normalised (``normalize_assistant``) and the teacher's and the branch's are not.

    Args:
        student_residual: ``(B, C, X, Y)`` output of the student's residual branch.
        teacher_bev: same shape, the LiDAR teacher's BEV features.
        assistant_bev: same shape, the teaching assistant's BEV features.
        threshold: ``θ`` (0.6).
        normalize_assistant: min-max normalise the assistant's map before the difference (official).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        ValueError: shapes differ, ``threshold`` outside ``[0, 1]`` or an unknown ``reduction``.

    Example:
        >>> t, a = torch.tensor([[0.0, 4.0]]), torch.tensor([[1.0, 1.0]])
        >>> float(takd_residual_loss(torch.zeros(1, 2), t, a, normalize_assistant=False))
        4.5
    """
    check_tensor("student_residual", student_residual)
    check_same_shape("student_residual", student_residual, "teacher_bev", teacher_bev)
    check_reduction(reduction)
    assistant = minmax_normalize(assistant_bev.detach()) if normalize_assistant else assistant_bev.detach()
    target = takd_residual_target(teacher_bev.detach(), assistant, threshold=threshold)
    return F.mse_loss(student_residual.float(), target, reduction=reduction)


def depth_bin_loss(depth_logits: Tensor, target_bins: Tensor) -> Tensor:
    r"""BEVDepth's depth supervision: binary cross-entropy of the predicted depth distribution vs one-hot bins.

    With ``p = softmax(depth_logits)`` over the ``D`` bins and ``y`` the one-hot bin of the nearest LiDAR
    point, over the ``P`` pixels that have a target (``target_bins >= 0``):

    .. math::
        L = \frac{1}{\max(1, P)} \sum_{\text{pixels}} \sum_k -[y_k \log p_k + (1 - y_k) \log(1 - p_k)]

    Args:
        depth_logits: ``(..., D, h, w)`` logits over depth bins (e.g. ``(B, C_cam, D, h, w)``).
        target_bins: ``(..., h, w)`` int64 bin per pixel, -1 where no LiDAR point projects.

    Returns:
        A float32 scalar (0 when no pixel has a target).

    Raises:
        ValueError: shapes that do not match, or a bin ``>= D``.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 1)  # p = (0.5, 0.5)
        >>> round(float(depth_bin_loss(logits, torch.tensor([[[0]]]))), 4)  # 2 * -log 0.5
        1.3863
    """
    check_tensor("depth_logits", depth_logits, min_ndim=3)
    if target_bins.shape != depth_logits.shape[:-3] + depth_logits.shape[-2:]:
        raise ValueError(
            f"`target_bins` must be {tuple(depth_logits.shape[:-3] + depth_logits.shape[-2:])} (the logits "
            f"without the bin axis), got {tuple(target_bins.shape)}."
        )
    num_bins = depth_logits.shape[-3]
    if target_bins.numel() and int(target_bins.max()) >= num_bins:
        raise ValueError(f"`target_bins` must be < D = {num_bins}, got {int(target_bins.max())}.")
    prob = torch.softmax(depth_logits.float(), dim=-3).movedim(-3, -1)[target_bins >= 0]  # (P, D)
    if prob.shape[0] == 0:
        return depth_logits.float().sum() * 0.0
    onehot = F.one_hot(target_bins[target_bins >= 0], num_bins).float()
    bce = F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), onehot, reduction="sum")
    return bce / prob.shape[0]


def unidistill_feature_loss(teacher_points: Tensor, student_points: Tensor, mask: Tensor) -> Tensor:
    r"""UniDistill's feature distillation (Zhou et al., CVPR 2023): L1 between keypoint features of real boxes.

    .. math::
        L_{feat} = \frac{1}{\max(1, N)} \sum_{\text{boxes}} \frac{1}{9 C} \sum_{k, c} |F^t_{kc} - F^s_{kc}|

    Args:
        teacher_points: ``(B, M, 9, C)`` teacher BEV features sampled at each box's keypoints.
        student_points: same shape, the student's (after its adapter where channels differ).
        mask: ``(B, M)`` 1 for a real box, 0 for padding (``N`` = its sum).

    Raises:
        ValueError: shapes differ or ``mask`` is not ``(B, M)``.

    Example:
        >>> t, s = torch.ones(1, 2, 9, 4), torch.zeros(1, 2, 9, 4)
        >>> float(unidistill_feature_loss(t, s, torch.tensor([[1.0, 0.0]])))
        1.0
    """
    check_tensor("teacher_points", teacher_points, exact_ndim=4)
    check_same_shape("teacher_points", teacher_points, "student_points", student_points)
    _check_box_mask(mask, teacher_points)
    per_box = (teacher_points.float() - student_points.float()).abs().mean(dim=(2, 3))
    return (per_box * mask.float()).sum() / mask.float().sum().clamp(min=1.0)


def keypoint_relation(points: Tensor, *, eps: float = 1e-4) -> Tensor:
    """Cosine similarities between a box's keypoint features: ``(B, M, P, C) -> (B, M, P, P)``.

    Each feature is divided by ``(‖f‖ + eps)`` (the official code's normaliser) before the inner products.
    """
    unit = points.float() / (points.float().norm(dim=-1, keepdim=True) + eps)
    return unit @ unit.transpose(-1, -2)


def unidistill_relation_loss(teacher_points: Tensor, student_points: Tensor, mask: Tensor) -> Tensor:
    r"""UniDistill's relation distillation: L1 between the 9 x 9 cosine-similarity matrices of a box's keypoints.

    .. math::
        L_{rel} = \frac{1}{\max(1, N)} \sum_{\text{boxes}} \frac{1}{81} \sum_{i, j} |\cos(f^t_i, f^t_j) - \cos(f^s_i, f^s_j)|

    Channel counts of teacher and student may differ (only the similarities are compared).

    Args:
        teacher_points: ``(B, M, 9, C_t)`` teacher keypoint features.
        student_points: ``(B, M, 9, C_s)`` student keypoint features.
        mask: ``(B, M)`` 1 for a real box.

    Raises:
        ValueError: ``(B, M, 9)`` differs between the two, or ``mask`` is not ``(B, M)``.

    Example:
        >>> t = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # two orthogonal keypoints
        >>> s = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # two parallel ones
        >>> round(float(unidistill_relation_loss(t, s, torch.ones(1, 1))), 3)  # |0 - 1| twice over 4 entries
        0.5
    """
    check_tensor("teacher_points", teacher_points, exact_ndim=4)
    check_tensor("student_points", student_points, exact_ndim=4)
    if teacher_points.shape[:3] != student_points.shape[:3]:
        raise ValueError(
            f"`teacher_points` and `student_points` must share (B, M, P), got {tuple(teacher_points.shape)} "
            f"and {tuple(student_points.shape)}."
        )
    _check_box_mask(mask, teacher_points)
    diff = (keypoint_relation(teacher_points) - keypoint_relation(student_points)).abs()
    per_box = diff.mean(dim=(2, 3))
    return (per_box * mask.float()).sum() / mask.float().sum().clamp(min=1.0)


def unidistill_response_loss(
    teacher_heatmap: Tensor,
    student_heatmap: Tensor,
    teacher_codes: Tensor,
    student_codes: Tensor,
    box_mask: Tensor,
    *,
    teacher_temperature: float = 2.0,
) -> tuple[Tensor, Tensor]:
    r"""UniDistill's response distillation: L1 on the class-max heatmap and on the box codes under a Gaussian box mask.

    With ``G`` the Gaussian mask (1 at each box's centre cell), ``h^s = max_k sigmoid(z^s_k)`` and
    ``h^t = max_k sigmoid(z^t_k / T)`` (the official code softens the teacher's logits by ``T = 2``):

    .. math::
        L_{cls} = \frac{\sum_{xy} G |h^t - h^s|}{\sum G}, \qquad
        L_{reg} = \frac{\sum_{xy} G \frac{1}{8}\sum_c |r^t_c - r^s_c|}{\sum G}

    Args:
        teacher_heatmap, student_heatmap: ``(B, K, X, Y)`` class logits.
        teacher_codes, student_codes: ``(B, 8, X, Y)`` box codes.
        box_mask: ``(B, X, Y)`` Gaussian mask in ``[0, 1]``.
        teacher_temperature: ``T`` dividing the teacher's logits (official: 2).

    Returns:
        ``(L_cls, L_reg)``, float32 scalars.

    Raises:
        ValueError: shapes that do not match, or ``teacher_temperature`` <= 0.

    Example:
        >>> z = torch.zeros(1, 1, 2, 2); c = torch.zeros(1, 8, 2, 2)
        >>> mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> cls, reg = unidistill_response_loss(z, z, c, c + 1.0, mask)
        >>> float(cls), float(reg)
        (0.0, 1.0)
    """
    check_tensor("teacher_heatmap", teacher_heatmap, exact_ndim=4)
    check_same_shape("teacher_heatmap", teacher_heatmap, "student_heatmap", student_heatmap)
    check_tensor("teacher_codes", teacher_codes, exact_ndim=4)
    check_same_shape("teacher_codes", teacher_codes, "student_codes", student_codes)
    check_positive("teacher_temperature", teacher_temperature)
    b, _, nx, ny = teacher_heatmap.shape
    if box_mask.shape != (b, nx, ny) or teacher_codes.shape[-2:] != (nx, ny):
        raise ValueError(
            f"`box_mask` must be (B, X, Y) = ({b}, {nx}, {ny}) and the codes on the same grid, got "
            f"{tuple(box_mask.shape)} and {tuple(teacher_codes.shape)}."
        )
    g = box_mask.float()
    h_t = torch.sigmoid(teacher_heatmap.float() / teacher_temperature).amax(dim=1)
    h_s = torch.sigmoid(student_heatmap.float()).amax(dim=1)
    reg = (teacher_codes.float() - student_codes.float()).abs().mean(dim=1)
    norm = g.sum().clamp(min=1e-4)
    return (g * (h_t - h_s).abs()).sum() / norm, (g * reg).sum() / norm


def _check_box_mask(mask: Tensor, points: Tensor) -> None:
    if mask.shape != points.shape[:2]:
        raise ValueError(f"`mask` must be (B, M) = {tuple(points.shape[:2])}, got {tuple(mask.shape)}.")


def heatmap_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    foreground: Tensor | None = None,
    *,
    score_threshold: float = 0.0,
    soft_mask: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    r"""Masked MSE between the student's and the teacher's heatmap probabilities (logit KD of a CenterPoint head).

    With ``p = clamp(sigmoid(logits), eps, 1 - eps)`` per class ``k`` and BEV cell ``c``, a cell weight
    ``m_c = [\max_k p^t_{kc} > \theta] \cdot \max_k p^t_{kc} \cdot g_c`` (the teacher's peak score, soft,
    times the foreground weight ``g``, e.g. the ground-truth Gaussian heatmap's maximum over classes):

    .. math::
        L = \frac{\sum_{b, k, c} m_{bc} (p^s_{bkc} - p^t_{bkc})^2}{\sum_{b, c} m_{bc} + 10^{-6}}

    The logit KD that X-Ray distillation applies to heads, as in SparseKD's CenterPoint setting
    (Yang et al., arXiv 2205.15156: MSE, ``soft_mask`` and foreground mask on, weight 10). The
    teacher is detached.

    Args:
        student_logits: ``(B, K, X, Y)`` heatmap logits.
        teacher_logits: same shape.
        foreground: ``(B, X, Y)`` cell weights in ``[0, 1]``; ``None`` for ones.
        score_threshold: ``θ``, cells where the teacher's peak is not above it are left out.
        soft_mask: weigh cells by the teacher's peak score (else 0/1).
        eps: probability clamp (CenterPoint's ``_sigmoid``).

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes differ, or ``foreground`` is not ``(B, X, Y)``.

    Example:
        >>> s, t = torch.zeros(1, 2, 1, 1), torch.tensor([[[[100.0]], [[0.0]]]])
        >>> round(float(heatmap_distillation_loss(s, t, soft_mask=False)), 4)
        0.2499
    """
    check_tensor("student_logits", student_logits, exact_ndim=4)
    check_tensor("teacher_logits", teacher_logits, exact_ndim=4)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    b, _, nx, ny = student_logits.shape
    p_s = torch.sigmoid(student_logits.float()).clamp(eps, 1 - eps)
    p_t = torch.sigmoid(teacher_logits.detach().float()).clamp(eps, 1 - eps)
    peak = p_t.amax(dim=1)
    mask = (peak > score_threshold).float()
    if soft_mask:
        mask = mask * peak
    if foreground is not None:
        if foreground.shape != (b, nx, ny):
            raise ValueError(
                f"`foreground` must be (B, X, Y) = ({b}, {nx}, {ny}), got {tuple(foreground.shape)}."
            )
        mask = mask * foreground.float()
    return ((p_s - p_t) ** 2 * mask.unsqueeze(1)).sum() / (mask.sum() + 1e-6)


def masked_feature_loss(student_features: Tensor, teacher_features: Tensor, weights: Tensor) -> Tensor:
    r"""MSE between BEV feature maps, averaged over channels and weighted per cell (feature KD on embeddings).

    .. math::
        L = \frac{\sum_{b, c} w_{bc} \frac{1}{C} \sum_{j} (F^s_{bjc} - F^t_{bjc})^2}{\max(\sum_{b, c} w_{bc}, 10^{-6})}

    X-Ray distillation's feature KD (SparseKD's MSE on the BEV features at the ground-truth boxes, weight
    0.1); here the boxes enter as cell weights ``w`` (the ground-truth Gaussian heatmap) instead of a
    pooled 7x7 grid per box. The teacher is detached.

    Args:
        student_features: ``(B, C, X, Y)`` (after an adapter if the widths differ).
        teacher_features: same shape.
        weights: ``(B, X, Y)`` non-negative cell weights.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: shapes differ, or ``weights`` is not ``(B, X, Y)``.

    Example:
        >>> s, t = torch.zeros(1, 2, 1, 2), torch.ones(1, 2, 1, 2)
        >>> float(masked_feature_loss(s, t, torch.tensor([[[1.0, 0.0]]])))
        1.0
    """
    check_tensor("student_features", student_features, exact_ndim=4)
    check_tensor("teacher_features", teacher_features, exact_ndim=4)
    check_same_shape(
        "student_features", student_features, "teacher_features", teacher_features,
        hint="Give the student an adapter to the teacher's width.",
    )  # fmt: skip
    b, _, nx, ny = student_features.shape
    if weights.shape != (b, nx, ny):
        raise ValueError(f"`weights` must be (B, X, Y) = ({b}, {nx}, {ny}), got {tuple(weights.shape)}.")
    err = ((student_features.float() - teacher_features.detach().float()) ** 2).mean(dim=1)
    w = weights.float()
    return (err * w).sum() / w.sum().clamp(min=1e-6)
