"""The low-resolution-conditioned denoiser every diffusion/flow SR recipe shares.

SR diffusion models (SR3, ResShift, the EDM and rectified-flow SR teachers) condition on the
low-resolution image by concatenating it, brought to the output size, to the noisy input along the
channel axis. :class:`LRConditionedUNet` does exactly that around a diffusers ``UNet2DModel`` and
keeps the diffusers call convention ``model(x_t, t, lr)``, so the diffusion toolkit's
``model_output``, samplers and EMA helpers drive it unchanged, and a user's own ``UNet2DModel``
checkpoint with ``in_channels = image + LR channels`` plugs in through :meth:`from_unet`.

The timestep is passed through untouched: what it means (a DDPM index, a ResShift step, an EDM
``c_noise`` or a flow time scaled to ``[0, 1000]``) is the recipe's business.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_distill.diffusion.denoisers import tiny_unet

__all__ = ["LRConditionedUNet", "upsample_to"]


def upsample_to(lr: Tensor, size: tuple[int, int] | int, mode: str = "bicubic") -> Tensor:
    """Resize ``lr`` ``(B, C, h, w)`` to ``size`` (bicubic by default, as SR3/ResShift condition).

    Raises:
        ValueError: if ``lr`` is not a 4-D batch.
    """
    if lr.ndim != 4:
        raise ValueError(f"`lr` must be a (B, C, h, w) batch, got shape {tuple(lr.shape)}.")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(lr.shape[-2:]) == size:
        return lr
    align = False if mode in {"bilinear", "bicubic"} else None
    return F.interpolate(lr, size=size, mode=mode, align_corners=align)


class LRConditionedUNet(nn.Module):
    """``unet(concat(x_t, upsample(lr)), t)``: a diffusers ``UNet2DModel`` conditioned on the LR image.

    Args:
        unet: a ``UNet2DModel`` whose ``in_channels`` equals ``image_channels + lr_channels``.
        image_channels: channels of ``x_t`` (and of the prediction).
        lr_channels: channels of the LR condition (default ``image_channels``).
        upsample_mode: how the LR image is brought to ``x_t``'s size (``"bicubic"``, ``"bilinear"``,
            ``"nearest"``).

    Raises:
        ValueError: if the UNet's input/output channels do not match, or a size is not positive.

    Example:
        >>> import torch
        >>> model = LRConditionedUNet.tiny(sample_size=16, image_channels=3)
        >>> model(torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.rand(2, 3, 8, 8)).sample.shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        unet: UNet2DModel,
        image_channels: int = 3,
        lr_channels: int | None = None,
        upsample_mode: str = "bicubic",
    ) -> None:
        super().__init__()
        lr_channels = image_channels if lr_channels is None else lr_channels
        if image_channels < 1 or lr_channels < 1:
            raise ValueError(
                f"`image_channels` and `lr_channels` must be >= 1, got {image_channels}, {lr_channels}."
            )
        expected = image_channels + lr_channels
        if int(unet.config.in_channels) != expected:
            raise ValueError(
                f"The UNet takes {unet.config.in_channels} input channels; an LR-conditioned denoiser of "
                f"{image_channels}-channel images on a {lr_channels}-channel LR image needs {expected}."
            )
        if int(unet.config.out_channels) != image_channels:
            raise ValueError(
                f"The UNet predicts {unet.config.out_channels} channels; `image_channels` is {image_channels}."
            )
        if upsample_mode not in {"bicubic", "bilinear", "nearest"}:
            raise ValueError(
                f"`upsample_mode` must be 'bicubic', 'bilinear' or 'nearest', got {upsample_mode!r}."
            )
        self.unet = unet
        self.image_channels = image_channels
        self.lr_channels = lr_channels
        self.upsample_mode = upsample_mode

    @classmethod
    def tiny(
        cls,
        sample_size: int = 32,
        image_channels: int = 3,
        lr_channels: int | None = None,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        **kwargs: Any,
    ) -> LRConditionedUNet:
        """A random-initialised tiny ``UNet2DModel`` (the real class at toy size) wrapped for LR conditioning."""
        lr_channels = image_channels if lr_channels is None else lr_channels
        unet = tiny_unet(
            sample_size=sample_size,
            in_channels=image_channels + lr_channels,
            out_channels=image_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
        )
        return cls(unet, image_channels=image_channels, lr_channels=lr_channels, **kwargs)

    @classmethod
    def from_unet(cls, path: str, image_channels: int = 3, **kwargs: Any) -> LRConditionedUNet:
        """Wrap a local ``UNet2DModel`` checkpoint (``UNet2DModel.from_pretrained(path)``)."""
        return cls(UNet2DModel.from_pretrained(path), image_channels=image_channels, **kwargs)

    @property
    def config(self) -> Any:
        """The wrapped UNet's config (diffusers code reads ``model.config``)."""
        return self.unet.config

    def forward(self, sample: Tensor, timestep: Tensor | int | float, lr: Tensor) -> Any:
        if sample.ndim != 4 or sample.shape[1] != self.image_channels:
            raise ValueError(
                f"`sample` must be (B, {self.image_channels}, H, W), got shape {tuple(sample.shape)}."
            )
        if lr.ndim != 4 or lr.shape[1] != self.lr_channels or lr.shape[0] != sample.shape[0]:
            raise ValueError(
                f"`lr` must be (B={sample.shape[0]}, {self.lr_channels}, h, w), got shape {tuple(lr.shape)}."
            )
        cond = upsample_to(lr.to(sample.dtype), tuple(sample.shape[-2:]), self.upsample_mode)
        return self.unet(torch.cat([sample, cond], dim=1), timestep)
