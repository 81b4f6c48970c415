"""Tiny synthetic scenes shared by the LiDAR tests (generated once per session)."""

from __future__ import annotations

import pytest

from lightning_distill.data.lidar import SyntheticLidarDataModule

TINY = dict(
    num_scenes=4,
    val_scenes=2,
    test_scenes=2,
    beams=8,
    azimuth_steps=192,
    image_size=(32, 64),
    num_cameras=2,
    batch_size=2,
    seed=0,
)


def make_tiny_datamodule() -> SyntheticLidarDataModule:
    """The tiny scenes, set up (generated once per process: the data module keeps them in memory)."""
    dm = SyntheticLidarDataModule(**TINY)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def tiny_datamodule() -> SyntheticLidarDataModule:
    return make_tiny_datamodule()
