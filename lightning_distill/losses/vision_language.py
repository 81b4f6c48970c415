"""Losses of distillation from a vision-language teacher (CLIP) into a vision student.

Student features ``s`` and teacher image features ``v`` are ``(B, D)`` vectors in CLIP's embedding
space; class text embeddings ``c`` are ``(K, D)``. Every function normalises what it compares
(so callers may pass raw features), computes in float32, detaches the teacher side and returns a
float32 tensor.

* :func:`text_classifier_loss`: cross-entropy of ``s cᵀ / τ`` (vlm_ood's L-cls, VL2V's text classifier).
* :func:`topk_text_alignment_loss`: KL of the student's to the teacher's text-similarity softmax over the
  teacher's top-k classes, on the images the teacher gets right (vlm_ood's L-vlalign).
* :func:`feature_l2_loss`: ``||ŝ − v̂||²`` (vlm_ood's L-mse).
* :func:`image_contrastive_loss`: symmetric InfoNCE between student and teacher image features (L-im-cst).
* :func:`negative_cosine_loss`: ``−cos(p, t)`` (VL2V-ADiP's alignment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.losses._common import kl_rows, reduce
from lightning_distill.utils.checks import Reduction, check_positive, check_reduction

__all__ = [
    "feature_l2_loss",
    "image_contrastive_loss",
    "negative_cosine_loss",
    "text_classifier_loss",
    "text_logits",
    "topk_text_alignment_loss",
]


def _check_features(name_a: str, a: Tensor, name_b: str, b: Tensor, *, same_rows: bool) -> None:
    for name, value in ((name_a, a), (name_b, b)):
        if not isinstance(value, Tensor) or value.ndim != 2:
            raise ValueError(
                f"`{name}` must be a 2-D tensor (N, D), got {getattr(value, 'shape', type(value))}."
            )
    if a.shape[1] != b.shape[1] or (same_rows and a.shape[0] != b.shape[0]):
        raise ValueError(
            f"`{name_a}` {tuple(a.shape)} and `{name_b}` {tuple(b.shape)} do not match "
            f"({'same shape' if same_rows else 'same feature size D'} expected)."
        )


def text_logits(features: Tensor, text_embeddings: Tensor, *, temperature: float = 0.07) -> Tensor:
    """``normalize(s) normalize(c)ᵀ / τ``: logits ``(B, K)`` of features ``(B, D)`` against ``K`` texts ``(K, D)``.

    Example:
        >>> import torch
        >>> text_logits(torch.tensor([[2.0, 0.0]]), torch.eye(2), temperature=0.5)
        tensor([[2., 0.]])
    """
    _check_features("features", features, "text_embeddings", text_embeddings, same_rows=False)
    temperature = check_positive("temperature", temperature)
    s = F.normalize(features.float(), dim=-1)
    c = F.normalize(text_embeddings.detach().float(), dim=-1)
    return s @ c.t() / temperature


def text_classifier_loss(
    features: Tensor,
    text_embeddings: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.07,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cross-entropy of the text classifier, :math:`\mathrm{CE}(\hat s \hat c^\top / \tau, y)`.

    Args:
        features: student features ``(B, D)``.
        text_embeddings: class text embeddings ``(K, D)`` (detached).
        labels: ``(B,)`` class indices into the rows of ``text_embeddings``.
        temperature: ``τ`` (0.07 in vlm_ood).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        ValueError: mismatched shapes or labels outside ``[0, K)``.

    Example:
        >>> import torch
        >>> round(text_classifier_loss(torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([0]), temperature=1.0).item(), 4)
        0.3133
    """
    check_reduction(reduction)
    logits = text_logits(features, text_embeddings, temperature=temperature)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"`labels` must be (B,) = ({logits.shape[0]},), got {tuple(labels.shape)}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"`labels` must lie in [0, {logits.shape[1]}), got {labels.min().item()}..{labels.max().item()}."
        )
    return reduce(F.cross_entropy(logits, labels, reduction="none"), reduction)


def topk_text_alignment_loss(
    features: Tensor,
    teacher_features: Tensor,
    text_embeddings: Tensor,
    labels: Tensor | None = None,
    *,
    top_k: int,
    temperature: float = 0.07,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""vlm_ood's L-vlalign: KL between teacher and student text similarities over the teacher's top-k classes.

    With teacher logits :math:`t = \hat v \hat c^\top/\tau` and student logits :math:`z = \hat s \hat c^\top/\tau`,
    :math:`S` the teacher's ``top_k`` classes per image:

    .. math::
        L = \mathrm{KL}\big(\mathrm{softmax}(t_S) \,\|\, \mathrm{softmax}(z_S)\big)

    averaged over the images the teacher classifies correctly (``argmax t = y``) when ``labels`` is
    given (``--clip-filter-out-wrong-alignment``), over every image otherwise. No image kept: 0 (with a graph).

    Args:
        features: student features ``(B, D)``.
        teacher_features: teacher image features ``(B, D)`` (detached).
        text_embeddings: class text embeddings ``(K, D)`` (detached).
        labels: ``(B,)`` labels, or ``None`` for no filtering.
        top_k: size of the class subset (clamped to ``K``).
        temperature: ``τ``.
        reduction: ``"mean"`` (over kept images), ``"sum"`` or ``"none"`` (``(B,)``, 0 where dropped).

    Raises:
        ValueError: mismatched shapes or ``top_k`` < 1.

    Example:
        >>> import torch
        >>> s, v, c = torch.eye(3)[:1], torch.eye(3)[:1], torch.eye(3)
        >>> topk_text_alignment_loss(s, v, c, torch.tensor([0]), top_k=2).item()
        0.0
    """
    _check_features("features", features, "teacher_features", teacher_features, same_rows=True)
    check_reduction(reduction)
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}; set `model.init_args.top_k`.")
    student = text_logits(features, text_embeddings, temperature=temperature)
    teacher = text_logits(teacher_features.detach(), text_embeddings, temperature=temperature)
    values, ids = teacher.topk(min(top_k, teacher.shape[1]), dim=-1)
    per_sample = kl_rows(F.log_softmax(values, dim=-1), F.log_softmax(student.gather(-1, ids), dim=-1))
    keep = torch.ones_like(per_sample) if labels is None else (teacher.argmax(-1) == labels).float()
    per_sample = per_sample * keep
    if reduction == "mean":
        return per_sample.sum() / keep.sum().clamp_min(1.0)
    return reduce(per_sample, reduction)


def feature_l2_loss(features: Tensor, teacher_features: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""vlm_ood's L-mse: :math:`\|\hat s - \hat v\|_2^2` per image (both L2-normalised).

    Example:
        >>> import torch
        >>> feature_l2_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])).item()
        2.0
    """
    _check_features("features", features, "teacher_features", teacher_features, same_rows=True)
    check_reduction(reduction)
    s = F.normalize(features.float(), dim=-1)
    v = F.normalize(teacher_features.detach().float(), dim=-1)
    return reduce(((s - v) ** 2).sum(-1), reduction)


def image_contrastive_loss(
    features: Tensor, teacher_features: Tensor, *, temperature: float = 0.07
) -> Tensor:
    r"""vlm_ood's bidirectional L-im-cst: :math:`\tfrac12[\mathrm{CE}(M, I) + \mathrm{CE}(M^\top, I)]`, :math:`M = \hat s \hat v^\top/\tau`.

    The positive of student image ``i`` is the teacher's feature of the same image; the other
    images of the batch are the negatives.

    Example:
        >>> import torch
        >>> round(image_contrastive_loss(torch.eye(2), torch.eye(2), temperature=1.0).item(), 4)
        0.3133
    """
    _check_features("features", features, "teacher_features", teacher_features, same_rows=True)
    temperature = check_positive("temperature", temperature)
    s = F.normalize(features.float(), dim=-1)
    v = F.normalize(teacher_features.detach().float(), dim=-1)
    m = s @ v.t() / temperature
    target = torch.arange(m.shape[0], device=m.device)
    return 0.5 * (F.cross_entropy(m, target) + F.cross_entropy(m.t(), target))


def negative_cosine_loss(features: Tensor, targets: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r""":math:`-\cos(p, t)` per row (VL2V-ADiP's alignment to CLIP image or text embeddings).

    Example:
        >>> import torch
        >>> negative_cosine_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])).item()
        -1.0
    """
    _check_features("features", features, "targets", targets, same_rows=True)
    check_reduction(reduction)
    return reduce(-F.cosine_similarity(features.float(), targets.detach().float(), dim=-1), reduction)
