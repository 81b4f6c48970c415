"""ClassificationPictures: confusion counts, one picture per validation to image loggers, nothing otherwise."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks import ClassificationPictures
from lightning_distill.callbacks.pictures import confusion_counts
from tests.conftest import quiet_trainer_kwargs

REPO = Path(__file__).resolve().parents[2]
CLASSIFICATION_CONFIGS = [
    *sorted((REPO / "recipes/kd").glob("*.yaml")),
    REPO / "recipes/meal_v2/config.yaml",
    REPO / "recipes/beyond_ssl/config.yaml",
]


class CountingLinear(nn.Linear):
    """A linear classifier that counts its forward calls in eval mode."""

    def __init__(self, seed: int) -> None:
        super().__init__(4, 3)
        with torch.no_grad():
            self.weight.copy_(torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)))
        self.eval_calls = 0

    def forward(self, x):
        self.eval_calls += not self.training
        return super().forward(x)


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.student = CountingLinear(0)
        self.teachers = nn.ModuleList([CountingLinear(1), CountingLinear(2)]).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.student(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


class ImageLogger(Logger):
    """A logger with W&B's ``log_image(key=, images=, step=)``, recording the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list[np.ndarray], int]] = []

    name = "images"
    version = 0

    def log_image(self, key, images, step=None):
        self.images.append((key, images, step))

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _data() -> tuple[DataLoader, DataLoader, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    y[3] = -1  # unlabelled: skipped
    train = DataLoader(TensorDataset(x, y.clamp(min=0)), batch_size=8)
    return train, DataLoader(TensorDataset(x, y), batch_size=8), x, y


def _naive_confusion(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros(3, 3, dtype=torch.long)
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    for true, pred in zip(y.tolist(), predicted.tolist()):
        if true >= 0:
            counts[true, pred] += 1
    return counts


def test_confusion_counts_match_a_naive_count():
    gen = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(50, 3, generator=gen), torch.randint(-1, 3, (50,), generator=gen)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for true, pred in zip(labels.tolist(), logits.argmax(-1).tolist()):
        if true >= 0:
            expected[true, pred] += 1
    torch.testing.assert_close(confusion_counts(logits, labels, 3), expected)
    with pytest.raises(ValueError, match=r"Expected logits \(B, 4\)"):
        confusion_counts(logits, labels, 4)


def test_one_picture_per_validation_with_teachers_counted_once():
    train, val, x, y = _data()
    module, logger, pictures = Tiny(), ImageLogger(), ClassificationPictures()
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_epochs=2, logger=logger, callbacks=[pictures], num_sanity_val_steps=1)
    )
    trainer.fit(module, train, val)
    assert [key for key, _, _ in logger.images] == ["val/classes", "val/classes"]
    picture = logger.images[-1][1][0]
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    # teachers are frozen: counted over the 3 validation batches of the first epoch only (not the sanity check)
    assert [t.eval_calls for t in module.teachers] == [3, 3]
    torch.testing.assert_close(pictures.student_counts, _naive_confusion(module.student, x, y))
    for name, teacher in zip(["teacher0", "teacher1"], module.teachers):
        torch.testing.assert_close(pictures.teacher_counts[name], _naive_confusion(teacher, x, y))


def test_nothing_is_computed_without_an_image_logger(tmp_path):
    train, val, _, _ = _data()
    module, pictures = Tiny(), ClassificationPictures()
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[pictures])
    )
    trainer.fit(module, train, val)
    assert module.student.eval_calls == 0 and [t.eval_calls for t in module.teachers] == [0, 0]
    assert pictures.last_picture is None


def test_a_model_that_is_not_a_classifier_is_refused_by_name():
    train, val, _, _ = _data()
    module = Tiny()
    linear = module.student.forward
    module.student.forward = lambda x: linear(x) if module.student.training else (x, x)  # not logits
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_epochs=1, logger=ImageLogger(), callbacks=[ClassificationPictures()])
    )
    with pytest.raises(ValueError, match="ClassificationPictures expects the student to return logits"):
        trainer.fit(module, train, val)


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="`max_batches` must be >= 1"):
        ClassificationPictures(max_batches=0)


@pytest.mark.parametrize("config", CLASSIFICATION_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_classification_configs_list_the_pictures(config):
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    assert "lightning_distill.callbacks.ClassificationPictures" in [c["class_path"] for c in callbacks]
