"""The exponential-moving-average arithmetic, in plain PyTorch (no Lightning).

:class:`EMAUpdater` pairs the tensors of a live module with those of its average once and then
moves the average with one ``torch._foreach_lerp_`` per update:
``avg <- decay * avg + (1 - decay) * live``. It keeps fp32 master weights for a bf16/fp16
average, copies integer buffers, and works on the local shards of FSDP2 ``DTensor`` parameters.
:class:`~lightning_distill.callbacks.EMATeacher` drives it from the trainer's step count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - older torch
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:
        DTensor = None  # type: ignore[assignment,misc]

__all__ = ["BUFFER_POLICIES", "EMAUpdater", "is_dtensor"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
BUFFER_POLICIES = ("average", "copy")


def is_dtensor(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (an FSDP2 / tensor-parallel shard)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def _is_float(tensor: Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


class EMAUpdater:
    """Pairs the tensors of a live module with those of its average and updates the average in place.

    The plain-PyTorch core of :class:`EMATeacher`, usable without Lightning. The tensor lists are built
    once, here; build a new updater if the modules are moved, converted or re-sharded.

    Args:
        source: The live module (e.g. the student).
        target: Its average, with the same parameter and buffer names, shapes and sharding.
        buffers: ``"average"`` treats float buffers like parameters; ``"copy"`` copies them.
            Integer and bool buffers are always copied.
        master: fp32 master tensors by name (from :meth:`master_state_dict`), for targets held in
            bf16/fp16. Missing names start from the target's values.

    Raises:
        ValueError: If ``buffers`` is not ``"average"`` or ``"copy"``, or the two modules differ in
            parameter/buffer names, shapes, devices or sharding.

    Example:
        >>> import copy
        >>> live = torch.nn.Linear(2, 1)
        >>> ema = copy.deepcopy(live).requires_grad_(False)
        >>> updater = EMAUpdater(live, ema)
        >>> with torch.no_grad():
        ...     _ = live.weight.add_(1.0)
        >>> before = ema.weight.clone()
        >>> updater.update(0.9)
        >>> torch.allclose(ema.weight, before + 0.1 * (live.weight - before))
        True
    """

    def __init__(
        self,
        source: nn.Module,
        target: nn.Module,
        buffers: Literal["average", "copy"] = "copy",
        master: Mapping[str, Tensor] | None = None,
    ) -> None:
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"`buffers` must be one of {BUFFER_POLICIES}, got {buffers!r}.")
        master = dict(master or {})
        averaged = list(_paired(source.named_parameters(), target.named_parameters(), "parameter"))
        copied = []
        for name, live, avg in _paired(source.named_buffers(), target.named_buffers(), "buffer"):
            (averaged if buffers == "average" and _is_float(avg) else copied).append((name, live, avg))
        self.sharded = False
        # Averaged pairs whose accumulator has the live dtype, and those that need a cast of the live
        # tensor (a bf16 student averaged into fp32 masters).
        self._avg: list[Tensor] = []
        self._live: list[Tensor] = []
        self._avg_cast: list[Tensor] = []
        self._live_cast: list[Tensor] = []
        # Low-precision target tensors and their fp32 masters, copied after every update.
        self._lowp_targets: list[Tensor] = []
        self._master_list: list[Tensor] = []
        self._masters: dict[str, Tensor] = {}
        # Tensors copied verbatim: integer buffers, and float buffers under ``buffers="copy"``.
        self._copy_dst: list[Tensor] = []
        self._copy_src: list[Tensor] = []
        # All pairs, for swapping the average into the live module.
        self._all_live: list[Tensor] = []
        self._all_target: list[Tensor] = []
        for name, live, avg in averaged:
            live_t, avg_t = self._local_pair(name, live, avg)
            if avg_t.dtype in _LOW_PRECISION:
                acc = avg_t.detach().float().clone()
                if name in master:
                    acc.copy_(master[name])
                self._masters[name] = acc
                self._master_list.append(acc)
                self._lowp_targets.append(avg_t)
            else:
                acc = avg_t
            if live_t.dtype == acc.dtype:
                self._avg.append(acc)
                self._live.append(live_t)
            else:
                self._avg_cast.append(acc)
                self._live_cast.append(live_t)
        for name, live, avg in copied:
            live_t, avg_t = self._local_pair(name, live, avg)
            self._copy_dst.append(avg_t)
            self._copy_src.append(live_t)

    def _local_pair(self, name: str, live: Tensor, avg: Tensor) -> tuple[Tensor, Tensor]:
        if is_dtensor(live) != is_dtensor(avg):
            raise ValueError(
                f"`{name}` is {'sharded' if is_dtensor(live) else 'not sharded'} in the source but "
                f"{'sharded' if is_dtensor(avg) else 'not sharded'} in the target; shard both the same way."
            )
        if is_dtensor(live):
            self.sharded = True
            if tuple(live.placements) != tuple(avg.placements) or live.device_mesh != avg.device_mesh:
                raise ValueError(
                    f"`{name}` is sharded differently: source placements {tuple(live.placements)}, target "
                    f"{tuple(avg.placements)}; shard the target with the same `fully_shard` mesh."
                )
            live, avg = live.to_local(), avg.to_local()
        if live.shape != avg.shape or live.device != avg.device:
            raise ValueError(
                f"`{name}` has shape {tuple(live.shape)} on {live.device} in the source but "
                f"{tuple(avg.shape)} on {avg.device} in the target; they must match."
            )
        return live, avg

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """Moves every averaged tensor towards the live one: ``avg = decay * avg + (1 - decay) * live``.

        Args:
            decay: Weight of the old average, a Python float in [0, 1].
        """
        weight = 1.0 - decay
        if self._avg:
            torch._foreach_lerp_(self._avg, self._live, weight)
        if self._avg_cast:
            live = [t.to(a.dtype) for a, t in zip(self._avg_cast, self._live_cast)]
            torch._foreach_lerp_(self._avg_cast, live, weight)
        self._finish()

    @torch.no_grad()
    def copy_(self) -> None:
        """Sets the average to the live values (the warm-up before averaging starts)."""
        if self._avg:
            torch._foreach_copy_(self._avg, self._live)
        if self._avg_cast:
            torch._foreach_copy_(self._avg_cast, self._live_cast)
        self._finish()

    def _finish(self) -> None:
        if self._lowp_targets:
            torch._foreach_copy_(self._lowp_targets, self._master_list)
        if self._copy_dst:
            torch._foreach_copy_(self._copy_dst, self._copy_src)

    @torch.no_grad()
    def swap_in(self) -> list[Tensor]:
        """Copies the average into the live module and returns the live values for :meth:`swap_out`."""
        backup = [t.detach().clone() for t in self.live_tensors]
        torch._foreach_copy_(self.live_tensors, self.target_tensors)
        return backup

    @torch.no_grad()
    def swap_out(self, backup: list[Tensor]) -> None:
        """Restores the live values saved by :meth:`swap_in`."""
        torch._foreach_copy_(self.live_tensors, backup)

    @property
    def live_tensors(self) -> list[Tensor]:
        """The live tensors (local shards when sharded), parameters first."""
        if not self._all_live:
            self._all_live = [*self._live, *self._live_cast, *self._copy_src]
        return self._all_live

    @property
    def target_tensors(self) -> list[Tensor]:
        """The target tensors in the order of :attr:`live_tensors`."""
        if not self._all_target:
            masters = {id(m): t for m, t in zip(self._master_list, self._lowp_targets)}
            averaged = [masters.get(id(a), a) for a in [*self._avg, *self._avg_cast]]
            self._all_target = [*averaged, *self._copy_dst]
        return self._all_target

    def master_state_dict(self) -> dict[str, Tensor]:
        """The fp32 master tensors by name; empty when the target is fp32."""
        return dict(self._masters)

    @torch.no_grad()
    def load_master_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Loads fp32 masters saved by :meth:`master_state_dict` and copies them into the target.

        Raises:
            ValueError: If a saved master has a different shape from this updater's.
        """
        for name, value in state.items():
            if name in self._masters:
                if self._masters[name].shape != value.shape:
                    raise ValueError(
                        f"Saved master weight `{name}` has shape {tuple(value.shape)}, expected "
                        f"{tuple(self._masters[name].shape)}."
                    )
                self._masters[name].copy_(value)
        if self._lowp_targets:
            torch._foreach_copy_(self._lowp_targets, self._master_list)


def _paired(live_named, avg_named, kind: str):
    """Yields ``(name, live, avg)`` after checking that both modules have the same names in order."""
    live_items, avg_items = list(live_named), list(avg_named)
    live_names, avg_names = [n for n, _ in live_items], [n for n, _ in avg_items]
    if live_names != avg_names:
        missing = sorted(set(live_names) - set(avg_names))[:5]
        extra = sorted(set(avg_names) - set(live_names))[:5]
        raise ValueError(
            f"Source and target differ in their {kind}s: missing in the target {missing}, extra in the "
            f"target {extra} (first five); the target must be a copy of the source."
        )
    for (name, live), (_, avg) in zip(live_items, avg_items):
        yield name, live, avg
