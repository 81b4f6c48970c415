"""Trainable adapters that map student features to the teacher's width.

FitNets' regressor, the connectors of MMRazor and the projectors of contrastive and feature KD:
small modules that a recipe owns (as submodules, built in ``__init__``), so they are optimised
with the student and saved in its checkpoint. ``build_adapter`` picks one from example shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ConvAdapter", "LinearAdapter", "MLPAdapter", "build_adapter"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}.")
    return value


class LinearAdapter(nn.Module):
    """A linear map on the last dimension: vectors ``(B, C)`` or tokens ``(B, N, C)``.

    Args:
        in_features: student width ``C_s``.
        out_features: teacher width ``C_t``.
        bias: whether the linear layer has a bias.

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a size is < 1.

    Example:
        >>> LinearAdapter(16, 32)(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(
            _check_size("in_features", in_features), _check_size("out_features", out_features), bias
        )

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(..., C_s)`` to ``(..., C_t)``."""
        return self.proj(x)


class ConvAdapter(nn.Module):
    """A convolution (1x1 by default) followed by BatchNorm: FitNets' regressor, MMRazor's connector.

    Args:
        in_channels: student channels ``C_s``.
        out_channels: teacher channels ``C_t``.
        kernel_size: odd kernel size; padding keeps ``H, W`` unchanged.
        norm: add ``BatchNorm2d`` after the convolution (the convolution then has no bias).

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a size is < 1 or ``kernel_size`` is even.

    Example:
        >>> ConvAdapter(16, 64)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, norm: bool = True) -> None:
        super().__init__()
        _check_size("in_channels", in_channels)
        _check_size("out_channels", out_channels)
        if _check_size("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd so that H and W are kept, got {kernel_size}.")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(B, C_s, H, W)`` to ``(B, C_t, H, W)``."""
        if x.ndim != 4:
            raise ValueError(f"`x` must have shape (B, C, H, W), got shape {tuple(x.shape)}.")
        return self.norm(self.conv(x))


class MLPAdapter(nn.Module):
    """Two linear layers with an activation between them, on the last dimension.

    Args:
        in_features: student width ``C_s``.
        hidden_features: hidden width.
        out_features: teacher width ``C_t``.
        activation: ``"relu"`` or ``"gelu"``.

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a size is < 1 or ``activation`` is unknown.

    Example:
        >>> MLPAdapter(16, 64, 32)(torch.randn(4, 16)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        activation: Literal["relu", "gelu"] = "relu",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {list(_ACTIVATIONS)}, got {activation!r}.")
        self.net = nn.Sequential(
            nn.Linear(
                _check_size("in_features", in_features), _check_size("hidden_features", hidden_features)
            ),
            _ACTIVATIONS[activation](),
            nn.Linear(hidden_features, _check_size("out_features", out_features)),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(..., C_s)`` to ``(..., C_t)``."""
        return self.net(x)


def build_adapter(
    student: Sequence[int] | Tensor,
    teacher: Sequence[int] | Tensor,
    *,
    hidden_features: int | None = None,
) -> nn.Module:
    """Picks an adapter from example student and teacher features (or their shapes, batch first).

    ``(B, C, H, W)`` features get a :class:`ConvAdapter` (1x1 conv + BN); ``(B, C)`` and
    ``(B, N, C)`` features get a :class:`LinearAdapter`, or an :class:`MLPAdapter` when
    ``hidden_features`` is given. An adapter is returned even when the widths match (FitNets
    always trains a regressor). Build it in the recipe's ``__init__`` so that the optimizer and the
    checkpoint include it.

    Args:
        student: a student feature or its shape, e.g. ``(B, C_s, H, W)``.
        teacher: a teacher feature or its shape, e.g. ``(B, C_t, H, W)``.
        hidden_features: hidden width for an MLP adapter on ``(B, C)``/``(B, N, C)`` features.

    Returns:
        A module that maps student features to the teacher's shape.

    Raises:
        TypeError: if a shape is not a sequence of ints or a tensor.
        ValueError: if the ranks differ, the rank is not 2, 3 or 4, the non-channel sizes differ,
            or ``hidden_features`` is given for 4-D features.

    Example:
        >>> adapter = build_adapter((8, 16, 4, 4), (8, 64, 4, 4))
        >>> type(adapter).__name__, adapter.conv.weight.shape
        ('ConvAdapter', torch.Size([64, 16, 1, 1]))
        >>> type(build_adapter(torch.zeros(8, 5, 16), torch.zeros(8, 5, 32), hidden_features=64)).__name__
        'MLPAdapter'
    """
    s_shape = _as_shape("student", student)
    t_shape = _as_shape("teacher", teacher)
    if len(s_shape) != len(t_shape):
        raise ValueError(
            f"`student` and `teacher` must have the same rank, got shapes {s_shape} and {t_shape}."
        )
    if len(s_shape) not in (2, 3, 4):
        raise ValueError(
            f"Supported feature shapes are (B, C), (B, N, C) and (B, C, H, W), got {s_shape}; "
            "reshape the features or build the adapter yourself."
        )
    if len(s_shape) == 4:
        if s_shape[2:] != t_shape[2:]:
            raise ValueError(
                f"Student and teacher feature maps must have the same H, W, got {s_shape} and {t_shape}; "
                "resize one with `torch.nn.functional.interpolate` or pool it first."
            )
        if hidden_features is not None:
            raise ValueError(
                "`hidden_features` is only used for (B, C) and (B, N, C) features; leave it None."
            )
        return ConvAdapter(s_shape[1], t_shape[1])
    if s_shape[1:-1] != t_shape[1:-1]:
        raise ValueError(
            f"Student and teacher must have the same token count N, got {s_shape} and {t_shape}."
        )
    if hidden_features is not None:
        return MLPAdapter(s_shape[-1], hidden_features, t_shape[-1])
    return LinearAdapter(s_shape[-1], t_shape[-1])


def _as_shape(name: str, value: Sequence[int] | Tensor) -> tuple[int, ...]:
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, (torch.Size, Sequence)) and not isinstance(value, str):
        if all(isinstance(size, int) and not isinstance(size, bool) for size in value):
            return tuple(value)
    raise TypeError(f"`{name}` must be a tensor or a shape (a sequence of ints), got {value!r}.")
