"""StableMaterials' parts that are not a loss: the map discriminator and rolled (tileable) sampling.

- :class:`MapDiscriminator`: a small projection discriminator on maps ``(B, C, H, W)`` with
  circular padding (a tileable input has no border), one logit per map, optionally conditioned on a
  class label (``logit = ψ(h) + ⟨embed(c), h⟩``, Miyato & Koyama's projection).
- :func:`rolled`: call a denoiser or consistency function on a randomly rolled input and roll the
  output back. Drawing a new shift at every sampling step moves the network's border (where zero
  padding breaks translation equivariance) to a different place each time, so no place of the
  result is always next to a border: the tiled map has no seam. StableMaterials rolls the UNet's
  *features* inside the network ("feature rolling"); rolling the input is the simpler variant
  (noise rolling) applied here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["MapDiscriminator", "rolled"]


class MapDiscriminator(nn.Module):
    """conv(3x3, circular) → SiLU → two strided convs → global average pool → logit (+ label projection).

    Args:
        in_channels: channels of the maps it judges (3 for the albedo view).
        num_classes: class labels of the projection term; ``None``: unconditional.
        hidden_channels: width of the first conv (doubled by the strided ones).

    Raises:
        ValueError: non-positive sizes.

    Example:
        >>> d = MapDiscriminator(3, num_classes=24)
        >>> d(torch.randn(2, 3, 16, 16), torch.tensor([0, 5])).shape
        torch.Size([2])
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int | None = None, hidden_channels: int = 32
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"`num_classes` must be an integer >= 1 or None, got {num_classes!r}.")
        h = hidden_channels
        self.in_channels, self.num_classes = in_channels, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, h, 3, padding=1, padding_mode="circular"),
            nn.SiLU(),
            nn.Conv2d(h, 2 * h, 4, stride=2, padding=1, padding_mode="circular"),
            nn.SiLU(),
            nn.Conv2d(2 * h, 2 * h, 4, stride=2, padding=1, padding_mode="circular"),
            nn.SiLU(),
        )
        self.out = nn.Linear(2 * h, 1)
        self.embed = nn.Embedding(num_classes, 2 * h) if num_classes is not None else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, maps: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits ``(B,)`` for maps ``(B, in_channels, H, W)`` (and labels ``(B,)`` when conditional).

        Raises:
            ValueError: a wrong shape, or labels missing for a conditional discriminator.
        """
        if maps.ndim != 4 or maps.shape[1] != self.in_channels:
            raise ValueError(
                f"`maps` must have shape (B, {self.in_channels}, H, W), got {tuple(maps.shape)}."
            )
        h = self.body(maps.float()).mean(dim=(2, 3))
        logits = self.out(h).squeeze(-1)
        if self.embed is None:
            return logits
        if labels is None or labels.shape != (maps.shape[0],):
            raise ValueError(f"This discriminator is conditional: give `labels` of shape ({maps.shape[0]},).")
        return logits + (self.embed(labels.long()) * h).sum(-1)


def rolled(
    fn: Callable[[Tensor, Tensor], Tensor], generator: torch.Generator | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """``fn`` on an input rolled by a random ``(dy, dx)``, output rolled back; a new shift per call.

    ``fn(x (B, C, H, W), t) -> (B, C, H, W)`` (a denoiser or consistency function). The shift is drawn
    with ``generator`` (uniform over the grid), the same for the whole batch.

    Example:
        >>> f = rolled(lambda x, t: 2 * x, torch.Generator().manual_seed(0))
        >>> x = torch.randn(1, 2, 4, 4)
        >>> torch.equal(f(x, torch.zeros(1)), 2 * x)  # an equivariant function is unchanged
        True
    """

    def call(x: Tensor, t: Tensor) -> Tensor:
        device = generator.device if generator is not None else "cpu"
        dy = int(torch.randint(0, x.shape[-2], (1,), generator=generator, device=device))
        dx = int(torch.randint(0, x.shape[-1], (1,), generator=generator, device=device))
        out = fn(torch.roll(x, (dy, dx), dims=(-2, -1)), t)
        return torch.roll(out, (-dy, -dx), dims=(-2, -1))

    return call
