"""SLidR recipe: frozen 2D backbone, trainable heads, loss wiring, shuffled control, CLI fit."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.networks import SmallImageBackbone, SparseUNet
from lightning_distill.losses.contrastive import superpixel_info_nce
from lightning_distill.recipes.slidr import SLidR
from tests.conftest import quiet_trainer_kwargs
from tests.lidar.conftest import TINY, make_tiny_datamodule


@pytest.fixture(scope="module")
def tiny_datamodule():
    return make_tiny_datamodule()


def make_recipe(**kwargs) -> SLidR:
    torch.manual_seed(0)
    return SLidR(SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.3, **kwargs)


def test_training_step_is_the_superpixel_info_nce_of_the_features(tiny_datamodule):
    recipe = make_recipe()
    recipe.log = lambda *a, **k: None
    batch = collate(tiny_datamodule.scenes("train")[:2])
    # train mode both times: batch norm uses the batch's statistics, so the features are reproducible
    with torch.no_grad():
        expected = superpixel_info_nce(
            recipe.point_features(batch["points"]),
            recipe.pixel_features(batch["images"]),
            batch["superpixels"].flatten(0, 1),
            *recipe.pairs(batch),
            temperature=0.07,
        )
    loss = recipe.training_step(batch, 0)["loss"]
    torch.testing.assert_close(loss.detach(), expected)
    assert loss.requires_grad and float(expected) > 0


def test_frozen_image_backbone_is_unchanged_and_outside_the_optimizer(tiny_datamodule):
    recipe = make_recipe()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    heads_before = recipe.image_head.proj.weight.detach().clone()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=tiny_datamodule)
    for k, v in recipe.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not recipe.teacher.training
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in recipe.teacher.parameters()}
    assert {id(p) for p in recipe.image_head.parameters()} <= optimised
    assert {id(p) for p in recipe.point_head.parameters()} <= optimised
    assert not torch.equal(recipe.image_head.proj.weight, heads_before)


def test_gradients_reach_student_and_heads_only(tiny_datamodule):
    recipe = make_recipe(level="point", num_matches=64)
    recipe.log = lambda *a, **k: None
    out = recipe.training_step(collate(tiny_datamodule.scenes("train")[:2]), 0)
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.image_head.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_shuffled_pairs_keep_pixels_and_permute_points(tiny_datamodule):
    batch = collate(tiny_datamodule.scenes("train")[:2])
    plain, shuffled = make_recipe().pairs(batch), make_recipe(shuffle_pairs=True).pairs(batch)
    assert torch.equal(plain.u, shuffled.u) and torch.equal(plain.image, shuffled.image)
    assert torch.equal(plain.point.sort().values, shuffled.point.sort().values)
    assert not torch.equal(plain.point, shuffled.point)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="level"):
        make_recipe(level="pixel")
    with pytest.raises(ValueError, match="temperature"):
        make_recipe(temperature=0.0)
    with pytest.raises(TypeError, match="out_channels"):
        SLidR(SparseUNet(1, widths=(4,)), torch.nn.Linear(3, 4))


def test_slidr_config_fits_with_fast_dev_run(tmp_path, monkeypatch):
    from pathlib import Path

    from lightning_distill.cli import main

    config = Path(__file__).resolve().parents[2] / "recipes" / "slidr" / "config.yaml"
    monkeypatch.chdir(tmp_path)
    data = [f"--data.init_args.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run=true",
            "--trainer.enable_progress_bar=false",
            "--model.init_args.student.init_args.widths=[4, 8]",
            *data,
        ]
    )


@pytest.mark.parametrize("stop", [1, 2])
def test_resume_reproduces_the_uninterrupted_losses(tmp_path, stop):
    """Stopped mid-epoch (1) or at an epoch end (2), a resumed run trains on the same batches."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from lightning_distill.data.lidar import SyntheticLidarDataModule

    class Record(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

    def run(max_steps, ckpt_path=None):
        L.seed_everything(3)
        record = Record()
        checkpoint = ModelCheckpoint(
            dirpath=tmp_path / f"run{max_steps}", every_n_train_steps=1, save_top_k=-1
        )
        trainer = L.Trainer(
            **quiet_trainer_kwargs(
                max_steps=max_steps,
                enable_checkpointing=True,
                callbacks=[record, checkpoint],
                limit_val_batches=0,
            )
        )
        trainer.fit(make_recipe(), datamodule=SyntheticLidarDataModule(**TINY), ckpt_path=ckpt_path)
        return record.losses

    full = run(3)
    first = run(stop)
    (ckpt,) = (tmp_path / f"run{stop}").glob(f"*step={stop}.ckpt")
    resumed = run(3, ckpt_path=str(ckpt))
    torch.testing.assert_close(torch.tensor(first + resumed), torch.tensor(full))


def test_default_optimizer_is_the_official_sgd():
    # valeoai/SLidR config/slidr_minkunet.yaml (commit dce900a): lr 0.5, sgd_momentum 0.9,
    # sgd_dampening 0.1, weight_decay 0.0001
    import inspect

    from lightning_distill.lidar.image_to_lidar import slidr_sgd

    assert inspect.signature(SLidR).parameters["optimizer"].default is slidr_sgd
    optimizer = make_recipe().configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    defaults = optimizer.defaults
    assert (defaults["lr"], defaults["momentum"], defaults["dampening"], defaults["weight_decay"]) == (
        0.5,
        0.9,
        0.1,
        1e-4,
    )
    assert defaults["nesterov"] is False


def test_print_config_shows_the_default_optimizer_by_name(tmp_path, capsys):
    from lightning_distill.cli import main

    config = tmp_path / "slidr.yaml"
    config.write_text(
        "model:\n  class_path: lightning_distill.recipes.slidr.SLidR\n  init_args:\n"
        "    student: {class_path: lightning_distill.lidar.SparseUNet, init_args: {in_channels: 1, widths: [4]}}\n"
        "    teacher: {class_path: lightning_distill.lidar.SmallImageBackbone, init_args: {widths: [4]}}\n"
        "data: {class_path: lightning_distill.data.lidar.SyntheticLidarDataModule}\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    assert "optimizer: lightning_distill.lidar.slidr_sgd" in capsys.readouterr().out


def test_a_user_subclass_overriding_one_equation_changes_only_that_step(tiny_datamodule):
    class HalfSLidR(SLidR):
        def superpixel_loss(self, point_features, pixel_features, superpixels, pairs):
            loss, logits = super().superpixel_loss(point_features, pixel_features, superpixels, pairs)
            return 0.5 * loss, logits

    batch = collate(tiny_datamodule.scenes("train")[:2])
    plain = make_recipe()
    torch.manual_seed(0)
    custom = HalfSLidR(SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.3)
    custom.load_state_dict(plain.state_dict())
    for recipe in (plain, custom):
        recipe.log = lambda *a, **k: None
    torch.testing.assert_close(
        custom.training_step(batch, 0)["loss"], 0.5 * plain.training_step(batch, 0)["loss"]
    )
