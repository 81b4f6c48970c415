"""Small denoisers with the diffusers call convention, for toy data and tests.

* :class:`MLPDenoiser`: low-dimensional data ``(B, D)`` (the Gaussian-mixture bench), optional
  class conditioning with a null label for classifier-free guidance.
* :func:`tiny_unet`: a tiny random-initialised diffusers ``UNet2DModel`` (class-conditional or not)
  or ``UNet2DConditionModel`` (cross-attention on ``encoder_hidden_states``), the real classes at
  toy size, so that tests and the digits data run the code path of real models.

Both are called ``model(x_t, t)`` or ``model(x_t, t, cond)``; see
:func:`~lightning_distill.diffusion.guidance.model_output`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import Tensor, nn

__all__ = ["MLPDenoiser", "bottleneck_channels", "feature_path", "sinusoidal_embedding", "tiny_unet"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sinusoidal features of (possibly fractional) timesteps.

    Args:
        t: timesteps ``(B,)``.
        dim: embedding size (even).
        max_period: the longest period.

    Returns:
        ``(B, dim)`` float32: ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period^(-k / (dim/2))``.

    Raises:
        ValueError: if ``dim`` is not a positive even number or ``t`` is not 1-D.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"`dim` must be a positive even number, got {dim}.")
    if t.ndim != 1:
        raise ValueError(f"`t` must have shape (B,), got {tuple(t.shape)}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _ResidualBlock(nn.Module):
    """``h + W(SiLU(h) + E e)``: one residual block of :class:`MLPDenoiser` (its output is a tap point)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        self.embedding = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.linear(F.silu(h) + self.embedding(emb))


class MLPDenoiser(nn.Module):
    """A residual MLP denoiser for ``(B, D)`` data, called like a diffusers UNet.

    ``h = W_in x + e``, then ``depth`` residual blocks ``h ← h + W_k(SiLU(h) + E_k e)`` and
    ``out = W_out(SiLU(h))``, where ``e`` is an MLP of the sinusoidal timestep features plus, when
    ``num_classes`` is set, a learned class embedding. Label ``num_classes`` is the null label of
    classifier-free guidance (trained by dropping labels to it); ``class_labels=None`` means the
    null label. The output has the input's shape and means whatever the training target was
    (ε, x₀, v or velocity).

    Args:
        dim: data dimension ``D``.
        hidden: width of the hidden layers.
        depth: number of residual blocks (>= 1).
        num_classes: number of classes for conditioning, or ``None`` for an unconditional model.
        time_embedding_dim: size of the sinusoidal timestep features (even).

    Raises:
        ValueError: for non-positive sizes, an odd ``time_embedding_dim``, or ``num_classes < 1``.

    Example:
        >>> model = MLPDenoiser(dim=2, hidden=32, depth=2, num_classes=4)
        >>> model(torch.randn(5, 2), torch.tensor(999), torch.tensor([0, 1, 2, 3, 4])).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        num_classes: int | None = None,
        time_embedding_dim: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if not isinstance(time_embedding_dim, int) or time_embedding_dim < 2 or time_embedding_dim % 2:
            raise ValueError(
                f"`time_embedding_dim` must be an even integer >= 2, got {time_embedding_dim!r}."
            )
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"`num_classes` must be None or an integer >= 1, got {num_classes!r}.")
        self.dim = dim
        self.num_classes = num_classes
        self.time_embedding_dim = time_embedding_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.class_embedding = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, dim)

    @property
    def null_label(self) -> int:
        """The class id of the unconditional (null) label, ``num_classes``.

        Raises:
            AttributeError: for an unconditional model.
        """
        if self.num_classes is None:
            raise AttributeError("An unconditional MLPDenoiser (num_classes=None) has no null label.")
        return self.num_classes

    def forward(
        self, sample: Tensor, timestep: Tensor | int | float, class_labels: Tensor | None = None
    ) -> Tensor:
        """Predict from the noisy ``sample`` ``(B, D)`` at ``timestep`` (scalar or ``(B,)``).

        Args:
            sample: ``(B, D)``.
            timestep: a scalar or ``(B,)``: the value the schedule defines (index or σT).
            class_labels: ``(B,)`` int64 in ``[0, num_classes]`` (``num_classes`` = null), or ``None``.

        Returns:
            ``(B, D)``.

        Raises:
            ValueError: if ``sample`` is not ``(B, dim)``, the timesteps are not a scalar or ``(B,)``,
                or class labels are given to an unconditional model.
        """
        if sample.ndim != 2 or sample.shape[1] != self.dim:
            raise ValueError(f"`sample` must have shape (B, {self.dim}), got {tuple(sample.shape)}.")
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"`timestep` must be a scalar or have shape ({batch},), got {tuple(t.shape)}.")
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_embedding_dim).to(sample.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.null_label, device=sample.device, dtype=torch.long)
            emb = emb + self.class_embedding(class_labels)
        elif class_labels is not None:
            raise ValueError(
                "`class_labels` were given to an unconditional MLPDenoiser; build it with `num_classes`."
            )
        h = self.input(sample) + emb
        for block in self.blocks:
            h = block(h, emb)
        return self.output(F.silu(h))


def tiny_unet(
    sample_size: int = 8,
    in_channels: int = 1,
    out_channels: int | None = None,
    block_out_channels: tuple[int, ...] = (32, 64),
    *,
    num_classes: int | None = None,
    cross_attention_dim: int | None = None,
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
) -> UNet2DModel | UNet2DConditionModel:
    """A tiny random-initialised diffusers UNet, the real class at toy size.

    * ``cross_attention_dim=None``: a ``UNet2DModel`` (ResNet blocks, attention in the middle
      block), class-conditional through ``class_labels`` when ``num_classes`` is set, with
      ``num_classes + 1`` embeddings (label ``num_classes`` is the null label for CFG).
    * ``cross_attention_dim=D``: a ``UNet2DConditionModel`` whose first down / last up block and
      middle block cross-attend to ``encoder_hidden_states`` ``(B, L, D)`` (text-to-image layout).

    The bottleneck (for a GAN head through ``FeatureHooks``) is the module ``"mid_block"``, of
    shape ``(B, block_out_channels[-1], sample_size / 2^(n-1), ...)``.

    Args:
        sample_size: height and width of the input.
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``).
        block_out_channels: channels per resolution; each must be divisible by ``norm_num_groups``.
        num_classes: classes for a class-conditional ``UNet2DModel`` (not with ``cross_attention_dim``).
        cross_attention_dim: build a ``UNet2DConditionModel`` with this context size.
        layers_per_block: ResNet layers per block.
        norm_num_groups: GroupNorm groups.

    Raises:
        ValueError: for ``num_classes`` together with ``cross_attention_dim``, or channels not
            divisible by ``norm_num_groups``.

    Example:
        >>> unet = tiny_unet(sample_size=8, in_channels=1, num_classes=10)
        >>> unet(torch.randn(2, 1, 8, 8), torch.tensor([3, 500]), torch.tensor([1, 10])).sample.shape
        torch.Size([2, 1, 8, 8])
    """
    if num_classes is not None and cross_attention_dim is not None:
        raise ValueError(
            "Give `num_classes` (a class-conditional UNet2DModel) or `cross_attention_dim` (a UNet2DConditionModel), "
            "not both."
        )
    if any(c % norm_num_groups for c in block_out_channels):
        raise ValueError(
            f"Every entry of `block_out_channels` {tuple(block_out_channels)} must be divisible by "
            f"`norm_num_groups`={norm_num_groups}."
        )
    out_channels = in_channels if out_channels is None else out_channels
    n = len(block_out_channels)
    if cross_attention_dim is None:
        return UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            attention_head_dim=block_out_channels[-1] // 2 if block_out_channels[-1] >= 2 else None,
            num_class_embeds=None if num_classes is None else num_classes + 1,
        )
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (n - 1),
        up_block_types=("UpBlock2D",) * (n - 1) + ("CrossAttnUpBlock2D",),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
    )


def feature_path(model: nn.Module) -> str:
    """The module path of a denoiser's bottleneck, for a ``FeatureHooks`` tap (the DMD2 GAN head).

    ``"mid_block"`` for diffusers UNets; the last residual block for :class:`MLPDenoiser`; the
    wrapped model's path under ``"model."`` for a fake score (or any wrapper with a ``model``
    attribute holding one of these).

    Raises:
        ValueError: for other models: pass the path of the layer to tap yourself.

    Example:
        >>> feature_path(MLPDenoiser(depth=3))
        'blocks.2'
    """
    if isinstance(model, (UNet2DModel, UNet2DConditionModel)):
        return "mid_block"
    if isinstance(model, MLPDenoiser):
        return f"blocks.{len(model.blocks) - 1}"
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return f"model.{feature_path(inner)}"
    raise ValueError(
        f"No known bottleneck for {type(model).__name__}; give the FeatureHooks tap the path of the layer to use."
    )


def bottleneck_channels(model: nn.Module) -> int:
    """Channels of the features at :func:`feature_path` (what a GAN head on them takes).

    Raises:
        ValueError: for models :func:`feature_path` does not know: give the channels yourself.

    Example:
        >>> bottleneck_channels(MLPDenoiser(hidden=32))
        32
    """
    if isinstance(model, (UNet2DModel, UNet2DConditionModel)):
        return int(model.config.block_out_channels[-1])
    if isinstance(model, MLPDenoiser):
        return model.blocks[-1].linear.out_features
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return bottleneck_channels(inner)
    raise ValueError(
        f"Cannot tell the bottleneck channels of {type(model).__name__}; give them (and the tapped path) yourself."
    )
