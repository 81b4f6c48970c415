"""MixtureMetrics and FrechetClassifierDistanceMetric: the toy-bench metrics a diffusion config lists."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks import FrechetClassifierDistanceMetric, MixtureMetrics
from lightning_distill.callbacks.evaluation import digits_like
from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, one_step_generate, sample
from lightning_distill.diffusion.frechet import FrechetClassifierDistance
from lightning_distill.diffusion.gmm import AnalyticTeacher, make_mixture
from lightning_distill.diffusion.metrics import (
    mode_coverage,
    mode_weight_tv,
    rbf_mmd2,
    sliced_wasserstein,
)
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule
from lightning_distill.models import SmallCNN
from tests.conftest import quiet_trainer_kwargs


class Toy(DiffusionDistillationModule):
    """An untrained one-step student of the analytic ring teacher (evaluation only)."""

    loss_terms = ("fake",)
    checkpoint_key = "toy"

    def __init__(self, **kwargs) -> None:
        torch.manual_seed(0)
        defaults = dict(
            student=MLPDenoiser(dim=2, hidden=8, depth=1),
            teacher=AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()),
            optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        )
        super().__init__(**{**defaults, **kwargs})
        self.fake_score = self.build_fake_score(MLPDenoiser(dim=2, hidden=8, depth=1))

    def sample(self, n, generator, cond=None):
        noise = self.initial_noise(n, generator)
        return one_step_generate(self.student, self.schedule, noise, self.schedule.max_timestep, cond)


def gmm_data() -> GMMDataModule:
    return GMMDataModule("ring", num_train=48, num_val=96, num_test=32, batch_size=16)


def bench_metrics(x, points, gmm) -> dict[str, torch.Tensor]:
    x = x.float()
    return {
        "swd": sliced_wasserstein(x, points),
        "mmd": rbf_mmd2(x, points),
        "mode_coverage": mode_coverage(x, gmm),
        "mode_tv": mode_weight_tv(x, gmm),
    }


# --------------------------------------------------------------------------- MixtureMetrics
def test_mixture_metrics_equal_the_metric_functions_called_directly():
    module = Toy(noise_seed=4, eval_teacher_steps=3)
    data = gmm_data()
    trainer = L.Trainer(**quiet_trainer_kwargs(callbacks=[MixtureMetrics()]))
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    points = torch.cat([batch[0] for batch in data.val_dataloader()]).float()
    gmm, n = module.reference_mixture, points.shape[0]
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        student = module.sample(n, gen)
    teacher = sample(module.teacher, module.schedule, torch.randn(n, 2, generator=gen), 3)
    floor = gmm.sample(n, torch.Generator().manual_seed(5))
    for prefix, x, suffix in (("", student, ""), ("teacher_", teacher, ""), ("", floor, "_floor")):
        for name, value in bench_metrics(x, points, gmm).items():
            key = f"val/{prefix}{name}{suffix}"
            torch.testing.assert_close(torch.tensor(metrics[key]), value.float(), msg=key)
    assert float(metrics["val/swd"]) > 3 * float(
        metrics["val/teacher_swd"]
    )  # untrained student, exact teacher
    assert "val/fake_score_loss" in metrics  # the module's own loss is logged beside them


class Logged(Callback):
    """Records the names logged in every validation/test epoch."""

    def __init__(self) -> None:
        self.names: list[set[str]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.names.append({k for k in trainer.callback_metrics if k.startswith("val/")})

    def on_test_epoch_end(self, trainer, pl_module):
        self.names.append({k for k in trainer.callback_metrics if k.startswith("test/")})


def test_teacher_once_per_stage_and_floor_once_per_run():
    module, data, callback = Toy(eval_teacher_steps=2), gmm_data(), MixtureMetrics()
    record = Logged()
    trainer = L.Trainer(**quiet_trainer_kwargs(callbacks=[record, callback]))
    first = trainer.validate(module, datamodule=data, verbose=False)[0]
    second = trainer.validate(module, datamodule=data, verbose=False)[0]
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"val/swd", "val/teacher_swd", "val/swd_floor"} <= set(first)
    assert "val/swd" in second and "val/teacher_swd" not in second and "val/swd_floor" not in second
    assert (
        "test/teacher_swd" in test and "test/swd_floor" not in test
    )  # the floor does not depend on the stage
    assert second["val/swd"] == first["val/swd"]  # the same seeded samples every epoch


def test_every_n_epochs_skips_validation_epochs_never_tests_nor_the_sanity_check():
    callback = MixtureMetrics(every_n_epochs=2)
    epoch = lambda e, sanity=False: SimpleNamespace(current_epoch=e, sanity_checking=sanity)  # noqa: E731
    assert [callback.active(epoch(e), "val") for e in range(4)] == [False, True, False, True]
    assert callback.active(epoch(0), "test") and not callback.active(epoch(1, sanity=True), "val")


def test_max_samples_scores_the_first_points_against_as_many_samples():
    data = gmm_data()
    capped = L.Trainer(**quiet_trainer_kwargs(callbacks=[MixtureMetrics(max_samples=20, log_teacher=False)]))
    metrics = capped.validate(Toy(noise_seed=1), datamodule=data, verbose=False)[0]
    points = torch.cat([batch[0] for batch in data.val_dataloader()]).float()[:20]
    with torch.no_grad():
        student = Toy(noise_seed=1).sample(20, torch.Generator().manual_seed(1)).float()
    torch.testing.assert_close(torch.tensor(metrics["val/swd"]), sliced_wasserstein(student, points).float())
    assert "val/teacher_swd" not in metrics and "val/swd_floor" in metrics


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_samples": 1}, "max_samples"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"log_teacher": 1}, "log_teacher"),
        ({"log_floor": "yes"}, "log_floor"),
    ],
)
def test_mixture_metrics_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixtureMetrics(**kwargs)


def test_mixture_metrics_off_the_bench_and_without_the_interface_raise():
    class NoMixture(Toy):
        @property
        def reference_mixture(self):
            return None

    trainer = L.Trainer(**quiet_trainer_kwargs(callbacks=[MixtureMetrics()]))
    with pytest.raises(ValueError, match="reference Gaussian mixture"):
        trainer.validate(NoMixture(), datamodule=gmm_data(), verbose=False)

    class Plain(L.LightningModule):
        def validation_step(self, batch, batch_idx):
            return None

    trainer = L.Trainer(**quiet_trainer_kwargs(callbacks=[MixtureMetrics()]))
    with pytest.raises(TypeError, match="evaluation_samples"):
        trainer.validate(Plain(), datamodule=gmm_data(), verbose=False)


# --------------------------------------------------------------------------- FrechetClassifierDistanceMetric
class Halve(nn.Module):
    """A denoiser-shaped toy: ``x ↦ scale · x``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, cond=None):
        return self.scale * x


class ImageToy(DiffusionDistillationModule):
    loss_terms = ("fake",)
    checkpoint_key = "image_toy"

    def __init__(self) -> None:
        super().__init__(Halve(), Halve(), noise_seed=3, sample_shape=(1, 8, 8), eval_teacher_steps=2)
        self.fake_score = self.build_fake_score(Halve())

    def sample(self, n, generator, cond=None):
        return one_step_generate(self.student, self.schedule, self.initial_noise(n, generator), 999, cond)


def test_fcd_equals_the_metric_on_the_evaluation_images_and_as_many_samples():
    images = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=16)
    callback = FrechetClassifierDistanceMetric(num_samples=30)
    torch.manual_seed(0)
    callback._metrics[8] = FrechetClassifierDistance(SmallCNN(width=4, depth=1), image_size=8)  # no training
    module = ImageToy()
    metrics = L.Trainer(**quiet_trainer_kwargs(callbacks=[callback])).test(module, loader, verbose=False)[0]
    metric = callback.metric(8)
    gen = torch.Generator().manual_seed(3)
    student = module.sample(30, gen)
    teacher = sample(module.teacher, module.schedule, torch.randn(30, 1, 8, 8, generator=gen), 2)
    for name, samples in (("fcd", student), ("teacher_fcd", teacher)):
        metric.reset()
        metric.update(images[:30], real=True)
        metric.update(samples, real=False)
        torch.testing.assert_close(torch.tensor(metrics[f"test/{name}"]), metric.compute().float(), msg=name)
    assert "test/fake_score_loss" in metrics


def test_fcd_rejects_images_it_cannot_read_and_bad_arguments():
    assert digits_like(torch.zeros(2, 1, 16, 16)) and not digits_like(torch.zeros(2, 1, 8, 16))
    loader = DataLoader(TensorDataset(torch.zeros(4, 3, 8, 8)), batch_size=4)
    module = ImageToy()
    module.sample_shape = (3, 8, 8)
    trainer = L.Trainer(**quiet_trainer_kwargs(callbacks=[FrechetClassifierDistanceMetric()]))
    with pytest.raises(ValueError, match="single-channel 8, 16 or 32 px"):
        trainer.validate(module, loader, verbose=False)
    with pytest.raises(ValueError, match="num_samples"):
        FrechetClassifierDistanceMetric(num_samples=1)
