"""DistillDIFT: the loss against an independent computation, LoRA-only gradients, frozen teachers, cache, a short fit."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data import DigitsDataModule
from lightning_distill.data.correspondence import WarpedPairsDataModule
from lightning_distill.diffusion import ddpm_schedule, tiny_unet
from lightning_distill.models.vit import mae_vit, vit_backbone
from lightning_distill.recipes.diffusion_features import DiffusionFeatures
from lightning_distill.representation.correspondence import UNetFeatures, ViTFeatures
from tests.conftest import quiet_trainer_kwargs


def tiny_vit():
    return mae_vit(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        decoder_hidden_size=8,
        decoder_heads=2,
    )


def make_recipe(student=None, silent: bool = True, **kwargs) -> DiffusionFeatures:
    torch.manual_seed(0)
    teachers = [
        UNetFeatures(
            tiny_unet(sample_size=16, block_out_channels=(8, 16)),
            ddpm_schedule(),
            timesteps=(51, 101),
            up_block=0,
        ),
        ViTFeatures(tiny_vit()),
    ]
    kwargs.setdefault("lora_dropout", 0.0)
    recipe = DiffusionFeatures(student=student or tiny_vit(), teachers=teachers, **kwargs)
    if silent:
        recipe.log = lambda *a, **k: None
    return recipe


def pairs(n=3):
    g = torch.Generator().manual_seed(0)
    source, target = torch.randn(n, 1, 16, 16, generator=g), torch.randn(n, 1, 16, 16, generator=g)
    points = torch.rand(n, 4, 2, generator=g) * 15
    return source, target, points, points.clone(), torch.ones(n, 4, dtype=torch.bool), torch.arange(n)


def test_loss_matches_an_independent_computation():
    recipe = make_recipe()
    with torch.no_grad():  # move the LoRA B matrices off zero so the student differs from its base
        for name, p in recipe.student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = pairs()
    loss = recipe.training_step(batch, 0)["distill"]
    source, target = batch[0], batch[1]
    recipe.student.config.mask_ratio = recipe.teachers[1].model.config.mask_ratio = 0.0  # keep every patch

    def student_tokens(x):  # ViT-MAE encoder with every patch visible: tokens in patch order after the cls
        return recipe.student(x, noise=torch.arange(16.0).expand(x.shape[0], 16) / 16).last_hidden_state[
            :, 1:
        ]

    def teacher_grid(x):
        u = F.normalize(recipe.teachers[0](x), dim=1)  # (B, 8, 16, 16)
        v = (
            recipe.teachers[1]
            .model(x, noise=torch.arange(16.0).expand(x.shape[0], 16) / 16)
            .last_hidden_state[:, 1:]
        )
        v = F.normalize(v.transpose(1, 2).reshape(x.shape[0], -1, 4, 4), dim=1)
        v = F.interpolate(v, size=(16, 16), mode="bilinear", align_corners=False)
        both = torch.cat([u, v], 1)
        return (
            F.interpolate(both, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        )

    with torch.no_grad():
        ts, tt = teacher_grid(source), teacher_grid(target)
    ss, st = student_tokens(source), student_tokens(target)
    s_map = F.normalize(ss, dim=-1) @ F.normalize(st, dim=-1).transpose(1, 2)
    t_map = F.normalize(ts, dim=-1) @ F.normalize(tt, dim=-1).transpose(1, 2)
    expected = -(torch.softmax(t_map / 0.01, -1) * torch.log_softmax(s_map / 0.01, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_only_the_lora_adapters():
    recipe = make_recipe()
    recipe.training_step(pairs(), 0)["loss"].backward()
    trainable = {n for n, p in recipe.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.grad is not None for n, p in recipe.named_parameters() if "lora_A" in n or "lora_B" in n)
    assert all(p.grad is None for n, p in recipe.named_parameters() if "lora_" not in n)
    assert {n.split(".")[0] for n in trainable} == {"student"}


def test_teacher_features_are_cached_per_pair_index():
    recipe = make_recipe()
    calls = []
    recipe.teachers[1].register_forward_hook(lambda *a: calls.append(1))
    batch = pairs()
    first = recipe.training_step(batch, 0)["distill"]
    recipe.training_step(batch, 1)
    assert len(calls) == 2 and len(recipe.teacher_cache) == 3  # source and target once, then from memory
    uncached = make_recipe(cache_teacher_features=False).training_step(batch, 0)["distill"]
    torch.testing.assert_close(first, uncached)


def test_short_fit_leaves_teachers_unchanged_and_scores_pck():
    L.seed_everything(0)
    recipe = make_recipe(silent=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    before = copy.deepcopy(recipe.teachers.state_dict())
    base = {n: p.clone() for n, p in recipe.student.named_parameters() if "lora_" not in n}
    data = WarpedPairsDataModule(
        DigitsDataModule(size=16), num_train_pairs=16, num_val_pairs=8, num_test_pairs=8, batch_size=8
    )
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, **quiet_trainer_kwargs())
    trainer.fit(recipe, datamodule=data)
    metrics = trainer.test(recipe, datamodule=data, verbose=False)[0]
    for k, v in recipe.teachers.state_dict().items():
        torch.testing.assert_close(v, before[k])
    for n, p in recipe.student.named_parameters():
        if n in base:
            torch.testing.assert_close(p, base[n])  # the ViT's own weights stay frozen
    assert not any(p.requires_grad for p in recipe.teachers.parameters())
    assert all(not t.training for t in recipe.teachers)
    assert {
        "test/pck",
        "test/teacher0_pck",
        "test/teacher1_pck",
        "test/teacher_ensemble_pck",
    } <= metrics.keys()
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_a_transformers_vit_model_student_runs_the_same_path():
    recipe = make_recipe(
        student=vit_backbone(image_size=16, patch_size=4, hidden_size=16, num_layers=2, num_heads=2),
        student_layer=1,
    )
    out = recipe.training_step(pairs(2), 0)
    assert torch.isfinite(out["loss"])


def test_bad_input_is_rejected():
    with pytest.raises(TypeError, match="student"):
        make_recipe(student=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="temperature"):
        make_recipe(temperature=0.0)
    with pytest.raises(ValueError, match="student_layer"):
        make_recipe(student_layer=5)
    with pytest.raises(ValueError, match="teachers"):
        DiffusionFeatures(student=tiny_vit(), teachers=[])
    with pytest.raises(ValueError, match="rank"):
        make_recipe(lora_rank=0)
