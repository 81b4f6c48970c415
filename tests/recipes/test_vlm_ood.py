"""vlm_ood: the four terms against naive formulas, gradients, the frozen teacher, unseen-class prediction."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data.domains import DigitDomainsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.vlm_ood import VLMOOD, vlm_ood_sgd
from lightning_distill.vision_language import ImageEncoder
from tests.conftest import quiet_trainer_kwargs
from tests.vision_language.conftest import tiny_clip_teacher


def make_recipe(**kwargs) -> VLMOOD:
    torch.manual_seed(0)
    kwargs.setdefault("seen_classes", [0, 1, 2, 3, 4, 5, 6])
    return VLMOOD(
        student=ImageEncoder(SmallCNN(in_channels=3, width=4, depth=1)), teacher=tiny_clip_teacher(), **kwargs
    )


def test_terms_match_naive_formulas_on_the_seen_classes():
    recipe = make_recipe(top_k=3)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 6, 2, 2, 5])
    out = recipe.training_step((x, y, torch.zeros_like(y)), 0)
    with torch.no_grad():
        s = F.normalize(recipe.student_features(x), dim=-1)
        v = recipe.teacher.encode_images(x)
    c = F.normalize(recipe.text_embeddings[:7], dim=-1)
    tau = 0.07
    torch.testing.assert_close(out["cls"], F.cross_entropy(s @ c.t() / tau, y))
    t_logits, z = v @ c.t() / tau, s @ c.t() / tau
    kept = [i for i in range(5) if int(t_logits[i].argmax()) == int(y[i])]
    kl = []
    for i in kept:
        ids = t_logits[i].topk(3).indices
        p, q = t_logits[i, ids].softmax(0), z[i, ids].softmax(0)
        kl.append((p * (p.log() - q.log())).sum())
    expected = torch.stack(kl).mean() if kl else torch.tensor(0.0)
    torch.testing.assert_close(out["vlalign"], expected)
    torch.testing.assert_close(out["mse"], ((s - v) ** 2).sum(-1).mean())
    m = s @ v.t() / tau
    target = torch.arange(5)
    torch.testing.assert_close(
        out["im_cst"], 0.5 * (F.cross_entropy(m, target) + F.cross_entropy(m.t(), target))
    )
    total = out["cls"] + out["vlalign"] + out["mse"] + out["im_cst"]
    torch.testing.assert_close(out["loss"].detach(), total)


def test_predictions_cover_unseen_classes_through_text_embeddings():
    recipe = make_recipe()
    logits = recipe(torch.randn(4, 3, 8, 8))
    assert logits.shape == (4, 10)  # seven seen classes, three unseen ones, all predictable


def test_gradients_reach_student_and_projection_never_the_teacher():
    recipe = make_recipe()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out = recipe.training_step((x, y, torch.zeros_like(y)), 0)
    out["loss"].backward()
    assert recipe.projection.weight.grad is not None
    # every encoder parameter learns (SmallCNN's classification head is not part of its features)
    assert all(
        p.grad is not None for n, p in recipe.student.named_parameters() if not n.startswith("backbone.head")
    )
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        make_recipe(temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        make_recipe(top_k=0)
    with pytest.raises(ValueError, match="seen_classes"):
        make_recipe(seen_classes=[12])
    with pytest.raises(ValueError, match="encode_images"):
        VLMOOD(student=ImageEncoder(SmallCNN(in_channels=3, width=4)), teacher=nn.Linear(3, 3))
    recipe = make_recipe()
    with pytest.raises(ValueError, match="seen_classes"):
        recipe.training_step((torch.randn(2, 3, 8, 8), torch.tensor([0, 8]), torch.zeros(2)), 0)
    with pytest.raises(ValueError, match="labelled_fraction"):
        recipe.training_step((torch.randn(2, 3, 8, 8), torch.tensor([0, -1]), torch.zeros(2)), 0)


def test_official_optimizer():
    opt = vlm_ood_sgd([nn.Parameter(torch.zeros(1))])
    assert (
        opt.defaults["lr"] == 0.05
        and opt.defaults["momentum"] == 0.9
        and opt.defaults["weight_decay"] == 1e-4
    )


def test_fit_reads_seen_classes_from_the_data_and_keeps_the_teacher():
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
    recipe = VLMOOD(student=ImageEncoder(vision), teacher=tiny_clip_teacher())
    before = copy.deepcopy(recipe.teacher.state_dict())
    data = DigitDomainsDataModule(domains=("digits",), size=8, held_out_classes=(8, 9), batch_size=32)
    trainer = L.Trainer(**quiet_trainer_kwargs(fast_dev_run=True))
    trainer.fit(recipe, datamodule=data)
    assert recipe.seen_classes == list(range(8))
    result = trainer.test(recipe, datamodule=data, verbose=False)[0]
    assert "test/acc" in result and "test/teacher_acc" in result
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
