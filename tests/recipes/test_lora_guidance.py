"""LoRA guidance distillation: the target is two teacher passes, gradients reach only adapters and the w slot,
the teacher is untouched, the UNet2DConditionModel path runs, one pass at sampling time."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.diffusion.guidance_distillation import FixedGuidance, guidance_distillation_target
from lightning_distill.diffusion.timesteps import uniform_timesteps
from lightning_distill.recipes.lora_guidance import LoRAGuidance
from tests.conftest import quiet_trainer_kwargs

K = 4
MLP_TARGETS = ("input", "linear", "embedding", "output")


def bench_recipe(**kwargs) -> LoRAGuidance:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    options = dict(
        teacher=AnalyticTeacher(GaussianMixture.ring(k=8, num_classes=K), schedule),
        student=MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=K),
        schedule=schedule,
        lora_target_modules=MLP_TARGETS,
        embedding_dim=16,
        guidance_min=0.0,
        guidance_max=4.0,
        num_inference_steps=4,
        noise_seed=0,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    options.update(kwargs)
    return LoRAGuidance(**options)


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
    )


def test_the_target_equals_two_teacher_passes():
    teacher = MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K)
    x, t = torch.randn(5, 2), torch.tensor([3, 50, 400, 700, 999])
    y, null, w = torch.tensor([0, 1, 2, 3, 0]), torch.full((1,), K), torch.tensor([0.0, 0.5, 1.0, 3.0, 7.5])
    target = guidance_distillation_target(teacher, x, t, y, null, w)
    with torch.no_grad():
        expected = (1 + w)[:, None] * teacher(x, t, y) - w[:, None] * teacher(x, t, torch.full((5,), K))
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)


def test_guidance_loss_matches_an_independent_computation_with_the_exact_teacher():
    recipe = bench_recipe()
    with torch.no_grad():
        recipe.student.projection.weight.normal_()
    gmm = recipe.teacher.gmm
    x0 = gmm.sample(6, torch.Generator().manual_seed(1)).float()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = recipe.guidance_loss(x0, y, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    t = uniform_timesteps(6, 0, 1000, num_train_timesteps=1000, generator=g)
    noise = torch.randn(6, 2, generator=g)
    w = 4.0 * torch.rand(6, generator=g)
    abar = recipe.schedule.scheduler.alphas_cumprod.double()
    a, s = abar[t].sqrt()[:, None], (1 - abar[t]).sqrt()[:, None]
    x_t = a * x0.double() + s * noise.double()
    eps_c = (x_t - a * gmm.posterior_mean(x_t, a[:, 0], s[:, 0], y)) / s
    eps_u = (x_t - a * gmm.posterior_mean(x_t, a[:, 0], s[:, 0], None)) / s
    target = (1 + w.double())[:, None] * eps_c - w.double()[:, None] * eps_u
    with torch.no_grad():
        prediction = recipe.student(x_t.float(), t, y, guidance=w).double()
    torch.testing.assert_close(loss.double(), ((prediction - target) ** 2).mean(), atol=1e-4, rtol=1e-3)


def test_the_student_starts_as_its_base_and_only_adapters_and_the_w_slot_learn():
    base = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=K)
    reference = copy.deepcopy(base)
    recipe = bench_recipe(student=base)
    x, t, y = torch.randn(4, 2), torch.tensor([5, 300, 600, 990]), torch.arange(4)
    torch.testing.assert_close(recipe.student(x, t, y, guidance=torch.full((4,), 3.0)), reference(x, t, y))
    trainable = {n for n, p in recipe.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projection") for n in trainable)
    x0 = recipe.teacher.gmm.sample(8, torch.Generator().manual_seed(0)).float()
    recipe.guidance_loss(x0, torch.arange(8) % K, torch.Generator().manual_seed(0)).backward()
    for name, p in recipe.student.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    optimizer = recipe.configure_optimizers()
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {
        id(p) for n, p in recipe.student.named_parameters() if n in trainable
    }


def test_full_finetuning_trains_every_student_weight():
    recipe = bench_recipe(finetune="full")
    assert all(p.requires_grad for p in recipe.student.parameters())
    assert recipe.adapter_parameters() == []
    assert len(recipe.trainable_student_parameters()) > len(bench_recipe().trainable_student_parameters())


def test_training_reduces_the_loss_and_sampling_takes_one_pass_per_step():
    recipe = bench_recipe()
    data = GMMDataModule(
        "ring", num_classes=K, options={"k": 8}, conditional=True, num_train=512, num_val=8, batch_size=64
    )
    L.seed_everything(0)
    x0 = recipe.teacher.gmm.sample(256, torch.Generator().manual_seed(9)).float()
    y = torch.arange(256) % K
    with torch.no_grad():
        before = recipe.guidance_loss(x0, y, torch.Generator().manual_seed(1))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=60, limit_val_batches=0))
    trainer.fit(recipe, datamodule=data)
    with torch.no_grad():
        after = recipe.guidance_loss(x0, y, torch.Generator().manual_seed(1))
    assert after < 0.8 * before
    assert {"train/guidance", "train/loss_student"} <= set(trainer.logged_metrics)

    calls = []
    handle = recipe.student.model.register_forward_hook(lambda *a: calls.append(1))
    recipe.sample(3, torch.Generator().manual_seed(0), torch.arange(3))
    handle.remove()
    assert len(calls) == recipe.num_inference_steps


def test_unet2dcondition_student_is_a_lora_copy_of_the_teacher_and_the_teacher_is_untouched():
    torch.manual_seed(0)
    teacher = _unet()
    before = copy.deepcopy(teacher.state_dict())
    recipe = LoRAGuidance(
        teacher,
        schedule=NoiseSchedule.ddpm(),
        embedding_dim=16,
        num_inference_steps=2,
        noise_seed=0,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    x0, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            recipe.student(x0, torch.tensor([10, 500]), cond, guidance=torch.tensor([1.0, 5.0])),
            teacher(x0, torch.tensor([10, 500]), cond).sample,
        )
    optimizer = recipe.configure_optimizers()
    loss = recipe.guidance_loss(x0, cond, torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in recipe.adapter_parameters())
    assert recipe.sample(2, torch.Generator().manual_seed(0), cond).shape == (2, 4, 8, 8)
    assert isinstance(FixedGuidance(recipe.student, 2.0)(x0, torch.tensor(3), cond), torch.Tensor)


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ValueError, match="finetune"):
        bench_recipe(finetune="half")
    with pytest.raises(ValueError, match="guidance_min"):
        bench_recipe(guidance_min=3.0, guidance_max=1.0)
    with pytest.raises(ValueError, match="student"):
        bench_recipe(student=None)
    with pytest.raises(ValueError, match="target_modules"):
        bench_recipe(lora_target_modules=("to_q",))
