"""Token relations (attention maps) and redundant-token dropping for ViTs: what Hybrid Distill reads.

* :func:`mae_encoder` — a :class:`transformers.ViTMAEModel` (the encoder alone, eager attention):
  the student class that can drop tokens (through ``noise``) and return its attention maps.
* :func:`use_eager_attention` — switch a transformers model to eager attention; PyTorch's SDPA
  kernels do not return attention probabilities (``output_attentions`` needs eager).
* :func:`run_vit` — final tokens and every block's attention ``softmax(Q K^T / sqrt(d))`` of a
  ViT-MAE on the kept patches of a mask, or of a ``ViTModel``/ViT-MAE on the whole image.
* :func:`cls_attention`, :func:`redundant_token_mask` — score each patch by the attention the cls
  token pays to it (mean over heads) and drop the lowest-scoring fraction (Hybrid Distill's
  redundant tokens; EViT and MaskedKD score tokens the same way).
* :func:`token_index`, :func:`gather_tokens`, :func:`restricted_relations` — pick the cls and the
  kept tokens out of a full-image output; restrict a full-image attention map to the kept tokens
  and renormalise each row, which equals ``softmax`` of the same logits over the kept tokens only
  (a softmax restricted to a subset is the renormalised probabilities), so the teacher's relations
  and the student's are distributions over the same tokens.

Attention maps come from the model's own ``output_attentions`` (not hooks), for the reasons
:mod:`.encoding` gives for hidden states.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_distill.representation.encoding import _kept_fraction, encoder_of, mask_noise, num_patches_of
from lightning_distill.representation.masking import num_visible

__all__ = [
    "TokenOutputs",
    "cls_attention",
    "gather_tokens",
    "is_mae_encoder",
    "kept_patches",
    "mae_encoder",
    "mean_attention_distance",
    "redundant_token_mask",
    "restricted_relations",
    "run_vit",
    "token_index",
    "use_eager_attention",
]


class TokenOutputs(NamedTuple):
    """What :func:`run_vit` returns.

    Attributes:
        tokens: final (layer-normed) tokens, cls first: ``(B, 1 + V, D)`` (``V = L`` on the whole image).
        attentions: one ``(B, H, 1 + V, 1 + V)`` attention map per block (empty unless asked for).
    """

    tokens: Tensor
    attentions: tuple[Tensor, ...]


def use_eager_attention(model: nn.Module) -> nn.Module:
    """Make a transformers model compute attention eagerly so that it can return the maps; returns it."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    return model


def mae_encoder(**kwargs: Any) -> nn.Module:
    """A :class:`transformers.ViTMAEModel` with eager attention: the encoder of
    :func:`~lightning_distill.models.vit.mae_vit` built from the same arguments (``pretrained=`` a
    local ``save_pretrained`` folder of a ViT-MAE keeps its encoder weights).

    Example:
        >>> type(mae_encoder(image_size=16, patch_size=4, hidden_size=16, num_layers=1, num_heads=2)).__name__
        'ViTMAEModel'
    """
    from lightning_distill.models.vit import mae_vit

    return use_eager_attention(mae_vit(**kwargs).vit)


def is_mae_encoder(model: nn.Module) -> bool:
    """Whether ``model`` (or its ``.vit``) is a ViT-MAE encoder, which can drop tokens."""
    embeddings = getattr(encoder_of(model), "embeddings", None)
    return hasattr(embeddings, "random_masking")


def run_vit(
    model: nn.Module, pixel_values: Tensor, mask: Tensor | None = None, *, attentions: bool = True
) -> TokenOutputs:
    """Final tokens and attention maps of ``model`` on the patches of ``pixel_values`` kept by ``mask``.

    Args:
        model: a ViT-MAE (``ViTMAEModel`` / ``ViTMAEForPreTraining``: any mask) or a ``ViTModel``
            (whole image only).
        pixel_values: ``(B, C, H, W)``.
        mask: ``(B, L)``, ``1`` = dropped, the same count per row; ``None`` keeps every patch.
        attentions: return every block's attention map (needs eager attention).

    Raises:
        ValueError: a mask for a model that cannot drop tokens, or a mask of the wrong shape.
    """
    encoder = encoder_of(model)
    if not is_mae_encoder(model):
        if mask is not None and bool(mask.bool().any()):
            raise ValueError(
                f"{type(encoder).__name__} cannot drop tokens; use a ViT-MAE encoder "
                "(lightning_distill.representation.token_relations.mae_encoder) for the student."
            )
        out = encoder(pixel_values, output_attentions=attentions)
        return TokenOutputs(out.last_hidden_state, tuple(out.attentions or ()))
    total = num_patches_of(model)
    b = pixel_values.shape[0]
    if mask is None:
        mask = torch.zeros(b, total, device=pixel_values.device)
    if mask.shape != (b, total):
        raise ValueError(f"`mask` must be (B, L) = ({b}, {total}), got {tuple(mask.shape)}.")
    visible = int((mask[0] == 0).sum())
    with _kept_fraction(model, visible, total):
        out = encoder(pixel_values, noise=mask_noise(mask), output_attentions=attentions)
    return TokenOutputs(out.last_hidden_state, tuple(out.attentions or ()))


def cls_attention(attention: Tensor) -> Tensor:
    """Attention of the cls token to each patch, averaged over heads: ``(B, H, 1+L, 1+L) -> (B, L)``."""
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"`attention` must be (B, H, N, N), got {tuple(attention.shape)}.")
    return attention[:, :, 0, 1:].float().mean(dim=1)


def redundant_token_mask(scores: Tensor, drop_ratio: float) -> Tensor:
    """Mask ``(B, L)`` (``1`` = dropped) of the ``L - num_visible(L, drop_ratio)`` lowest-scoring patches.

    Ties are broken towards the earlier patch being kept. ``drop_ratio = 0`` keeps every patch.

    Example:
        >>> redundant_token_mask(torch.tensor([[0.4, 0.1, 0.3, 0.2]]), 0.5)
        tensor([[0., 1., 0., 1.]])
    """
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be (B, L), got {tuple(scores.shape)}.")
    if not 0.0 <= float(drop_ratio) < 1.0:
        raise ValueError(f"`drop_ratio` must be in [0, 1), got {drop_ratio}.")
    keep = num_visible(scores.shape[1], drop_ratio)
    order = scores.float().argsort(dim=1, descending=True, stable=True)
    mask = torch.ones_like(scores, dtype=torch.float32)
    mask.scatter_(1, order[:, :keep], 0.0)
    return mask


def kept_patches(mask: Tensor) -> Tensor:
    """Indices ``(B, V)`` of the kept patches (``mask == 0``) in patch order (every row keeps ``V``)."""
    return torch.sort(mask.float(), dim=1, stable=True).indices[:, : int((mask[0] == 0).sum())]


def token_index(mask: Tensor) -> Tensor:
    """Positions ``(B, 1 + V)`` of the cls token and the kept patches in a full ``(cls + L)`` sequence."""
    kept = kept_patches(mask) + 1
    return torch.cat([torch.zeros_like(kept[:, :1]), kept], dim=1)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` ``(B, n)`` of ``tokens`` ``(B, N, D)``: ``(B, n, D)``."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def restricted_relations(attention: Tensor, index: Tensor, eps: float = 1e-12) -> Tensor:
    """Attention ``(B, H, N, N)`` restricted to the tokens ``index`` ``(B, n)``, rows renormalised: ``(B, H, n, n)``.

    Equals ``softmax`` over the kept tokens of the same ``Q K^T / sqrt(d)`` logits.

    Example:
        >>> a = torch.tensor([[[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]]]])
        >>> restricted_relations(a, torch.tensor([[0, 2]]))
        tensor([[[[0.6667, 0.3333],
                  [0.5000, 0.5000]]]])
    """
    if attention.ndim != 4:
        raise ValueError(f"`attention` must be (B, H, N, N), got {tuple(attention.shape)}.")
    b, h, n = attention.shape[0], attention.shape[1], index.shape[1]
    rows = attention.gather(2, index[:, None, :, None].expand(b, h, n, attention.shape[-1]))
    sub = rows.gather(3, index[:, None, None, :].expand(b, h, n, n)).float()
    return sub / sub.sum(dim=-1, keepdim=True).clamp_min(eps)


def mean_attention_distance(attention: Tensor, side: int) -> Tensor:
    """Mean attention distance per head, in patches: ``(B, H, 1+L, 1+L) -> (H,)`` (whole-image maps).

    For each query patch, the attention to the other patches (cls left out, rows renormalised)
    weighs their grid distance; averaged over queries and images. Local heads score low, global
    heads high; the spread over heads is the "diversity" MIM models keep in every block.

    Example:
        >>> a = torch.zeros(1, 1, 5, 5); a[0, 0, :, 1:] = torch.eye(5)[:, 1:] + 1e-9  # each patch attends itself
        >>> mean_attention_distance(a, 2).round(decimals=3)
        tensor([0.])
    """
    if attention.ndim != 4 or attention.shape[-1] != side * side + 1:
        raise ValueError(f"`attention` must be (B, H, 1 + {side}^2, same), got {tuple(attention.shape)}.")
    patches = attention[:, :, 1:, 1:].float()
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], dim=1).float().to(patches.device)
    distance = torch.cdist(grid, grid)  # (L, L)
    return (patches * distance).sum(dim=-1).mean(dim=(0, 2))
