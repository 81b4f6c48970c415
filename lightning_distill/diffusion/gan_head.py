"""A discriminator head on hooked fake-score features (DMD2's GAN branch).

DMD2 (``main/sd_guidance.py::compute_cls_logits``) runs the fake-score UNet on an image (clean,
at ``t = 0``, or lightly noised), takes its bottleneck (the middle block's output) and feeds it to a
small head that outputs one realism logit per image; the head and the fake score are trained
together on real vs generator images, and the generator gets the non-saturating loss through
them. Here the bottleneck is read with
:class:`~lightning_distill.callbacks.FeatureHooks` (path from
:func:`~lightning_distill.diffusion.denoisers.feature_path`, e.g. ``"fake_score.model.mid_block"``
inside a recipe), and :class:`GANHead` turns it into logits.

The official head downsamples with strided 4x4 convolutions sized for SD's 8x8 / SDXL's 32x32
bottleneck; :class:`GANHead` uses one 3x3 convolution and global average pooling instead, so it
works for any spatial size and for vector features.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond, model_output

__all__ = ["GANHead", "TappedFeatures", "discriminator_logits"]


class TappedFeatures(Protocol):
    """What :func:`discriminator_logits` reads features from: the tensor of a tap by its name.

    :class:`~lightning_distill.callbacks.FeatureHooks` is one (this toolkit does not import callbacks).
    """

    def __getitem__(self, tap: str) -> Tensor: ...


class GANHead(nn.Module):
    """conv 3x3 → GroupNorm → SiLU → global average pool → linear: one logit per sample.

    Accepts ``(B, C, H, W)`` feature maps or ``(B, C)`` vectors (treated as 1x1 maps).
    Features are cast to the head's dtype (DMD2 casts the bottleneck to float32). On 1x1 maps the
    normalisation uses one group over all channels (a LayerNorm with the same affine parameters):
    with ``num_groups`` groups of one or two values each, GroupNorm would keep only their signs.

    Args:
        in_channels: ``C`` of the features.
        hidden_channels: width of the conv (default ``in_channels``).
        num_groups: GroupNorm groups; ``None`` takes the largest divisor of ``hidden_channels``
            that is at most 32 (DMD2 uses 32).

    Raises:
        ValueError: for non-positive sizes, or ``num_groups`` that does not divide ``hidden_channels``.

    Example:
        >>> import torch
        >>> head = GANHead(in_channels=64)
        >>> head(torch.randn(2, 64, 4, 4)).shape, head(torch.randn(2, 64)).shape
        (torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self, in_channels: int, hidden_channels: int | None = None, num_groups: int | None = None
    ) -> None:
        super().__init__()
        hidden = in_channels if hidden_channels is None else hidden_channels
        for name, value in (("in_channels", in_channels), ("hidden_channels", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if num_groups is None:
            num_groups = max(g for g in range(1, min(32, hidden) + 1) if hidden % g == 0)
        if not isinstance(num_groups, int) or num_groups < 1 or hidden % num_groups:
            raise ValueError(f"`num_groups` must divide hidden_channels={hidden}, got {num_groups!r}.")
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(num_groups, hidden)
        self.act = nn.SiLU()
        self.out = nn.Linear(hidden, 1)
        nn.init.normal_(self.out.weight, std=1.0 / math.sqrt(hidden))
        nn.init.zeros_(self.out.bias)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B,)`` for features ``(B, C, H, W)`` or ``(B, C)``.

        Raises:
            ValueError: for another rank or a channel count other than ``in_channels``.
        """
        if features.ndim == 2:
            features = features[:, :, None, None]
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"`features` must have shape (B, {self.in_channels}, H, W) or (B, {self.in_channels}), "
                f"got {tuple(features.shape)}."
            )
        h = self.conv(features.to(self.conv.weight.dtype))
        groups = 1 if h.shape[-2:] == (1, 1) else self.norm.num_groups
        h = self.act(F.group_norm(h, groups, self.norm.weight, self.norm.bias, self.norm.eps))
        return self.out(h.mean(dim=(2, 3))).squeeze(-1)


def discriminator_logits(
    score_model: nn.Module,
    head: GANHead,
    hooks: TappedFeatures,
    tap: str,
    x_t: Tensor,
    t: Tensor,
    cond: Cond = None,
) -> Tensor:
    """Run ``score_model`` on ``x_t``, read tap ``tap`` of ``hooks``, and return ``head``'s logits ``(B,)``.

    The hooks must be attached to a module containing ``score_model`` (a recipe's
    ``FeatureHooks`` in ``configure_callbacks``, or ``FeatureHooks(...).attach(score_model)``).
    Gradients flow into the head, into the score model's parameters that require grad, and into
    ``x_t`` (the generator's GAN loss); the score model's own output is discarded.

    Args:
        score_model: the fake score (or any denoiser).
        head: the discriminator head.
        hooks: the taps, e.g. attached ``FeatureHooks`` with a tap on the bottleneck.
        tap: the tap's name.
        x_t: images (clean at ``t = 0`` in DMD2, or noised) ``(B, ...)``.
        t: timesteps ``(B,)``.
        cond: the condition, or ``None``.

    Returns:
        Logits ``(B,)``.

    Raises:
        KeyError: if the tap did not fire (wrong module, or hooks not attached).

    Example:
        >>> import torch
        >>> from lightning_distill.callbacks import FeatureHooks
        >>> from lightning_distill.diffusion.denoisers import MLPDenoiser, feature_path
        >>> model = MLPDenoiser(dim=2, hidden=16, depth=2)
        >>> with FeatureHooks({"bottleneck": feature_path(model)}).attach(model) as hooks:
        ...     logits = discriminator_logits(model, GANHead(16), hooks, "bottleneck", torch.randn(3, 2), torch.zeros(3))
        >>> logits.shape
        torch.Size([3])
    """
    model_output(score_model, x_t, t, cond)
    return head(hooks[tap])
