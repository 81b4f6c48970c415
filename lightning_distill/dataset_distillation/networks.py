"""The ConvNet of dataset distillation and a sampler of fresh random networks.

:class:`ConvNet` is the network the dataset-distillation literature distils with and evaluates on
(DC, DSA, DM, MTT, DataDAM: ``ConvNet`` in VICO-UoE/DatasetCondensation ``networks.py``): ``depth``
blocks of 3x3 convolution (``width`` channels), normalisation, activation and 2x2 pooling, then a
linear classifier on the flattened features. The default is the standard ConvNet-3: width 128,
instance normalisation (a ``GroupNorm`` with one group per channel), ReLU, average pooling.

:func:`random_network` builds a fresh, frozen, randomly initialised network from a
:class:`ConvNetSpec` and a ``torch.Generator``, as distribution-matching methods (DM, DataDAM)
draw one per iteration; :func:`reset_parameters` re-draws the weights of an existing network in
place, so that hooks registered on its modules stay valid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "ConvNetSpec", "random_network", "reset_parameters"]

Norm = Literal["instance", "batch", "layer", "group", "none"]
Activation = Literal["relu", "leakyrelu", "sigmoid"]
Pooling = Literal["avg", "max", "none"]
_NORMS = ("instance", "batch", "layer", "group", "none")
_ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")
_POOLINGS = ("avg", "max", "none")


@dataclass(frozen=True)
class ConvNetSpec:
    """Everything that decides a :class:`ConvNet`'s architecture (serialisable with ``to_dict``).

    Attributes:
        in_channels: image channels ``C``.
        num_classes: number of logits.
        image_size: ``(H, W)`` of the inputs (decides the size of the flattened features).
        width: channels of every convolution.
        depth: number of conv-norm-activation-pool blocks.
        norm: ``"instance"`` (default of the literature), ``"batch"``, ``"layer"``, ``"group"``
            (4 groups) or ``"none"``.
        activation: ``"relu"``, ``"leakyrelu"`` or ``"sigmoid"``.
        pooling: ``"avg"``, ``"max"`` or ``"none"``.
    """

    in_channels: int = 3
    num_classes: int = 10
    image_size: tuple[int, int] = (32, 32)
    width: int = 128
    depth: int = 3
    norm: Norm = "instance"
    activation: Activation = "relu"
    pooling: Pooling = "avg"

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        size = tuple(self.image_size)
        if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"`image_size` must be two positive integers (H, W), got {self.image_size!r}.")
        object.__setattr__(self, "image_size", size)
        if self.norm not in _NORMS:
            raise ValueError(f"`norm` must be one of {_NORMS}, got {self.norm!r}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {_ACTIVATIONS}, got {self.activation!r}.")
        if self.pooling not in _POOLINGS:
            raise ValueError(f"`pooling` must be one of {_POOLINGS}, got {self.pooling!r}.")
        h, w = size
        if self.pooling != "none" and min(h, w) < 2**self.depth:
            raise ValueError(
                f"`depth`={self.depth} halves the resolution {self.depth} times, so `image_size` must be at "
                f"least {2**self.depth} pixels per side, got {size}. Use a smaller depth or larger images."
            )

    def feature_shape(self) -> tuple[int, int, int]:
        """``(width, H', W')`` of the last block's output (the embedding, before flattening)."""
        h, w = self.image_size
        if self.pooling != "none":
            h, w = h // 2**self.depth, w // 2**self.depth
        return self.width, h, w

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :meth:`from_dict` turns back into the spec."""
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ConvNetSpec:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: a key that is not a field of the spec.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"Unknown ConvNetSpec keys {unknown}; the keys are {sorted(known)}.")
        values = dict(spec)
        if "image_size" in values:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)


def _norm_layer(norm: str, channels: int, height: int, width: int) -> nn.Module | None:
    if norm == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.LayerNorm([channels, height, width], elementwise_affine=True)
    if norm == "group":
        return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels, affine=True)
    return None


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leakyrelu":
        return nn.LeakyReLU(0.01)
    return nn.Sigmoid()


class ConvNet(nn.Module):
    """ConvNet-``depth`` of dataset distillation: ``depth`` x [conv3x3, norm, act, pool], linear head.

    Submodules: ``features`` (an ``nn.Sequential``; the activation of block ``k`` is at index
    ``activation_paths[k]``) and ``classifier``. The activations are not in-place, so forward hooks
    on them see the values the next layer receives.

    Args:
        in_channels: image channels.
        num_classes: number of logits.
        image_size: ``(H, W)`` (or one int for square images) of the inputs.
        width: channels of every convolution.
        depth: number of blocks.
        norm: ``"instance"``, ``"batch"``, ``"layer"``, ``"group"`` or ``"none"``.
        activation: ``"relu"``, ``"leakyrelu"`` or ``"sigmoid"``.
        pooling: ``"avg"``, ``"max"`` or ``"none"``.

    Raises:
        ValueError: a non-positive size, an unknown option, or images too small for ``depth``
            poolings.

    Example:
        >>> net = ConvNet(in_channels=1, image_size=8, width=16, depth=3)
        >>> x = torch.zeros(2, 1, 8, 8)
        >>> net(x).shape, net.embed(x).shape, net.activation_paths
        (torch.Size([2, 10]), torch.Size([2, 16]), ('features.2', 'features.6', 'features.10'))
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int | tuple[int, int] = 32,
        width: int = 128,
        depth: int = 3,
        norm: Norm = "instance",
        activation: Activation = "relu",
        pooling: Pooling = "avg",
    ) -> None:
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.spec = ConvNetSpec(in_channels, num_classes, size, width, depth, norm, activation, pooling)
        layers: list[nn.Module] = []
        paths: list[str] = []
        channels, (h, w) = in_channels, size
        for _ in range(depth):
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            norm_layer = _norm_layer(norm, width, h, w)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(_activation(activation))
            paths.append(f"features.{len(layers) - 1}")
            if pooling != "none":
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.activation_paths: tuple[str, ...] = tuple(paths)
        c, fh, fw = self.spec.feature_shape()
        self.num_features = c * fh * fw
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    @classmethod
    def from_spec(cls, spec: ConvNetSpec) -> ConvNet:
        """Build the network a :class:`ConvNetSpec` describes."""
        return cls(
            spec.in_channels,
            spec.num_classes,
            spec.image_size,
            spec.width,
            spec.depth,
            spec.norm,
            spec.activation,
            spec.pooling,
        )

    def embed(self, x: Tensor) -> Tensor:
        """Flattened output of the last block, ``(B, width * H' * W')``: what DM/DataDAM match.

        Raises:
            ValueError: ``x`` is not ``(B, in_channels, H, W)`` with the spec's ``(H, W)``.
        """
        expected = (self.spec.in_channels, *self.spec.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ConvNet expects images (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}."
            )
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.classifier(self.embed(x))


@torch.no_grad()
def reset_parameters(network: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draws every weight of ``network`` in place, as PyTorch's default initialisation does.

    Convolutions and linear layers get ``kaiming_uniform_(a=sqrt(5))`` weights and biases uniform
    in ``±1/sqrt(fan_in)`` (PyTorch's ``reset_parameters``), drawn from ``generator``; normalisation
    layers get weight 1, bias 0 and fresh running statistics. The same generator state gives the
    same weights, so a network is a pure function of its seed.

    Args:
        network: any module built from ``Conv``/``Linear``/normalisation layers.
        generator: source of randomness (CPU generator); ``None`` uses the global one.

    Returns:
        ``network`` itself.

    Raises:
        TypeError: a submodule with parameters that this function does not know how to draw.
    """
    for name, module in network.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            weight = module.weight
            fresh = torch.empty(weight.shape, dtype=weight.dtype)
            nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
            weight.copy_(fresh)
            if module.bias is not None:
                fan_in = weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                bias = torch.empty(module.bias.shape, dtype=module.bias.dtype)
                module.bias.copy_(bias.uniform_(-bound, bound, generator=generator))
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)):
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(
                f"reset_parameters does not know how to draw the parameters of {name!r} "
                f"({type(module).__name__}); use a network of Conv/Linear/normalisation layers."
            )
    return network


def random_network(spec: ConvNetSpec, generator: torch.Generator | None = None) -> ConvNet:
    """A fresh randomly initialised, frozen :class:`ConvNet` (no grad, outside any optimizer).

    Distribution-matching methods (DM, DataDAM) embed real and synthetic images with a new random
    network at every iteration; this draws one from ``generator``. The network is in train mode
    (with ``norm="batch"`` it normalises with the batch's statistics, as the official code does),
    and its parameters have ``requires_grad=False``, so gradients flow through it to the images only.

    Args:
        spec: the architecture.
        generator: source of the weights; the same state gives the same network.

    Returns:
        The network.

    Raises:
        TypeError: ``spec`` is not a :class:`ConvNetSpec`.

    Example:
        >>> spec = ConvNetSpec(in_channels=1, image_size=(8, 8), width=8, depth=2)
        >>> a = random_network(spec, torch.Generator().manual_seed(0))
        >>> b = random_network(spec, torch.Generator().manual_seed(0))
        >>> torch.equal(a.features[0].weight, b.features[0].weight), a.features[0].weight.requires_grad
        (True, False)
    """
    if not isinstance(spec, ConvNetSpec):
        raise TypeError(f"`spec` must be a ConvNetSpec, got {type(spec).__name__}.")
    network = ConvNet.from_spec(spec)
    reset_parameters(network, generator)
    return network.requires_grad_(False)
