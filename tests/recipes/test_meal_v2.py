"""MEAL V2: losses against independent formulas, gradient routing in both modes, a short fit."""

from __future__ import annotations

import copy
import inspect

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data import DigitsDataModule
from lightning_distill.losses import logit_discriminator_loss
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.meal_v2 import MEALV2, LogitDiscriminator, meal_v2_sgd
from tests.conftest import quiet_trainer_kwargs


def make_recipe(mode: str = "official", **kwargs) -> MEALV2:
    torch.manual_seed(0)
    teachers = [SmallCNN(width=8, depth=1), SmallCNN(width=6, depth=2)]
    return MEALV2(
        student=SmallCNN(width=4, depth=1),
        teachers=teachers,
        num_classes=10,
        mode=mode,
        discriminator_reduction=2,
        **kwargs,
    )


def test_discriminator_has_the_official_widths_and_relu_output():
    d = LogitDiscriminator(1000, reduction=8)
    assert [d.conv1.out_channels, d.conv2.out_channels, d.conv3.out_channels] == [125, 15, 2]
    out = d(torch.randn(5, 1000) * 10)
    assert out.shape == (5, 2) and bool((out >= 0).all())


def test_ensemble_targets_average_probabilities_and_logits():
    recipe = make_recipe()
    x = torch.randn(4, 1, 8, 8)
    probs, logits = recipe.ensemble_targets(x)
    with torch.no_grad():
        z = [t(x) for t in recipe.teachers]
    torch.testing.assert_close(probs, (z[0].softmax(-1) + z[1].softmax(-1)) / 2)
    torch.testing.assert_close(logits, (z[0] + z[1]) / 2)


def test_similarity_loss_is_cross_entropy_to_the_averaged_probabilities():
    recipe = make_recipe()
    s = torch.randn(4, 10)
    p = torch.softmax(torch.randn(4, 10), -1)
    expected = -(p * F.log_softmax(s, -1)).sum(-1).mean()
    torch.testing.assert_close(recipe.similarity_loss(s, p), expected)


@pytest.mark.parametrize("mode,sign", [("official", 1.0), ("adversarial", -1.0)])
def test_student_minimises_or_maximises_the_discriminator_loss(mode, sign):
    recipe = make_recipe(mode=mode)
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    recipe.adversarial_loss(s, t).backward()
    reference = s.detach().clone().requires_grad_(True)
    logit_discriminator_loss(recipe.discriminator(reference), recipe.discriminator(t)).backward()
    torch.testing.assert_close(s.grad, sign * reference.grad)
    assert s.grad.abs().sum() > 0


def test_gradients_reach_student_and_discriminator_but_never_teachers():
    recipe = make_recipe()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))

    recipe.log = lambda *a, **k: None  # no trainer in this unit test
    out = recipe.training_step((x, y), 0)
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.discriminator.parameters())
    assert all(p.grad is None for t in recipe.teachers for p in t.parameters())


def test_discriminator_gets_its_own_learning_rate():
    recipe = make_recipe(discriminator_lr=3e-4, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    opt = recipe.configure_optimizers()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [0.1, 3e-4]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {
        id(p) for p in recipe.discriminator.parameters()
    }


def test_mismatched_student_output_is_reported_with_both_shapes():
    torch.manual_seed(0)
    recipe = MEALV2(
        student=SmallCNN(width=4, depth=1, num_classes=7),
        teachers=[SmallCNN(width=4, depth=1)],
        num_classes=10,
        discriminator_reduction=2,
    )
    recipe.log = lambda *a, **k: None
    with pytest.raises(ValueError, match=r"\(2, 7\) does not match the teacher's \(2, 10\)"):
        recipe.training_step((torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), 0)


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ValueError, match="model.init_args.mode"):
        make_recipe(mode="gan")
    with pytest.raises(ValueError, match="discriminator_reduction"):
        MEALV2(
            student=nn.Linear(2, 10), teachers=[nn.Linear(2, 10)], num_classes=10, discriminator_reduction=8
        )


def test_short_fit_trains_and_leaves_teachers_untouched():
    recipe = make_recipe(optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    before = copy.deepcopy([t.state_dict() for t in recipe.teachers])
    student_before = copy.deepcopy(recipe.student.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=5))
    trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=32))
    for t, state in zip(recipe.teachers, before):
        for k, v in t.state_dict().items():
            assert torch.equal(v, state[k])
    assert any(not torch.equal(v, student_before[k]) for k, v in recipe.student.state_dict().items())
    assert {"train/sim", "train/disc", "train/loss"} <= set(trainer.logged_metrics)


def test_defaults_are_the_official_hyper_parameters():
    """szq0214/MEAL-V2: ``opts.py`` (--lr 0.01, --momentum 0.9, --weight-decay 0, --d_lr 1e-4),
    ``train.py::create_optimizer`` (torch.optim.SGD, no nesterov), ``models/discriminator.py``
    (K = 8), ``train.py`` (loss = g_loss + d_loss) and ``extensions/kd_loss.py`` (T = 1)."""
    defaults = {k: v.default for k, v in inspect.signature(MEALV2.__init__).parameters.items()}
    assert defaults["optimizer"] is meal_v2_sgd
    assert defaults["discriminator_lr"] == 1e-4
    assert defaults["discriminator_reduction"] == 8
    assert defaults["temperature"] == 1.0
    assert defaults["mode"] == "official"
    recipe = make_recipe()
    assert recipe.loss_weights == {"sim": 1.0, "disc": 1.0}
    opt = recipe.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    student, disc = opt.param_groups
    assert (student["lr"], student["momentum"], student["weight_decay"], student["nesterov"]) == (
        0.01,
        0.9,
        0.0,
        False,
    )
    assert (disc["lr"], disc["weight_decay"]) == (1e-4, 0.0)
