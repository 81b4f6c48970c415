"""IMDN recipe: L1 and KD terms against direct computations, gradients, frozen teacher, bad input."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.models.super_resolution import IMDN, ResidualSRNet
from lightning_distill.recipes.imdn import IMDNRecipe
from tests.conftest import quiet_trainer_kwargs


def make(teacher: bool = True, **kwargs) -> IMDNRecipe:
    torch.manual_seed(0)
    return IMDNRecipe(
        student=IMDN(scale=2, channels=8, num_blocks=1),
        teacher=ResidualSRNet(scale=2, channels=8, num_blocks=1) if teacher else None,
        **kwargs,
    )


def data(**kwargs) -> SuperResolutionDataModule:
    args = dict(scale=2, hr_size=16, patches_per_image=2, test_size=32, batch_size=4) | kwargs
    return SuperResolutionDataModule(**args)


def test_losses_are_l1_to_hr_and_l1_to_the_teacher_output():
    recipe = make()
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    sr = recipe.student(lr)
    with torch.no_grad():
        teacher_sr = recipe.teacher(lr)
    torch.testing.assert_close(recipe.reconstruction_loss(sr, hr), F.l1_loss(sr, hr))
    torch.testing.assert_close(recipe.distillation_loss(sr, teacher_sr), F.l1_loss(sr, teacher_sr))


def test_training_updates_the_student_only_and_leaves_the_teacher_unchanged():
    recipe = make(loss_weights={"l1": 1.0, "kd": 0.5})
    teacher_before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in recipe.student.parameters()]
    seen = {}

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            seen["student"] = all(p.grad is not None for p in pl_module.student.parameters())
            seen["teacher"] = any(p.grad is not None for p in pl_module.teacher.parameters())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["terms"] = sorted(k for k in outputs if k != "loss")
            seen["total"] = float(outputs["loss"])
            seen["parts"] = float(outputs["l1"]) + 0.5 * float(outputs["kd"])

    L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0, callbacks=[Check()])).fit(
        recipe, datamodule=data()
    )
    assert seen["student"] and not seen["teacher"]
    assert seen["terms"] == ["kd", "l1"]
    assert seen["total"] == pytest.approx(seen["parts"], rel=1e-5)
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k], rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(student_before, recipe.student.parameters()))
    assert not recipe.teacher.training


def test_without_teacher_only_l1_is_trained_and_validation_logs_psnr_ssim():
    recipe = make(teacher=False)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=1, limit_val_batches=1))
    trainer.fit(recipe, datamodule=data())
    logged = trainer.callback_metrics
    assert {"val/psnr", "val/ssim", "val/psnr_rgb"} <= set(logged) and "train/kd" not in logged


def test_paper_scale_imdn_runs_the_same_training_step():
    recipe = IMDNRecipe(student=IMDN(scale=2), teacher=IMDN(scale=2, channels=16, num_blocks=2))
    assert sum(p.numel() for p in recipe.student.parameters()) == 694_404  # the paper's ×2 IMDN: 694K
    lr, hr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)
    loss = recipe.reconstruction_loss(recipe.student(lr), hr)
    loss.backward()
    assert all(p.grad is not None for p in recipe.student.parameters())


def test_bad_input_is_rejected_with_a_clear_message():
    recipe = make()
    with pytest.raises(ValueError, match="not the LR size 8x8 times one integer scale"):
        recipe.evaluate(recipe.student, (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 20, 20)))
    with pytest.raises(ValueError, match="build it with `scale`=4"):
        recipe.evaluate(recipe.student, (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)))
    with pytest.raises(ValueError, match="needs a `teacher`"):
        make(teacher=False, loss_weights={"kd": 1.0})
    with pytest.raises(ValueError, match="`border`"):
        make(border=-1)
