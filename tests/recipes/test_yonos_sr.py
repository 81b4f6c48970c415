"""YONOS-SR recipe: targets from the previous stage's frozen model, the stage schedule, decoder-only
last stage, frozen teacher, losses against direct formulas, bad arguments; tiny diffusers UNets throughout."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.callbacks.progressive_schedule import ProgressiveSchedule
from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.recipes.yonos_sr import YONOSSR
from lightning_distill.super_resolution import LRConditionedUNet
from lightning_distill.super_resolution.degradations import bicubic_downsample
from tests.conftest import quiet_trainer_kwargs


def unet(seed: int) -> LRConditionedUNet:
    torch.manual_seed(seed)
    return LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))


def make(**kwargs) -> YONOSSR:
    return YONOSSR(student=unet(1), teacher=unet(0), **kwargs)


def data() -> SuperResolutionDataModule:
    return SuperResolutionDataModule(scale=8, hr_size=16, source="digits", batch_size=4, test_size=16)


def draws(hr: torch.Tensor, seed: int = 0):
    """The recipe's t, noise and x_t for a generator seeded ``seed``, computed independently."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (hr.shape[0],), generator=gen)
    eps = torch.randn(hr.shape, generator=gen)
    alpha_bar = (
        torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
        .float()
        .view(-1, 1, 1, 1)
    )
    x0 = hr * 2 - 1
    return t, x0, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


def test_student_starts_from_the_teacher_and_stage_zero_targets_come_from_it():
    recipe = make(scales=(2, 4))
    for a, b in zip(recipe.student.state_dict().values(), recipe.teacher.state_dict().values()):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # make the two differ so that the target's source is visible
        for p in recipe.student.parameters():
            p.add_(0.01)
    hr = torch.rand(2, 3, 8, 8)
    loss = recipe.distillation_loss(hr, 0, torch.Generator().manual_seed(0))["distill"]
    t, _, x_t = draws(hr)
    student = recipe.student(x_t, t, bicubic_downsample(hr, 4) * 2 - 1).sample
    target = recipe.teacher(x_t, t, bicubic_downsample(hr, 2) * 2 - 1).sample
    torch.testing.assert_close(loss, F.mse_loss(student, target), atol=1e-5, rtol=1e-4)


def test_later_targets_come_from_the_previous_stage_student_frozen_at_the_change():
    recipe = make(scales=(2, 4, 8))
    with torch.no_grad():
        for p in recipe.student.parameters():
            p.add_(0.02)
    snapshot = {k: v.clone() for k, v in recipe.student.state_dict().items()}
    recipe.on_stage_change("stage", 0, 1)
    with torch.no_grad():  # the student moves on; the stage teacher must not
        for p in recipe.student.parameters():
            p.add_(0.03)
    for k, v in recipe.stage_teacher.state_dict().items():
        torch.testing.assert_close(v, snapshot[k])
    assert recipe.stage_teacher_of(1) is recipe.stage_teacher and recipe.stage_teacher_of(0) is recipe.teacher
    assert not any(p.requires_grad for p in recipe.stage_teacher.parameters())
    hr = torch.rand(2, 3, 8, 8)
    loss = recipe.distillation_loss(hr, 1, torch.Generator().manual_seed(0))["distill"]
    t, _, x_t = draws(hr)
    student = recipe.student(x_t, t, bicubic_downsample(hr, 8) * 2 - 1).sample
    target = recipe.stage_teacher(x_t, t, bicubic_downsample(hr, 4) * 2 - 1).sample
    torch.testing.assert_close(loss, F.mse_loss(student, target), atol=1e-5, rtol=1e-4)


def test_ground_truth_ablation_and_decoder_loss_match_direct_formulas():
    recipe = make(scales=(2, 4), target="ground_truth")
    hr = torch.rand(2, 3, 8, 8)
    terms = recipe.distillation_loss(hr, 0, torch.Generator().manual_seed(0))
    t, x0, x_t = draws(hr)
    student = recipe.student(x_t, t, bicubic_downsample(hr, 4) * 2 - 1).sample
    torch.testing.assert_close(terms["direct"], F.mse_loss(student, x0), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        recipe.decoder.head[-1].bias.fill_(0.1)
    loss = recipe.decoder_loss(hr, torch.Generator().manual_seed(0))["decoder"]
    noise = torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    lr = bicubic_downsample(hr, 4)
    x0_hat = recipe.student(noise, torch.full((2,), 999), lr * 2 - 1).sample
    torch.testing.assert_close(
        loss, F.l1_loss((recipe.decoder(x0_hat, lr) + 1) / 2, hr), atol=1e-5, rtol=1e-4
    )


def test_stage_schedule_gradients_and_frozen_teacher_over_a_short_fit():
    recipe = make(scales=(2, 4, 8), stage_steps=[2, 4], border=1)
    (callback,) = recipe.configure_callbacks()
    assert isinstance(callback, ProgressiveSchedule)
    assert [callback.value_at("stage", s) for s in range(6)] == [0, 0, 1, 1, 2, 2]
    teacher_before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    seen = []

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            grads = lambda m: [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters()]  # noqa: E731
            seen.append(
                {
                    "stage": pl_module.stage,
                    "student": any(grads(pl_module.student)),
                    "decoder": any(grads(pl_module.decoder)),
                    "teacher": any(p.grad is not None for p in pl_module.teacher.parameters())
                    or any(p.grad is not None for p in pl_module.stage_teacher.parameters()),
                }
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[-1]["terms"] = sorted(k for k in outputs if k != "loss")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for p in pl_module.parameters():
                p.grad = None

    trainer = L.Trainer(
        **quiet_trainer_kwargs(max_steps=6, limit_val_batches=1, val_check_interval=6, callbacks=[Check()])
    )
    trainer.fit(recipe, datamodule=data())
    assert [s["stage"] for s in seen] == [0, 0, 1, 1, 2, 2]
    assert [s["terms"] for s in seen] == [["distill"]] * 4 + [["decoder"]] * 2
    assert all(s["student"] and not s["decoder"] for s in seen[:4])
    assert all(s["decoder"] and not s["student"] for s in seen[4:])  # only the decoder learns last
    assert not any(s["teacher"] for s in seen)
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])
    metrics = trainer.validate(recipe, datamodule=data(), verbose=False)[0]
    assert {"val/psnr", "val/ssim", "val/psnr_rgb"} <= set(metrics)
    assert recipe.super_resolve(torch.rand(2, 3, 1, 1)).shape == (2, 3, 8, 8)


def test_bad_arguments_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="scales"):
        make(scales=(4, 2))
    with pytest.raises(ValueError, match="scales"):
        make(scales=(2,))
    with pytest.raises(ValueError, match="stage_steps"):
        make(scales=(2, 4, 8), stage_steps=[5])
    with pytest.raises(ValueError, match="stage_steps"):
        make(scales=(2, 4, 8), stage_steps=[5, 3])
    with pytest.raises(ValueError, match="target"):
        make(target="hr")
    other = LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(16, 32))
    with pytest.raises(ValueError, match="student_init"):
        YONOSSR(student=other, teacher=unet(0))
    YONOSSR(student=other, teacher=unet(0), student_init="student")  # allowed when not copying
    recipe = make(scales=(2, 4))
    recipe.stage = 3
    with pytest.raises(ValueError, match="stage"):
        recipe.training_step((torch.rand(1, 3, 2, 2), torch.rand(1, 3, 8, 8)), 0)
    recipe.stage = 0
    with pytest.raises(ValueError, match="hr_size"):
        recipe.training_step((torch.rand(1, 3, 2, 2), torch.rand(1, 3, 6, 6)), 0)
