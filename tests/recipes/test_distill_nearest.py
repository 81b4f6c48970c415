"""DistillNearest / DistillWeighted: scores, weights and terms against independent computations, gradient
routing, frozen sources, a short fit, bad input."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_distill.data.domains import DigitDomainsDataModule
from lightning_distill.losses.task_similarity import gbc_score, source_weights
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.distill_nearest import DistillNearest, labelled_examples
from lightning_distill.vision_language import ImageEncoder
from lightning_distill.vision_language.source_zoo import SourceModel
from tests.conftest import quiet_trainer_kwargs


def sources(n: int = 3) -> list[SourceModel]:
    torch.manual_seed(0)
    return [
        SourceModel(ImageEncoder(SmallCNN(in_channels=3, width=2 + k, depth=1)), 3, f"s{k}") for k in range(n)
    ]


def make_recipe(**kwargs) -> DistillNearest:
    torch.manual_seed(1)
    student = ImageEncoder(SmallCNN(in_channels=3, width=4, depth=1))
    kwargs.setdefault("num_components", None)
    return DistillNearest(student=student, teachers=sources(), num_classes=4, **kwargs)


def labelled(n: int = 16):
    torch.manual_seed(2)
    return torch.randn(n, 3, 8, 8), torch.arange(n) % 4


def test_scores_are_gbc_of_each_source_and_weights_follow_them():
    recipe = make_recipe(num_sources=2, similarity_temperature=0.5)
    x, y = labelled()
    weights = recipe.select_sources(x, y)
    with torch.no_grad():
        expected = torch.stack([gbc_score(s.features(x), y, num_components=None) for s in recipe.teachers])
    torch.testing.assert_close(recipe.scores, expected.float())
    torch.testing.assert_close(weights, source_weights(expected.float(), 2, 0.5))
    assert len(recipe.active_sources()) == 2
    nearest = make_recipe()
    nearest.select_sources(x, y)
    assert nearest.active_sources() == [int(expected.argmax())]


def test_forced_sources_keep_only_those():
    recipe = make_recipe(sources=[2])
    recipe.select_sources(*labelled())
    assert recipe.weights.tolist() == [0.0, 0.0, 1.0]


def test_terms_match_an_independent_computation():
    recipe = make_recipe(num_sources=3, temperature=2.0)
    recipe.select_sources(*labelled())
    torch.manual_seed(3)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, -1, 2, -1, -1, 3])
    terms = recipe.loss_terms_of(x, y)
    with torch.no_grad():
        f = recipe.student(x)
        z = recipe.head(f)
        ce = nn.functional.cross_entropy(z[y >= 0], y[y >= 0])
        feat = pl = 0.0
        for k, s in enumerate(recipe.teachers):
            g = s.features(x)
            p = recipe.projections[k](f)
            cos = nn.functional.cosine_similarity(p, g, dim=-1)
            feat += recipe.weights[k] * (2 - 2 * cos).mean()
            q = torch.softmax(recipe.probes[k](g) / 2.0, -1)
            log_r = torch.log_softmax(z / 2.0, -1)
            pl += recipe.weights[k] * 4.0 * (q * (q.log() - log_r)).sum(-1).mean()
    torch.testing.assert_close(terms["ce"].detach(), ce)
    torch.testing.assert_close(terms["features"].detach(), feat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["pseudo_labels"].detach(), pl, rtol=1e-5, atol=1e-6)
    out = recipe.training_step((x, y, torch.zeros_like(y)), 0)
    torch.testing.assert_close(out["loss"].detach(), ce + feat + pl, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_target_and_its_chosen_projection_never_the_sources():
    recipe = make_recipe()
    recipe.select_sources(*labelled())
    (chosen,) = recipe.active_sources()
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, -1, 1, -1, 2])
    sum(recipe.loss_terms_of(x, y).values()).backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert recipe.head.weight.grad is not None
    for k, projection in enumerate(recipe.projections):
        assert (projection.weight.grad is not None) == (k == chosen)
        assert projection.weight.requires_grad == (k == chosen)
    assert all(p.grad is None for p in recipe.teachers.parameters())
    assert all(p.grad is None for p in recipe.probes.parameters())
    trainable = {id(p) for p in recipe.trainable_parameters()}
    assert not any(id(p) in trainable for p in recipe.teachers.parameters())
    assert not any(id(p) in trainable for p in recipe.probes.parameters())


def test_a_short_fit_selects_from_the_labelled_images_and_leaves_the_sources_unchanged(tmp_path):
    recipe = make_recipe(num_sources=2, num_components=4)
    recipe.num_classes = 10
    recipe.head = nn.Linear(recipe.student.num_features, 10)
    recipe.probes = nn.ModuleList(nn.Linear(s.num_features, 10) for s in recipe.teachers).requires_grad_(
        False
    )
    before = copy.deepcopy(recipe.teachers.state_dict())
    dm = DigitDomainsDataModule(
        domains=("digits",), size=8, labelled_fraction=0.05, batch_size=32, labelled_batch_size=8
    )
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                                               default_root_dir=tmp_path))  # fmt: skip
    trainer.fit(recipe, datamodule=dm)
    assert bool(recipe.selected) and len(recipe.active_sources()) == 2
    x, y = labelled_examples(dm.train_dataloader())
    assert len(y) == int((dm.split("train")[1] >= 0).sum())  # the cycled repeats are dropped
    for key, value in recipe.teachers.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert all(not t.training for t in recipe.teachers)
    assert "val/teacher0_acc" in trainer.callback_metrics
    trainer.test(recipe, datamodule=dm, verbose=False)
    assert "test/acc" in trainer.callback_metrics


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_sources": 4}, "num_sources"),
        ({"num_sources": 0}, "num_sources"),
        ({"sources": [3]}, "sources"),
        ({"sources": [0, 0]}, "sources"),
        ({"similarity_temperature": 0.0}, "similarity_temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"num_components": 0}, "num_components"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_recipe(**kwargs)


def test_bad_sources_students_and_calls_are_rejected():
    student = ImageEncoder(SmallCNN(in_channels=3, width=4, depth=1))
    with pytest.raises(ValueError, match="features"):
        DistillNearest(student=student, teachers=[nn.Linear(3, 3)], num_classes=4)
    with pytest.raises(ValueError, match="num_features"):
        DistillNearest(student=nn.Conv2d(3, 4, 3), teachers=sources(1), num_classes=4)
    recipe = make_recipe()
    with pytest.raises(RuntimeError, match="select_sources"):
        recipe.loss_terms_of(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        recipe.select_sources(torch.randn(2, 3, 8, 8), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="no labelled image"):
        labelled_examples([(torch.randn(2, 3, 8, 8), torch.tensor([-1, -1]))])


def test_transformers_vision_towers_run_the_same_code_path():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    def tower(seed: int) -> ImageEncoder:
        torch.manual_seed(seed)
        config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=8, patch_size=4)  # fmt: skip
        return ImageEncoder(CLIPVisionModel(config))

    source = SourceModel(tower(0), 3, "clip-source")
    recipe = DistillNearest(student=tower(1), teachers=[source, *sources(1)], num_classes=4, num_components=4)
    recipe.select_sources(*labelled())
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, -1, 1, -1])
    terms = recipe.loss_terms_of(x, y)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is None for p in recipe.teachers.parameters())
    assert any(p.grad is not None for p in recipe.student.parameters())
