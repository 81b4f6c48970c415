"""The supervised baseline: CE on labelled samples only, no teacher, trains through Lightning."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data import UNLABELLED, DigitsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.supervised import Supervised
from tests.conftest import quiet_trainer_kwargs


def test_supervised_loss_is_cross_entropy_over_labelled_rows_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([2, UNLABELLED, 0, 3, UNLABELLED, 1])
    keep = labels >= 0
    expected = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(Supervised(nn.Linear(3, 4)).supervised_loss(logits, labels), expected)


def test_supervised_loss_applies_label_smoothing() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    module = Supervised(nn.Linear(2, 3), label_smoothing=0.1)
    # Independent: smoothed targets (1 - eps) * onehot + eps / K, soft cross-entropy.
    target = 0.9 * F.one_hot(labels, 3).float() + 0.1 / 3
    expected = -(target * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(module.supervised_loss(logits, labels), expected)


def test_batch_without_labels_gives_zero_loss_and_zero_gradient() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    loss = Supervised(nn.Linear(2, 4)).supervised_loss(logits, torch.full((3,), UNLABELLED))
    loss.backward()
    assert loss.item() == 0.0
    torch.testing.assert_close(logits.grad, torch.zeros_like(logits))


def test_label_smoothing_out_of_range_names_the_config_key() -> None:
    with pytest.raises(ValueError, match=r"label_smoothing.*1\.0.*model\.init_args\.label_smoothing"):
        Supervised(nn.Linear(2, 3), label_smoothing=1.0)


def test_fit_trains_the_student_without_a_teacher() -> None:
    L.seed_everything(0)
    student = SmallCNN(width=4, depth=1)
    before = [p.detach().clone() for p in student.parameters()]
    module = Supervised(student, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    data = DigitsDataModule(size=8, batch_size=32, labelled_fraction=0.5, train_split="all")
    trainer = L.Trainer(max_steps=3, limit_val_batches=0, **quiet_trainer_kwargs())
    trainer.fit(module, datamodule=data)
    assert len(module.teachers) == 0
    assert torch.isfinite(trainer.callback_metrics["train/ce"])
    assert all(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
