"""Small reference classifiers for toy-scale runs on a CPU.

They stand in for the real-scale networks of the papers (ResNets, ViTs): recipes only assume a
module that maps ``(B, C, H, W)`` images to ``(B, num_classes)`` logits, so any ``transformers``
or ``timm`` classifier, or a user's module, replaces them through ``class_path``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLPClassifier", "SmallCNN"]


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A VGG-style CNN: a stem, ``depth`` stages that halve the resolution, pooling, a linear head.

    Submodules are named ``stem``, ``layer1`` ... ``layer<depth>``, ``pool`` and ``head`` so feature
    taps can name them (``"student.layer2"``).

    Args:
        in_channels: image channels.
        num_classes: number of logits.
        width: channels of the stem; stage ``k`` has ``width * 2**(k-1)``.
        depth: number of stages (each: a stride-2 conv block then a stride-1 conv block).
        dropout: dropout before the head.

    Example:
        >>> import torch
        >>> SmallCNN(width=8, depth=2)(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if not 1 <= depth <= 5:
            raise ValueError(f"`depth` must be in 1..5, got {depth}.")
        self.num_classes = num_classes
        self.stem = _conv_bn_relu(in_channels, width, 1)
        channels = width
        for k in range(1, depth + 1):
            out = width * 2 ** (k - 1)
            self.add_module(
                f"layer{k}", nn.Sequential(_conv_bn_relu(channels, out, 2), _conv_bn_relu(out, out, 1))
            )
            channels = out
        self.depth = depth
        self.num_features = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, num_features)``."""
        if x.ndim != 4:
            raise ValueError(f"SmallCNN expects images (B, C, H, W), got shape {tuple(x.shape)}.")
        x = self.stem(x)
        for k in range(1, self.depth + 1):
            x = getattr(self, f"layer{k}")(x)
        return self.pool(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.head(self.forward_features(x))


class MLPClassifier(nn.Module):
    """Flatten the image, then ``len(hidden)`` Linear-ReLU layers and a linear head.

    Example:
        >>> import torch
        >>> MLPClassifier(in_features=64, hidden=(32,))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden: tuple[int, ...] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.num_features = width
        self.num_classes = num_classes
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
