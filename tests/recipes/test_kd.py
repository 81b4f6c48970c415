"""KD baseline recipe: soft/hard/feature terms against direct computations, hooks and cache wiring."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.callbacks import TeacherCacheCallback
from lightning_distill.data import DigitsDataModule
from lightning_distill.models import ConvAdapter, SmallCNN
from lightning_distill.recipes.kd import KnowledgeDistillation
from lightning_distill.utils.augment import RandomResizedCropFlip
from tests.conftest import quiet_trainer_kwargs


def make(**kwargs) -> KnowledgeDistillation:
    torch.manual_seed(0)
    return KnowledgeDistillation(
        student=SmallCNN(width=4, depth=2), teacher=SmallCNN(width=8, depth=2), **kwargs
    )


def test_soft_target_loss_is_temperature_scaled_kl():
    recipe = make(temperature=3.0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    expected = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean") * 9
    torch.testing.assert_close(recipe.soft_target_loss(s, t), expected)


def test_hint_term_uses_the_tapped_layers_and_trains_the_adapter():
    recipe = make(
        feature_loss="hint", student_layer="layer2", teacher_layer="layer2", adapter=ConvAdapter(8, 16)
    )
    captured = {}

    class Check(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                x = batch[0]
                with torch.no_grad():
                    s = pl_module.student.layer2(pl_module.student.layer1(pl_module.student.stem(x)))
                    t = pl_module.teacher.layer2(pl_module.teacher.layer1(pl_module.teacher.stem(x)))
                captured["feat"] = float(outputs["feat"])
                captured["s_shape"], captured["t_shape"] = s.shape, t.shape
            grads = [p.grad for p in pl_module.adapter.parameters()]
            captured["adapter_grad"] = all(g is not None and g.abs().sum() > 0 for g in grads)
            captured["teacher_grad"] = any(p.grad is not None for p in pl_module.teacher.parameters())

    adapter_before = [p.detach().clone() for p in recipe.adapter.parameters()]
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, callbacks=[Check()]))
    trainer.fit(recipe, datamodule=DigitsDataModule(size=16, batch_size=32))
    assert captured["s_shape"][1] == 8 and captured["t_shape"][1] == 16
    assert captured["feat"] > 0 and captured["adapter_grad"] and not captured["teacher_grad"]
    assert any(not torch.equal(a, b) for a, b in zip(adapter_before, recipe.adapter.parameters()))


def test_feature_term_matches_direct_hint_computation():
    recipe = make(
        feature_loss="hint", student_layer="layer1", teacher_layer="layer1", adapter=ConvAdapter(4, 8)
    )
    recipe.eval()
    fs, ft = torch.randn(2, 4, 4, 4), torch.randn(2, 8, 4, 4)
    expected = ((recipe.adapter(fs) - ft) ** 2).mean()
    torch.testing.assert_close(recipe.feature_term(fs, ft), expected)


def test_cache_serves_the_teacher_after_the_first_epoch(tmp_path):
    cache = TeacherCacheCallback(
        tmp_path / "cache", output_dim=10, augmentation=RandomResizedCropFlip(8, scale=(0.7, 1.0), flip_p=0.0)
    )
    recipe = make(cache=cache)
    calls = []
    recipe.teacher.register_forward_hook(lambda m, a, o: calls.append(int(a[0].shape[0])))
    per_epoch, seen = [], []

    class Count(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            calls.clear()
            seen.append(set())

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[-1].update(batch[2].tolist())

        def on_train_epoch_end(self, trainer, pl_module):
            per_epoch.append(sum(calls))

    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2, limit_val_batches=0, callbacks=[Count()]))
    trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=64, return_index=True))
    # Epoch 1 runs the teacher on every sample; epoch 2 only on those epoch 1 never drew (drop_last).
    assert per_epoch[0] == len(seen[0])
    assert per_epoch[1] == len(seen[1] - seen[0]) < 64


def test_cache_without_indices_is_explained(tmp_path):
    recipe = make(cache=TeacherCacheCallback(tmp_path / "c", output_dim=10))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0))
    with pytest.raises(ValueError, match="return_index"):
        trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"feature_loss": "mse"}, "feature_loss"),
        ({"feature_loss": "hint"}, "student_layer"),
        (
            {
                "feature_loss": "at",
                "student_layer": "a",
                "teacher_layer": "b",
                "cache": TeacherCacheCallback("/tmp/unused", output_dim=10),
            },
            "one or the other",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_a_wrong_layer_path_lists_close_names():
    recipe = make(feature_loss="at", student_layer="layer3", teacher_layer="layer2")
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1))
    with pytest.raises(ValueError, match="student.layer2"):
        trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=32))
