"""DynamicCity: the DiT's masked loss, gradient routing, frozen VAE and DiT teachers, bad input, the configs' classes."""

from __future__ import annotations

import copy
import functools

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.diffusion import NoiseSchedule
from lightning_distill.lidar_generation.dit import tiny_plane_dit
from lightning_distill.lidar_generation.hexplane import HexPlaneVAE
from lightning_distill.recipes.dynamiccity import DynamicCity, DynamicCityDMD
from tests.conftest import quiet_trainer_kwargs

SIZE = dict(num_classes=5, grid_size=(8, 8, 4), num_frames=2, latent_channels=3, width=4, multiple=2)


def vae() -> HexPlaneVAE:
    torch.manual_seed(0)
    return HexPlaneVAE(**SIZE).eval()  # rollout of planes over (2, 4, 4, 2): 8 x 8


def dit():
    torch.manual_seed(1)
    return tiny_plane_dit(in_channels=3, sample_size=8, patch_size=2, width=16, num_heads=2, num_layers=1)


def occupancy(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 5, (n, 2, 8, 8, 4), generator=torch.Generator().manual_seed(0))


def make_recipe(**kwargs) -> DynamicCity:
    defaults = dict(student=dit(), teacher=vae(), sampling_steps=3, num_samples=2, noise_seed=0,
                    optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))  # fmt: skip
    defaults.update(kwargs)
    return DynamicCity(**defaults)


def loader(x: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x), batch_size=2)


def test_denoising_loss_leaves_the_rollout_padding_out():
    recipe = make_recipe()
    z0 = recipe.encode(occupancy(2))
    mask = recipe.latent_mask
    assert 0 < mask.sum() < mask.numel()  # (2, 4, 4, 2) planes in an 8 x 8 image: some padding

    class PaddedGarbage(torch.nn.Module):  # the DiT's output with garbage on the padding only
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x_t, t, cond=None):
            return self.inner(x_t, t) + 100.0 * (1 - mask)

    a = recipe.denoising_loss(z0, torch.Generator().manual_seed(3))
    recipe.student = PaddedGarbage(recipe.student)
    b = recipe.denoising_loss(z0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_denoising_loss_is_the_masked_eps_mse_at_the_drawn_timesteps():
    recipe = make_recipe()
    z0 = recipe.encode(occupancy(2))
    g = torch.Generator().manual_seed(5)
    loss = recipe.denoising_loss(z0, g)
    # redo the draws: t first, then the noise, from the same seed
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    schedule = recipe.schedule
    abar = schedule.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    mask = recipe.latent_mask
    err = (recipe.student(x_t, t) - noise).square() * mask
    torch.testing.assert_close(loss, err.sum() / (mask.sum() * 3 * 2), rtol=1e-4, atol=1e-6)


def test_gradients_reach_the_dit_and_never_the_vae():
    recipe = make_recipe()
    recipe.denoising_loss(recipe.encode(occupancy(2)), torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in recipe.teacher.parameters())
    grads = [p.grad for p in recipe.student.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= 0.9 * len(grads)
    assert {id(p) for p in recipe.trainable_parameters()} == {id(p) for p in recipe.student.parameters()}


def test_fit_trains_the_dit_keeps_the_vae_and_generates_occupancy():
    recipe = make_recipe()
    vae_before = copy.deepcopy(recipe.teacher.state_dict())
    dit_before = copy.deepcopy(recipe.student.state_dict())
    data = occupancy(4)
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, **quiet_trainer_kwargs())
    trainer.fit(recipe, loader(data), loader(data))
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, vae_before[k])
    assert any(not torch.equal(v, dit_before[k]) for k, v in recipe.student.state_dict().items())
    metrics = trainer.callback_metrics
    assert {"train/denoise", "val/denoise", "val/teacher_miou", "val/teacher_iou", "val/class_tv"} <= set(
        metrics
    )
    generated = recipe.generate(3, torch.Generator().manual_seed(0))
    assert generated.shape == (3, 2, 8, 8, 4) and int(generated.max()) < 5


def test_bad_arguments_and_batches_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="teacher"):
        make_recipe(teacher=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="sampling_steps"):
        make_recipe(sampling_steps=0)
    with pytest.raises(ValueError, match="schedule"):
        make_recipe(schedule=NoiseSchedule.ddpm(prediction_type="v_prediction"))
    recipe = make_recipe()
    with pytest.raises(ValueError, match="occupancy"):
        recipe.training_step(torch.zeros(2, 8, 8), 0)


def test_distillation_trains_student_and_fake_score_and_leaves_the_teacher_dit_unchanged():
    teacher = dit().eval()
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(2)
    recipe = DynamicCityDMD(student=dit(), teacher=teacher, generator_update_every=2, noise_seed=0,
                            optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))  # fmt: skip
    student_before = copy.deepcopy(recipe.student.state_dict())
    latents = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, **quiet_trainer_kwargs())
    trainer.fit(recipe, loader(latents))
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert any(not torch.equal(v, student_before[k]) for k, v in recipe.student.state_dict().items())
    assert {"train/dm", "train/fake"} <= set(trainer.callback_metrics)
    assert recipe.sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="generator_update_every"):
        DynamicCityDMD(student=dit(), teacher=dit(), generator_update_every=0)
