"""Segmentation networks: a small U-Net of our own, a transformers Segformer wrapper on the same
interface, and the few-shot pair of DistillFSS (a support-conditioned matcher and support-free heads).

Every segmenter maps ``(B, C, H, W)`` images to logits ``(B, K, H, W)`` at the input resolution.

* :class:`SmallSegNet`: a small DeepLabV3+-like encoder-decoder (widths ``w, 2w, 4w``, dilated context).
* :class:`SegformerSegmenter`: ``transformers.SegformerForSemanticSegmentation`` (tiny config by
  default, or ``pretrained`` from a local folder); logits upsampled to the input size;
  :meth:`~SegformerSegmenter.features` gives the encoder's hidden states.
* :class:`MatchingSegmenter`: a few-shot segmenter. A shared encoder gives query and support features
  at 1/2 and 1/4 resolution; at each level every query pixel attends to all support pixels
  (cosine similarity / ``temperature``, softmax over support pixels) and reads out the support
  mask: the *coarse attention map* (the DCAMA idea DistillFSS's teachers use). A decoder turns the
  coarse maps and the query's 1/2-resolution features into (background, foreground) logits.
* :class:`ClassHeads`: DistillFSS's student: per class and level a ``conv3x3-ReLU-conv1x1`` head
  that predicts the coarse map from the query features alone, so no support is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassHeads", "MatchingSegmenter", "SegformerSegmenter", "SmallSegNet"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _check_input(name: str, x: Tensor, channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels or x.shape[-1] % 4 or x.shape[-2] % 4:
        raise ValueError(
            f"{name} expects images (B, {channels}, H, W) with H and W divisible by 4, got {tuple(x.shape)}; "
            "check `in_channels` and the data's `size`."
        )


class SmallSegNet(nn.Module):
    """A small encoder-decoder: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` (H, W divisible by 4).

    Encoder blocks at full, 1/2 and 1/4 resolution (widths ``w, 2w, 4w``), two dilated 3x3
    convolutions (dilation 2 and 4) for context at 1/4, one decoder block at 1/2 with the 1/2
    skip, a 1x1 classifier and bilinear upsampling (a DeepLabV3+-like layout). Without a
    full-resolution skip, class identity has to come through the context path, which is what a
    glyph's class needs.

    Args:
        in_channels: image channels (4 for a label-assisted teacher: image + label channel).
        num_classes: classes ``K`` (background included).
        width: channels of the first level.

    Example:
        >>> SmallSegNet(3, 5, width=4)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 5, 16, 16])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 11, width: int = 16) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise ValueError(
                f"`in_channels` >= 1, `num_classes` >= 2 and `width` >= 1 are needed, got {in_channels}, "
                f"{num_classes}, {width}."
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        w = width
        self.enc1, self.enc2, self.enc3 = _block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.context = nn.Sequential(
            nn.Conv2d(4 * w, 4 * w, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, padding=4, dilation=4, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.decoder = _block(6 * w, 2 * w)
        self.head = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(type(self).__name__, x, self.in_channels)
        f2 = self.enc2(F.max_pool2d(self.enc1(x), 2))
        f3 = self.context(self.enc3(F.max_pool2d(f2, 2)))
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.decoder(torch.cat([up, f2], dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SegformerSegmenter(nn.Module):
    """``transformers.SegformerForSemanticSegmentation`` as a segmenter with logits at the input size.

    Args:
        in_channels: image channels.
        num_classes: classes ``K``.
        hidden_sizes: channels of the encoder stages (the tiny default has two).
        depths: transformer blocks per stage.
        num_attention_heads: heads per stage.
        decoder_hidden_size: the all-MLP decoder's width.
        pretrained: a local folder with a saved Segformer (``from_pretrained``; its head is replaced
            when ``num_classes`` differs). ``None`` builds a randomly initialised model.

    Example:
        >>> SegformerSegmenter(3, 4)(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 11,
        hidden_sizes: Sequence[int] = (16, 32),
        depths: Sequence[int] = (1, 1),
        num_attention_heads: Sequence[int] = (1, 2),
        decoder_hidden_size: int = 32,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        self.in_channels, self.num_classes = in_channels, num_classes
        if pretrained is not None:
            self.model = SegformerForSemanticSegmentation.from_pretrained(
                pretrained, num_labels=num_classes, num_channels=in_channels, ignore_mismatched_sizes=True
            )
            return
        stages = len(hidden_sizes)
        if not (len(depths) == len(num_attention_heads) == stages):
            raise ValueError(
                f"`hidden_sizes`, `depths` and `num_attention_heads` need one entry per stage, got {list(hidden_sizes)}, "
                f"{list(depths)}, {list(num_attention_heads)}."
            )
        config = SegformerConfig(
            num_channels=in_channels,
            num_encoder_blocks=stages,
            depths=list(depths),
            sr_ratios=[2 ** (stages - 1 - i) for i in range(stages)],
            hidden_sizes=list(hidden_sizes),
            patch_sizes=[3] * stages,
            strides=[2] * stages,
            num_attention_heads=list(num_attention_heads),
            mlp_ratios=[2] * stages,
            decoder_hidden_size=decoder_hidden_size,
            num_labels=num_classes,
        )
        self.model = SegformerForSemanticSegmentation(config)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(type(self).__name__, x, self.in_channels)
        logits = self.model(pixel_values=x).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def features(self, x: Tensor) -> list[Tensor]:
        """The encoder's hidden states, one ``(B, C_i, H_i, W_i)`` per stage."""
        return list(self.model.segformer(pixel_values=x, output_hidden_states=True).hidden_states)


class MatchingSegmenter(nn.Module):
    """A few-shot segmenter: query pixels attend to support pixels and read out the support mask.

    ``forward(query, support_images, support_masks)`` segments one class per sample (an episode);
    :meth:`encode`, :meth:`coarse_maps` and :meth:`decode` are the parts a multi-class task or a
    distilled student reuses.

    Args:
        in_channels: image channels.
        width: encoder width (features have ``2w`` channels at 1/2 and ``4w`` at 1/4 resolution).
        temperature: softmax temperature of the cosine-similarity attention.

    Example:
        >>> net = MatchingSegmenter(3, width=4)
        >>> out = net(torch.randn(2, 3, 16, 16), torch.randn(2, 1, 3, 16, 16), torch.ones(2, 1, 16, 16))
        >>> tuple(out["logits"].shape), [tuple(c.shape) for c in out["coarse"]]
        ((2, 2, 16, 16), [(2, 1, 8, 8), (2, 1, 4, 4)])
    """

    def __init__(self, in_channels: int = 3, width: int = 16, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        self.in_channels, self.temperature = in_channels, temperature
        w = width
        self.stem = _block(in_channels, w)
        self.level1, self.level2 = _block(w, 2 * w), _block(2 * w, 4 * w)
        self.feature_channels = (2 * w, 4 * w)
        self.skip = nn.Sequential(nn.Conv2d(2 * w, w, 1), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.Conv2d(w + 2, w, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(w, 2, 1),
        )  # fmt: skip

    def encode(self, x: Tensor) -> list[Tensor]:
        """Features ``[(B, 2w, H/2, W/2), (B, 4w, H/4, W/4)]``."""
        _check_input(type(self).__name__, x, self.in_channels)
        f1 = self.level1(F.max_pool2d(self.stem(x), 2))
        return [f1, self.level2(F.max_pool2d(f1, 2))]

    def coarse_maps(
        self,
        query_features: list[Tensor],
        support_features: list[Tensor],
        support_masks: Tensor,
        key_mask: Tensor | None = None,
    ) -> list[Tensor]:
        """Attention read-out of the support masks at each level.

        Args:
            query_features: per level ``(B, C, h, w)``.
            support_features: per level ``(B, M, C, h, w)`` or ``(M, C, h, w)`` (shared by the batch).
            support_masks: ``(B, M, N, H, W)`` or ``(M, N, H, W)`` binary masks of ``N`` classes.
            key_mask: optional ``(B, M)`` bool, ``False`` where a support image is left out
                (leave-one-out when the query is itself in the support set).

        Returns:
            Per level ``(B, N, h, w)``: for each query pixel, ``sum_j softmax_j(cos(q, s_j) / t) m_j``.
        """
        out = []
        for q, s in zip(query_features, support_features):
            b, c, h, w = q.shape
            if s.ndim == 4:
                s = s.unsqueeze(0).expand(b, *s.shape)
            masks = (
                support_masks
                if support_masks.ndim == 5
                else support_masks.unsqueeze(0).expand(b, *support_masks.shape)
            )
            m = F.adaptive_avg_pool2d(masks.flatten(0, 1).float(), s.shape[-2:]).view(
                b, masks.shape[1], masks.shape[2], -1
            )
            keys = F.normalize(s, dim=2).permute(0, 1, 3, 4, 2).reshape(b, -1, c)  # (B, M*hw, C)
            values = m.permute(0, 1, 3, 2).reshape(b, -1, masks.shape[2])  # (B, M*hw, N)
            query = F.normalize(q, dim=1).flatten(2).transpose(1, 2)  # (B, hw, C)
            scores = query @ keys.transpose(1, 2) / self.temperature  # (B, hw, M*hw)
            if key_mask is not None:
                keep = key_mask.repeat_interleave(s.shape[-2] * s.shape[-1], dim=1)  # (B, M*hw)
                scores = scores.masked_fill(~keep.unsqueeze(1), float("-inf"))
            out.append((scores.softmax(dim=-1) @ values).transpose(1, 2).reshape(b, -1, h, w))
        return out

    def decode(self, coarse: list[Tensor], query_features: list[Tensor], size: tuple[int, int]) -> Tensor:
        """(background, foreground) logits ``(B, N, 2, H, W)`` from per-level coarse maps ``(B, N, h, w)``."""
        fine, low = coarse
        b, n, h, w = fine.shape
        maps = torch.stack(
            [fine, F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)], dim=2
        )
        skip = self.skip(query_features[0]).unsqueeze(1).expand(b, n, -1, h, w)
        logits = self.decoder(torch.cat([maps, skip], dim=2).flatten(0, 1))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.view(b, n, 2, *size)

    def forward(
        self, query: Tensor, support_images: Tensor, support_masks: Tensor
    ) -> dict[str, Tensor | list[Tensor]]:
        """One class per sample: ``query (B, C, H, W)``, ``support_images (B, k, C, H, W)``,
        ``support_masks (B, k, H, W)`` -> ``{"logits": (B, 2, H, W), "coarse": [(B, 1, h, w), ...]}``."""
        b, k = support_images.shape[:2]
        query_features = self.encode(query)
        support = [f.view(b, k, *f.shape[1:]) for f in self.encode(support_images.flatten(0, 1))]
        coarse = self.coarse_maps(query_features, support, support_masks.unsqueeze(2))
        return {"logits": self.decode(coarse, query_features, query.shape[-2:])[:, 0], "coarse": coarse}


class ClassHeads(nn.Module):
    """Support-free coarse maps: per class and level, ``conv3x3 - ReLU - conv1x1`` on the query features.

    Args:
        num_classes: task classes ``N`` (background not counted).
        channels: feature channels per level (a :class:`MatchingSegmenter`'s ``feature_channels``).

    Example:
        >>> heads = ClassHeads(3, (8, 16))
        >>> [tuple(m.shape) for m in heads([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)])]
        [(2, 3, 8, 8), (2, 3, 4, 4)]
    """

    def __init__(self, num_classes: int = 4, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.num_classes, self.channels = num_classes, tuple(channels)
        self.heads = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, 1, 1))
                for _ in range(num_classes)
            )
            for c in self.channels
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != len(self.channels) or any(
            f.shape[1] != c for f, c in zip(features, self.channels)
        ):
            raise ValueError(
                f"ClassHeads was built for feature channels {list(self.channels)}, got "
                f"{[tuple(f.shape) for f in features]}; set `channels` to the teacher's `feature_channels`."
            )
        return [torch.cat([head(f) for head in level], dim=1) for f, level in zip(features, self.heads)]
