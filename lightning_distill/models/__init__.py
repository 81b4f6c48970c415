"""Small reference networks, feature adapters, teacher builders and the teacher-output store."""

from lightning_distill.models.adapters import ConvAdapter, LinearAdapter, MLPAdapter, build_adapter
from lightning_distill.models.classifiers import MLPClassifier, SmallCNN
from lightning_distill.models.pretrained import (
    default_cache_dir,
    load_weights,
    trained_classifier,
    trained_teacher,
)
from lightning_distill.models.teacher_store import TeacherCache, TeacherCacheMismatchError

__all__ = [
    "ConvAdapter",
    "LinearAdapter",
    "MLPAdapter",
    "build_adapter",
    "MLPClassifier",
    "SmallCNN",
    "TeacherCache",
    "TeacherCacheMismatchError",
    "default_cache_dir",
    "load_weights",
    "trained_classifier",
    "trained_teacher",
]
