"""DHO: the loss terms against naive formulas, gradient routing, a frozen teacher, mixing, the real-scale classes."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_distill.data.domains import DigitDomainsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.dho import DHO, dho_adamw
from lightning_distill.vision_language import ImageEncoder
from tests.conftest import quiet_trainer_kwargs
from tests.vision_language.conftest import tiny_clip_teacher


def make_recipe(heads: str = "dual", **kwargs) -> DHO:
    torch.manual_seed(0)
    student = ImageEncoder(SmallCNN(in_channels=3, width=4, depth=1))
    return DHO(student=student, teacher=tiny_clip_teacher(), num_classes=10, heads=heads, **kwargs)


def batch(n: int = 6):
    torch.manual_seed(1)
    return torch.randn(n, 3, 8, 8), torch.tensor([0, 2, -1, -1, 1, -1][:n])


def naive_kd(student_logits, teacher_logits, t=2.0):
    p = torch.softmax(teacher_logits / t, -1)
    log_q = torch.log_softmax(student_logits / t, -1)
    return (p * (p.log() - log_q)).sum(-1).mean() * t * t


def test_terms_match_ce_on_labelled_and_kd_on_each_part():
    recipe = make_recipe()
    x, y = batch()
    out = recipe.training_step((x, y, torch.zeros_like(y)), 0)
    with torch.no_grad():
        z_ce, z_kd = recipe.head_logits(x)
        z_t = recipe.teacher(x)
    lab = y >= 0
    ce = nn.functional.cross_entropy(z_ce[lab], y[lab])
    kdl, kdu = naive_kd(z_kd[lab], z_t[lab]), naive_kd(z_kd[~lab], z_t[~lab])
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["kd_labelled"], kdl)
    torch.testing.assert_close(out["kd_unlabelled"], kdu)
    torch.testing.assert_close(out["loss"].detach(), 0.5 * ce + 0.5 * (kdl + kdu))


def test_ce_reaches_the_ce_head_and_kd_the_kd_head_never_the_teacher():
    recipe = make_recipe()
    x, y = batch()
    z_ce, z_kd = recipe.head_logits(x)
    recipe.ce_loss(z_ce, y).backward()
    assert recipe.ce_head.weight.grad is not None and recipe.kd_head.weight.grad is None
    assert all(p.grad is None for p in recipe.teacher.parameters())
    recipe.zero_grad()
    z_ce, z_kd = recipe.head_logits(x)
    with torch.no_grad():
        z_t = recipe.teacher(x)
    recipe.kd_term(z_kd, z_t, y < 0).backward()
    assert recipe.kd_head.weight.grad is not None and recipe.ce_head.weight.grad is None
    assert any(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_empty_part_gives_zero_with_a_graph():
    recipe = make_recipe()
    x, _ = batch()
    z_ce, z_kd = recipe.head_logits(x)
    term = recipe.kd_term(z_kd, torch.zeros_like(z_kd), torch.zeros(6, dtype=torch.bool))
    assert term.item() == 0.0 and term.requires_grad


def test_single_head_puts_both_losses_on_one_head():
    recipe = make_recipe(heads="single")
    assert recipe.kd_head is None
    z_ce, z_kd = recipe.head_logits(batch()[0])
    assert z_ce is z_kd
    assert float(recipe.mix_alpha) == 0.0


def test_mixing_search_sets_alpha_beta_and_prediction_uses_them():
    recipe = make_recipe()
    x, _ = batch()
    z_ce, z_kd = torch.zeros(4, 3), torch.eye(3)[[0, 1, 2, 0]] * 5
    acc = recipe.select_mixing(z_ce + torch.eye(3)[[1, 1, 1, 1]], z_kd, torch.tensor([0, 1, 2, 0]))
    assert acc == 1.0 and float(recipe.mix_alpha) > 0.0  # the CE head alone gets 1 of 4 right
    with torch.no_grad():
        z_ce, z_kd = recipe.head_logits(x)
        a, b = float(recipe.mix_alpha), float(recipe.mix_beta)
        torch.testing.assert_close(recipe(x), (1 - a) * z_ce.softmax(-1) + a * (z_kd / b).softmax(-1))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        make_recipe(temperature=0.0)
    with pytest.raises(ValueError, match="heads"):
        make_recipe(heads="triple")
    with pytest.raises(ValueError, match="num_features"):
        DHO(student=nn.Linear(3, 3), teacher=tiny_clip_teacher(), num_classes=10)


def test_official_optimizer():
    opt = dho_adamw([nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 1e-3


def tiny_data():
    return DigitDomainsDataModule(
        domains=("digits",), size=8, labelled_fraction=0.1, batch_size=32, labelled_batch_size=8
    )


def test_fit_leaves_the_teacher_unchanged_and_validation_searches_the_mix():
    recipe = make_recipe()
    before = copy.deepcopy(recipe.teacher.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=3, limit_val_batches=2))
    trainer.fit(recipe, datamodule=tiny_data())
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert "val/mix_alpha" in trainer.callback_metrics and "val/teacher_acc" in trainer.callback_metrics
    assert not recipe.teacher.training


def test_clip_vision_student_and_tiny_clip_teacher_run_the_same_code_path():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=8,
            patch_size=4,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    recipe = DHO(student=ImageEncoder(vision), teacher=tiny_clip_teacher(), num_classes=10)
    trainer = L.Trainer(**quiet_trainer_kwargs(fast_dev_run=True))
    data = tiny_data()
    trainer.fit(recipe, datamodule=data)
    result = trainer.test(recipe, datamodule=data, verbose=False)[0]
    assert "test/acc" in result and "test/teacher_acc" in result
