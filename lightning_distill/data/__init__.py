"""LightningDataModules for data that ships inside Python packages."""

from lightning_distill.data.images import (
    UNLABELLED,
    ArrayImageDataModule,
    DigitsDataModule,
    MNIST5kDataModule,
    TensorImageDataset,
)

__all__ = ["UNLABELLED", "ArrayImageDataModule", "DigitsDataModule", "MNIST5kDataModule", "TensorImageDataset"]
