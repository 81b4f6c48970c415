"""Running a transformers ViT-MAE on our own masks, with its intermediate block outputs.

:func:`encode` feeds a mask ``(B, L)`` (``1`` = masked, see :mod:`.masking`) to the unmodified
:class:`transformers.ViTMAEModel` through its ``noise`` argument: the model keeps the patches with
the smallest noise, so a noise of ``mask + position / L`` keeps exactly the visible patches, in
patch order (token dropping: masked patches never enter the encoder). Intermediate features come
from the model's own ``output_hidden_states=True`` (``hidden_states[k]`` is the output of block
``k``, ``hidden_states[0]`` the embeddings; the cls token first).

Why the model's outputs and not :class:`~lightning_distill.callbacks.FeatureHooks`: the block
outputs are returned by ``forward``, so they are ordinary graph values. Under FSDP they are
produced while the block's parameters are gathered, and nothing reads the module outside its
forward; under ``torch.compile`` transformers records them with a compile-aware collector (the
ViT-MAE classes declare ``_can_compile_fullgraph``), whereas a Python hook that writes into a
dict is a side effect dynamo has to break the graph for. FeatureHooks stay the tool for models
that do not return what a recipe needs.

:func:`decode` runs the model's decoder on the encoder's output; :func:`set_prediction_head`
swaps the decoder's last linear layer for another target (HOG features instead of pixels);
:func:`pooled_features` gives one vector per image for probes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "Encoded",
    "decode",
    "encode",
    "encoder_of",
    "mask_noise",
    "num_patches_of",
    "pooled_features",
    "set_prediction_head",
]


class Encoded(NamedTuple):
    """What :func:`encode` returns.

    Attributes:
        latent: final (layer-normed) tokens of the visible patches, cls first: ``(B, 1 + V, D)``.
        hidden_states: ``num_layers + 1`` raw block outputs, each ``(B, 1 + V, D)``; empty unless asked for.
        ids_restore: ``(B, L)`` the index map the decoder uses to put mask tokens back in place.
        mask: ``(B, L)`` the mask used (``1`` = masked).
    """

    latent: Tensor
    hidden_states: tuple[Tensor, ...]
    ids_restore: Tensor
    mask: Tensor


def encoder_of(model: nn.Module) -> nn.Module:
    """The :class:`~transformers.ViTMAEModel` inside a ``ViTMAEForPreTraining`` (or the model itself)."""
    return getattr(model, "vit", model)


def num_patches_of(model: nn.Module) -> int:
    """Patches per image of a ViT-MAE (or ViT) model."""
    return int(encoder_of(model).embeddings.patch_embeddings.num_patches)


def mask_noise(mask: Tensor) -> Tensor:
    """Noise ``(B, L)`` whose ascending order lists the visible patches first, each group in patch order."""
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32) / mask.shape[1]
    return mask.float() * 2.0 + positions


@contextlib.contextmanager
def _kept_fraction(model: nn.Module, visible: int, total: int) -> Iterator[None]:
    """Make the model keep ``visible`` of ``total`` patches (its ``config.mask_ratio``) inside the block."""
    config = encoder_of(model).config
    before = config.mask_ratio
    # int(total * (1 - ratio)) must be exactly `visible`: aim half a patch above it.
    config.mask_ratio = 1.0 - (visible + 0.5) / total
    try:
        yield
    finally:
        config.mask_ratio = before


def encode(
    model: nn.Module, pixel_values: Tensor, mask: Tensor | None = None, *, hidden_states: bool = False
) -> Encoded:
    """Encode the visible patches of ``pixel_values`` ``(B, C, H, W)`` under ``mask`` ``(B, L)``.

    ``mask=None`` encodes every patch. The model is a ``ViTMAEForPreTraining`` or ``ViTMAEModel``.

    Raises:
        ValueError: a mask of the wrong shape, or rows with different visible counts.
    """
    encoder = encoder_of(model)
    total = num_patches_of(model)
    b = pixel_values.shape[0]
    if mask is None:
        mask = torch.zeros(b, total, device=pixel_values.device)
    if mask.shape != (b, total):
        raise ValueError(f"`mask` must be (B, L) = ({b}, {total}), got {tuple(mask.shape)}.")
    counts = (mask == 0).sum(dim=1)
    visible = int(counts[0])
    if bool((counts != visible).any()):
        raise ValueError(f"every mask row must keep the same number of patches, got {counts.tolist()}.")
    with _kept_fraction(model, visible, total):
        out = encoder(pixel_values, noise=mask_noise(mask), output_hidden_states=hidden_states)
    return Encoded(out.last_hidden_state, tuple(out.hidden_states or ()), out.ids_restore, out.mask)


def decode(model: nn.Module, encoded: Encoded) -> Tensor:
    """The decoder's prediction for every patch ``(B, L, P)`` from :func:`encode`'s output."""
    return model.decoder(encoded.latent, encoded.ids_restore).logits


def set_prediction_head(model: nn.Module, out_features: int) -> nn.Module:
    """Replace the decoder's last linear layer by a new one with ``out_features`` outputs (e.g. HOG).

    Returns the model. A model whose head already has that size is left as it is.
    """
    head = model.decoder.decoder_pred
    if head.out_features != out_features:
        model.decoder.decoder_pred = nn.Linear(head.in_features, out_features)
    return model


def pooled_features(
    model: nn.Module, pixel_values: Tensor, pool: Literal["mean", "cls", "tokens"] = "mean"
) -> Tensor:
    """One vector per image from the encoder on every patch: mean of patch tokens or the cls token ``(B, D)``,
    or every patch token concatenated (``"tokens"``, ``(B, L * D)``: keeps where each feature is).

    Works for ViT-MAE models and :class:`transformers.ViTModel`; any other module is called as
    ``model(x)`` and its output flattened to ``(B, D)`` (a fixed feature map such as HOG).
    """
    if pool not in ("mean", "cls", "tokens"):
        raise ValueError(f"`pool` must be 'mean', 'cls' or 'tokens', got {pool!r}.")
    encoder = encoder_of(model)
    if not hasattr(encoder, "embeddings"):
        return model(pixel_values).flatten(1)
    if hasattr(encoder.embeddings, "random_masking"):
        tokens = encode(model, pixel_values).latent
    else:
        tokens = encoder(pixel_values).last_hidden_state
    if pool == "tokens":
        return tokens[:, 1:].flatten(1)
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
