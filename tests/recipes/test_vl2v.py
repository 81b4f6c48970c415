"""VL2V-ADiP: the alignment terms, the two stages, stage-2 weight averaging, the frozen teacher."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data.domains import DigitDomainsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.vl2v import VL2V, StageTwoAveraging, vl2v_adam
from lightning_distill.vision_language import ImageEncoder
from tests.conftest import quiet_trainer_kwargs
from tests.vision_language.conftest import tiny_clip_teacher


def make_recipe(**kwargs) -> VL2V:
    torch.manual_seed(0)
    return VL2V(
        student=ImageEncoder(SmallCNN(in_channels=3, width=4, depth=1)), teacher=tiny_clip_teacher(), **kwargs
    )


def test_terms_are_negative_cosines_to_clip_image_and_label_text():
    recipe = make_recipe()
    recipe.stage = 2
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 3, 3, 9])
    out = recipe.training_step((x, y, torch.zeros_like(y)), 0)
    with torch.no_grad():
        p = F.normalize(recipe.projection(recipe.student(x)), dim=-1)
        v = recipe.teacher.encode_images(x)
    c = recipe.teacher.class_embeddings[y]
    torch.testing.assert_close(out["image"], -(p * v).sum(-1).mean())
    torch.testing.assert_close(out["text"], -(p * F.normalize(c, dim=-1)).sum(-1).mean())
    torch.testing.assert_close(out["loss"].detach(), 0.5 * out["image"] + 0.5 * out["text"])  # λ = 0.5


def test_stage_one_trains_only_the_projection_and_stage_two_everything():
    recipe = make_recipe()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    recipe.training_step((x, y, y), 0)["loss"].backward()
    assert recipe.projection.weight.grad is not None
    assert all(p.grad is None for p in recipe.student.parameters()) and not recipe.student.training
    recipe.zero_grad()
    recipe.stage = 2
    recipe.training_step((x, y, y), 0)["loss"].backward()
    assert recipe.student.backbone.stem[0].weight.grad is not None and recipe.student.training
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_prediction_is_the_text_classifier_on_projected_features():
    recipe = make_recipe()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        p = F.normalize(recipe.projection(recipe.student(x)), dim=-1)
        expected = recipe.teacher.clip.logit_scale.exp() * p @ recipe.teacher.class_embeddings.t()
    torch.testing.assert_close(recipe(x), expected)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="stage1_epochs"):
        make_recipe(stage1_epochs=-1)
    with pytest.raises(ValueError, match="encode_images"):
        VL2V(student=ImageEncoder(SmallCNN(in_channels=3, width=4)), teacher=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="labelled_fraction"):
        make_recipe().training_step((torch.randn(2, 3, 8, 8), torch.tensor([0, -1])), 0)


def test_official_optimizer():
    opt = vl2v_adam([nn.Parameter(torch.zeros(1))])
    assert (
        isinstance(opt, torch.optim.Adam)
        and opt.defaults["lr"] == 5e-5
        and opt.defaults["weight_decay"] == 0.0
    )


def test_averaging_starts_with_stage_two():
    avg = StageTwoAveraging(stage1_epochs=2, start=0.5)
    avg._start_step = 10
    assert (
        not avg.should_update(step_idx=9)
        and avg.should_update(step_idx=10)
        and not avg.should_update(epoch_idx=3)
    )


def test_fit_switches_stages_averages_and_keeps_the_teacher():
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
    recipe = VL2V(student=ImageEncoder(vision), teacher=tiny_clip_teacher(), stage1_epochs=1)
    before = copy.deepcopy(recipe.teacher.state_dict())
    data = DigitDomainsDataModule(
        domains=("digits", "inverted"), test_domains=("inverted",), size=8, batch_size=64
    )
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2, limit_train_batches=2, limit_val_batches=1))
    trainer.fit(recipe, datamodule=data)
    assert recipe.stage == 2
    assert "schedule/stage" in trainer.callback_metrics
    result = trainer.test(recipe, datamodule=data, verbose=False)[0]
    assert "test/acc" in result and "test/teacher_acc" in result
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
