"""MCM's trainable parts besides the student: the spatial head and the frame discriminator.

* :class:`SpatialHead`: a per-frame residual convolution stack on ``(B, C, F, H, W)``, last layer
  zero-initialised so it starts as the identity. MCM applies it (and its EMA on the target side) to
  both sides of the consistency loss, so the loss is measured in a learned space and the raw output
  is free to take the image set's appearance.
* :class:`FrameDiscriminator`: logits of single frames ``(N, C, H, W)``: an optional frozen feature
  network (e.g. the digits classifier's ``forward_features``) and a small trainable convolutional
  head. MCM projects DINO features of 2 frames; here a small network stands in for DINO.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrameDiscriminator", "SpatialHead", "sample_frames"]


class SpatialHead(nn.Module):
    """``x + conv_out(layers(SiLU(x)))`` per frame ``(B, C, F, H, W) -> (B, C, F, H, W)``.

    Args:
        channels: ``C``.
        num_layers: convolution layers (>= 2: ``num_layers - 1`` hidden 3x3 layers and a 1x1 output).
        hidden: hidden channels.
        norm_groups: GroupNorm groups of the hidden layers.

    Raises:
        ValueError: ``num_layers`` < 2 or ``hidden`` not divisible by ``norm_groups``.

    Example:
        >>> head = SpatialHead(channels=1, hidden=8, norm_groups=4)
        >>> x = torch.randn(2, 1, 3, 8, 8)
        >>> torch.equal(head(x), x)  # the identity until it learns
        True
    """

    def __init__(
        self, channels: int = 1, num_layers: int = 3, hidden: int = 32, norm_groups: int = 8
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"`num_layers` must be >= 2, got {num_layers}.")
        if hidden % norm_groups:
            raise ValueError(f"`hidden` ({hidden}) must be divisible by `norm_groups` ({norm_groups}).")
        layers: list[nn.Module] = [nn.SiLU()]
        for i in range(num_layers - 1):
            layers += [
                nn.Conv2d(channels if i == 0 else hidden, hidden, 3, padding=1),
                nn.GroupNorm(norm_groups, hidden),
                nn.SiLU(),
            ]
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"SpatialHead expects videos (B, C, F, H, W), got {tuple(x.shape)}.")
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        out = self.conv_out(self.layers(frames)).reshape(b, f, c, h, w).transpose(1, 2)
        return x + out


class FrameDiscriminator(nn.Module):
    """Per-frame logits ``(N,)`` for frames ``(N, C, H, W)``.

    Args:
        channels: input channels (when ``features`` is ``None``).
        width: channels of the first convolution (doubled once).
        features: an optional frozen feature network; its output ``(N, D)`` (or ``(N, D, h, w)``, averaged
            over space) goes to the trainable head instead of the frames.
        feature_dim: ``D`` when ``features`` is given.

    Example:
        >>> FrameDiscriminator(channels=1, width=8)(torch.randn(5, 1, 16, 16)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        features: nn.Module | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        if features is not None:
            if feature_dim is None:
                raise ValueError("`feature_dim` is needed with `features` (the width of its output).")
            features.requires_grad_(False).eval()
            self.head = nn.Sequential(nn.Linear(feature_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))
            return
        self.head = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 1),
        )

    def train(self, mode: bool = True) -> FrameDiscriminator:
        super().train(mode)
        if self.features is not None:
            self.features.eval()
        return self

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4:
            raise ValueError(f"FrameDiscriminator expects frames (N, C, H, W), got {tuple(frames.shape)}.")
        x = frames
        if self.features is not None:
            x = getattr(self.features, "forward_features", self.features)(x)
            x = x.mean(dim=(2, 3)) if x.ndim == 4 else x.flatten(1)  # (N, D)
        return self.head(x).reshape(-1)


def sample_frames(videos: Tensor, num_frames: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_frames`` frames per video, spread over the clip (TSN sampling): ``(B, C, F, H, W) -> (B · k, C, H, W)``.

    The clip is cut into ``k`` equal segments and one frame is drawn in each (MCM: ``k = 2``).

    Example:
        >>> sample_frames(torch.zeros(3, 1, 8, 4, 4), 2, torch.Generator().manual_seed(0)).shape
        torch.Size([6, 1, 4, 4])
    """
    b, c, f, h, w = videos.shape
    if not 1 <= num_frames <= f:
        raise ValueError(f"`num_frames` must be in [1, {f}] (the clip's frames), got {num_frames}.")
    bounds = torch.linspace(0, f, num_frames + 1)
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.rand(num_frames, generator=generator, device=device).cpu()
    index = (bounds[:-1] + offsets * (bounds[1:] - bounds[:-1])).long().clamp(max=f - 1).to(videos.device)
    return videos.index_select(2, index).transpose(1, 2).reshape(b * num_frames, c, h, w)
