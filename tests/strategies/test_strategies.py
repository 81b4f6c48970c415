"""Recipes under DDP, bf16-mixed and FSDP2 on CPU: the matrix of ``tools/strategy_matrix.py``.

The fast subset runs three recipes of different shapes (KD: automatic optimization with a frozen
teacher; DMD2: manual optimization with a fake score and a GAN head; DataDAM: synthetic images as
the parameters) in CI, with the FSDP2 plans of DMD2 and DataDAM (test_sharding.py has their unit
tests and the distributed-checkpoint resume); the FSDP2 refusal is checked here on the base and end
to end in the full matrix. The full matrix, every registered recipe, runs with ``make matrix`` (which
rewrites docs/strategies.md) or ``LIGHTNING_DISTILL_MATRIX=1 pytest -m matrix tests/strategies``.
What each run checks is in the script's docstring.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_distill import DistillationModule
from lightning_distill.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("strategy_matrix", ROOT / "tools" / "strategy_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
sys.modules["strategy_matrix"] = matrix
_spec.loader.exec_module(matrix)

FAST = {"kd": ["ddp", "bf16"], "dmd2": ["ddp", "bf16", "fsdp2"], "datadam": ["ddp", "bf16", "fsdp2"]}


def _run(slug: str, modes: list[str], tmp_path: Path) -> list:
    cells = matrix.run_recipe(slug, modes, tmp_path, steps=3, timeout=300)
    report = "\n".join(f"{c.mode}: {c.status} {c.detail} {c.notes}" for c in cells)
    assert all(c.status in ("pass", "refused", "n/a") for c in cells), report
    return cells


@pytest.mark.parametrize("slug", sorted(FAST))
def test_fast_subset(slug, tmp_path):
    cells = _run(slug, FAST[slug], tmp_path)
    assert [c.status for c in cells] == ["pass"] * len(FAST[slug])


@pytest.mark.matrix
@pytest.mark.skipif(os.environ.get("LIGHTNING_DISTILL_MATRIX") != "1", reason="full matrix: make matrix")
@pytest.mark.parametrize("slug", list(RECIPES))
def test_full_matrix(slug, tmp_path):
    _run(slug, list(matrix.MODES), tmp_path)


@pytest.mark.parametrize("slug", list(RECIPES))
def test_every_recipe_has_a_command_and_a_row_in_the_docs(slug, tmp_path):
    """A recipe added to the registry needs a config the matrix can run, and a row: run `make matrix`."""
    config = ROOT / "recipes" / slug / RECIPES[slug].config
    assert config.exists(), config
    for mode in ("single", *matrix.MODES):
        cmd, env = matrix.fit_command(slug, mode, tmp_path, steps=2)
        assert str(config) in cmd and env["LD_MATRIX_OUT"] == str(tmp_path)
    doc = (ROOT / "docs" / "strategies.md").read_text()
    assert re.search(rf"^\| `{slug}` \|", doc, flags=re.M), (
        f"{slug} has no row in docs/strategies.md: run `make matrix`"
    )


class _Tiny(DistillationModule):
    requires_teacher = False
    loss_terms = ("mse",)


@pytest.mark.parametrize(
    "strategy, refused",
    [
        ("ModelParallelStrategy", True),
        ("FSDPStrategy", True),
        ("DDPStrategy", False),
        ("SingleDeviceStrategy", False),
    ],
)
def test_base_refuses_sharding_strategies_at_setup(strategy, refused):
    module = _Tiny(student=nn.Linear(2, 2))
    module._trainer = SimpleNamespace(strategy=type(strategy, (), {})())
    if refused:
        with pytest.raises(RuntimeError, match=rf"_Tiny cannot run under {strategy}: .*fully_shard.*ddp"):
            module.configure_model()
    else:
        module.configure_model()
    module._trainer = None
    module.configure_model()  # outside a trainer: nothing to refuse
    assert isinstance(module.student.weight, torch.nn.Parameter)


def _averaging_checkpoint(tmp_path: Path, live: dict, average: dict) -> Path:
    """A checkpoint laid out as Lightning's ``WeightAveraging`` saves it (average loads, live resumes)."""
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": average, "current_model_state": live, "averaging_state": {}}, path)
    return path


def test_checkpoint_check_reads_weight_averaging_checkpoints(tmp_path, monkeypatch):
    """The live weights must be the final ones and the averaged ones must load; either wrong fails."""
    live = {"w": torch.ones(2)}
    average = {"w": torch.full((2,), 0.5)}

    class Loaded(nn.Module):
        def __init__(self, state):
            super().__init__()
            self.w = nn.Parameter(state["w"].clone())

    def loader(state):
        return SimpleNamespace(load_from_checkpoint=lambda path, map_location: Loaded(state))

    final = {"state": {"w": torch.ones(2)}, "trainable": ["w"]}
    path = _averaging_checkpoint(tmp_path, live, average)
    monkeypatch.setattr("lightning_distill.recipes.load_recipe", lambda slug: loader(average))
    assert matrix.check_checkpoint("x", path, final) == []
    # The averaged weights do not reach the loaded module.
    monkeypatch.setattr("lightning_distill.recipes.load_recipe", lambda slug: loader(live))
    assert any("do not load" in f for f in matrix.check_checkpoint("x", path, final))
    # The live weights beside the average are not the final ones.
    monkeypatch.setattr("lightning_distill.recipes.load_recipe", lambda slug: loader(average))
    stale = _averaging_checkpoint(tmp_path, {"w": torch.zeros(2)}, average)
    assert any("live weights" in f for f in matrix.check_checkpoint("x", stale, final))


@pytest.mark.parametrize(
    "staged, manual, expected", [(False, False, None), (True, False, True), (False, True, True)]
)
def test_ddp_looks_for_unused_parameters_for_turns_and_stages(staged, manual, expected):
    class Module(_Tiny):
        trains_parameters_by_stage = staged

    module = Module(student=nn.Linear(2, 2))
    module.automatic_optimization = not manual
    ddp_kwargs: dict = {}
    module._trainer = SimpleNamespace(strategy=type("DDPStrategy", (), {"_ddp_kwargs": ddp_kwargs})())
    module.configure_model()
    assert ddp_kwargs.get("find_unused_parameters") is expected
    ddp_kwargs["find_unused_parameters"] = False  # a strategy that names it wins
    module.configure_model()
    assert ddp_kwargs["find_unused_parameters"] is False
