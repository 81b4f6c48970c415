"""StableMaterials: the consistency and adversarial terms against independent computations, the boundary,
which parameters learn in which turn, the teacher untouched, a tiny diffusers UNet2DModel end to end."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.materials import MaterialMapsDataModule
from lightning_distill.diffusion import NoiseSchedule
from lightning_distill.recipes.stable_materials import StableMaterials
from tests.conftest import quiet_trainer_kwargs


def _unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=8,
        out_channels=8,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=25,
    )


def recipe(**kwargs) -> StableMaterials:
    options = dict(
        student=_unet(1),
        teacher=_unet(0).eval(),
        schedule=NoiseSchedule.ddpm(),
        num_classes=24,
        noise_seed=0,
        sample_shape=(8, 8, 8),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    options.update(kwargs)
    return StableMaterials(**options)


def _data(batch_size: int = 4) -> MaterialMapsDataModule:
    return MaterialMapsDataModule(
        size=8, num_annotated=16, num_unannotated=16, num_val=4, num_test=4, batch_size=batch_size
    )


def test_consistency_loss_matches_an_independent_computation():
    model = recipe(student_init="random", ema_decay=0.5)
    with torch.no_grad():  # a target network different from the student
        for p in model.target_student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0 = torch.randn(3, 8, 8, 8).clamp(-1, 1)
    y = torch.tensor([1, 5, 7])
    loss = model.consistency_loss(x0, y, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    grid = torch.arange(1, 51) * 20 - 1
    start = grid[torch.randint(0, 50, (3,), generator=g)]
    end = (start - 20).clamp(min=0)
    noise = torch.randn(3, 8, 8, 8, generator=g)
    abar = model.schedule.scheduler.alphas_cumprod.double()

    def ab(t):
        return abar[t].sqrt()[:, None, None, None], (1 - abar[t]).sqrt()[:, None, None, None]

    def f(net, x, t):  # c_skip x + c_out x̂₀, LCM's scalings with σ_d = 0.5 and t / 0.1
        a, s = ab(t)
        eps = net(x.float(), t, y).sample.double()
        x0_hat = (x - s * eps) / a
        st = 10.0 * t.double()[:, None, None, None]
        return 0.25 / (st**2 + 0.25) * x + st / (st**2 + 0.25).sqrt() * x0_hat

    a_s, s_s = ab(start)
    z = a_s * x0.double() + s_s * noise.double()
    eps_t = model.teacher(z.float(), start, y).sample.double()
    a_e, s_e = ab(end)
    x_prev = a_e * (z - s_s * eps_t) / a_s + s_e * eps_t
    with torch.no_grad():
        target = f(model.target_student, x_prev, end)
        prediction = f(model.student, z, start)
    expected = ((prediction - target) ** 2 + 0.001**2).sqrt().sub(0.001).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-3)


def test_adversarial_terms_match_softplus_of_the_discriminator():
    model = recipe()
    batch = next(iter(_data().train_dataloader()))
    _, _, textures, labels = batch
    model.record_sample_shape(batch[0])
    fake = model.one_step_view(labels, torch.Generator().manual_seed(0), batch[0])
    assert fake.shape == textures.shape
    with torch.no_grad():
        d_fake, d_real = model.discriminator(fake, labels), model.discriminator(textures, labels)
    from lightning_distill.losses.distribution_matching import gan_discriminator_loss, gan_generator_loss

    assert float(gan_generator_loss(d_fake)) == pytest.approx(
        float(torch.log1p(torch.exp(-d_fake)).mean()), rel=1e-5
    )
    expected = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    assert float(gan_discriminator_loss(d_real, d_fake)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_student_is_the_identity_at_the_smallest_timestep(prediction_type):
    model = recipe(schedule=NoiseSchedule.ddpm(prediction_type=prediction_type))
    x = torch.randn(2, 8, 8, 8)
    out = model.consistency_function(x, torch.zeros(2, dtype=torch.long), torch.tensor([0, 3]))
    assert torch.allclose(out, x, atol=1e-6)


def test_student_starts_as_the_teacher():
    model = recipe()
    for a, b in zip(model.student.parameters(), model.teacher.parameters()):
        assert torch.equal(a, b)


def test_each_turn_reaches_only_its_own_parameters():
    model = recipe()
    batch = next(iter(_data().train_dataloader()))
    model.record_sample_shape(batch[0])
    g = torch.Generator().manual_seed(0)
    loss = model.consistency_loss(batch[0], batch[1], g)
    fake = model.one_step_view(batch[3], g, batch[0])
    (loss + model.discriminator(fake, batch[3]).sum()).backward()
    assert all(p.grad is not None for p in model.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.target_student.parameters())
    model.zero_grad(set_to_none=True)
    model.discriminator(fake.detach(), batch[3]).sum().backward()
    assert all(p.grad is None for p in model.student.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_training_with_a_tiny_unet_updates_student_discriminator_and_target_but_not_the_teacher():
    model = recipe()
    teacher = copy.deepcopy(model.teacher.state_dict())
    student = copy.deepcopy(model.student.state_dict())
    disc = copy.deepcopy(model.discriminator.state_dict())
    target = copy.deepcopy(model.target_student.state_dict())
    L.seed_everything(0)
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, **quiet_trainer_kwargs())
    trainer.fit(model, datamodule=_data())
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher[key])
    assert any(not torch.equal(v, student[k]) for k, v in model.student.state_dict().items())
    assert any(not torch.equal(v, disc[k]) for k, v in model.discriminator.state_dict().items())
    assert any(not torch.equal(v, target[k]) for k, v in model.target_student.state_dict().items())
    assert {"train/consistency", "train/adversarial", "train/discriminator"} <= set(trainer.logged_metrics)
    maps = model.sample(3, torch.Generator().manual_seed(0), torch.tensor([0, 1, 2]))
    assert maps.shape == (3, 8, 8, 8) and torch.isfinite(maps).all()


def test_rolling_keeps_sampling_deterministic_given_the_generator():
    model = recipe()
    labels = torch.tensor([2, 3])
    a = model.sample(2, torch.Generator().manual_seed(4), labels)
    b = model.sample(2, torch.Generator().manual_seed(4), labels)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"guidance": -1.0}, "guidance"),
        ({"adversarial_channels": []}, "adversarial_channels"),
        ({"adversarial_channels": [0, 0]}, "adversarial_channels"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"loss_type": "l1"}, "loss_type"),
        ({"student_init": "copy"}, "student_init"),
    ],
)
def test_bad_options_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        recipe(**kwargs)


def test_textures_with_the_wrong_channels_are_rejected():
    model = recipe()
    batch = list(next(iter(_data().train_dataloader())))
    batch[2] = torch.randn(4, 2, 8, 8)
    with pytest.raises(ValueError, match="textures"):
        model.split_textures(batch)
