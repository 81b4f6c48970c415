"""Small reference networks, feature adapters and teacher builders."""

from lightning_distill.models.adapters import ConvAdapter, LinearAdapter, MLPAdapter, build_adapter
from lightning_distill.models.classifiers import MLPClassifier, SmallCNN
from lightning_distill.models.pretrained import (
    default_cache_dir,
    load_weights,
    trained_classifier,
    trained_teacher,
)

__all__ = [
    "ConvAdapter",
    "LinearAdapter",
    "MLPAdapter",
    "build_adapter",
    "MLPClassifier",
    "SmallCNN",
    "default_cache_dir",
    "load_weights",
    "trained_classifier",
    "trained_teacher",
]
