"""FSDP2 (``torch.distributed.fsdp.fully_shard``) helpers of the recipes that shard.

A recipe that shards implements ``DistillationModule.shard(mesh)`` with these (docs/strategies.md,
"Sharding"): its trainable networks are ``fully_shard``-ed block by block on the data-parallel mesh
(each parameter becomes a ``DTensor`` holding this rank's rows, gathered for the forward of its
block and reduce-scattered, i.e. averaged over the ranks, in the backward), frozen parts stay
plain replicated tensors (no gradient, nothing to average), and everything that reads a parameter
outside a forward reads it inside :func:`gathered` (a collective: every rank enters it).

Plain PyTorch: no Lightning import (the mesh comes from the caller).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["consolidate", "data_parallel_mesh", "gathered", "is_sharded", "keep_every_key", "shard_blocks"]


def data_parallel_mesh(device_mesh: Any) -> Any:
    """The 1-D data-parallel mesh of ``ModelParallelStrategy.device_mesh`` (``("data_parallel", "tensor_parallel")``).

    Raises:
        ValueError: a tensor-parallel size above 1 (no recipe has a tensor-parallel plan).
    """
    names = tuple(getattr(device_mesh, "mesh_dim_names", None) or ())
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"The recipes shard their parameters over data-parallel ranks only (FSDP2); got a tensor-parallel "
            f"size of {device_mesh['tensor_parallel'].size()}. Set `--trainer.strategy.tensor_parallel_size=1`."
        )
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` (so that calling a plan twice does nothing)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard_blocks(module: nn.Module, mesh: Any, *, reshard_after_forward: bool = True) -> nn.Module:
    """``fully_shard`` every element of every ``nn.ModuleList`` inside ``module`` (its blocks), then ``module``.

    One communication unit per block keeps a block's parameters gathered only while it runs (the
    usual FSDP2 plan for UNets and transformers: ``down_blocks``, ``up_blocks``, ``layers``, ...);
    a module without lists is one unit. Frozen parameters inside are sharded too and get no
    gradient. Idempotent.

    Args:
        module: a network with parameters.
        mesh: the 1-D data-parallel device mesh.
        reshard_after_forward: free the gathered parameters after the forward (the FSDP default);
            ``False`` for a module whose forward returns its own parameters (a synthetic set).

    Returns:
        ``module`` (its class swapped by ``fully_shard``, its parameters ``DTensor`` shards).
    """
    from torch.distributed.fsdp import fully_shard

    if is_sharded(module) or next(module.parameters(), None) is None:
        return module
    for sub in list(module.modules()):
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                if not is_sharded(block) and next(block.parameters(), None) is not None:
                    fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return module


@contextmanager
def gathered(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s sharded parameters are full plain tensors (all-gathered), then sharded again.

    For reading a sharded module outside its forward (evaluating or saving a synthetic set). A
    collective when ``module`` is sharded: every rank must enter it. Does nothing otherwise.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield module
    finally:
        for unit in units:
            unit.reshard()


def keep_every_key(checkpoint: dict[str, Any], full_state: Any, strategy: Any) -> None:
    """Put the whole ``state_dict`` back into ``checkpoint`` when ``strategy`` writes a distributed checkpoint.

    The recipes leave rebuildable parts (teachers, re-drawn random networks) out of their
    checkpoints; a distributed (sharded) checkpoint is loaded into the sharded module key by key and
    fails on a missing one, so it keeps them. Call it at the end of ``on_save_checkpoint`` with the
    ``state_dict`` the hook received.
    """
    distributed = type(strategy).__name__ == "ModelParallelStrategy" and bool(
        getattr(strategy, "_save_distributed_checkpoint", False)
    )
    if distributed and isinstance(full_state, dict):
        checkpoint["state_dict"] = full_state


def consolidate(folder: str | Path, output: str | Path) -> Path:
    """Turn a distributed checkpoint folder of ``ModelParallelStrategy`` into one Lightning checkpoint file.

    The folder holds one file of tensors per rank and ``meta.pt`` (everything else). The file
    written has the full ``state_dict`` and the metadata, so ``Recipe.load_from_checkpoint`` loads
    it in one process; the optimizer states are left out (they are keyed by parameter name in the
    folder), so it is for evaluating or exporting, not for resuming (resume from the folder).
    Lightning's ``consolidate_checkpoint`` reads ``FSDPStrategy`` folders only (a ``model`` key).

    Raises:
        FileNotFoundError: ``folder`` has no ``meta.pt``.
    """
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, output = Path(folder), Path(output)
    if not (folder / "meta.pt").is_file():
        raise FileNotFoundError(f"{folder} is not a distributed checkpoint folder (no meta.pt).")
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "tensors.pt")
        tensors = torch.load(Path(tmp) / "tensors.pt", map_location="cpu", weights_only=True)
    checkpoint = torch.load(folder / "meta.pt", map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = tensors["state_dict"]
    checkpoint.pop("optimizer_states", None)
    torch.save(checkpoint, output)
    return output
