"""SyntheticSetModule: evaluation by retraining, the seed through checkpoints, the artifact, errors."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.dataset_distillation import EvalSpec, SyntheticSet, retrain_model
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from tests.conftest import quiet_trainer_kwargs

K = 3


class Toy(SyntheticSetModule):
    """Pulls the images towards a target drawn from ``step_seed``; nothing else of its own."""

    requires_teacher = False
    loss_terms = ("pull",)
    method, seed_key = "toy", "toy_seed"

    def __init__(self, synthetic: SyntheticSet, save_path: str | None = None, **kwargs) -> None:
        super().__init__(synthetic, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), **kwargs)
        self.save_path = save_path

    def training_step(self, batch, batch_idx):
        generator = torch.Generator().manual_seed(self.step_seed(self.global_step))
        target = torch.randn(self.synthetic.images.shape, generator=generator)
        return self.log_losses({"pull": (self.synthetic.images - target).pow(2).mean()})


class Constant(nn.Module):
    """Always predicts class ``c``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c
        self.bias = nn.Parameter(torch.zeros(K))

    def forward(self, x):
        return F.one_hot(torch.full((x.shape[0],), self.c), K).float() + self.bias


class ConstantModels(Toy):
    """Retrains to a model predicting class ``seed``, and records each call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, str]] = []

    def fit_eval_model(self, synthetic, *, epochs, seed, stage):
        self.calls.append((epochs, seed, stage))
        return Constant(seed)


def tiny_set(**kwargs) -> SyntheticSet:
    spec = EvalSpec(
        architecture=EvalSpec.convnet(in_channels=1, image_size=[4, 4], width=4, depth=1), epochs=3
    )
    kwargs.setdefault("init", "noise")
    return SyntheticSet(K, 2, (1, 4, 4), seed=0, eval_spec=spec, **kwargs)


def real_batches() -> DataLoader:
    y = torch.tensor([0, 0, 0, 1, 2, 2, 1, 0, 2, 2, 2])
    return DataLoader(TensorDataset(torch.randn(y.numel(), 1, 4, 4), y), batch_size=4)  # batches 4, 4, 3


def test_validation_and_test_log_the_mean_accuracy_of_the_retrained_models():
    recipe = ConstantModels(tiny_set(), val_epochs=5, val_seeds=(0, 2))
    trainer = L.Trainer(**quiet_trainer_kwargs())
    y = torch.cat([batch[1] for batch in real_batches()])
    expected = ((y == 0).float().mean() + (y == 2).float().mean()) / 2  # one model per seed
    val = trainer.validate(recipe, dataloaders=real_batches(), verbose=False)[0]
    test = trainer.test(recipe, dataloaders=real_batches(), verbose=False)[0]
    torch.testing.assert_close(torch.tensor(val["val/syn_acc"]), expected)
    torch.testing.assert_close(torch.tensor(test["test/syn_acc"]), expected)
    # validation retrains for val_epochs, test for the set's EvalSpec epochs; the models are dropped after.
    assert recipe.calls == [(5, 0, "val"), (5, 2, "val"), (3, 0, "test"), (3, 2, "test")]
    assert recipe._eval_models == []


def test_default_retraining_is_retrain_model_with_the_eval_spec():
    recipe = Toy(tiny_set(), val_seeds=(4,))
    (model,) = recipe.retrain(1, "test")
    spec = recipe.synthetic.eval_spec
    reference = retrain_model(
        recipe.synthetic.images.detach(),
        recipe.synthetic.labels,
        spec.build_model,
        epochs=1,
        lr=spec.lr,
        seed=4,
        augment=spec.augment,
        batch_size=spec.batch_size,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
    )
    for (name, value), (ref_name, ref_value) in zip(
        model.state_dict().items(), reference.state_dict().items()
    ):
        assert name == ref_name
        torch.testing.assert_close(value, ref_value)


def test_seed_survives_a_checkpoint_and_the_artifact_is_saved(tmp_path):
    recipe = Toy(tiny_set(), seed=11, save_path=str(tmp_path / "set.pt"))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0))
    trainer.fit(recipe, train_dataloaders=DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["lightning_distill"]["toy_seed"] == 11

    restored = Toy(tiny_set(), seed=None)
    restored.on_load_checkpoint(checkpoint)
    assert restored.seed == 11
    assert [restored.step_seed(k) for k in range(3)] == [recipe.step_seed(k) for k in range(3)]

    saved = SyntheticSet.load(tmp_path / "set.pt")
    torch.testing.assert_close(saved.images, recipe.synthetic.images.detach())


@pytest.mark.filterwarnings("ignore:The distilled set was not saved")
def test_three_steps_move_the_images_by_the_seeded_targets():
    synthetic = tiny_set()
    start = synthetic.images.detach().clone()
    recipe = Toy(synthetic, seed=2)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0))
    trainer.fit(recipe, train_dataloaders=DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1))
    expected = start
    for k in range(3):  # plain SGD, lr 0.1, on mean((x - t_k)^2)
        target = torch.randn(start.shape, generator=torch.Generator().manual_seed(recipe.step_seed(k)))
        expected = expected - 0.1 * 2 * (expected - target) / start.numel()
    torch.testing.assert_close(recipe.synthetic.images.detach(), expected)


def test_setup_takes_the_seed_from_seed_everything():
    L.seed_everything(1234)
    recipe = Toy(tiny_set())
    recipe.setup("fit")
    assert recipe.seed == 1234


class WithStudent(SyntheticSetModule):
    requires_teacher = False

    def __init__(self, synthetic: SyntheticSet, student: nn.Module) -> None:
        super().__init__(synthetic, student)


def test_a_separate_student_keeps_the_set_as_a_submodule():
    projector = nn.Linear(2, K)
    recipe = WithStudent(tiny_set(), projector)
    assert recipe.student is projector
    assert isinstance(recipe.synthetic, SyntheticSet)
    assert recipe.synthetic is not recipe.student
    assert {"synthetic.images", "student.weight"} <= set(recipe.state_dict())


def test_bad_arguments_and_missing_real_images_are_explained():
    with pytest.raises(TypeError, match="SyntheticSet"):
        Toy(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="val_epochs"):
        Toy(tiny_set(), val_epochs=0)
    with pytest.raises(ValueError, match="val_seeds"):
        Toy(tiny_set(), val_seeds=())
    recipe = Toy(tiny_set())
    with pytest.raises(ValueError, match="stage"):
        recipe.retrain(1, "train")
    with pytest.raises(ValueError, match="epochs"):
        recipe.retrain(0)
    with pytest.raises(ValueError, match="train_images"):
        Toy(tiny_set(init="real")).setup("fit")
