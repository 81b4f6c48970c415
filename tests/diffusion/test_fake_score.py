"""Tests for ``lightning_distill.diffusion.fake_score.FakeScore`` (full copy and LoRA via peft)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lightning_distill.diffusion.denoisers import MLPDenoiser, tiny_unet
from lightning_distill.diffusion.fake_score import FakeScore
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.module import DistillationModule


def _teacher_unet() -> nn.Module:
    torch.manual_seed(0)
    return tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16).requires_grad_(False).eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 800]), torch.randn(2, 3, 16, generator=g)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_steps(fake: FakeScore, steps: int = 2, lr: float = 1e-2) -> None:
    opt = torch.optim.Adam(fake.trainable_parameters(), lr=lr)
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x0 = torch.randn(2, 4, 8, 8, generator=g)
        loss = fake.denoising_loss(
            x0, torch.tensor([100, 600]), torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 16)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lora_fake_score_trains_only_adapters_and_never_changes_the_teacher() -> None:
    teacher = _teacher_unet()
    before = _snapshot(teacher)
    fake = FakeScore.lora_on(teacher, NoiseSchedule.ddpm(), rank=4, alpha=6.0)
    trainable = {name for name, p in fake.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {id(p) for p in fake.trainable_parameters()} == {
        id(p) for n, p in fake.named_parameters() if "lora_" in n
    }
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in fake.parameters()}
    _train_steps(fake)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lora_fake_score_starts_at_the_teacher_and_disabling_adapters_reproduces_it_exactly() -> None:
    teacher = _teacher_unet()
    fake = FakeScore.lora_on(teacher, NoiseSchedule.ddpm(), rank=4, alpha=6.0)
    x, t, e = _inputs()
    with torch.no_grad():
        reference = teacher(x, t, e).sample
        assert torch.equal(fake(x, t, e).sample, reference)  # B = 0 at initialisation
    _train_steps(fake)
    with torch.no_grad():
        assert not torch.allclose(fake(x, t, e).sample, reference)
        with fake.adapters_disabled():
            assert torch.equal(fake(x, t, e).sample, reference)
        assert not torch.allclose(fake(x, t, e).sample, reference)
    assert all(p.requires_grad for p in fake.trainable_parameters())


def test_copy_of_is_an_independent_trainable_copy() -> None:
    teacher = MLPDenoiser(dim=2, hidden=16, depth=2).requires_grad_(False).eval()
    before = _snapshot(teacher)
    fake = FakeScore.copy_of(teacher, NoiseSchedule.ddpm())
    assert all(p.requires_grad for p in fake.parameters()) and fake.training
    opt = torch.optim.SGD(fake.trainable_parameters(), lr=0.1)
    loss = fake.denoising_loss(torch.randn(8, 2), torch.randint(0, 1000, (8,)), torch.randn(8, 2))
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(fake.model.input.weight, teacher.input.weight)
    with pytest.raises(RuntimeError, match="needs a LoRA fake score"):
        with fake.adapters_disabled():
            pass


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_denoising_loss_matches_a_manual_computation_and_detaches_x0(prediction_type: str) -> None:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm(beta_schedule="linear", prediction_type=prediction_type)
    fake = FakeScore.copy_of(MLPDenoiser(dim=3, hidden=16, depth=1, num_classes=2), schedule)
    x0 = torch.randn(6, 3, requires_grad=True)
    noise, t, y = torch.randn(6, 3), torch.randint(0, 1000, (6,)), torch.randint(0, 3, (6,))
    weight = torch.rand(6)
    loss = fake.denoising_loss(x0, t, noise, y, weighting=weight)
    abar = schedule.scheduler.alphas_cumprod[t][:, None]
    x_t = abar.sqrt() * x0.detach() + (1 - abar).sqrt() * noise
    target = {
        "epsilon": noise,
        "sample": x0.detach(),
        "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0.detach(),
    }[prediction_type]
    expected = (weight * ((fake.model(x_t, t, y) - target) ** 2).mean(dim=1)).mean()
    assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert x0.grad is None


@pytest.mark.parametrize("lora", [False, True])
def test_reset_from_restores_the_teacher_in_place(lora: bool) -> None:
    teacher = _teacher_unet()
    schedule = NoiseSchedule.ddpm()
    fake = (
        FakeScore.lora_on(teacher, schedule, rank=4, alpha=6.0)
        if lora
        else FakeScore.copy_of(teacher, schedule)
    )
    params = [id(p) for p in fake.trainable_parameters()]
    _train_steps(fake)
    x, t, e = _inputs()
    fake.reset_from(teacher, generator=torch.Generator().manual_seed(0))
    assert [id(p) for p in fake.trainable_parameters()] == params
    with torch.no_grad():
        assert_close(fake(x, t, e).sample, teacher(x, t, e).sample, atol=0, rtol=0)
    if lora:
        lora_a = [p for n, p in fake.named_parameters() if "lora_A" in n]
        assert all(p.abs().sum() > 0 for p in lora_a)  # A re-drawn, B zero
    with pytest.raises(ValueError, match="does not match"):
        fake.reset_from(MLPDenoiser())


def test_fake_score_inside_a_distillation_module_is_trainable_and_the_teacher_is_not() -> None:
    teacher = _teacher_unet()
    module = DistillationModule(
        student=tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16), teacher=teacher
    )
    module.fake_score = FakeScore.lora_on(module.teacher, NoiseSchedule.ddpm(), rank=4, alpha=6.0)
    trainable = {id(p) for p in module.trainable_parameters()}
    assert {id(p) for p in module.fake_score.trainable_parameters()} <= trainable
    assert not trainable & {id(p) for p in module.teacher.parameters()}
    base = [p for n, p in module.fake_score.named_parameters() if "lora_" not in n]
    assert not trainable & {id(p) for p in base}


def test_construction_errors() -> None:
    teacher = _teacher_unet()
    with pytest.raises(ValueError, match="matched no adaptable layer"):
        FakeScore.lora_on(MLPDenoiser(), NoiseSchedule.ddpm())
    with pytest.raises(ValueError, match="`rank`"):
        FakeScore.lora_on(teacher, NoiseSchedule.ddpm(), rank=0)
    handle = teacher.mid_block.register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="forward hooks"):
        FakeScore.copy_of(teacher, NoiseSchedule.ddpm())
    handle.remove()
    with pytest.raises(TypeError, match="NoiseSchedule"):
        FakeScore(teacher, "ddpm")  # type: ignore[arg-type]
    # LoRA on an MLP teacher: name its linear layers.
    fake = FakeScore.lora_on(
        MLPDenoiser(dim=2, hidden=8, depth=2), NoiseSchedule.ddpm(), rank=2, target_modules=("linear",)
    )
    assert sum(p.numel() for p in fake.trainable_parameters()) == 2 * (2 * 8 + 8 * 2)
