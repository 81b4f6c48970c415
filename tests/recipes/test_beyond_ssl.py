"""SSLD (beyond_ssl): the label-free loss, selection of unlabelled images, the fine-tune stage."""

from __future__ import annotations

import inspect

import lightning.pytorch as L
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from lightning_distill.data import UNLABELLED, DigitsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.beyond_ssl import BeyondSSL
from tests.conftest import quiet_trainer_kwargs


def make_recipe(**kwargs) -> BeyondSSL:
    torch.manual_seed(0)
    return BeyondSSL(student=SmallCNN(width=4, depth=1), teacher=SmallCNN(width=8, depth=1), **kwargs)


def test_distillation_loss_is_the_jensen_shannon_divergence_over_kept_samples():
    recipe = make_recipe()
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    keep = torch.tensor([True, False, True, True, False])
    ps, pt = s.softmax(-1).double().numpy(), t.softmax(-1).double().numpy()
    # scipy returns the JS *distance* (square root of the divergence), in nats with base e.
    js = [jensenshannon(ps[i], pt[i]) ** 2 for i in range(5)]
    expected = torch.tensor(sum(js[i] for i in (0, 2, 3)) / 3, dtype=torch.float32)
    torch.testing.assert_close(recipe.distillation_loss(s, t, keep), expected, rtol=1e-5, atol=1e-6)


def test_symmetric_kl_option():
    recipe = make_recipe(divergence="symmetric_kl")
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    kl_ts = (lt.exp() * (lt - ls)).sum(-1)
    kl_st = (ls.exp() * (ls - lt)).sum(-1)
    expected = (0.5 * (kl_ts + kl_st)).mean()
    torch.testing.assert_close(recipe.distillation_loss(s, t, torch.ones(3, dtype=torch.bool)), expected)


def test_selection_keeps_labelled_and_confident_unlabelled_images():
    recipe = make_recipe(min_teacher_confidence=0.9)
    labels = torch.tensor([3, UNLABELLED, UNLABELLED])
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0]])
    assert recipe.select(labels, logits).tolist() == [True, True, False]


def test_labels_are_not_used_by_default():
    recipe = make_recipe()
    assert recipe.loss_weights == {"dist": 1.0, "ce": 0.0}
    recipe.log = lambda *a, **k: None
    x = torch.randn(4, 1, 8, 8)
    a = recipe.training_step((x, torch.tensor([1, 2, 3, 4])), 0)["loss"]
    b = recipe.training_step((x, torch.full((4,), UNLABELLED)), 0)["loss"]
    torch.testing.assert_close(a, b)


def test_gradients_reach_only_the_student():
    recipe = make_recipe(loss_weights={"ce": 0.5})
    recipe.log = lambda *a, **k: None
    out = recipe.training_step((torch.randn(4, 1, 8, 8), torch.tensor([1, UNLABELLED, 3, UNLABELLED])), 0)
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_finetune_stage_uses_only_labelled_images():
    recipe = make_recipe(finetune_epochs=1)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.current_epoch, pl_module.in_finetune_stage))

    dm = DigitsDataModule(batch_size=64, labelled_fraction=0.3, train_split="all")
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2, limit_train_batches=2, callbacks=[Spy()]))
    trainer.fit(recipe, datamodule=dm)
    assert seen == [(0, False), (0, False), (1, True), (1, True)]
    recipe_labels = torch.tensor([2, UNLABELLED])
    assert recipe.select(recipe_labels, torch.tensor([[9.0, 0.0], [9.0, 0.0]])).tolist() == [True, False]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="divergence"):
        make_recipe(divergence="kl")
    with pytest.raises(ValueError, match="min_teacher_confidence"):
        make_recipe(min_teacher_confidence=1.5)
    with pytest.raises(ValueError, match="temperature"):
        make_recipe(temperature=0.0)


def test_defaults_are_the_papers_label_free_js_distillation():
    """SSLD (arXiv 2103.05959; PaddleClas ``docs/zh_CN/advanced_tutorials/distillation``): the loss is
    the JS divergence between the two softmax outputs, labels are not used; no selection threshold
    or fine-tune stage unless configured. Its optimizer settings are per student (see the docstring)."""
    defaults = {k: v.default for k, v in inspect.signature(BeyondSSL.__init__).parameters.items()}
    assert defaults["divergence"] == "js"
    assert defaults["temperature"] == 1.0
    assert BeyondSSL.default_loss_weights == {"dist": 1.0, "ce": 0.0}
