"""DMAE: the two losses against independent computations, shared masks, gradients, frozen teacher, a short fit."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data import DigitsDataModule
from lightning_distill.models.vit import mae_vit
from lightning_distill.recipes.dmae import DMAE
from tests.conftest import quiet_trainer_kwargs


def tiny(width: int, layers: int):
    return mae_vit(
        image_size=16,
        patch_size=4,
        hidden_size=width,
        num_layers=layers,
        num_heads=2,
        decoder_hidden_size=8,
        decoder_layers=1,
        decoder_heads=2,
    )


def make_recipe(silent: bool = True, **kwargs) -> DMAE:
    torch.manual_seed(0)
    kwargs.setdefault("student_layer", 1)
    kwargs.setdefault("teacher_layer", 2)
    recipe = DMAE(student=tiny(16, 2), teacher=tiny(24, 3), probe_train_images=300, **kwargs)
    if silent:
        recipe.log = lambda *a, **k: None
    return recipe


def test_terms_match_an_independent_computation_on_the_same_visible_patches():
    recipe = make_recipe()
    x = torch.randn(3, 1, 16, 16)
    mask = recipe.sample_masks(3, x.device)
    assert ((1 - mask).sum(1) == 4).all()  # 16 patches, 75% masked
    terms = recipe.training_step((x, torch.zeros(3, dtype=torch.long)), 0)
    # independent: the model's own MAE loss with the same mask (noise keeps the visible patches)
    noise = mask * 2 + torch.rand(3, 16) * 0.5
    recipe.student.config.mask_ratio = 0.75
    out = recipe.student(x, noise=noise, output_hidden_states=True)
    torch.testing.assert_close(out.mask, mask)
    torch.testing.assert_close(terms["pixel"], out.loss, rtol=1e-5, atol=1e-6)
    recipe.teacher.config.mask_ratio = 0.75
    t_hidden = recipe.teacher(x, noise=noise, output_hidden_states=True).hidden_states[2]
    s_hidden = out.hidden_states[1]
    # token order differs with the noise; compare sorted by position: both are (cls, visible in patch order)
    order = noise.argsort(1)[:, :4].argsort(1).argsort(1)  # rank of each kept patch in position order

    def by_position(h):
        body = h[:, 1:]
        sorted_body = torch.empty_like(body).scatter_(1, order.unsqueeze(-1).expand_as(body), body)
        return torch.cat([h[:, :1], sorted_body], 1)

    s, t = recipe.projection(by_position(s_hidden)), by_position(t_hidden)
    expected = (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).abs().mean()
    torch.testing.assert_close(terms["distill"], expected, rtol=1e-5, atol=1e-6)


def test_masks_follow_noise_seed_and_step():
    a, b = make_recipe(noise_seed=1), make_recipe(noise_seed=1)
    torch.testing.assert_close(a.sample_masks(4, "cpu"), b.sample_masks(4, "cpu"))
    assert not torch.equal(a.sample_masks(4, "cpu"), make_recipe(noise_seed=2).sample_masks(4, "cpu"))


def test_gradients_reach_student_and_projection_never_the_teacher():
    recipe = make_recipe()
    out = recipe.training_step((torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)), 0)
    out["loss"].backward()
    assert recipe.projection.weight.grad is not None
    assert all(p.grad is not None for p in recipe.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in recipe.teacher.parameters())
    assert {id(p) for p in recipe.trainable_parameters()}.isdisjoint(
        {id(p) for p in recipe.teacher.parameters()}
    )


def test_plain_mae_is_the_recipe_without_the_distillation_term():
    recipe = make_recipe(loss_weights={"distill": 0.0})
    out = recipe.training_step((torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long)), 0)
    out["loss"].backward()
    assert recipe.projection.weight.grad is None
    torch.testing.assert_close(out["loss"], out["pixel"])


def test_fit_trains_the_student_leaves_the_teacher_unchanged_and_logs_probe_accuracy():
    recipe = make_recipe(silent=False)
    teacher_before = copy.deepcopy(recipe.teacher.state_dict())
    student_before = copy.deepcopy(recipe.student.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=3, limit_val_batches=1))
    trainer.fit(recipe, datamodule=DigitsDataModule(size=16, batch_size=32))
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])
    assert not recipe.teacher.training
    assert any(not torch.equal(v, student_before[k]) for k, v in recipe.student.state_dict().items())
    metrics = trainer.callback_metrics
    assert {"train/pixel", "train/distill", "val/acc", "val/knn_acc", "val/teacher_acc"} <= set(metrics)
    assert 0.0 <= float(metrics["val/acc"]) <= 1.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="student_layer"):
        make_recipe(student_layer=3)
    with pytest.raises(ValueError, match="teacher_layer"):
        make_recipe(teacher_layer=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        make_recipe(mask_ratio=1.0)
    with pytest.raises(ValueError, match="same patches"):
        DMAE(
            student=tiny(16, 2),
            teacher=mae_vit(image_size=16, patch_size=2, hidden_size=8, num_layers=1, num_heads=2),
            student_layer=1,
            teacher_layer=1,
        )
    with pytest.raises(TypeError, match="ViTMAEForPreTraining"):
        DMAE(student=torch.nn.Linear(2, 2), teacher=tiny(8, 1))
