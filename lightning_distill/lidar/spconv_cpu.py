"""The one place that imports spconv and makes its backward pass work on a CPU-only torch.

spconv 2.3.8 (the CPU wheel) runs sparse convolutions forward on a CPU, but its backward
(``spconv.pytorch.ops.indice_conv_backward`` and friends) asks ``get_current_stream()`` for a CUDA
stream before taking its CPU branch, which raises ``Torch not compiled with CUDA enabled``. The
function is imported by name into ``spconv.pytorch.ops``, so rebinding it there to return stream 0
is enough. The fix is applied once, only when CUDA is unavailable; with CUDA (``spconv-cu120``)
nothing is changed.

Every module of :mod:`lightning_distill.lidar` that needs spconv gets it from :func:`import_spconv`.
spconv has no bf16 kernels (and its CPU path is ``torch.mm``, which autocast turns bf16), so sparse
networks run through :func:`sparse_in_fp32` under bf16-mixed.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

__all__ = ["apply_cpu_backward_fix", "import_spconv", "sparse_in_fp32"]

_MARK = "_lightning_distill_cpu_stream"


def _cpu_stream() -> int:
    """Stream handle 0: what spconv's CPU kernels ignore anyway."""
    return 0


setattr(_cpu_stream, _MARK, True)


def apply_cpu_backward_fix() -> bool:
    """Rebind ``spconv.pytorch.ops.get_current_stream`` so backward works without CUDA.

    Idempotent. Does nothing when CUDA is available.

    Returns:
        True when the CPU stream function is in place (now or from an earlier call), False when
        CUDA is available and spconv is left untouched.

    Raises:
        ImportError: spconv is not installed (``pip install spconv``, or ``spconv-cu120`` on GPUs).
    """
    if torch.cuda.is_available():
        return False
    ops = _import_ops()
    if not getattr(ops.get_current_stream, _MARK, False):
        ops.get_current_stream = _cpu_stream
    return True


def import_spconv() -> ModuleType:
    """``spconv.pytorch``, with the CPU backward fix applied when CUDA is unavailable.

    Raises:
        ImportError: spconv is not installed.
    """
    _import_ops()
    apply_cpu_backward_fix()
    import spconv.pytorch as spconv

    return spconv


def _import_ops() -> ModuleType:
    try:
        import spconv.pytorch.ops as ops
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lightning_distill.lidar needs spconv: `pip install spconv` (CPU) or `pip install spconv-cu120` "
            "(CUDA 12)."
        ) from err
    return ops


def sparse_in_fp32(forward: Callable[[Any], Any], x: Any) -> Any:
    """``forward(x)`` for a ``SparseConvTensor`` ``x``; under bf16 autocast, with autocast off and fp32 features.

    spconv has no bf16 kernels, so a sparse network inside ``precision="bf16-mixed"`` runs in fp32 (its
    output features are fp32; the dense layers after it autocast again).
    """
    device = x.features.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
        with torch.autocast(device, enabled=False):
            return forward(x.replace_feature(x.features.float()))
    return forward(x)
