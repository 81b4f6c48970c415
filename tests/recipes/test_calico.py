"""CALICO recipes: the PRC and RAD steps, the frozen teacher, resume and CLI fits (losses: tests/losses/test_contrastive.py,
toolkit parts: tests/lidar/test_region_contrast.py)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.bev import (
    BEVBackbone,
)
from lightning_distill.lidar.networks import SparseUNet
from lightning_distill.lidar.regions import RegionPartition
from lightning_distill.recipes.calico import CALICOPRC, CALICORAD, prc_teacher
from tests.conftest import quiet_trainer_kwargs
from tests.lidar.conftest import TINY, make_tiny_datamodule


@pytest.fixture(scope="module")
def tiny_datamodule():
    return make_tiny_datamodule()


CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "calico"
TOY_PARTITION = dict(min_area=0.0, min_aspect=0.0)


# ------------------------------------------------------------------ recipes
def make_prc(**kwargs) -> CALICOPRC:
    torch.manual_seed(0)
    return CALICOPRC(
        SparseUNet(1, widths=(4, 8)),
        feature_dim=8,
        num_rich=32,
        num_less=32,
        voxel_size=0.3,
        partition=RegionPartition(**TOY_PARTITION),
        **kwargs,
    )


def make_rad(teacher=None, **kwargs) -> CALICORAD:
    torch.manual_seed(1)
    student = BEVBackbone(cell_size=1.6, pillar_channels=4, widths=(4, 8), out_channels=8)
    teacher = teacher if teacher is not None else SparseUNet(1, widths=(4, 8))
    return CALICORAD(
        student,
        teacher,
        feature_dim=8,
        num_rich=32,
        num_less=32,
        voxel_size=0.3,
        partition=RegionPartition(**TOY_PARTITION),
        **kwargs,
    )


def test_prc_step_is_alpha_plrc_plus_rapc_and_trains_backbone_and_head(tiny_datamodule):
    assert make_prc().loss_weights == {"plrc": 0.5, "rapc": 0.5}  # the paper's alpha = 0.5
    recipe = make_prc(loss_weights={"plrc": 0.25, "rapc": 0.75}, symmetric=False)
    recipe.log = lambda *a, **k: None
    batch = collate(tiny_datamodule.scenes("train")[:2])
    with torch.no_grad():
        terms, z1, z2 = recipe.contrast(batch["points"], 0)
    assert len(z1) > 32  # rich and less points of two scans
    out = recipe.training_step(batch, 0)
    torch.testing.assert_close(out["loss"].detach(), 0.25 * terms["plrc"] + 0.75 * terms["rapc"])
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.head.parameters())


def test_rad_teacher_is_frozen_unchanged_and_outside_the_optimizer(tiny_datamodule):
    recipe = make_rad()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    head_before = recipe.teacher_head.net.weight.detach().clone()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=tiny_datamodule)
    for k, v in recipe.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics included
    assert not recipe.teacher.training
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in recipe.teacher.parameters()}
    assert {id(p) for p in recipe.student.parameters()} <= optimised
    assert not torch.equal(recipe.teacher_head.net.weight, head_before)


def test_rad_gradients_reach_student_and_heads_only(tiny_datamodule):
    recipe = make_rad()
    recipe.log = lambda *a, **k: None
    recipe.training_step(collate(tiny_datamodule.scenes("train")[:2]), 0)["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.student_head.parameters())
    assert all(p.grad is not None for p in recipe.teacher_head.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="loss_weights"):
        make_prc(loss_weights={"plrc": -0.5})
    with pytest.raises(ValueError, match="temperature"):
        make_prc(temperature=0.0)
    with pytest.raises(TypeError, match="grid"):
        CALICORAD(SparseUNet(1, widths=(4,)), SparseUNet(1, widths=(4,)))


def test_prc_teacher_loads_a_checkpoint_and_caches_training(tmp_path, tiny_datamodule):
    trained = make_prc().student
    torch.save({f"student.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "prc.pt")
    loaded = prc_teacher(SparseUNet(1, widths=(4, 8)), checkpoint=str(tmp_path / "prc.pt"))
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    kwargs = dict(
        data=tiny_datamodule, epochs=1, voxel_size=0.3, num_rich=16, num_less=16, cache_dir=str(tmp_path)
    )
    first = prc_teacher(SparseUNet(1, widths=(4, 8)), **kwargs)
    (cached,) = (tmp_path / "teachers").glob("calico_prc-*.pt")
    stamp = cached.stat().st_mtime_ns
    second = prc_teacher(SparseUNet(1, widths=(4, 8)), **kwargs)
    assert cached.stat().st_mtime_ns == stamp  # loaded, not retrained
    for k, v in first.state_dict().items():
        assert torch.equal(second.state_dict()[k], v)
    assert "cache" in second.distill_source
    with pytest.raises(ValueError, match="checkpoint"):
        prc_teacher(SparseUNet(1, widths=(4, 8)))


def _tiny(prefix: str) -> list[str]:
    return [f"--{prefix}.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


@pytest.mark.parametrize("stage", ["prc", "rad"])
def test_config_fits_with_fast_dev_run(tmp_path, monkeypatch, stage):
    from lightning_distill.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_DISTILL_CACHE", str(tmp_path / "cache"))
    name = "config.yaml" if stage == "prc" else "rad.yaml"
    args = ["fit", "--config", str(CONFIGS / name), "--trainer.fast_dev_run=true"]
    args += [
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *_tiny("data.init_args"),
    ]
    if stage == "prc":
        args += ["--model.init_args.student.init_args.widths=[4, 8]"]
    else:
        teacher = "--model.init_args.teacher.init_args"
        args += [
            f"{teacher}.epochs=1",
            f"{teacher}.backbone.init_args.widths=[4, 8]",
            *_tiny(f"{teacher[2:]}.data.init_args"),
        ]
    main(args)
    if stage == "rad":
        assert list((tmp_path / "cache" / "teachers").glob("calico_prc-*.pt"))


def test_default_optimizer_is_adamw_as_neither_paper_nor_prototype_states_one():
    import inspect

    for recipe in (CALICOPRC, CALICORAD):
        assert inspect.signature(recipe).parameters["optimizer"].default is torch.optim.AdamW
