"""The label channel of Label-Assisted Distillation: a label map coded as noisy per-class scalars.

"Label-Assisted Knowledge Distillation" (skyshoumeng/Label_Assisted_Distillation,
``train_baseline.py``): the teacher reads the image plus one extra channel in which every pixel of
class ``k`` holds a value ``v_k`` plus Gaussian noise, all times 100,

    channel = scale * (v[label] + noise_std * N(0, 1)),

with ``v_k ~ N(0, 1)`` drawn anew per image and class while the teacher learns (``noise_std`` 0.03),
and the fixed ladder ``v_k = (k - (K + 1) / 2) / 10`` (noise 0.02) when the trained teacher teaches.
Ignored pixels (``ignore_index``) get the extra code ``v_K``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["code_labels", "fixed_label_values", "random_label_values"]


def fixed_label_values(num_classes: int) -> Tensor:
    """The official distillation-time codes ``(k - (K + 1) / 2) / 10`` for ``k = 0..K`` (``K`` = ignore).

    Example:
        >>> fixed_label_values(3)
        tensor([-0.2000, -0.1000,  0.0000,  0.1000])
    """
    return (torch.arange(num_classes + 1, dtype=torch.float32) - (num_classes + 1) // 2) / 10.0


def random_label_values(batch: int, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """Training-time codes: one ``N(0, 1)`` value per image and class (ignore included), ``(B, K + 1)``."""
    return torch.randn(batch, num_classes + 1, generator=generator)


def code_labels(
    labels: Tensor,
    values: Tensor,
    *,
    noise_std: float,
    scale: float = 100.0,
    ignore_index: int = -1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Code a label map as one input channel: ``scale * (values[label] + noise_std * N(0, 1))``.

    Args:
        labels: ``(B, H, W)`` int64 class ids in ``[0, K)``, or ``ignore_index``.
        values: the code of each class, ``(K + 1,)`` shared by the batch or ``(B, K + 1)`` per image;
            the last entry codes ignored pixels.
        noise_std: standard deviation of the per-pixel noise (before ``scale``).
        scale: factor applied to the coded map (the official code uses 100).
        ignore_index: label of ignored pixels.
        generator: source of the noise (default: the global one).

    Returns:
        ``(B, 1, H, W)`` float32 on the labels' device.

    Raises:
        ValueError: ``labels`` not ``(B, H, W)``, ``values`` of the wrong shape, or a label outside
            ``[0, K)`` other than ``ignore_index``.

    Example:
        >>> y = torch.tensor([[[0, 1], [-1, 1]]])
        >>> code_labels(y, torch.tensor([0.5, -0.5, 2.0]), noise_std=0.0, scale=10.0)
        tensor([[[[ 5., -5.],
                  [20., -5.]]]])
    """
    if labels.ndim != 3 or labels.is_floating_point():
        raise ValueError(
            f"`labels` must be an integer map (B, H, W), got {labels.dtype} {tuple(labels.shape)}."
        )
    num_codes = values.shape[-1]
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[0] != labels.shape[0]):
        raise ValueError(
            f"`values` must be (K + 1,) or (B, K + 1) with B = {labels.shape[0]}, got {tuple(values.shape)}."
        )
    index = torch.where(labels == ignore_index, torch.full_like(labels, num_codes - 1), labels)
    if bool(((index < 0) | (index >= num_codes - 1) & (labels != ignore_index)).any()):
        raise ValueError(
            f"`labels` must lie in [0, {num_codes - 1}) or be {ignore_index} (ignored) for {num_codes} codes, got "
            f"values in [{int(labels.min())}, {int(labels.max())}]."
        )
    values = values.to(device=labels.device, dtype=torch.float32)
    if values.ndim == 1:
        coded = values[index]
    else:
        coded = torch.gather(values, 1, index.flatten(1)).view_as(index).float()
    if not noise_std:
        noise = torch.zeros_like(coded)
    elif generator is not None:  # a CPU generator draws on the CPU, whatever the labels' device
        noise = torch.randn(coded.shape, generator=generator).to(coded.device)
    else:
        noise = torch.randn(coded.shape, device=coded.device)
    return (scale * (coded + noise_std * noise)).unsqueeze(1)
