"""A small CenterNet-style 2D detector on camera images: the 2D half of LiSe's pseudo-labels.

LiSe finds objects in the images with a pretrained open-vocabulary 2D detector (GroundingDINO). No
pretrained 2D detector can be downloaded here and ``torchvision`` (whose detection models would be
the maintained choice) is not installed beside the CPU torch, so :class:`ImageDetector` is a small
CenterNet (Zhou et al., "Objects as Points", arXiv 1904.07850) written on plain ``torch``:

1. A strided conv backbone (stride 4 by default) with a 3x3 refinement at the output stride.
2. Three 1x1-conv heads: per-class centre heatmaps (focal loss, Gaussian targets), the box size
   ``log(w), log(h)`` in pixels and the sub-cell centre offset (L1 at the centres).
3. Decoding: 3x3 peak suppression on the heatmap, the ``top_k`` peaks above ``score_threshold``.

It is trained on first use (:func:`~lightning_distill.models.image_detection.trained_image_detector`)
on the generator's per-camera 2D boxes, the stand-in for a detector pretrained on a large labelled
image corpus: those 2D boxes are the only labels LiSe's pipeline sees, and never the 3D boxes.
A real run passes any module with the same ``forward``/``detect`` contract (e.g. a wrapper around
GroundingDINO's predictions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_distill.detection.heads import draw_gaussian, gaussian_radius, peak_nms
from lightning_distill.losses.detection import box_regression_l1, heatmap_focal_loss

__all__ = ["ImageDetector", "image_targets"]


def image_targets(
    boxes_2d: Sequence[Tensor], labels: Sequence[Tensor], *, num_classes: int, shape: tuple[int, int], stride: int,
    max_objects: int = 64, min_radius: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """CenterNet targets of a batch of images.

    Args:
        boxes_2d: per image ``(M_i, 4)`` ``[u0, v0, u1, v1]`` pixels.
        labels: per image ``(M_i,)`` int64 classes.
        num_classes: heatmap channels.
        shape: ``(h, w)`` of the output maps.
        stride: pixels per output cell.
        max_objects: objects kept per image.
        min_radius: smallest Gaussian radius in cells.

    Returns:
        ``heatmap (B, K, h, w)``, ``index (B, M)`` flat cell of each centre, ``codes (B, M, 4)``
        ``[offset u, offset v, log w, log h]`` and ``mask (B, M)``.
    """
    h, w = shape
    B = len(boxes_2d)
    heat = torch.zeros(B, num_classes, h, w)
    index = torch.zeros(B, max_objects, dtype=torch.long)
    codes = torch.zeros(B, max_objects, 4)
    mask = torch.zeros(B, max_objects)
    for b, (boxes, cls) in enumerate(zip(boxes_2d, labels)):
        for j, (box, c) in enumerate(zip(boxes[:max_objects].float(), cls[:max_objects])):
            bw, bh = float(box[2] - box[0]) + 1.0, float(box[3] - box[1]) + 1.0
            cu, cv = (
                float(box[0] + box[2] + 1) / 2 / stride,
                float(box[1] + box[3] + 1) / 2 / stride,
            )  # pixel extents [u0, u1 + 1)
            iu, iv = min(int(cu), w - 1), min(int(cv), h - 1)
            radius = gaussian_radius(torch.tensor(bh / stride), torch.tensor(bw / stride))
            draw_gaussian(heat[b, int(c)], (iv, iu), max(min_radius, int(radius)))
            index[b, j] = iv * w + iu
            codes[b, j] = torch.tensor([cu - iu, cv - iv, math.log(bw), math.log(bh)])
            mask[b, j] = 1.0
    return heat, index, codes, mask


class ImageDetector(nn.Module):
    """CenterNet-style 2D detector (see the module docstring).

    Args:
        num_classes: object classes (3: car, pedestrian, cyclist).
        widths: channels of the backbone stages; each stage after the first halves the resolution.
        head_width: channels of the heads' hidden 3x3 conv.
        top_k: peaks decoded per image.
        score_threshold: lowest score kept by :meth:`detect`.

    Raises:
        ValueError: fewer than one class or an empty ``widths``.
    """

    def __init__(
        self,
        num_classes: int = 3,
        widths: Sequence[int] = (16, 32, 32),
        head_width: int = 32,
        top_k: int = 32,
        score_threshold: float = 0.2,
    ) -> None:
        super().__init__()
        if num_classes < 1 or not widths or min(widths) < 1:
            raise ValueError(
                f"`num_classes` must be >= 1 and `widths` positive, got {num_classes}, {widths}."
            )
        self.num_classes, self.top_k, self.score_threshold = num_classes, top_k, score_threshold
        self.stride = 2 ** (len(widths) - 1)
        layers: list[nn.Module] = []
        cin = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(cin, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]  # fmt: skip
            cin = width
        layers += [nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.backbone = nn.Sequential(*layers)

        def head(out: int, bias: float = 0.0) -> nn.Sequential:
            last = nn.Conv2d(head_width, out, 1)
            nn.init.constant_(last.bias, bias)
            return nn.Sequential(nn.Conv2d(cin, head_width, 3, padding=1), nn.ReLU(inplace=True), last)

        self.heatmap = head(num_classes, -2.19)  # CenterNet's prior: sigmoid(-2.19) = 0.1
        self.size = head(2, math.log(8.0))
        self.offset = head(2, 0.5)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Images ``(N, 3, H, W)`` -> ``{"heatmap" (N, K, h, w), "size" (N, 2, h, w), "offset" (N, 2, h, w)}``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be (N, 3, H, W), got {tuple(images.shape)}.")
        x = self.backbone(images.float())
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}

    def loss(
        self, output: dict[str, Tensor], boxes_2d: Sequence[Tensor], labels: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """CenterNet's terms ``{"heatmap": focal, "box": L1 of offset and log size at the centres}``."""
        heat = output["heatmap"]
        target, index, codes, mask = image_targets(
            boxes_2d, labels, num_classes=self.num_classes, shape=tuple(heat.shape[-2:]), stride=self.stride
        )
        pred = torch.cat([output["offset"], output["size"]], 1).flatten(2)  # (N, 4, h·w)
        pred = pred.gather(2, index.to(heat.device)[:, None, :].expand(-1, 4, -1)).transpose(1, 2)
        return {
            "heatmap": heatmap_focal_loss(heat, target.to(heat)),
            "box": box_regression_l1(pred, codes.to(pred), mask.to(pred)),
        }

    @torch.no_grad()
    def detect(
        self, output: dict[str, Tensor], score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes_2d" (M, 4) [u0, v0, u1, v1], "labels" (M,), "scores" (M,)}``."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        heat = peak_nms(torch.sigmoid(output["heatmap"].float()))
        n, k, h, w = heat.shape
        scores, flat = heat.flatten(1).topk(min(self.top_k, k * h * w), dim=1)
        results = []
        for i in range(n):
            keep = scores[i] >= threshold
            s, f = scores[i][keep], flat[i][keep]
            cls, cell = f // (h * w), f % (h * w)
            iv, iu = cell // w, cell % w
            off = output["offset"][i].flatten(1)[:, cell].float()
            size = output["size"][i].flatten(1)[:, cell].float().clamp(max=10).exp()
            cu, cv = (iu + off[0]) * self.stride, (iv + off[1]) * self.stride
            boxes = torch.stack(
                [cu - size[0] / 2, cv - size[1] / 2, cu + size[0] / 2 - 1, cv + size[1] / 2 - 1], 1
            )
            results.append({"boxes_2d": boxes, "labels": cls, "scores": s})
        return results
