"""Super-resolution networks: IMDN (the lightweight student), an EDSR-like residual net, a trained-on-first-use teacher.

:class:`IMDN` is the network of "Lightweight Image Super-Resolution with Information Multi-distillation
Network" (Hui et al., ACM MM 2019, arXiv 1909.11856; official code Zheng222/IMDN). Its "distillation"
happens inside the block: :class:`IMDBlock` convolves its input, keeps a quarter of the channels
("distilled") and passes the other three quarters on to the next 3x3 convolution, three times; the
four kept slices are concatenated, reweighted by :class:`ContrastChannelAttention` (channel attention
driven by each channel's standard deviation plus mean instead of its mean alone), fused by a 1x1
convolution and added to the input. The network stacks ``num_blocks`` blocks, fuses all their outputs
with a 1x1 convolution, adds a global skip and upsamples with one convolution and a pixel shuffle.
Defaults are the paper's: 64 channels, 6 blocks, distillation rate 1/4, attention reduction 16,
LeakyReLU slope 0.05.

:class:`ResidualSRNet` is an EDSR-like baseline (residual blocks without batch norm, residual scaling,
pixel-shuffle upsampler) used as the larger SR teacher; :func:`trained_sr_network` trains any SR
network with L1 on an SR datamodule on first use and caches it (:func:`cached_training`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.models.first_use_cache import cached_training, load_weights
from lightning_distill.utils.fingerprint import file_sha256

__all__ = [
    "ContrastChannelAttention",
    "IMDBlock",
    "IMDN",
    "ResidualSRNet",
    "channel_contrast",
    "pixel_shuffle_upsampler",
    "trained_sr_network",
]


def channel_contrast(x: Tensor) -> Tensor:
    """Per-channel standard deviation over space (population, ``1/HW``) ``(B, C, 1, 1)`` of ``x`` ``(B, C, H, W)``."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean).pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()


class ContrastChannelAttention(nn.Module):
    """Contrast-aware channel attention: ``x · σ(W₂ ReLU(W₁ (std(x) + mean(x))))`` with 1x1 convs ``W``.

    Args:
        channels: ``C``.
        reduction: the bottleneck has ``C // reduction`` channels (paper: 16; at least 1).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        stats = channel_contrast(x) + x.mean(dim=(-2, -1), keepdim=True)
        return x * torch.sigmoid(self.excite(F.relu(self.squeeze(stats))))


class IMDBlock(nn.Module):
    """Information multi-distillation block: progressive channel splitting, CCA, 1x1 fusion, residual.

    With ``C`` channels and rate ``r``: ``d = int(C · r)`` channels are distilled per step and
    ``C − d`` refined further. Step 1 is a 3x3 conv ``C → C``; steps 2 and 3 are ``C − d → C``; step
    4 is ``C − d → d``; LeakyReLU after steps 1-3. The four ``d``-channel slices (``4d``
    channels) go through the attention and a 1x1 conv back to ``C``, plus the input.

    Args:
        channels: ``C`` (the paper: 64, so 16 distilled and 48 remaining).
        distillation_rate: ``r`` (paper: 0.25).
        reduction: attention bottleneck reduction (paper: 16).
        negative_slope: LeakyReLU slope (paper's code: 0.05).

    Raises:
        ValueError: ``d`` would be 0 or ``C``.
    """

    def __init__(
        self,
        channels: int,
        distillation_rate: float = 0.25,
        reduction: int = 16,
        negative_slope: float = 0.05,
    ) -> None:
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        if not 0 < self.distilled < channels:
            raise ValueError(
                f"`distillation_rate`={distillation_rate} with `channels`={channels} distils "
                f"{self.distilled} channels; it must keep at least one and pass at least one on."
            )
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(self.remaining, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(self.remaining, channels, 3, padding=1)
        self.conv4 = nn.Conv2d(self.remaining, self.distilled, 3, padding=1)
        self.attention = ContrastChannelAttention(4 * self.distilled, reduction)
        self.fuse = nn.Conv2d(4 * self.distilled, channels, 1)
        self.negative_slope = negative_slope

    def split_sizes(self) -> tuple[int, int]:
        """``(distilled, remaining)`` channels of each split."""
        return self.distilled, self.remaining

    def forward(self, x: Tensor) -> Tensor:
        kept = []
        h = x
        for conv in (self.conv1, self.conv2, self.conv3):
            h = F.leaky_relu(conv(h), self.negative_slope)
            d, h = torch.split(h, (self.distilled, self.remaining), dim=1)
            kept.append(d)
        kept.append(self.conv4(h))
        return self.fuse(self.attention(torch.cat(kept, dim=1))) + x


def pixel_shuffle_upsampler(channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """A 3x3 conv to ``out_channels · scale²`` channels and a pixel shuffle (×``scale``)."""
    return nn.Sequential(nn.Conv2d(channels, out_channels * scale**2, 3, padding=1), nn.PixelShuffle(scale))


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"`scale` must be an int >= 1, got {scale!r}.")


class IMDN(nn.Module):
    """IMDN: a 3x3 conv, ``num_blocks`` IMD blocks, 1x1 fusion of all block outputs, a 3x3 conv with
    a global skip, and a pixel-shuffle upsampler. ``(B, C, h, w) → (B, C, h·scale, w·scale)``.

    Args:
        scale: the SR factor.
        channels: feature channels (paper: 64).
        num_blocks: IMD blocks (paper: 6).
        in_channels: image channels (3).
        distillation_rate: channels kept per split (paper: 0.25).
        reduction: attention reduction (paper: 16).

    Example:
        >>> IMDN(scale=2, channels=16, num_blocks=2)(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(
        self,
        scale: int = 4,
        channels: int = 64,
        num_blocks: int = 6,
        in_channels: int = 3,
        distillation_rate: float = 0.25,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        if num_blocks < 1:
            raise ValueError(f"`num_blocks` must be >= 1, got {num_blocks}.")
        self.scale = scale
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            IMDBlock(channels, distillation_rate, reduction) for _ in range(num_blocks)
        )
        self.fuse = nn.Conv2d(channels * num_blocks, channels, 1)
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsample = pixel_shuffle_upsampler(channels, in_channels, scale)

    def forward(self, x: Tensor) -> Tensor:
        features = self.head(x)
        outs, h = [], features
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        fused = F.leaky_relu(self.fuse(torch.cat(outs, dim=1)), 0.05)
        return self.upsample(self.body_tail(fused) + features)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class ResidualSRNet(nn.Module):
    """EDSR-like SR network (Lim et al., arXiv 1707.02921): residual blocks without batch norm,
    residual scaling, a global skip and a pixel-shuffle upsampler (one shuffle by ``scale``).

    Args:
        scale: the SR factor.
        channels: feature channels.
        num_blocks: residual blocks.
        in_channels: image channels.
        res_scale: residual scaling of each block (EDSR: 0.1 for wide models, 1 for small ones).

    Example:
        >>> ResidualSRNet(scale=4, channels=8, num_blocks=1)(torch.zeros(1, 3, 4, 4)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(
        self,
        scale: int = 4,
        channels: int = 64,
        num_blocks: int = 16,
        in_channels: int = 3,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*(_ResBlock(channels, res_scale) for _ in range(num_blocks)))
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsample = pixel_shuffle_upsampler(channels, in_channels, scale)

    def forward(self, x: Tensor) -> Tensor:
        features = self.head(x)
        return self.upsample(self.body_tail(self.body(features)) + features)


def _fit_sr(model: nn.Module, data: L.LightningDataModule, *, steps: int, lr: float) -> dict[str, Any]:
    """Adam on L1 for ``steps`` steps with a cosine learning rate; returns the validation L1 and RGB PSNR."""
    data.setup("fit")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    step = 0
    while step < steps:
        for lr_img, hr_img in data.train_dataloader():
            loss = F.l1_loss(model(lr_img), hr_img)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite L1 loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step >= steps:
                break
    model.eval()
    l1, psnr, n = 0.0, 0.0, 0
    with torch.no_grad():
        for lr_img, hr_img in data.val_dataloader():
            sr = model(lr_img).clamp(0, 1)
            l1 += float(F.l1_loss(sr, hr_img, reduction="sum")) / hr_img[0].numel()
            mse = (sr - hr_img).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
            psnr += float((-10 * torch.log10(mse)).sum())  # RGB, no border: a sanity check, not the bench
            n += hr_img.shape[0]
    return {"val_l1": l1 / max(n, 1), "val_psnr": psnr / max(n, 1)}


def trained_sr_network(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    steps: int = 2000,
    lr: float = 2e-4,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Return the SR network ``model`` trained with L1 on ``data`` (first use, then cached) or loaded.

    Args:
        model: an SR network ``(B, C, h, w) → (B, C, h·s, w·s)`` (e.g. :class:`ResidualSRNet`).
        data: a paired SR datamodule serving ``(lr, hr)`` batches (e.g.
            :class:`~lightning_distill.data.super_resolution.SuperResolutionDataModule`); its scale
            must be the model's.
        checkpoint: the user's trained weights (state_dict or Lightning checkpoint) instead.
        steps: Adam steps (cosine learning rate from ``lr``).
        lr: peak learning rate (IMDN/EDSR: 2e-4; the toy configs use more).
        seed: seed of the re-initialisation and the data order.
        cache_dir: where cached teachers live (default ``$LIGHTNING_DISTILL_CACHE``).
        retrain: ignore a cached network and train again.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``steps`` < 1, or scales that differ.
        FileNotFoundError / RuntimeError: an unusable ``checkpoint`` (see ``load_weights``).
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_sr_network` needs `checkpoint` (your trained weights) or `data` (to train on first use); "
            "set `model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}.")
    model_scale, data_scale = getattr(model, "scale", None), getattr(data, "scale", None)
    if model_scale is not None and data_scale is not None and model_scale != data_scale:
        raise ValueError(
            f"The teacher upscales ×{model_scale} but its `data` serves ×{data_scale} pairs; set the same "
            "`scale` in `teacher.init_args.model` and `teacher.init_args.data`."
        )
    settings = {"steps": steps, "lr": lr, "seed": seed, "loss": "l1"}

    def fit() -> dict[str, Any]:
        result = _fit_sr(model, data, steps=steps, lr=lr)
        rank_zero_info(f"Trained {type(model).__name__}: val PSNR {result['val_psnr']:.2f} dB")
        return result

    def check(result: dict[str, Any]) -> str | None:
        psnr = result.get("val_psnr", float("nan"))
        return None if math.isfinite(psnr) and psnr > 10 else f"validation PSNR {psnr:.2f} dB (<= 10 dB)"

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
        check=check,
    )
    model.distill_source = (
        f"trained_sr_network cache {weights} (val PSNR {info.get('val_psnr', float('nan')):.2f} dB)"
    )
    return model.eval()
