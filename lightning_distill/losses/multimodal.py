"""Losses of PHG-MAE (multi-modal masked autoencoders over whole modalities, arXiv 2510.10068).

* :func:`modality_reconstruction_losses`: the masked autoencoder's per-modality terms. Each sample
  reconstructs every modality it has (``available``): mean squared error on continuous layers, mean
  absolute error on depth, cross-entropy (``ignore_index`` left out) on the semantic layer.
* :func:`soft_pixel_cross_entropy`: per-pixel cross-entropy to a teacher's class probabilities (the
  ensemble's soft pseudo-labels), averaged over pixels.
* :func:`masked_l1`: mean absolute error over the pixels of a mask (depth against its label or the
  ensemble's depth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_l1", "modality_reconstruction_losses", "soft_pixel_cross_entropy"]


def masked_l1(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``|prediction - target|`` over the pixels where ``mask`` is true (all pixels without one).

    Args:
        prediction: ``(B, C, H, W)``.
        target: same shape.
        mask: ``(B, H, W)`` bool, or ``None``.

    Returns:
        A scalar; zero (still in the graph) when the mask selects nothing.

    Raises:
        ValueError: shapes that do not match.
    """
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(
            f"`prediction` and `target` must both be (B, C, H, W), got {tuple(prediction.shape)} and {tuple(target.shape)}."
        )
    error = (prediction.float() - target.float()).abs().mean(dim=1)
    if mask is None:
        return error.mean()
    if mask.shape != error.shape:
        raise ValueError(f"`mask` must be (B, H, W) = {tuple(error.shape)}, got {tuple(mask.shape)}.")
    count = mask.sum()
    return (error * mask).sum() / count.clamp(min=1)


def soft_pixel_cross_entropy(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """``-sum_k p_T[k] log softmax(z_S)[k]`` per pixel, averaged over pixels and images.

    Args:
        student_logits: ``(B, K, H, W)``.
        teacher_probs: ``(B, K, H, W)`` probabilities (summing to one over ``K``).

    Raises:
        ValueError: shapes that do not match.
    """
    if student_logits.shape != teacher_probs.shape or student_logits.ndim != 4:
        raise ValueError(
            f"`student_logits` and `teacher_probs` must both be (B, K, H, W), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_probs.shape)}."
        )
    log_p = F.log_softmax(student_logits.float(), dim=1)
    return -(teacher_probs.float() * log_p).sum(dim=1).mean()


def modality_reconstruction_losses(
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    available: Tensor,
    names: Sequence[str],
    *,
    categorical: str = "semantic",
    absolute: Sequence[str] = ("depth",),
    ignore_index: int = -1,
) -> dict[str, Tensor]:
    """One reconstruction term per modality, each over the samples that have that modality.

    Args:
        predictions: per name, ``(B, C, H, W)`` (logits for ``categorical``).
        targets: per name, ``(B, C, H, W)``; for ``categorical`` the labels ``(B, H, W)`` int64.
        available: ``(B, M)`` bool, which modality each sample has (column order = ``names``).
        names: the modalities, in column order.
        categorical: the name scored with cross-entropy.
        absolute: names scored with mean absolute error (the others with squared error).
        ignore_index: label left out of the cross-entropy.

    Returns:
        ``{name: loss}``; a modality no sample has gives zero (still in the graph).

    Raises:
        ValueError: ``available`` not ``(B, len(names))`` or a name missing from the inputs.
    """
    batch = next(iter(predictions.values())).shape[0] if predictions else 0
    if available.ndim != 2 or available.shape != (batch, len(names)) or available.dtype != torch.bool:
        raise ValueError(
            f"`available` must be a bool tensor (B, M) = ({batch}, {len(names)}), got {tuple(available.shape)}."
        )
    missing = [n for n in names if n not in predictions or n not in targets]
    if missing:
        raise ValueError(f"`predictions` and `targets` need every modality in `names`; missing {missing}.")
    out = {}
    for column, name in enumerate(names):
        rows = available[:, column]
        pred, target = predictions[name], targets[name]
        if not bool(rows.any()):
            out[name] = pred.sum() * 0.0
        elif name == categorical:
            out[name] = F.cross_entropy(pred[rows].float(), target[rows], ignore_index=ignore_index)
            if not torch.isfinite(out[name]):  # every pixel ignored
                out[name] = pred.sum() * 0.0
        elif name in absolute:
            out[name] = (pred[rows].float() - target[rows].float()).abs().mean()
        else:
            out[name] = (pred[rows].float() - target[rows].float()).pow(2).mean()
    return out
