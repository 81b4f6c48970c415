"""Few-shot plumbing shared by a support-conditioned teacher and its support-free student.

Both models segment class by class: for each of the ``N`` task classes a binary (background,
foreground) logit pair per pixel. :func:`combine_class_logits` turns the ``N`` pairs into one
``(1 + N)``-way map as DistillFSS does: the foreground logit of every class, and as background the
background logit of the class whose foreground logit is highest at that pixel.
:func:`class_masks` turns a multi-class label map into the per-class binary masks a teacher
attends to.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_masks", "combine_class_logits"]


def combine_class_logits(per_class: Tensor) -> Tensor:
    """``(B, N, 2, H, W)`` per-class (background, foreground) logits -> ``(B, 1 + N, H, W)``.

    Raises:
        ValueError: ``per_class`` is not ``(B, N, 2, H, W)``.

    Example:
        >>> pair = torch.tensor([[0.0, 2.0], [1.0, 0.5]]).view(1, 2, 2, 1, 1)  # class 1: fg 2, class 2: fg 0.5
        >>> combine_class_logits(pair).flatten().tolist()  # background from class 1 (its fg is highest)
        [0.0, 2.0, 0.5]
    """
    if per_class.ndim != 5 or per_class.shape[2] != 2:
        raise ValueError(f"`per_class` must be (B, N, 2, H, W), got {tuple(per_class.shape)}.")
    foreground = per_class[:, :, 1]  # (B, N, H, W)
    background = per_class[:, :, 0]
    best = foreground.argmax(dim=1, keepdim=True)
    return torch.cat([torch.gather(background, 1, best), foreground], dim=1)


def class_masks(labels: Tensor, num_classes: int) -> Tensor:
    """Binary float masks ``(M, N, H, W)`` of the classes ``1..N`` in a label map ``(M, H, W)`` (0 = background).

    Example:
        >>> class_masks(torch.tensor([[[0, 2, 1]]]), 2)[0, :, 0].tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    ids = torch.arange(1, num_classes + 1, device=labels.device).view(1, -1, 1, 1)
    return (labels.unsqueeze(1) == ids).float()
