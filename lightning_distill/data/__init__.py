"""Every LightningDataModule of the library (data that ships inside Python packages, and wrappers).

``lightning_distill.data.graphs`` (MUTAG, graph cross-validation) needs the ``graphs`` extra
(torch_geometric) and is imported by its full path, not from here.
"""

from lightning_distill.data.conditions import ConditionDataModule
from lightning_distill.data.dataset_distillation import (
    ClassBalancedBatches,
    ClassBalancedDataModule,
    RecoverDataModule,
)
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
from lightning_distill.data.indexed import IndexedDataset
from lightning_distill.data.lidar import (
    SemiSupervisedLidarDataModule,
    SyntheticLidarDataModule,
    SyntheticSequenceDataModule,
)
from lightning_distill.data.nuscenes import NuScenesLidarDataModule
from lightning_distill.data.semantic_kitti import SemanticKITTIDataModule

__all__ = [
    "IndexedDataset",
    "ClassBalancedBatches",
    "ClassBalancedDataModule",
    "RecoverDataModule",
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
    "NuScenesLidarDataModule",
    "SemanticKITTIDataModule",
    "SemiSupervisedLidarDataModule",
    "SyntheticLidarDataModule",
    "SyntheticSequenceDataModule",
]
