"""Label-Assisted Distillation: loss terms against direct computations, frozen teacher, Segformer path."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.segmentation import DigitCanvasDataModule
from lightning_distill.losses.feature import cwd_loss
from lightning_distill.models.segmentation import SegformerSegmenter, SmallSegNet
from lightning_distill.recipes.label_assist import LabelAssist
from lightning_distill.segmentation.label_coding import fixed_label_values
from lightning_distill.segmentation.pictures import SegmentationPictures
from lightning_distill.segmentation.teachers import copy_with_extra_input_channel
from tests.conftest import quiet_trainer_kwargs


def tiny_data() -> DigitCanvasDataModule:
    return DigitCanvasDataModule(size=16, glyph_size=8, num_train=8, num_eval=4, batch_size=4)


def make(**kwargs) -> LabelAssist:
    torch.manual_seed(0)
    return LabelAssist(student=SmallSegNet(3, 11, width=4), teacher=SmallSegNet(4, 11, width=4), **kwargs)


def test_teacher_input_is_the_image_plus_the_official_fixed_codes():
    recipe = make(label_noise_std=0.0)
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 11, (2, 8, 8))
    out = recipe.teacher_input(x, y, 11)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(out[:, 3], 100.0 * fixed_label_values(11)[y])
    assert torch.equal(make(label_assisted=False).teacher_input(x, y, 11), x)


def test_loss_terms_are_ce_and_cwd_at_temperature_4_weighted_1_and_3():
    recipe = make()
    s, t, y = torch.randn(2, 11, 8, 8), torch.randn(2, 11, 8, 8), torch.randint(0, 11, (2, 8, 8))
    torch.testing.assert_close(recipe.task_loss(s, y), F.cross_entropy(s, y))
    torch.testing.assert_close(recipe.distillation_loss(s, t), cwd_loss(s, t, temperature=4.0))
    assert recipe.loss_weights == {"ce": 1.0, "cwd": 3.0}


def test_only_the_student_learns_and_the_teacher_is_unchanged():
    recipe = make()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    seen = {}

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            seen["student"] = all(p.grad is not None for p in pl_module.student.parameters())
            seen["teacher"] = any(p.grad is not None for p in pl_module.teacher.parameters())

    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=1, callbacks=[Check()]))
    trainer.fit(recipe, datamodule=tiny_data())
    assert seen == {"student": True, "teacher": False}
    assert all(torch.equal(before[k], v) for k, v in recipe.teacher.state_dict().items())
    assert not recipe.teacher.training
    assert "val/miou" in trainer.callback_metrics and "val/teacher_miou" in trainer.callback_metrics


def test_a_tiny_segformer_runs_the_recipe_as_student_and_teacher():
    torch.manual_seed(0)
    recipe = LabelAssist(student=SegformerSegmenter(3, 11), teacher=SegformerSegmenter(4, 11))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=1, limit_test_batches=1))
    trainer.fit(recipe, datamodule=tiny_data())
    trainer.test(recipe, datamodule=tiny_data(), verbose=False)
    assert 0.0 <= float(trainer.callback_metrics["test/miou"]) <= 1.0


def test_the_baseline_weights_start_the_teacher_with_a_silent_label_channel():
    torch.manual_seed(0)
    baseline, teacher = SmallSegNet(3, 11, width=4).eval(), SmallSegNet(4, 11, width=4).eval()
    copy_with_extra_input_channel(baseline, teacher)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(teacher(torch.cat([x, torch.zeros(2, 1, 16, 16)], 1)), baseline(x))
    with pytest.raises(ValueError, match="init"):
        copy_with_extra_input_channel(SmallSegNet(3, 11, width=8), teacher)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"label_code": "sorted"}, "label_code"),
        ({"label_scale": -1.0}, "label_scale"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_a_teacher_without_the_label_channel_is_explained():
    torch.manual_seed(0)
    recipe = LabelAssist(student=SmallSegNet(3, 11, width=4), teacher=SmallSegNet(3, 11, width=4))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0))
    with pytest.raises(ValueError, match="in_channels: 4"):
        trainer.fit(recipe, datamodule=tiny_data())


def test_overlay_pictures_are_logged_once_per_validation():
    logged = []

    class Logger:
        def log_image(self, key, images, step):
            logged.append((key, images[0].shape))

    recipe = make().eval()
    callback = SegmentationPictures(max_images=2, zoom=1)
    trainer = SimpleNamespace(loggers=[Logger()], sanity_checking=False, is_global_zero=True, global_step=3)
    batch = (torch.randn(4, 3, 16, 16), torch.randint(0, 11, (4, 16, 16)))
    callback.on_validation_batch_end(trainer, recipe, None, batch, 0)
    callback.on_validation_batch_end(trainer, recipe, None, batch, 1)
    assert logged == [("val/overlays", (32, 48, 3))]
