"""DMJD: disjoint views, the two losses against independent computations, gradients, a short fit."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.models.vit import mae_vit
from lightning_distill.recipes.dmjd import DMJD
from lightning_distill.representation import HOGFeatures, hog_targets
from tests.conftest import quiet_trainer_kwargs


def make_recipe(silent: bool = True, **kwargs) -> DMJD:
    torch.manual_seed(0)
    student = mae_vit(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        decoder_hidden_size=8,
        decoder_layers=1,
        decoder_heads=2,
    )
    recipe = DMJD(student=student, probe_train_images=300, **kwargs)
    if silent:
        recipe.log = lambda *a, **k: None
    return recipe


def test_views_have_disjoint_visible_patches_and_the_paper_ratio():
    recipe = make_recipe()
    masks = recipe.sample_masks(5, "cpu")
    first, second = masks[:5], masks[5:]
    assert ((1 - first) * (1 - second)).sum() == 0
    # 4x4 patch grid, 2x2 blocks: 4 groups, int(4 * 0.4) = 1 visible group = 4 patches per view
    assert ((1 - first).sum(1) == 4).all() and ((1 - second).sum(1) == 4).all()


def test_terms_match_an_independent_computation():
    recipe = make_recipe()
    x = torch.rand(2, 1, 16, 16)
    terms = recipe.training_step((x, torch.zeros(2, dtype=torch.long)), 0)
    masks = recipe.sample_masks(2, "cpu")
    target = hog_targets(x, 4).repeat(2, 1, 1)
    # the model's own path with the same visible patches
    noise = masks * 2 + torch.rand(4, 16) * 0.5
    recipe.student.config.mask_ratio = 0.75
    out = recipe.student.vit(x.repeat(2, 1, 1, 1), noise=noise)
    pred = recipe.student.decoder(out.last_hidden_state, out.ids_restore).logits
    per_patch = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(terms["mim"], (per_patch * masks).sum() / masks.sum(), rtol=1e-5, atol=1e-6)
    # visible branch: order the visible tokens like the targets (patch order) before comparing
    latent = out.last_hidden_state[:, 1:]
    keep = noise.argsort(1)[:, :4]
    order = keep.argsort(1).argsort(1)  # rank of each kept patch among the kept, by position
    latent = torch.empty_like(latent).scatter_(1, order.unsqueeze(-1).expand_as(latent), latent)
    vis_target = torch.stack([target[i, masks[i] == 0] for i in range(4)])
    vis_pred = recipe.predictor(recipe.projector(latent))
    d = (vis_pred - vis_target).abs()
    expected = torch.where(d < 2.0, 0.5 * d**2 / 2.0, d - 1.0).mean()
    torch.testing.assert_close(terms["vis"], expected, rtol=1e-5, atol=1e-6)


def test_single_view_baseline_uses_one_mask_per_image():
    recipe = make_recipe(num_views=1, loss_weights={"vis": 0.0})
    assert recipe.sample_masks(3, "cpu").shape == (3, 16)
    out = recipe.training_step((torch.rand(3, 1, 16, 16), torch.zeros(3, dtype=torch.long)), 0)
    torch.testing.assert_close(out["loss"], out["mim"])


def test_gradients_reach_encoder_decoder_projector_and_predictor():
    recipe = make_recipe()
    recipe.training_step((torch.rand(2, 1, 16, 16), torch.zeros(2, dtype=torch.long)), 0)["loss"].backward()
    trainable = [p for p in recipe.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert isinstance(recipe.teacher, HOGFeatures) and list(recipe.teacher.parameters()) == []
    assert recipe.student.decoder.decoder_pred.out_features == 36


def test_fit_logs_both_terms_and_probe_accuracy_of_student_and_hog():
    recipe = make_recipe(silent=False)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=2, limit_val_batches=1))
    trainer.fit(recipe, datamodule=DigitsDataModule(size=16, batch_size=32))
    assert {"train/mim", "train/vis", "val/acc", "val/knn_acc", "val/teacher_acc"} <= set(
        trainer.callback_metrics
    )


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mask_ratio"):
        make_recipe(mask_ratio=0.4)
    make_recipe(mask_ratio=0.4, num_views=1)  # one view may mask less than half
    with pytest.raises(ValueError, match="mask_kind"):
        make_recipe(mask_kind="grid")
    with pytest.raises(ValueError, match="num_views"):
        make_recipe(num_views=3)
    with pytest.raises(ValueError, match="hog_cells_per_patch"):
        make_recipe(hog_cells_per_patch=3)
    with pytest.raises(TypeError, match="ViTMAEForPreTraining"):
        DMJD(student=torch.nn.Linear(2, 2))
