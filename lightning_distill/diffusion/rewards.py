"""Differentiable stand-in rewards for reward-tuned distillation on the toy bench (Flash-DMD's Stage 2).

May import: torch and this toolkit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond

__all__ = ["RegionReward"]


class RegionReward(nn.Module):
    """A smooth differentiable reward that prefers a region: ``r(x) = exp(−‖x − center‖² / (2 scale²))``.

    The bench's stand-in for a learned reward model (aesthetic or preference score): centred on a
    mode of the mixture it prefers that mode and, less, its neighbours; a generator that maximises
    it alone collapses onto ``center`` (reward hacking). The condition, if any, is ignored.

    Args:
        center: the preferred point ``(D,)``.
        scale: the width of the preferred region, > 0.

    Raises:
        ValueError: ``scale`` <= 0 or an empty ``center``.

    Example:
        >>> reward = RegionReward(center=[4.0, 0.0], scale=2.0)
        >>> reward(torch.tensor([[4.0, 0.0], [4.0, 2.0]])).tolist()
        [1.0, 0.6065306663513184]
    """

    def __init__(self, center: Sequence[float], scale: float = 2.0) -> None:
        super().__init__()
        center_t = torch.as_tensor(center, dtype=torch.float32).reshape(-1)
        if center_t.numel() == 0:
            raise ValueError(f"`center` must be a non-empty point, got {center!r}.")
        if not scale > 0:
            raise ValueError(f"`scale` must be > 0, got {scale!r}.")
        self.register_buffer("center", center_t)
        self.scale = float(scale)

    def forward(self, x: Tensor, cond: Cond = None) -> Tensor:
        """Rewards ``(B,)`` of samples ``(B, D)`` (or ``(B, ...)`` flattening to ``D``)."""
        flat = x.float().reshape(x.shape[0], -1)
        if flat.shape[1] != self.center.numel():
            raise ValueError(
                f"RegionReward has a {self.center.numel()}-D center, got samples of shape {tuple(x.shape)}."
            )
        return torch.exp(-(flat - self.center).square().sum(1) / (2 * self.scale**2))
