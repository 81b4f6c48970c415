"""FTD / MTT: trajectory toolkit against independent computations, SAM/GSAM steps, the EMA, the recipe, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_distill.cli import main as cli_main
from lightning_distill.data import ClassBalancedDataModule, DigitsDataModule
from lightning_distill.dataset_distillation import (
    ConvNet,
    ConvNetSpec,
    EvalSpec,
    SyntheticSet,
    full_training_set,
)
from lightning_distill.dataset_distillation.experts import (
    ExpertSpec,
    ExpertTrajectories,
    expert_trajectories,
)
from lightning_distill.dataset_distillation.trajectory import (
    ParamLayout,
    unroll_student,
)
from lightning_distill.losses.dataset_distillation import trajectory_matching_loss
from lightning_distill.recipes.ftd import FTD
from tests.conftest import quiet_trainer_kwargs

ROOT = Path(__file__).resolve().parents[2]
SPEC = ConvNetSpec(in_channels=1, num_classes=10, image_size=(8, 8), width=8, depth=2)
TINY_EXPERTS = ExpertSpec(
    num_experts=2, epochs=3, optimizer="sgd", batch_size=256, augment=None, momentum=0.9
)


@pytest.fixture(scope="module")
def buffer_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    dm = DigitsDataModule()
    x, y = full_training_set(dm)
    buffer = expert_trajectories(SPEC, x, y, TINY_EXPERTS, cache_dir=tmp_path_factory.mktemp("experts"))
    return str(buffer.save(tmp_path_factory.mktemp("buffer") / "experts.pt"))


def make(buffer_path: str, ipc: int = 2, **kwargs) -> FTD:
    eval_spec = EvalSpec(
        architecture=EvalSpec.convnet(in_channels=1, image_size=[8, 8], width=8, depth=2), epochs=2
    )
    synthetic = SyntheticSet(10, ipc, (1, 8, 8), init="real", seed=0, learn_lr=True, eval_spec=eval_spec)
    defaults = dict(
        network=SPEC,
        expert_path=buffer_path,
        syn_steps=3,
        expert_epochs=1,
        max_start_epoch=2,
        augment="none",
        seed=7,
        val_epochs=2,
        optimizer=lambda params: torch.optim.SGD(params, lr=10.0, momentum=0.5),
    )
    defaults.update(kwargs)
    return FTD(synthetic, **defaults)


def data(steps: int = 3) -> ClassBalancedDataModule:
    return ClassBalancedDataModule(DigitsDataModule(), per_class=1, steps_per_epoch=steps)


class Record(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.initial: torch.Tensor | None = None

    def on_train_start(self, trainer, pl_module):
        self.initial = pl_module.synthetic.images.detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        syn = pl_module.synthetic
        self.steps.append({"images": syn.images.detach().clone(), "log_lr": syn.log_lr.detach().clone()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = self.steps[-1]
        step["image_grad"] = pl_module.synthetic.images.grad.clone()
        step["lr_grad"] = pl_module.synthetic.log_lr.grad.clone()
        step["net_grads"] = [p.grad for p in pl_module.student_net.parameters()]
        step["opt_params"] = {id(p) for g in optimizer.param_groups for p in g["params"]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1]["match"] = float(outputs["match"])
        self.steps[-1]["after"] = pl_module.synthetic.images.detach().clone()


# ---------------------------------------------------------------------------- recipe
def test_step_loss_matches_an_independent_unroll_and_gradients_reach_images_and_lr_only(
    buffer_path, tmp_path
):
    recipe, record = make(buffer_path, save_path=str(tmp_path / "set.pt")), Record()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, callbacks=[record]))
    trainer.fit(recipe, datamodule=data())
    buffer = ExpertTrajectories.load(buffer_path)
    for k, step in enumerate(record.steps):
        generator = torch.Generator().manual_seed(recipe.step_seed(k))
        expert = int(torch.randint(buffer.num_experts, (1,), generator=generator))
        epoch = int(torch.randint(2, (1,), generator=generator))
        start, target = buffer.params[expert, epoch], buffer.params[expert, epoch + 1]
        net = ConvNet.from_spec(SPEC)
        end = unroll_student(
            net,
            ParamLayout.of(net),
            start,
            step["images"],
            recipe.synthetic.labels,
            step["log_lr"].exp(),
            3,
            generator=generator,
        )
        assert step["match"] == pytest.approx(
            float(trajectory_matching_loss(end, start, target).detach()), rel=1e-5
        )
        assert step["image_grad"].abs().sum() > 0 and step["lr_grad"].abs() > 0
        assert all(g is None for g in step["net_grads"])
        assert step["opt_params"] == {id(recipe.synthetic.images), id(recipe.synthetic.log_lr)}
    assert not recipe.buffer.params.requires_grad and recipe.buffer.params.grad is None
    assert torch.equal(recipe.buffer.params, buffer.params)  # the buffer is never changed
    assert not any(p.requires_grad for p in recipe.ema_synthetic.parameters())


def test_ema_of_the_images_equals_the_closed_form_and_is_what_is_saved(buffer_path, tmp_path):
    decay = 0.6
    recipe, record = make(buffer_path, ema_decay=decay, save_path=str(tmp_path / "set.pt")), Record()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=4, limit_val_batches=0, callbacks=[record]))
    trainer.fit(recipe, datamodule=data())
    live = [record.initial] + [s["after"] for s in record.steps]
    k_max = len(live) - 1
    closed_form = decay**k_max * live[0] + sum(
        (1 - decay) * decay ** (k_max - k) * live[k] for k in range(1, k_max + 1)
    )
    torch.testing.assert_close(recipe.ema_synthetic.images, closed_form)
    assert not torch.allclose(closed_form, live[-1])  # the EMA is not the live set
    evaluated = recipe.evaluated_set()
    torch.testing.assert_close(evaluated.images, closed_form)
    torch.testing.assert_close(evaluated.log_lr, recipe.synthetic.log_lr.detach())  # the live learned lr
    saved = SyntheticSet.load(tmp_path / "set.pt")
    torch.testing.assert_close(saved.images, closed_form)
    assert saved.metadata["method"] == "ftd" and saved.metadata["steps"] == 4
    trainer.test(recipe, datamodule=data())  # as test_after_fit does: setup("test") keeps the EMA
    torch.testing.assert_close(recipe.ema_synthetic.images, closed_form)


def test_plain_mtt_has_no_ema_and_saves_the_live_set(buffer_path, tmp_path):
    recipe = make(buffer_path, ema_decay=None, save_path=str(tmp_path / "set.pt"))
    assert recipe.configure_callbacks() == [] and not hasattr(recipe, "ema_synthetic")
    L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0)).fit(recipe, datamodule=data())
    saved = SyntheticSet.load(tmp_path / "set.pt")
    assert torch.equal(saved.images, recipe.synthetic.images.detach()) and saved.metadata["method"] == "mtt"


def test_saved_set_reloads_and_evaluates_identically(buffer_path, tmp_path):
    recipe = make(buffer_path, save_path=str(tmp_path / "set.pt"))
    L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0)).fit(recipe, datamodule=data())
    loaded = SyntheticSet.load(tmp_path / "set.pt")
    dm = DigitsDataModule()
    before = recipe.evaluated_set().evaluate(dm, seeds=(0, 1), epochs=3)
    after = loaded.evaluate(dm, seeds=(0, 1), epochs=3)
    assert before.accuracies == after.accuracies
    assert float(loaded.lr.detach()) == pytest.approx(float(recipe.synthetic.lr.detach()))


def test_validation_logs_accuracy_of_a_model_retrained_on_the_ema_set(buffer_path, tmp_path):
    recipe = make(buffer_path, save_path=str(tmp_path / "set.pt"))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=2))
    trainer.fit(recipe, datamodule=data(steps=1))
    assert 0.0 <= float(trainer.callback_metrics["val/syn_acc"]) <= 1.0


def test_bad_arguments_are_rejected(buffer_path, tmp_path):
    with pytest.raises(ValueError, match="learn_lr"):
        FTD(SyntheticSet(10, 1, (1, 8, 8), init="noise"), SPEC)
    with pytest.raises(ValueError, match="ema_decay"):
        make(buffer_path, ema_decay=1.0)
    with pytest.raises(ValueError, match="syn_steps"):
        make(buffer_path, syn_steps=0)
    with pytest.raises(ValueError, match="network"):
        make(
            buffer_path,
            network=ConvNetSpec(in_channels=3, num_classes=10, image_size=(8, 8), width=8, depth=2),
        )
    with pytest.raises(TypeError, match="SyntheticSet"):
        FTD(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="optimizer"):
        ExpertSpec(optimizer="adam")
    recipe = make(buffer_path, max_start_epoch=3, expert_epochs=2, save_path=str(tmp_path / "s.pt"))
    with pytest.raises(ValueError, match="max_start_epoch"):  # the tiny buffer spans 3 epochs
        L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0)).fit(recipe, datamodule=data())


TINY_CLI = [
    "--trainer.fast_dev_run=true",
    "--model.init_args.network.width=8",
    "--model.init_args.network.depth=2",
    "--model.init_args.experts.num_experts=1",
    "--model.init_args.experts.epochs=2",
    "--model.init_args.experts.batch_size=256",
    "--model.init_args.max_start_epoch=1",
    "--model.init_args.expert_epochs=1",
    "--model.init_args.syn_steps=2",
    "--model.init_args.synthetic.init_args.ipc=1",
]


@pytest.mark.parametrize("config", ["config.yaml", "mtt.yaml"])
def test_configs_run_with_fast_dev_run_through_the_cli(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", str(ROOT / "recipes" / "ftd" / config), *TINY_CLI])
    assert not (tmp_path / "synthetic_set.pt").exists()  # fast_dev_run does not write the artifact
    assert list(Path(os.environ["LIGHTNING_DISTILL_CACHE"]).glob("experts/*.pt"))  # the experts were cached
