"""SampleLogger: pictures to CSV-run PNGs, W&B and TensorBoard, and bench metrics with their floors."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import nn
from torch.testing import assert_close

from lightning_distill.callbacks.sample_logging import SampleLogger, image_grid, scatter_picture
from lightning_distill.data.gmm import GMMDataModule
from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.metrics import mode_coverage, mode_weight_tv, rbf_mmd2, sliced_wasserstein
from tests.conftest import quiet_trainer_kwargs


class ToySampler(L.LightningModule):
    """A "generator" that returns the data shifted by a learnable offset (or noise images)."""

    def __init__(
        self, gmm: GaussianMixture | None = None, image_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.full((2,), 0.3))
        self.reference_mixture = gmm
        self.image_shape = image_shape
        self.data_gmm = GaussianMixture.ring()

    def training_step(self, batch, batch_idx):
        return (self.shift - 0.1).square().sum() + 0.0 * batch[0].sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.image_shape is not None:
            return torch.rand(n, *self.image_shape, generator=generator, device=self.device)
        return self.data_gmm.sample(n, generator).to(self.device) + self.shift.detach()


def fit(
    module: L.LightningModule, callback: SampleLogger, logger, tmp_path: Path, datamodule=None
) -> L.Trainer:
    datamodule = datamodule or GMMDataModule("ring", num_train=64, num_val=32, batch_size=32)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(
            max_epochs=2,
            limit_train_batches=2,
            limit_val_batches=1,
            logger=logger,
            default_root_dir=str(tmp_path),
        ),
        callbacks=[callback],
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_csv_run_gets_pngs_and_metrics_equal_to_independent_computation(tmp_path: Path) -> None:
    gmm = GaussianMixture.ring()
    module = ToySampler(gmm)
    callback = SampleLogger(num_samples=300, seed=5)
    logger = CSVLogger(str(tmp_path), name="run")
    fit(module, callback, logger, tmp_path)

    pngs = sorted((Path(logger.log_dir) / "samples").glob("*.png"))
    assert [p.name for p in pngs] == [
        "samples_epoch0000_step0000002.png",
        "samples_epoch0001_step0000004.png",
    ]
    import matplotlib.image

    picture = matplotlib.image.imread(pngs[-1])
    assert picture.ndim == 3 and picture.shape[0] > 100

    # The metrics of the last epoch, recomputed from the same seeds without the callback.
    samples = module.sample(300, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    reference, other = gmm.sample(300, gen), gmm.sample(300, gen)
    expected = {
        "swd": float(sliced_wasserstein(samples, reference, 256, torch.Generator().manual_seed(5))),
        "mmd": float(rbf_mmd2(samples, reference)),
        "mode_coverage": float(mode_coverage(samples, gmm)),
        "mode_tv": float(mode_weight_tv(samples, gmm)),
        "swd_floor": float(sliced_wasserstein(other, reference, 256, torch.Generator().manual_seed(5))),
        "mmd_floor": float(rbf_mmd2(other, reference)),
    }
    for name, value in expected.items():
        assert_close(callback.last_metrics[name], value, rtol=1e-5, atol=1e-6)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/sample_swd")]
    assert len(rows) == 2
    assert_close(float(rows[-1]["val/sample_swd"]), expected["swd"], rtol=1e-5, atol=1e-6)
    assert float(rows[-1]["val/sample_swd_floor"]) > 0
    assert expected["swd"] > expected["swd_floor"]  # the shifted "generator" is worse than the floor


def test_mixture_comes_from_the_datamodule_when_the_module_has_none(tmp_path: Path) -> None:
    callback = SampleLogger(num_samples=100)
    fit(ToySampler(None), callback, CSVLogger(str(tmp_path)), tmp_path)
    assert set(callback.last_metrics) >= {"swd", "mmd", "mode_coverage", "mode_tv", "swd_floor"}


def test_images_are_tiled_into_a_png_without_metrics(tmp_path: Path) -> None:
    callback = SampleLogger(num_samples=20, max_images=9)
    fit(ToySampler(None, image_shape=(1, 8, 8)), callback, CSVLogger(str(tmp_path)), tmp_path)
    assert callback.last_metrics == {}
    assert callback.last_picture.shape == (3 * 33 + 1, 3 * 33 + 1, 3)
    assert len(list(tmp_path.rglob("samples/*.png"))) == 2


def test_wandb_offline_run_gets_a_wandb_image(tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="sample-logging-test")
    try:
        fit(ToySampler(GaussianMixture.ring()), SampleLogger(num_samples=100), logger, tmp_path)
    finally:
        logger.experiment.finish()
    images = list(tmp_path.glob("wandb/offline-run-*/files/media/images/val/samples_*.png"))
    assert len(images) == 2
    assert not list(tmp_path.rglob("samples/*.png"))  # W&B took the picture: no PNG fallback


def test_tensorboard_logger_receives_add_image(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    writer = SimpleNamespace(add_image=lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(TensorBoardLogger, "experiment", property(lambda self: writer))
    tb = TensorBoardLogger.__new__(TensorBoardLogger)  # tensorboard itself need not be installed
    trainer = SimpleNamespace(loggers=[tb], global_step=7, current_epoch=0, default_root_dir="unused")
    picture = np.zeros((10, 12, 3), dtype=np.uint8)
    SampleLogger()._log_picture(trainer, picture, None)
    ((args, kwargs),) = calls
    assert args[0] == "val/samples" and args[1] is picture
    assert kwargs == {"global_step": 7, "dataformats": "HWC"}


def test_pictures_have_the_requested_shapes() -> None:
    assert scatter_picture(torch.randn(30, 1), torch.randn(30, 1), size=100).shape == (100, 100, 3)
    assert scatter_picture(torch.randn(30, 8), size=100).shape == (100, 100, 3)
    grid = image_grid(torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]), min_tile=4, padding=0)
    assert grid.shape == (4, 8, 3)
    assert grid[:, :4].max() == 0 and grid[:, 4:].min() == 255


def test_a_module_without_sample_is_refused_at_setup(tmp_path: Path) -> None:
    class NoSample(ToySampler):
        sample = None

    with pytest.raises(TypeError, match="needs `NoSample.sample\\(n, generator\\)`"):
        fit(NoSample(None), SampleLogger(), False, tmp_path)
    with pytest.raises(ValueError, match="`num_samples` must be >= 2"):
        SampleLogger(num_samples=1)
