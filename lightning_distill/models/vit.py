"""Vision transformers as real transformers classes: ViT-MAE for pretraining, ViT for features.

:func:`mae_vit` builds a :class:`transformers.ViTMAEForPreTraining` (encoder + light decoder) from
a few sizes, or loads one from a local ``from_pretrained`` folder (``facebook/vit-mae-base``
saved with ``save_pretrained``; nothing is downloaded). The same class runs the toy configs here
(32 px images, 4 px patches, 64-wide) and the paper's ViT-B/16 and ViT-L/16
(:data:`MAE_SIZES`). :func:`vit_backbone` does the same for :class:`transformers.ViTModel`, for
students or teachers used only as feature extractors.

Why transformers and not timm: timm is not a dependency of this package, while transformers is
(the vision extra); its ViT-MAE takes the visible-token selection as an argument (``noise``), so
any mask (random, block-wise, two disjoint views) runs through the unmodified class, returns
every block's output with ``output_hidden_states=True`` and loads the official MAE checkpoints.

Example:
    >>> model = mae_vit(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2)
    >>> type(model).__name__, model.config.num_hidden_layers
    ('ViTMAEForPreTraining', 2)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lightning_distill.utils.checks import check_int, check_option

__all__ = ["MAE_SIZES", "mae_vit", "vit_backbone"]

#: Encoder sizes of the paper's models: ``(hidden_size, num_layers, num_heads)``.
MAE_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def _check_sizes(image_size: int, patch_size: int, hidden_size: int, num_heads: int) -> None:
    check_int("image_size", image_size, low=1)
    check_int("patch_size", patch_size, low=1)
    check_int("hidden_size", hidden_size, low=1)
    check_int("num_heads", num_heads, low=1)
    if image_size % patch_size:
        raise ValueError(
            f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}); change one of them."
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"`hidden_size` ({hidden_size}) must be a multiple of `num_heads` ({num_heads}); change one of them."
        )


def _load_local(cls: type, pretrained: str) -> nn.Module:
    path = Path(pretrained).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"`pretrained` must be a local folder written by `save_pretrained` (config.json + weights), got "
            f"{pretrained!r}; download it once elsewhere and copy it here (no network at run time)."
        )
    return cls.from_pretrained(str(path), local_files_only=True)


def mae_vit(
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 1,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    decoder_hidden_size: int = 64,
    decoder_layers: int = 1,
    decoder_heads: int = 4,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = True,
    size: str | None = None,
    pretrained: str | None = None,
) -> nn.Module:
    """A :class:`transformers.ViTMAEForPreTraining`: built from sizes, a named paper size, or a local folder.

    Args:
        image_size: side of the square input images.
        patch_size: side of a patch (tokens = ``(image_size / patch_size) ** 2``).
        num_channels: image channels.
        hidden_size: encoder width.
        num_layers: encoder blocks.
        num_heads: encoder attention heads.
        mlp_ratio: MLP width over ``hidden_size``.
        decoder_hidden_size: decoder width (MAE: 512).
        decoder_layers: decoder blocks (MAE: 8).
        decoder_heads: decoder attention heads (MAE: 16).
        mask_ratio: the model's default masked fraction (recipes set their own masks).
        norm_pix_loss: the config flag of the same name (the recipes compute their own losses).
        size: one of :data:`MAE_SIZES` (``"base"``, ``"large"``, ...): overrides the three encoder sizes.
        pretrained: a local ``save_pretrained`` folder; when given, every other argument is ignored.

    Raises:
        ValueError: sizes that do not divide, an unknown ``size`` or a ratio outside ``[0, 1)``.
        FileNotFoundError: ``pretrained`` is not a folder.
    """
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    if pretrained is not None:
        return _load_local(ViTMAEForPreTraining, pretrained)
    if size is not None:
        check_option(size in MAE_SIZES, "size", size, f"one of {sorted(MAE_SIZES)}")
        hidden_size, num_layers, num_heads = MAE_SIZES[size]
    _check_sizes(image_size, patch_size, hidden_size, num_heads)
    check_int("num_layers", num_layers, low=1)
    check_int("decoder_layers", decoder_layers, low=1)
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"`mask_ratio` must be in [0, 1), got {mask_ratio}.")
    config = ViTMAEConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=mlp_ratio * hidden_size,
        decoder_hidden_size=decoder_hidden_size,
        decoder_num_hidden_layers=decoder_layers,
        decoder_num_attention_heads=decoder_heads,
        decoder_intermediate_size=mlp_ratio * decoder_hidden_size,
        mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss,
        layer_norm_eps=1e-6,
    )
    return ViTMAEForPreTraining(config)


def vit_backbone(
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 1,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    size: str | None = None,
    pretrained: str | None = None,
) -> nn.Module:
    """A :class:`transformers.ViTModel` (no pooler) built from sizes, a paper size or a local folder.

    Raises:
        ValueError: sizes that do not divide or an unknown ``size``.
        FileNotFoundError: ``pretrained`` is not a folder.
    """
    from transformers import ViTConfig, ViTModel

    if pretrained is not None:
        return _load_local(ViTModel, pretrained)
    if size is not None:
        check_option(size in MAE_SIZES, "size", size, f"one of {sorted(MAE_SIZES)}")
        hidden_size, num_layers, num_heads = MAE_SIZES[size]
    _check_sizes(image_size, patch_size, hidden_size, num_heads)
    check_int("num_layers", num_layers, low=1)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=mlp_ratio * hidden_size,
        layer_norm_eps=1e-6,
    )
    return ViTModel(config, add_pooling_layer=False)
