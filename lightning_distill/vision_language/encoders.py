"""Student image encoders: one ``(B, 3, H, W) -> (B, F)`` interface over CNNs and transformers vision towers.

:class:`ImageEncoder` wraps a backbone and returns its pooled features, whatever kind it is:

* a module with ``forward_features`` (our :class:`~lightning_distill.models.SmallCNN`, timm models);
* a ``transformers`` vision tower (``CLIPVisionModel``, ``ViTModel``, ...): its ``pooler_output``;
* a ``transformers.CLIPModel``: ``get_image_features`` (the projected embedding);
* any other module: its output, flattened.

``num_features`` is read from the backbone (``num_features``, ``config.projection_dim`` for a
``CLIPModel``, ``config.hidden_size``) or given. Recipes put their heads on top.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageEncoder"]


class ImageEncoder(nn.Module):
    """Pooled image features of any backbone.

    Args:
        backbone: the network (see the module docstring for the kinds understood).
        num_features: the feature size ``F``; ``None`` reads it from the backbone.
        image_size: resize inputs to this side first (a vision tower built for another size);
            ``None`` keeps them.

    Raises:
        ValueError: ``num_features`` not given and not readable from the backbone.

    Example:
        >>> import torch
        >>> from lightning_distill.models import SmallCNN
        >>> enc = ImageEncoder(SmallCNN(in_channels=3, width=8))
        >>> enc(torch.zeros(2, 3, 16, 16)).shape, enc.num_features
        (torch.Size([2, 16]), 16)
    """

    def __init__(
        self, backbone: nn.Module, num_features: int | None = None, image_size: int | None = None
    ) -> None:
        super().__init__()
        if hasattr(backbone, "forward_features") and isinstance(getattr(backbone, "head", None), nn.Module):
            # Only the features are read: a classifier head left in place would hold parameters that
            # never get a gradient (and DDP refuses a module with unused parameters).
            backbone.head = nn.Identity()
        self.backbone = backbone
        self.image_size = image_size
        if num_features is None:
            num_features = _read_num_features(backbone)
        if num_features is None or num_features < 1:
            raise ValueError(
                f"Cannot read the feature size of {type(backbone).__name__}; give `num_features` "
                "(`model.init_args.student.init_args.num_features`)."
            )
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, F)`` of images ``(B, C, H, W)``."""
        if x.ndim != 4:
            raise ValueError(f"ImageEncoder expects images (B, C, H, W), got shape {tuple(x.shape)}.")
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        b = self.backbone
        if hasattr(b, "get_image_features"):
            out = b.get_image_features(pixel_values=x)
            return out.pooler_output if hasattr(out, "pooler_output") else out
        if hasattr(b, "forward_features"):
            return b.forward_features(x).flatten(1)
        if hasattr(b, "config"):  # a transformers vision tower
            return b(pixel_values=x).pooler_output
        return b(x).flatten(1)


def _read_num_features(backbone: nn.Module) -> int | None:
    if hasattr(backbone, "get_image_features") and hasattr(backbone, "config"):
        return int(backbone.config.projection_dim)
    value = getattr(backbone, "num_features", None)
    if isinstance(value, int):
        return value
    config = getattr(backbone, "config", None)
    hidden = getattr(config, "hidden_size", None)
    return int(hidden) if isinstance(hidden, int) else None
