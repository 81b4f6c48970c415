"""FSDP2 plans (``DistillationModule.shard``): the helpers in one process, the routing of ``configure_model``.

The two-process proofs (losses and final state equal to one process, checkpoints) are the FSDP2
cells of the matrix (``test_strategies.py``: DMD2 and DataDAM in the fast subset) and the resume
test below, marked ``slow``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lightning_distill import DistillationModule
from lightning_distill.dataset_distillation import SyntheticSet
from lightning_distill.recipes import RECIPES, load_recipe
from lightning_distill.utils.sharding import (
    data_parallel_mesh,
    gathered,
    is_sharded,
    keep_every_key,
    shard_blocks,
)

ROOT = Path(__file__).resolve().parents[2]
SHARDED = {"dmd2", "datadam"}  # the recipes with a verified FSDP2 plan (docs/strategies.md, "Sharding")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A one-rank gloo group and its 1-D mesh (FSDP2 with world size 1: the code paths, not the communication)."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_shard_blocks_one_unit_per_block_and_the_same_math(mesh):
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    net = _Blocks()
    plain = _Blocks()
    plain.load_state_dict(net.state_dict())
    shard_blocks(net, mesh)
    assert is_sharded(net) and is_sharded(net.blocks[0]) and is_sharded(net.blocks[2])
    assert not is_sharded(net.blocks[1])  # no parameters: no unit
    assert all(isinstance(p, DTensor) for p in net.parameters())
    assert shard_blocks(net, mesh) is net  # idempotent (configure_model runs again for `test`)
    x = torch.randn(3, 4)
    out, ref = net(x), plain(x)
    assert torch.equal(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad.full_tensor(), q.grad), name


def test_gathered_reads_a_sharded_set_outside_forward(mesh):
    from torch.distributed.tensor import DTensor

    synthetic = SyntheticSet(num_classes=2, ipc=3, image_shape=(1, 4, 4), init="noise", seed=0)
    before = synthetic.images.detach().clone()
    shard_blocks(synthetic, mesh, reshard_after_forward=False)
    assert isinstance(synthetic.images, DTensor)
    with gathered(synthetic):
        assert not isinstance(synthetic.images, DTensor) and torch.equal(synthetic.images, before)
    assert isinstance(synthetic.images, DTensor)
    images, labels = synthetic()  # the forward gathers, and keeps them until the backward
    assert torch.equal(images, before) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    images.sum().backward()
    assert torch.equal(synthetic.images.grad.full_tensor(), torch.ones_like(before))
    with gathered(nn.Linear(2, 2)) as plain:  # an unsharded module: nothing to do
        assert isinstance(plain.weight, nn.Parameter)


class _Planned(DistillationModule):
    requires_teacher = False
    loss_terms = ("mse",)

    def shard(self, mesh):
        self.sharded_on = mesh


class _NoPlan(DistillationModule):
    requires_teacher = False
    loss_terms = ("mse",)


class _Mesh:
    mesh_dim_names = ("data_parallel", "tensor_parallel")

    def __init__(self, tp: int) -> None:
        self.tp = tp

    def __getitem__(self, name):
        return SimpleNamespace(name=name, size=lambda: self.tp if name == "tensor_parallel" else 2)


def _with_strategy(module, name, **attrs):
    module._trainer = SimpleNamespace(strategy=type(name, (), attrs)())
    return module


def test_configure_model_applies_a_plan_under_model_parallel_only():
    module = _with_strategy(_Planned(student=nn.Linear(2, 2)), "ModelParallelStrategy", device_mesh=_Mesh(1))
    module.configure_model()
    assert module.sharded_on.name == "data_parallel"
    module = _with_strategy(_Planned(student=nn.Linear(2, 2)), "ModelParallelStrategy", device_mesh=_Mesh(2))
    with pytest.raises(ValueError, match="tensor_parallel_size=1"):
        module.configure_model()
    module = _with_strategy(_Planned(student=nn.Linear(2, 2)), "FSDPStrategy")
    with pytest.raises(
        RuntimeError, match=r"_Planned cannot run under FSDPStrategy: FSDP1 .*ModelParallelStrategy"
    ):
        module.configure_model()
    for name in ("DDPStrategy", "SingleDeviceStrategy"):
        module = _with_strategy(_Planned(student=nn.Linear(2, 2)), name)
        module.configure_model()
        assert not hasattr(module, "sharded_on")


def test_the_recipes_with_a_plan_are_the_verified_ones():
    """A new plan needs its FSDP2 cell in the matrix (and a line in docs/strategies.md): add it to SHARDED."""
    planned = {slug for slug in RECIPES if load_recipe(slug).shard is not DistillationModule.shard}
    assert planned == SHARDED
    with pytest.raises(NotImplementedError, match="_NoPlan has no sharding plan"):
        _NoPlan(student=nn.Linear(2, 2)).shard(None)


def test_a_distributed_checkpoint_keeps_every_key():
    """A sharded checkpoint is loaded key by key into the sharded module: nothing may be left out of it."""
    full = {"student.w": 1, "teachers.0.w": 2}
    for name, distributed, kept in (
        ("ModelParallelStrategy", True, full),
        ("ModelParallelStrategy", False, {"student.w": 1}),
        ("DDPStrategy", True, {"student.w": 1}),
    ):
        checkpoint = {"state_dict": {"student.w": 1}}
        strategy = type(name, (), {"_save_distributed_checkpoint": distributed})()
        keep_every_key(checkpoint, full, strategy)
        assert checkpoint["state_dict"] == kept, name


def test_data_parallel_mesh_of_a_plain_mesh():
    plain = SimpleNamespace(mesh_dim_names=None)
    assert data_parallel_mesh(plain) is plain


# --------------------------------------------------------------------------- two processes, slow
_spec = importlib.util.spec_from_file_location("strategy_matrix", ROOT / "tools" / "strategy_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("strategy_matrix", matrix)
_spec.loader.exec_module(matrix)


@pytest.mark.slow
@pytest.mark.parametrize("slug", sorted(SHARDED))
def test_fsdp2_distributed_checkpoint_resumes_like_one_process(slug, tmp_path):
    """Sharded (DCP) checkpoint after 2 steps, resumed to 4 under FSDP2 == the same in one process."""
    fails = matrix.check_resume(slug, tmp_path, steps=2, timeout=400)
    assert not fails, fails
    assert os.listdir(tmp_path)
