"""Hybrid Distill: losses and relations against independent computations, redundant-token dropping,
gradients only to the student, frozen teachers, teachers trained on first use, a short fit, bad input."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data import DigitsDataModule
from lightning_distill.losses.representation import nt_xent, relation_kl, whitened_feature_smooth_l1
from lightning_distill.models.vit import mae_vit, vit_backbone
from lightning_distill.recipes.hybrid_distill import HybridDistill
from lightning_distill.representation.hybrid_teachers import trained_contrastive_vit, trained_supervised_vit
from lightning_distill.representation.token_relations import (
    mae_encoder,
    redundant_token_mask,
    restricted_relations,
    run_vit,
    token_index,
)
from tests.conftest import quiet_trainer_kwargs

SIZES = {"image_size": 16, "patch_size": 4, "num_heads": 2}


def make_recipe(silent: bool = True, **kwargs) -> HybridDistill:
    torch.manual_seed(0)
    recipe = HybridDistill(
        student=mae_encoder(hidden_size=16, num_layers=2, **SIZES),
        teacher=vit_backbone(hidden_size=24, num_layers=2, **SIZES),
        mim_teacher=mae_vit(hidden_size=24, num_layers=4, decoder_hidden_size=8, decoder_heads=2, **SIZES),
        probe_train_images=200,
        **kwargs,
    )
    if silent:
        recipe.log = lambda *a, **k: None
    return recipe


# ---------------------------------------------------------------- losses
def test_relation_kl_matches_kl_div_and_a_hand_value():
    student = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    teacher = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    hand = (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)) / 2  # second row: 0
    torch.testing.assert_close(relation_kl(student, teacher), torch.tensor(hand))
    s = torch.randn(2, 3, 5, 5).softmax(-1)
    t = torch.randn(2, 3, 5, 5).softmax(-1)
    expected = F.kl_div(s.log(), t, reduction="none").sum(-1).mean()
    torch.testing.assert_close(relation_kl(s, t), expected)
    with pytest.raises(ValueError, match="square"):
        relation_kl(torch.rand(2, 3), torch.rand(2, 3))


def test_whitened_feature_smooth_l1_matches_layernorm_and_smooth_l1_modules():
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8) * 3 + 1
    whiten = torch.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    expected = torch.nn.SmoothL1Loss(beta=2.0)(s, whiten(t))
    torch.testing.assert_close(whitened_feature_smooth_l1(s, t, beta=2.0), expected)
    with pytest.raises(ValueError, match="Project the student"):
        whitened_feature_smooth_l1(torch.zeros(1, 3), torch.zeros(1, 4))


def test_nt_xent_matches_a_loop_over_views():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    z = F.normalize(torch.cat([a, b]), dim=1)
    losses = []
    for i in range(8):
        partner = (i + 4) % 8
        sims = torch.stack([z[i] @ z[k] / 0.5 for k in range(8) if k != i])
        positive = z[i] @ z[partner] / 0.5
        losses.append(-(positive - torch.logsumexp(sims, 0)))
    torch.testing.assert_close(nt_xent(a, b, temperature=0.5), torch.stack(losses).mean())
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(a, b, temperature=0.0)


def test_restricted_relations_equal_a_softmax_over_the_kept_tokens():
    logits = torch.randn(2, 3, 5, 5)
    index = torch.tensor([[0, 2, 3], [0, 1, 4]])
    got = restricted_relations(logits.softmax(-1), index)
    for b in range(2):
        sub = logits[b][:, index[b]][:, :, index[b]]
        torch.testing.assert_close(got[b], sub.softmax(-1))


# ---------------------------------------------------------------- token dropping
def test_redundant_tokens_are_the_least_attended_and_the_student_sees_the_rest():
    recipe = make_recipe()
    recipe.current_drop_ratio = 0.5
    x = torch.randn(3, 1, 16, 16)
    attention = run_vit(recipe.feature_teacher, x).attentions[-1]  # (B, H, 17, 17)
    mask = recipe.drop_mask(attention)
    assert ((mask == 0).sum(1) == 8).all()
    scores = attention[:, :, 0, 1:].mean(1)
    kept = scores.topk(8, dim=1).indices
    assert all(set(kept[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist()) for b in range(3))
    out = run_vit(recipe.student, x, mask)
    assert out.tokens.shape == (3, 9, 16) and out.attentions[0].shape == (3, 2, 9, 9)
    assert redundant_token_mask(scores, 0.0).sum() == 0


def test_terms_match_an_independent_computation():
    recipe = make_recipe()
    recipe.current_drop_ratio = 0.25
    x = torch.randn(2, 1, 16, 16)
    terms = recipe.training_step((x, torch.zeros(2, dtype=torch.long)), 0)
    # independent: plain model calls
    t_out = recipe.feature_teacher(x, output_attentions=True)
    cls = t_out.attentions[-1][:, :, 0, 1:].mean(1)
    keep = cls.topk(12, dim=1).indices.sort(dim=1).values  # 16 patches, 25% dropped
    idx = torch.cat([torch.zeros(2, 1, dtype=torch.long), keep + 1], 1)
    mask = torch.ones(2, 16).scatter_(1, keep, 0.0)
    recipe.student.config.mask_ratio = 0.24  # int(16 * 0.76) = 12 kept
    s_out = recipe.student(x, noise=mask * 2 + torch.arange(16) / 16, output_attentions=True)
    targets = torch.stack([t_out.last_hidden_state[b, idx[b]] for b in range(2)])
    whiten = torch.nn.LayerNorm(24, elementwise_affine=False, eps=1e-6)
    feature = torch.nn.SmoothL1Loss(beta=2.0)(recipe.projection(s_out.last_hidden_state), whiten(targets))
    torch.testing.assert_close(terms["feature"], feature, rtol=1e-5, atol=1e-6)
    recipe.mim_teacher.config.mask_ratio = 0.0
    m_out = recipe.mim_teacher.vit(x, noise=torch.arange(16.0).expand(2, 16), output_attentions=True)
    assert recipe.teacher_layers == [2]  # student block 1 of 2 -> teacher block 2 of 4
    full = m_out.attentions[1]
    target = torch.stack([full[b][:, idx[b]][:, :, idx[b]] for b in range(2)])
    target = target / target.sum(-1, keepdim=True)
    relation = F.kl_div(s_out.attentions[0].log(), target, reduction="none").sum(-1).mean()
    torch.testing.assert_close(terms["relation"], relation, rtol=1e-5, atol=1e-6)
    assert token_index(mask).shape == (2, 13)


def test_gradients_reach_student_and_projection_never_the_teachers():
    recipe = make_recipe()
    recipe.current_drop_ratio = 0.5
    out = recipe.training_step((torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)), 0)
    out["loss"].backward()
    assert recipe.projection.weight.grad is not None
    missing = [n for n, p in recipe.student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] or all("mask_token" in n for n in missing)
    assert all(p.grad is None for p in recipe.teachers.parameters())
    assert {id(p) for p in recipe.trainable_parameters()}.isdisjoint(
        {id(p) for p in recipe.teachers.parameters()}
    )


def test_relation_only_is_the_recipe_without_the_feature_term():
    recipe = make_recipe(loss_weights={"feature": 0.0})
    out = recipe.training_step((torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long)), 0)
    out["loss"].backward()
    assert recipe.projection.weight.grad is None
    torch.testing.assert_close(out["loss"], out["relation"])


# ---------------------------------------------------------------- fit, teachers, bad input
def test_fit_trains_the_student_grows_the_drop_ratio_and_leaves_the_teachers_unchanged():
    recipe = make_recipe(silent=False, drop_ratio=0.5, drop_epochs=2)
    before = copy.deepcopy(recipe.teachers.state_dict())
    student_before = copy.deepcopy(recipe.student.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2, limit_train_batches=2, limit_val_batches=1))
    trainer.fit(recipe, datamodule=DigitsDataModule(size=16, batch_size=32))
    for k, v in recipe.teachers.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert not recipe.teachers.training
    assert any(not torch.equal(v, student_before[k]) for k, v in recipe.student.state_dict().items())
    assert recipe.current_drop_ratio == pytest.approx(0.25)  # epoch 1 of a 2-epoch ramp to 0.5
    metrics = trainer.callback_metrics
    assert {
        "train/feature",
        "train/relation",
        "val/acc",
        "val/knn_acc",
        "val/teacher0_acc",
        "val/teacher1_acc",
    } <= set(metrics)


@pytest.mark.filterwarnings("ignore:.*near chance.*")
def test_teachers_trained_on_first_use_are_cached_frozen_and_reloaded(tmp_path):
    data = DigitsDataModule(size=16, batch_size=256)
    for build in (trained_supervised_vit, trained_contrastive_vit):
        first = build(
            vit_backbone(hidden_size=16, num_layers=1, **SIZES), data, epochs=1, cache_dir=str(tmp_path)
        )
        again = build(
            vit_backbone(hidden_size=16, num_layers=1, **SIZES), data, epochs=1, cache_dir=str(tmp_path)
        )
        assert not first.training and "cache" in first.distill_source
        for k, v in first.state_dict().items():
            torch.testing.assert_close(v, again.state_dict()[k])
        assert first.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="checkpoint"):
        trained_contrastive_vit(vit_backbone(hidden_size=16, num_layers=1, **SIZES))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="relation_layers"):
        make_recipe(relation_layers=[3])
    with pytest.raises(ValueError, match="drop_ratio"):
        make_recipe(drop_ratio=1.0)
    with pytest.raises(ValueError, match="drop_epochs"):
        make_recipe(drop_epochs=-1)
    with pytest.raises(TypeError, match="ViTMAEModel"):
        HybridDistill(
            student=mae_vit(hidden_size=16, num_layers=1, **SIZES),  # the decoder would never learn
            teacher=vit_backbone(hidden_size=16, num_layers=1, **SIZES),
            mim_teacher=mae_vit(hidden_size=16, num_layers=1, **SIZES),
        )
    with pytest.raises(TypeError, match="mim_teacher"):
        HybridDistill(
            student=mae_encoder(hidden_size=16, num_layers=2, **SIZES),
            teacher=vit_backbone(hidden_size=16, num_layers=1, **SIZES),
            mim_teacher=torch.nn.Linear(2, 2),
        )
    with pytest.raises(ValueError, match="same patches"):
        HybridDistill(
            student=mae_encoder(hidden_size=16, num_layers=2, **SIZES),
            teacher=vit_backbone(image_size=16, patch_size=2, hidden_size=16, num_layers=1, num_heads=2),
            mim_teacher=mae_vit(hidden_size=16, num_layers=1, **SIZES),
        )
    with pytest.raises(ValueError, match="cannot drop tokens"):
        run_vit(
            vit_backbone(hidden_size=16, num_layers=1, **SIZES), torch.zeros(1, 1, 16, 16), torch.ones(1, 16)
        )
