"""Occupancy data: deterministic splits, the VAE trained once then loaded from the cache, latents for the DiT."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.occupancy import OccupancyDataModule, PlaneLatentDataModule, trained_occupancy_vae
from lightning_distill.lidar_generation.hexplane import HexPlaneVAE

TINY = dict(num_train=3, num_val=1, num_test=1, num_frames=2, grid_size=(8, 8, 4), voxel_size=(4.0, 4.0, 1.0),
            beams=8, azimuth_steps=64, batch_size=2)  # fmt: skip


def vae() -> HexPlaneVAE:
    return HexPlaneVAE(
        num_classes=7, grid_size=(8, 8, 4), num_frames=2, latent_channels=2, width=4, multiple=2
    )


def test_splits_are_deterministic_disjoint_and_batched_as_class_ids():
    data = OccupancyDataModule(**TINY)
    data.setup("fit")
    train = data.sequences("train")
    assert train.shape == (3, 2, 8, 8, 4) and train.dtype == torch.long and int(train.max()) < 7
    assert torch.equal(train, OccupancyDataModule(**TINY).sequences("train"))
    assert not torch.equal(train[0], data.sequences("val")[0])
    (batch,) = next(iter(data.train_dataloader()))
    assert batch.shape == (2, 2, 8, 8, 4)
    with pytest.raises(ValueError, match="num_train"):
        OccupancyDataModule(num_train=0)


def test_vae_is_trained_once_then_loaded_and_its_latents_feed_the_dit(tmp_path):
    data = OccupancyDataModule(**TINY)
    first = trained_occupancy_vae(vae(), data, steps=2, cache_dir=str(tmp_path))
    assert first.training_record["key"] and float(first.latent_scale) > 0 and "cache" in repr(first)
    second = trained_occupancy_vae(vae(), OccupancyDataModule(**TINY), steps=2, cache_dir=str(tmp_path))
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    latents = PlaneLatentDataModule(second, data, batch_size=2)
    latents.setup("fit")
    (batch,) = next(iter(latents.train_dataloader()))
    assert batch.shape == (2, 2, 8, 8)  # planes over (2, 4, 4, 2) rolled out to 8 x 8
    torch.save(first.state_dict(), tmp_path / "vae.pt")
    loaded = trained_occupancy_vae(vae(), checkpoint=str(tmp_path / "vae.pt"))
    torch.testing.assert_close(loaded.latent_scale, first.latent_scale)


def test_bad_vae_arguments_are_rejected():
    with pytest.raises(ValueError, match="checkpoint"):
        trained_occupancy_vae(vae())
    with pytest.raises(ValueError, match="loss_weights"):
        trained_occupancy_vae(vae(), OccupancyDataModule(**TINY), loss_weights={"dice": 1.0})
    with pytest.raises(TypeError, match="encode_latent"):
        PlaneLatentDataModule(torch.nn.Linear(2, 2), OccupancyDataModule(**TINY))
