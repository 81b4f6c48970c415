"""Lightning callbacks that recipes are built from; each is usable in any LightningModule."""

from lightning_distill.callbacks.ema_teacher import EMATeacher
from lightning_distill.callbacks.evaluation import FrechetClassifierDistanceMetric, MixtureMetrics
from lightning_distill.callbacks.feature_hooks import FeatureHooks, TapSpec, bn_stats, spatial_attention
from lightning_distill.callbacks.pictures import ClassificationPictures
from lightning_distill.callbacks.preference_pairs import (
    ChamferScorer,
    ClassifierScorer,
    FunctionScorer,
    NegativeChamfer,
    Pairs,
    PreferencePairs,
    Scorer,
)
from lightning_distill.callbacks.progressive_schedule import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PiecewiseSchedule,
    ProgressiveSchedule,
    Schedule,
    StageSchedule,
    StepSchedule,
    build_schedule,
)
from lightning_distill.callbacks.sample_logging import SampleLogger
from lightning_distill.callbacks.teacher_cache import TeacherCacheCallback

# Plain-torch parts that used to live here, still importable from ``lightning_distill.callbacks``.
from lightning_distill.data.indexed import IndexedDataset
from lightning_distill.models.teacher_store import TeacherCache, TeacherCacheMismatchError
from lightning_distill.utils.augment import RandomResizedCropFlip, ReplayableAugmentation
from lightning_distill.utils.ema import EMAUpdater
from lightning_distill.utils.fingerprint import fingerprint_dataset, fingerprint_module
from lightning_distill.utils.random import counter_uniforms

__all__ = [
    "SampleLogger",
    "ChamferScorer",
    "ClassificationPictures",
    "ClassifierScorer",
    "ConstantSchedule",
    "CosineSchedule",
    "EMATeacher",
    "EMAUpdater",
    "ExponentialSchedule",
    "FeatureHooks",
    "FrechetClassifierDistanceMetric",
    "FunctionScorer",
    "IndexedDataset",
    "LinearSchedule",
    "MixtureMetrics",
    "NegativeChamfer",
    "Pairs",
    "PiecewiseSchedule",
    "PreferencePairs",
    "ProgressiveSchedule",
    "RandomResizedCropFlip",
    "ReplayableAugmentation",
    "Schedule",
    "Scorer",
    "StageSchedule",
    "StepSchedule",
    "TapSpec",
    "TeacherCache",
    "TeacherCacheCallback",
    "TeacherCacheMismatchError",
    "bn_stats",
    "build_schedule",
    "counter_uniforms",
    "fingerprint_dataset",
    "fingerprint_module",
    "spatial_attention",
]
