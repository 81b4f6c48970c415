"""DataDAM recipe: losses against a direct computation, gradients, random networks, artifact, CLI."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_distill.cli import main as cli_main
from lightning_distill.data import ClassBalancedDataModule, DigitsDataModule
from lightning_distill.dataset_distillation import (
    ConvNetSpec,
    EvalSpec,
    SyntheticSet,
    random_network,
)
from lightning_distill.recipes.datadam import DataDAM
from tests.conftest import quiet_trainer_kwargs

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "datadam" / "config.yaml"
SPEC = ConvNetSpec(in_channels=1, num_classes=10, image_size=(8, 8), width=8, depth=2)


def make(ipc: int = 2, **kwargs) -> DataDAM:
    eval_spec = EvalSpec(
        architecture=EvalSpec.convnet(in_channels=1, image_size=[8, 8], width=8, depth=2), epochs=2
    )
    synthetic = SyntheticSet(10, ipc, (1, 8, 8), init="real", seed=0, eval_spec=eval_spec)
    kwargs.setdefault("seed", 7)
    return DataDAM(synthetic, SPEC, val_epochs=2, **kwargs)


def data(per_class: int = 4, steps: int = 3) -> ClassBalancedDataModule:
    return ClassBalancedDataModule(DigitsDataModule(), per_class=per_class, steps_per_epoch=steps)


class Record(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append({"real": batch[0].clone(), "syn": pl_module.synthetic.images.detach().clone()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = self.steps[-1]
        step["syn_grad"] = pl_module.synthetic.images.grad.clone()
        step["net_grads"] = [p.grad for p in pl_module.network.parameters()]
        step["net_weight"] = pl_module.network.features[0].weight.detach().clone()
        step["opt_params"] = {id(p) for g in optimizer.param_groups for p in g["params"]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1].update(sam=float(outputs["sam"]), mmd=float(outputs["mmd"]))


def reference_terms(real, syn, step_seed, power, k=10):
    net = random_network(SPEC, torch.Generator().manual_seed(step_seed))

    def taps(x):  # ReLU outputs, written out layer by layer
        outs = []
        for layer in net.features:
            x = layer(x)
            if isinstance(layer, torch.nn.ReLU):
                outs.append(x)
        return outs, x.flatten(1)

    (r_acts, r_emb), (s_acts, s_emb) = taps(real), taps(syn)

    def class_means(t):
        return t.reshape(k, t.shape[0] // k, -1).mean(1)

    def att(f):
        return F.normalize(f.abs().pow(power).sum(1).flatten(1), dim=1)

    sam = sum(
        ((class_means(att(r)) - class_means(att(s))) ** 2).sum() for r, s in zip(r_acts[:-1], s_acts[:-1])
    )
    mmd = ((class_means(r_emb) - class_means(s_emb)) ** 2).sum()
    return float(sam), float(mmd)


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_losses_match_a_direct_computation_and_only_the_images_learn(power, tmp_path):
    recipe, record = make(power=power, augment="none", save_path=str(tmp_path / "set.pt")), Record()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, callbacks=[record]))
    trainer.fit(recipe, datamodule=data())
    for k, step in enumerate(record.steps):
        sam, mmd = reference_terms(step["real"], step["syn"], recipe.step_seed(k), power)
        assert step["sam"] == pytest.approx(sam, rel=1e-4) and step["mmd"] == pytest.approx(mmd, rel=1e-4)
        assert step["syn_grad"].abs().sum() > 0
        assert all(g is None for g in step["net_grads"])
        assert step["opt_params"] == {id(recipe.synthetic.images)}
    # A fresh random network every step, and frozen.
    w = [s["net_weight"] for s in record.steps]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert all(not p.requires_grad for p in recipe.network.parameters())
    # The images moved; the labels did not.
    assert not torch.equal(record.steps[0]["syn"], recipe.synthetic.images.detach())


def test_siamese_augmentation_is_applied_with_the_same_parameters():
    recipe = make(augment="crop_cutout_scale_rotate")
    real = torch.randn(10 * 4, 1, 8, 8)
    syn = (
        real.reshape(10, 4, 1, 8, 8)[:, :2].reshape(20, 1, 8, 8).clone()
    )  # syn = first 2 real images per class
    out_real, out_syn = recipe.augment_pair(real, syn, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_real.reshape(10, 4, 1, 8, 8)[:, :2].reshape(20, 1, 8, 8), out_syn)


def test_checkpoint_leaves_out_the_random_network_and_artifact_is_saved(tmp_path):
    recipe = make(save_path=str(tmp_path / "set.pt"))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=data())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert "student.images" in state and not any(k.startswith("network.") for k in state)
    loaded = SyntheticSet.load(tmp_path / "set.pt")
    assert torch.equal(loaded.images, recipe.synthetic.images.detach())
    assert loaded.eval_spec == recipe.synthetic.eval_spec and loaded.metadata["steps"] == 2
    resumed = make()
    resumed.on_load_checkpoint(ckpt := torch.load(tmp_path / "last.ckpt", weights_only=True))
    resumed.load_state_dict(ckpt["state_dict"])
    assert torch.equal(resumed.synthetic.images, recipe.synthetic.images.detach()) and resumed.seed == 7


def test_validation_logs_accuracy_of_a_model_retrained_on_the_set(tmp_path):
    recipe = make(save_path=str(tmp_path / "set.pt"))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=2))
    trainer.fit(recipe, datamodule=data(steps=1))
    assert 0.0 <= float(trainer.callback_metrics["val/syn_acc"]) <= 1.0


def test_unbalanced_batches_are_explained(tmp_path):
    recipe = make(save_path=str(tmp_path / "set.pt"))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0))
    with pytest.raises(ValueError, match="ClassBalancedDataModule"):
        trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=40))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="power"):
        make(power=0.0)
    with pytest.raises(ValueError, match="attention_layers"):
        make(attention_layers="some")
    with pytest.raises(ValueError, match="network"):
        DataDAM(SyntheticSet(10, 1, (1, 16, 16), init="noise"), SPEC)
    with pytest.raises(TypeError, match="SyntheticSet"):
        DataDAM(torch.nn.Linear(2, 2))


def test_config_runs_with_fast_dev_run_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.fast_dev_run=true",
            "--model.init_args.network.width=16",
            "--data.init_args.per_class=8",
        ]
    )
    assert not (tmp_path / "synthetic_set.pt").exists()  # fast_dev_run does not write the artifact


def test_resumed_run_reaches_the_same_images_as_an_uninterrupted_one(tmp_path):
    def fit(ckpt_path: str | None = None) -> DataDAM:
        L.seed_everything(0)
        recipe = make(save_path=str(tmp_path / "set.pt"))
        every_2 = ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=2, save_top_k=-1)
        kwargs = quiet_trainer_kwargs(
            max_steps=4, limit_val_batches=0, enable_checkpointing=True, callbacks=[every_2]
        )
        L.Trainer(**kwargs).fit(recipe, datamodule=data(steps=3), ckpt_path=ckpt_path)
        return recipe

    straight = fit()  # 4 steps across an epoch boundary (3 batches per epoch), a checkpoint at step 2
    resumed = fit(ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))  # resumed mid-epoch
    torch.testing.assert_close(resumed.synthetic.images, straight.synthetic.images)


def test_synthetic_grid_puts_each_class_on_a_row():
    recipe = make(ipc=3)
    with torch.no_grad():
        recipe.synthetic.images.copy_(torch.arange(30.0).reshape(30, 1, 1, 1).expand(30, 1, 8, 8))
    grid = recipe.synthetic_grid()
    assert grid.shape == (10 * 8, 3 * 8, 1)
    # Image 3 * c + j sits at row block c, column block j; values are min-max scaled to [0, 1].
    torch.testing.assert_close(grid[2 * 8, 1 * 8, 0], torch.tensor((3 * 2 + 1) / 29))
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0
