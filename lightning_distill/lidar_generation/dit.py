"""The DiT of DynamicCity: a diffusers ``DiTTransformer2DModel`` on the rolled-out HexPlane, unconditional.

DynamicCity generates the padded rollout of the HexPlane (one square 2D latent image, see
:func:`~lightning_distill.lidar_generation.hexplane.rollout_planes`) with a DiT. We use diffusers'
``DiTTransformer2DModel`` (the real-scale class, patchify + adaLN-zero blocks) rather than
``PixArtTransformer2DModel``: PixArt's blocks need text embeddings for cross-attention, while the
DiT is conditioned by a timestep and a class label only, which is what an unconditional plane
generator needs. :class:`PlaneDiT` calls it with the diffusers denoiser convention
``model(x_t, t) -> prediction`` that the diffusion toolkit's samplers, teachers and DMD parts use:
every sample gets class label 0 (one class: unconditional), the label dropout diffusers applies
in training mode (it draws from the global random state) is switched off, and a model built with
a learned variance (``out_channels = 2 · in_channels``) returns only its mean prediction.

Example:
    >>> model = tiny_plane_dit(in_channels=2, sample_size=8, width=16, num_layers=1)
    >>> model(torch.randn(3, 2, 8, 8), torch.tensor(500)).shape
    torch.Size([3, 2, 8, 8])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PlaneDiT", "tiny_plane_dit"]


class PlaneDiT(nn.Module):
    """An unconditional denoiser ``(x_t (B, C, H, W), t) -> (B, C, H, W)`` around a ``DiTTransformer2DModel``.

    Args:
        transformer: a diffusers ``DiTTransformer2DModel`` (any ``num_embeds_ada_norm`` >= 1; label 0 is used).

    Raises:
        TypeError: ``transformer`` has no ``config.in_channels`` (not a diffusers 2D transformer).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        config = getattr(transformer, "config", None)
        if config is None or not hasattr(config, "in_channels"):
            raise TypeError(
                f"`transformer` must be a diffusers DiTTransformer2DModel, got {type(transformer).__name__}."
            )
        self.transformer = transformer
        self.in_channels = int(config.in_channels)
        self.sample_size = int(config.sample_size)
        for module in transformer.modules():  # labels are constant: no classifier-free label dropout
            if hasattr(module, "dropout_prob") and hasattr(module, "token_drop"):
                module.dropout_prob = 0.0

    def forward(self, x_t: Tensor, t: Tensor | int | float, cond: Tensor | None = None) -> Tensor:
        """The prediction ``(B, C, H, W)`` at timesteps ``t`` (a scalar or ``(B,)``); ``cond`` must be ``None``.

        Raises:
            ValueError: a condition is given (the model is unconditional) or ``x_t`` has the wrong channels.
        """
        if cond is not None:
            raise ValueError("PlaneDiT is unconditional; call it without a condition (`cond=None`).")
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(f"`x_t` must be (B, {self.in_channels}, H, W), got {tuple(x_t.shape)}.")
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(b) if t.ndim == 0 else t
        labels = torch.zeros(b, dtype=torch.long, device=x_t.device)
        out = self.transformer(x_t, timestep=t, class_labels=labels, return_dict=False)[0]
        return out[:, : self.in_channels]


def tiny_plane_dit(
    in_channels: int = 4,
    sample_size: int = 16,
    patch_size: int = 2,
    width: int = 64,
    num_heads: int = 4,
    num_layers: int = 4,
) -> PlaneDiT:
    """A small :class:`PlaneDiT`: ``DiTTransformer2DModel`` with ``num_heads`` heads of ``width // num_heads``.

    Raises:
        ValueError: ``width`` not divisible by ``num_heads``, or ``sample_size`` not by ``patch_size``.
    """
    from diffusers import DiTTransformer2DModel

    if width % num_heads:
        raise ValueError(f"`width` ({width}) must be divisible by `num_heads` ({num_heads}).")
    if sample_size % patch_size:
        raise ValueError(f"`sample_size` ({sample_size}) must be divisible by `patch_size` ({patch_size}).")
    return PlaneDiT(
        DiTTransformer2DModel(
            num_attention_heads=num_heads, attention_head_dim=width // num_heads, in_channels=in_channels,
            out_channels=in_channels, num_layers=num_layers, sample_size=sample_size, patch_size=patch_size,
            num_embeds_ada_norm=1,
        )
    )  # fmt: skip
