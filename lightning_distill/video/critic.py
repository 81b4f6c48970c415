"""VDOT's critic: a small spatio-temporal discriminator on whole clips, conditioned by projection.

VDOT (arXiv 2512.06802) lets the generator see real videos through a discriminator trained with a
relativistic GAN loss. The paper's critic architecture could not be verified (no code); this one is a
plain 3D conv net (it sees motion, not only frames, unlike MCM's frame discriminator) with a projection
term ``⟨e(c), h(x)⟩`` for the (class, direction) condition of the moving-glyph videos.

May import: ``torch``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["VideoCritic"]


class VideoCritic(nn.Module):
    """Conv3d blocks (spatial stride 2) → global average pool → linear logit + a label projection.

    Args:
        in_channels: channels of the videos.
        width: channels of the first block (doubled per block).
        depth: number of blocks.
        num_classes, num_directions: label vocabulary of ``(class, direction)`` conditions (``0``: none);
            a label equal to ``max(num_classes, num_directions)`` (the null label) projects to 0.

    Raises:
        ValueError: non-positive sizes.

    Example:
        >>> critic = VideoCritic(1, width=4, depth=2)
        >>> critic(torch.randn(2, 1, 3, 8, 8), torch.tensor([[1, 2], [3, 4]])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        depth: int = 2,
        num_classes: int = 10,
        num_directions: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width), ("depth", depth)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for k in range(depth):
            out = width * 2**k
            layers += [nn.Conv3d(channels, out, 3, stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2)]
            channels = out
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Linear(channels, 1)
        self.num_classes, self.num_directions = int(num_classes), int(num_directions)
        self.null_label = max(self.num_classes, self.num_directions)
        self.class_embedding = nn.Embedding(self.num_classes + 1, channels) if num_classes else None
        self.direction_embedding = nn.Embedding(self.num_directions + 1, channels) if num_directions else None
        for emb in (self.class_embedding, self.direction_embedding):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)

    def forward(self, video: Tensor, labels: Tensor | None = None) -> Tensor:
        """One logit per clip ``(B,)`` for videos ``(B, C, F, H, W)`` and optional labels ``(B, 2)``."""
        if video.ndim != 5:
            raise ValueError(f"`video` must be (B, C, F, H, W), got {tuple(video.shape)}.")
        h = self.blocks(video.to(self.out.weight.dtype)).mean(dim=(2, 3, 4))
        logit = self.out(h).squeeze(-1)
        if labels is None or self.class_embedding is None:
            return logit
        if labels.ndim != 2 or labels.shape != (video.shape[0], 2):
            raise ValueError(f"`labels` must be (B, 2) (class, direction), got {tuple(labels.shape)}.")
        projection = torch.zeros_like(logit)
        for column, emb, size in (
            (0, self.class_embedding, self.num_classes),
            (1, self.direction_embedding, self.num_directions),
        ):
            label = labels[:, column].long()
            keep = (label != self.null_label).to(h.dtype)
            e = emb(torch.where(label == self.null_label, size, label).clamp(0, size))
            projection = projection + keep * (e * h).sum(-1)
        return logit + projection

    def extra_repr(self) -> str:
        return f"null_label={self.null_label}"
