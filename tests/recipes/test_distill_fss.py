"""DistillFSS: leave-one-out teacher, the two loss terms, support-free student, frozen teacher."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.segmentation import DigitCanvasDataModule, FewShotTaskDataModule
from lightning_distill.losses.segmentation import coarse_map_mse, focal_loss
from lightning_distill.models.segmentation import ClassHeads, MatchingSegmenter
from lightning_distill.recipes.distill_fss import DistillFSS
from lightning_distill.segmentation.few_shot import class_masks
from tests.conftest import quiet_trainer_kwargs


def tiny_task() -> FewShotTaskDataModule:
    return FewShotTaskDataModule(
        classes=(6, 7), shots=2, num_pool=24, num_eval=4, size=16, glyph_size=8, batch_size=4
    )


def make(**kwargs) -> DistillFSS:
    torch.manual_seed(0)
    recipe = DistillFSS(student=ClassHeads(2, (8, 16)), teacher=MatchingSegmenter(3, width=4), **kwargs)
    images, labels = tiny_task().support_set()
    recipe.set_support(images, labels)
    return recipe


def test_leave_one_out_teacher_equals_the_teacher_without_that_support_image():
    recipe = make()
    images, labels = recipe.support_images, recipe.support_labels
    x = images[:2]
    _, coarse, _ = recipe.teacher_segment(x, exclude=torch.tensor([0, 1]))
    teacher = recipe.teacher
    for b in range(2):
        keep = [i for i in range(len(images)) if i != b]
        expected = teacher.coarse_maps(
            [f[b : b + 1] for f in teacher.encode(x)],
            teacher.encode(images[keep]),
            class_masks(labels[keep], 2),
        )
        for level in range(2):
            torch.testing.assert_close(coarse[level][b : b + 1], expected[level])


def test_loss_is_half_focal_to_the_teacher_argmax_and_half_coarse_mse():
    recipe = make()
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(recipe.logit_loss(s, t), focal_loss(s, t.argmax(1), gamma=2.0))
    cs, ct = [torch.randn(2, 2, 4, 4)], [torch.randn(2, 2, 4, 4)]
    torch.testing.assert_close(recipe.coarse_loss(cs, ct), coarse_map_mse(cs, ct))
    assert recipe.loss_weights == {"focal": 0.5, "coarse": 0.5}


def test_only_the_heads_learn_the_teacher_is_unchanged_and_inference_needs_no_support():
    torch.manual_seed(0)
    recipe = DistillFSS(student=ClassHeads(2, (8, 16)), teacher=MatchingSegmenter(3, width=4))
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    seen = {}

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            seen["heads"] = all(p.grad is not None for p in pl_module.student.parameters())
            seen["teacher"] = any(p.grad is not None for p in pl_module.teacher.parameters())

    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=1, callbacks=[Check()]))
    trainer.fit(recipe, datamodule=tiny_task())
    assert seen == {"heads": True, "teacher": False}
    assert all(torch.equal(before[k], v) for k, v in recipe.teacher.state_dict().items())
    assert "val/teacher_miou_fg" in trainer.callback_metrics
    recipe.support_images = torch.empty(0)  # the distilled model never reads the support set
    assert recipe(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_a_datamodule_without_a_support_set_is_explained():
    torch.manual_seed(0)
    recipe = DistillFSS(student=ClassHeads(2, (8, 16)), teacher=MatchingSegmenter(3, width=4))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0))
    with pytest.raises(ValueError, match="support_set"):
        trainer.fit(recipe, datamodule=DigitCanvasDataModule(size=16, glyph_size=8, num_train=4, num_eval=2))


def test_heads_that_do_not_fit_the_teacher_are_rejected():
    torch.manual_seed(0)
    recipe = DistillFSS(student=ClassHeads(2, (4, 8)), teacher=MatchingSegmenter(3, width=4))
    with pytest.raises(ValueError, match="channels"):
        recipe.set_support(*tiny_task().support_set())
    with pytest.raises(ValueError, match="gamma"):
        DistillFSS(student=ClassHeads(2, (8, 16)), teacher=MatchingSegmenter(3, width=4), gamma=-1.0)
