"""Small reference networks, feature adapters and teacher builders."""

from lightning_distill.models.classifiers import MLPClassifier, SmallCNN
from lightning_distill.models.pretrained import default_cache_dir, load_weights, trained_classifier, trained_teacher

__all__ = ["MLPClassifier", "SmallCNN", "default_cache_dir", "load_weights", "trained_classifier", "trained_teacher"]
