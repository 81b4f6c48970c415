"""OFTSR recipe: the three terms against a hand computation, boundary at the start, frozen teacher, bad input."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.super_resolution_pictures import SuperResolutionPictures
from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.recipes.oftsr import OFTSR
from lightning_distill.super_resolution.denoisers import LRConditionedUNet
from lightning_distill.super_resolution.flow_sr import (
    FLOW_EPS,
    flow_sample,
    flow_start,
    flow_velocity,
    one_step_sr,
    to_signed,
)
from tests.conftest import quiet_trainer_kwargs


class ToyStudent(nn.Module):
    """``v = w·x + c·t`` (t recovered from the network time 999 t): two parameters, easy to hand-compute."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3))
        self.c = nn.Parameter(torch.tensor(-0.2))

    def forward(self, x, t, lr):
        return self.w * x + self.c * (t / 999.0).view(-1, 1, 1, 1)


class ToyTeacher(nn.Module):
    """``v = 0.5·x + 0.1`` with one (frozen) parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, lr):
        return self.a * x + 0.1


def tiny_unet(seed: int = 0) -> LRConditionedUNet:
    torch.manual_seed(seed)
    return LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))


def one_batch(n: int = 2) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.rand(n, 3, 4, 4, generator=gen), torch.rand(n, 3, 8, 8, generator=gen)), n
    )


def capture_first_step(recipe: OFTSR, loader: DataLoader) -> dict:
    seen: dict = {}

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            if "student_grad" not in seen:
                seen["student_grad"] = all(p.grad is not None for p in pl_module.student.parameters())
                seen["teacher_grad"] = any(p.grad is not None for p in pl_module.teacher.parameters())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "terms" not in seen:
                seen["terms"] = {k: float(v) for k, v in outputs.items()}

    L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0, callbacks=[Check()])).fit(
        recipe, train_dataloaders=loader
    )
    return seen


def test_terms_match_a_hand_computation_of_the_bootstrapped_rk2_target():
    recipe = OFTSR(ToyStudent(), ToyTeacher(), init_from_teacher=False, noise_seed=5)
    loader = one_batch()
    low, high = next(iter(loader))
    # the same draws as training step 0
    gen = torch.Generator().manual_seed(5 * 1_000_003 + 1)
    lr = to_signed(low)
    x0 = flow_start(lr, (8, 8), 0.2, gen)
    t = 0.01 + (0.99 - 0.05 - 0.01) * torch.rand(2, generator=gen)
    tb = t.view(-1, 1, 1, 1)
    w, c, a, dt = 0.3, -0.2, 0.5, 0.05
    v_t = w * x0 + c * tb
    x_t = x0 + tb * v_t
    k1 = a * x_t + 0.1
    k2 = a * (x_t + 0.5 * dt * k1) + 0.1  # midpoint
    x_next = x_t + dt * k2
    target = (x_next - x0) / (tb + dt)
    v_next = w * x0 + c * (tb + dt)
    expected = {
        "distil": (v_next - target).abs().mean().item(),
        "align": (v_t - k1).abs().mean().item(),
        "boundary": ((w * x0 + c * FLOW_EPS) - (a * x0 + 0.1)).abs().mean().item(),
    }
    seen = capture_first_step(recipe, loader)
    for name, value in expected.items():
        assert seen["terms"][name] == pytest.approx(value, rel=1e-4), name
    total = expected["distil"] + 0.1 * expected["boundary"] + 0.01 * expected["align"]
    assert seen["terms"]["loss"] == pytest.approx(total, rel=1e-4)


def test_gradients_reach_the_student_only_and_the_teacher_stays_unchanged():
    teacher = tiny_unet(1)
    recipe = OFTSR(tiny_unet(2), teacher)
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in recipe.student.parameters()]
    seen = capture_first_step(recipe, one_batch())
    assert seen["student_grad"] and not seen["teacher_grad"]
    assert sorted(k for k in seen["terms"] if k != "loss") == ["align", "boundary", "distil"]
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert any(not torch.equal(p, q) for p, q in zip(recipe.student.parameters(), student_before))
    assert not recipe.teacher.training


def test_student_starts_as_the_teacher_so_the_start_is_the_boundary_condition():
    recipe = OFTSR(tiny_unet(2), tiny_unet(1))  # init_from_teacher copies the teacher
    lr = to_signed(torch.rand(2, 3, 4, 4))
    x0 = flow_start(lr, (8, 8), 0.2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        # the state at t = 0 is x0 itself, and the boundary term vanishes at initialisation
        v0 = flow_velocity(recipe.student, x0, 0.0, lr)
        torch.testing.assert_close(x0 + 0.0 * v0, x0)
        assert recipe.boundary_loss(x0, lr).item() == 0.0
        # one step at t = ε is the teacher's single Euler step (its estimate of E[HR | x0])
        torch.testing.assert_close(
            one_step_sr(recipe.student, lr, x0, FLOW_EPS), flow_sample(recipe.teacher, lr, x0, steps=1)
        )


def test_validation_logs_student_and_teacher_metrics_on_the_real_class():
    teacher = tiny_unet(1)
    recipe = OFTSR(tiny_unet(2), teacher, sample_steps=2, border=1)
    data = SuperResolutionDataModule(scale=2, hr_size=16, source="digits", batch_size=4)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=1))
    trainer.fit(recipe, datamodule=data)
    assert "train/distil" in trainer.callback_metrics
    trainer.validate(recipe, datamodule=data, verbose=False)
    assert {"val/psnr", "val/ssim", "val/teacher_psnr"} <= set(trainer.callback_metrics)
    low = torch.rand(2, 3, 8, 8)
    sr = recipe.super_resolve(low, (16, 16), t=0.5)
    assert sr.shape == (2, 3, 16, 16) and 0 <= float(sr.min()) and float(sr.max()) <= 1


def test_bad_input_is_rejected_with_a_clear_message():
    teacher = tiny_unet(1)
    teacher.flow_sigma_p = 0.1
    with pytest.raises(ValueError, match="sigma_p"):
        OFTSR(tiny_unet(2), teacher, sigma_p=0.2)
    with pytest.raises(ValueError, match="t_step"):
        OFTSR(tiny_unet(2), tiny_unet(1), t_step=0.99)
    with pytest.raises(ValueError, match="t_min"):
        OFTSR(tiny_unet(2), tiny_unet(1), t_min=0.99, t_max=0.5)
    with pytest.raises(ValueError, match="rk2_r"):
        OFTSR(tiny_unet(2), tiny_unet(1), rk2_r=0.0)
    with pytest.raises(ValueError, match="sample_solver"):
        OFTSR(tiny_unet(2), tiny_unet(1), sample_solver="rk4")
    with pytest.raises(ValueError, match="init_from_teacher"):
        OFTSR(LRConditionedUNet.tiny(sample_size=8, block_out_channels=(16, 32)), tiny_unet(1))
    with pytest.raises(ValueError, match="loss_weights|Unknown|not"):
        OFTSR(tiny_unet(2), tiny_unet(1), loss_weights={"l1": 1.0})
    recipe = OFTSR(tiny_unet(2), tiny_unet(1))
    with pytest.raises(ValueError, match="hr_size"):
        recipe.evaluate(recipe.student, (torch.rand(1, 3, 3, 3), torch.rand(1, 3, 8, 8)))


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    def run(max_steps: int, ckpt: str | None = None) -> OFTSR:
        torch.manual_seed(0)
        recipe = OFTSR(
            ToyStudent(),
            ToyTeacher(),
            init_from_teacher=False,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        )
        loader = one_batch(2)
        trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=max_steps, limit_val_batches=0))
        trainer.fit(recipe, train_dataloaders=loader, ckpt_path=ckpt)
        if ckpt is None and max_steps == 2:
            trainer.save_checkpoint(tmp_path / "two.ckpt")
        return recipe

    straight = run(4)
    run(2)
    resumed = run(4, str(tmp_path / "two.ckpt"))
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        torch.testing.assert_close(a, b)


def test_pictures_show_the_one_step_student_and_the_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(8, 16))
    student = LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(8, 16))
    recipe = OFTSR(student=student, teacher=teacher, border=2)
    callback = SuperResolutionPictures(num_images=2)
    callback.setup = lambda *a, **k: setattr(callback, "_active", True)  # no image logger in the test
    kwargs = quiet_trainer_kwargs(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[callback]
    )
    dm = SuperResolutionDataModule(scale=4, hr_size=16, source="digits", patches_per_image=2, batch_size=4)
    L.Trainer(**kwargs).fit(recipe, datamodule=dm)
    assert callback.last_picture is not None and callback.last_picture.shape == (2 * 16 + 2, 5 * 16 + 8, 3)
