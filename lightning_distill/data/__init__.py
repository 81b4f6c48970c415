"""LightningDataModules for data that ships inside Python packages."""

from lightning_distill.data.conditions import ConditionDataModule
from lightning_distill.data.gmm import GMMDataModule, PointDataset
from lightning_distill.data.images import (
    UNLABELLED,
    ArrayImageDataModule,
    DigitsDataModule,
    EpochShuffleSampler,
    MNIST5kDataModule,
    ResumableDataLoader,
    TensorImageDataset,
)

__all__ = [
    "ConditionDataModule",
    "GMMDataModule",
    "PointDataset",
    "UNLABELLED",
    "ArrayImageDataModule",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "MNIST5kDataModule",
    "ResumableDataLoader",
    "TensorImageDataset",
]
