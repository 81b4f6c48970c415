"""TAD-SR recipe: MSE and HSD against hand computations, Gaussian noise, gradients, frozen teacher, bad args."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.losses.super_resolution import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    hsd_loss,
    teacher_sr_mse_loss,
)
from lightning_distill.recipes.tad_sr import TADSR
from lightning_distill.super_resolution.denoisers import LRConditionedUNet, upsample_to
from lightning_distill.super_resolution.resshift import ResShiftSchedule
from tests.conftest import quiet_trainer_kwargs


def unet(seed: int = 0) -> LRConditionedUNet:
    torch.manual_seed(seed)
    return LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(8, 16))


def make(**kwargs) -> TADSR:
    args = dict(student=unet(1), teacher=unet(0), border=2, noise_seed=0) | kwargs
    return TADSR(**args)


def data() -> SuperResolutionDataModule:
    return SuperResolutionDataModule(scale=4, hr_size=16, source="digits", batch_size=4)


def test_losses_match_independent_formulas():
    x0, g, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(teacher_sr_mse_loss(x0, target), ((x0 - target) ** 2).mean())
    torch.testing.assert_close(hsd_loss(x0, g), (g * x0).mean())
    x = x0.clone().requires_grad_(True)
    hsd_loss(x, g).backward()
    torch.testing.assert_close(x.grad, g / x0.numel())
    real, fake = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([-3.0, 0.0])
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx((0.5 + 0 + 2) / 3 + (0 + 1) / 2)
    assert float(hinge_generator_loss(fake)) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        hsd_loss(x0, g[:1])


def test_hsd_gradient_is_the_teacher_noise_prediction_difference_by_hand():
    recipe = make(hsd_max_timestep=1)  # t = 0
    sched, teacher = recipe.schedule, recipe.teacher
    x0, target = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    lr = torch.rand(2, 3, 4, 4) * 2 - 1
    y0 = upsample_to(lr, 16)
    eps = torch.randn(2, 3, 16, 16)
    recipe.draw_noise = lambda shape, generator, like: eps
    g = recipe.hsd_gradient(x0, target, y0, lr, torch.Generator().manual_seed(0))
    eta, k = float(sched.etas[0]), 2.0 * math.sqrt(float(sched.etas[0]))
    t = torch.zeros(2, dtype=torch.long)

    def eps_hat(x):
        x_t = x + eta * (y0 - x) + k * eps
        d = teacher(x_t / math.sqrt(4 * eta + 1), t, lr).sample.clamp(-1, 1)
        return (x_t - d - eta * (y0 - d)) / k

    with torch.no_grad():
        torch.testing.assert_close(g, eps_hat(x0) - eps_hat(target), rtol=1e-4, atol=1e-4)


def test_drawn_noise_is_gaussian_not_uniform():
    recipe = make()
    z = recipe.draw_noise((200_000,), torch.Generator().manual_seed(0), torch.zeros(1))
    kurtosis = float(((z - z.mean()) ** 4).mean() / z.var() ** 2)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.02 and abs(kurtosis - 3) < 0.1
    assert float(z.min()) < -3  # uniform noise on [0, 1) (the official rand_like) has mean 0.5, var 1/12
    # both images are noised with the same draw: the difference is (1 − η_t)(a − b)
    a, b, y0 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    t = torch.tensor([0, 3, 7, 13])
    a_t, b_t, noise = recipe.noised_pair(a, b, y0, t, torch.Generator().manual_seed(1))
    one_minus_eta = (1 - recipe.schedule.etas[t].float()).view(-1, 1, 1, 1)
    torch.testing.assert_close(a_t - b_t, one_minus_eta * (a - b), rtol=1e-4, atol=1e-5)
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.var()) - 1) < 0.1


def test_student_starts_from_the_teacher_and_mismatches_are_rejected():
    recipe = make()
    for (k, a), b in zip(
        recipe.student.state_dict().items(), recipe.teacher.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=k)
    other = LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(16, 32))
    with pytest.raises(ValueError, match="student_init"):
        make(student=other)
    make(student=other, student_init="random")  # allowed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hsd_max_timestep": 0}, "hsd_max_timestep"),
        ({"hsd_max_timestep": 15}, "hsd_max_timestep"),
        ({"teacher_sampler": "euler"}, "teacher_sampler"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"border": -1}, "border"),
        ({"student_init": "copy"}, "student_init"),
        ({"loss_weights": {"lpips": 1.0}}, "lpips"),
    ],
)
def test_bad_arguments_are_rejected_with_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_schedule_must_be_resshift():
    with pytest.raises(TypeError, match="ResShiftSchedule"):
        make(schedule="ddpm")


class Watch(L.Callback):
    def __init__(self):
        self.teacher_grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.teacher_grads.append(any(p.grad is not None for p in pl_module.teacher.parameters()))


def test_training_updates_student_and_discriminator_only_and_logs_every_term():
    recipe = make(ema_decay=0.5)
    teacher_before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in recipe.student.parameters()]
    disc_before = [p.detach().clone() for p in recipe.discriminator.parameters()]
    watch = Watch()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=4, limit_val_batches=0, callbacks=[watch]))
    trainer.fit(recipe, datamodule=data())
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k], msg=k)
    assert watch.teacher_grads and not any(watch.teacher_grads)
    assert all(p.grad is None for p in recipe.teacher.parameters())
    assert any(
        not torch.equal(a, b) for a, b in zip(recipe.student.parameters(), student_before, strict=True)
    )
    assert any(
        not torch.equal(a, b) for a, b in zip(recipe.discriminator.parameters(), disc_before, strict=True)
    )
    logged = set(trainer.callback_metrics)
    for key in (
        "train/mse",
        "train/hsd",
        "train/gan",
        "train/disc",
        "train/loss_student",
        "train/loss_discriminator",
    ):
        assert key in logged, key
    assert not any(p.requires_grad for p in recipe.ema_student.parameters())


def test_student_turn_gradients_reach_the_student_and_not_the_head_or_teacher():
    recipe = make()
    lr, hr = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    y0 = upsample_to(lr, 16)
    rng = torch.Generator().manual_seed(0)
    x0 = recipe.student_x0(recipe.schedule.prior_sample(y0, torch.randn_like(hr)), lr)
    _, t, noise = recipe.discriminator_loss(hr, x0, y0, lr, rng)  # outside a Trainer: diagnostics not logged
    recipe.discriminator.requires_grad_(False)  # what `update`'s toggle does in the student turn
    loss = recipe.generator_gan_loss(x0, y0, t, noise, lr)
    loss.backward()
    assert all(p.grad is not None for p in recipe.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in recipe.teacher.parameters())
    assert all(p.grad is None for p in recipe.discriminator.parameters())


def test_evaluation_runs_the_teacher_T_steps_and_the_student_one():
    recipe = make()
    calls = {"teacher": 0, "student": 0}
    recipe.teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    recipe.student.register_forward_hook(lambda *a: calls.__setitem__("student", calls["student"] + 1))
    batch = (torch.rand(2, 3, 4, 4), torch.rand(2, 3, 16, 16))
    metrics = recipe.evaluate(recipe.teacher, batch)
    recipe.evaluate(recipe.student, batch)
    assert calls == {"teacher": 15, "student": 1}
    assert set(metrics) == {"psnr", "ssim", "psnr_rgb"}
    assert recipe.predict_step(batch, 0).shape == (2, 3, 16, 16)


def test_gan_off_trains_with_one_optimizer():
    recipe = make(gan=False, ema_decay=None)
    assert recipe.discriminator is None
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=data())
    assert "train/gan" not in trainer.callback_metrics and "train/hsd" in trainer.callback_metrics


def test_custom_schedule_sets_the_discriminator_steps():
    recipe = make(schedule=ResShiftSchedule(num_steps=4), hsd_max_timestep=3)
    assert recipe.discriminator.time_embedding.num_embeddings == 4


def test_pictures_show_the_one_step_student_and_the_teacher():
    from lightning_distill.callbacks.super_resolution_pictures import SuperResolutionPictures

    callback = SuperResolutionPictures(num_images=2)
    callback.setup = lambda *a, **k: setattr(callback, "_active", True)  # no image logger in the test
    kwargs = quiet_trainer_kwargs(
        max_steps=2, limit_val_batches=1, val_check_interval=1, callbacks=[callback]
    )
    L.Trainer(**kwargs).fit(make(), datamodule=data())
    # rows of 16 px; columns LR, bicubic, student, teacher, HR
    assert callback.last_picture is not None and callback.last_picture.shape == (2 * 16 + 2, 5 * 16 + 8, 3)
