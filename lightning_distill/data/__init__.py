"""LightningDataModules for data that ships inside Python packages."""

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
    "UNLABELLED",
    "ArrayImageDataModule",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "MNIST5kDataModule",
    "ResumableDataLoader",
    "TensorImageDataset",
]
