"""SLAM, BOOT and LoRA guidance on image-shaped data with a class-conditional UNet2DModel (the digits configs' path).

The digits configs (recipes/{slam,boot,lora_guidance}/digits.yaml) run these recipes with a class-conditional
``UNet2DModel`` teacher guided through its null label; here a tiny random one checks that each recipe's loss,
gradients and samplers work on ``(B, 1, 8, 8)`` images with class labels.
"""

from __future__ import annotations

import torch

from lightning_distill.diffusion import NoiseSchedule, tiny_unet
from lightning_distill.diffusion.sampling import sample as ddim_sample
from lightning_distill.recipes.boot import BOOT
from lightning_distill.recipes.lora_guidance import LoRAGuidance
from lightning_distill.recipes.slam import SLAM

LABELS = torch.tensor([0, 3, 7, 9])


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_unet(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_classes=10)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def _images() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_slam_trains_and_samples_class_conditional_images_in_1_2_and_4_steps():
    teacher = _unet()
    model = SLAM(
        student=_unet(), teacher=teacher, schedule=NoiseSchedule.ddpm(), guidance=1.0, embedding_dim=16
    )
    assert torch.equal(model.null_condition(LABELS), torch.full((4,), 10))  # the UNet's last class embedding
    before = _snapshot(teacher)
    loss = model.consistency_loss(_images(), LABELS, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.target_student.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
    assert _unchanged(model.teacher, before)
    for steps in (1, 2, 4):
        model.num_inference_steps = steps
        out = model.sample(4, torch.Generator().manual_seed(0), LABELS)
        assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


def test_boot_is_data_free_on_images_and_samples_in_one_step():
    teacher = _unet()
    model = BOOT(
        student=_unet(), teacher=teacher, schedule=NoiseSchedule.ddpm(), guidance=1.0, student_init="teacher"
    )
    before = _snapshot(teacher)
    terms = model.losses(LABELS, 4, torch.Generator().manual_seed(0))  # conditions only, no image
    assert set(terms) == {"bootstrap", "boundary"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
    assert _unchanged(model.teacher, before)
    out = model.sample(4, torch.Generator().manual_seed(0), LABELS)
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


def test_lora_guidance_adapts_only_adapters_on_a_unet2dmodel_and_samples_in_one_pass():
    teacher = _unet()
    model = LoRAGuidance(
        teacher=teacher,
        schedule=NoiseSchedule.ddpm(),
        lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"),
        embedding_dim=16,
        guidance_min=0.0,
        guidance_max=3.0,
        sample_guidance=1.0,
        num_inference_steps=2,
    )
    before = _snapshot(teacher)
    trainable = {name for name, p in model.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("projection.") for name in trainable)
    loss = model.guidance_loss(_images(), LABELS, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = {n for n, p in model.student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and grads <= trainable
    assert _unchanged(model.teacher, before)
    # before training, the w projection is zero: the student at any w is the teacher's conditional prediction
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    student = model.sample(4, torch.Generator().manual_seed(0), LABELS)
    reference = ddim_sample(teacher, model.schedule, noise, 2, LABELS)
    assert student.shape == (4, 1, 8, 8)
    torch.testing.assert_close(student, reference, atol=1e-4, rtol=1e-4)
