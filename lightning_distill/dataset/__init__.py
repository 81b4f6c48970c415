"""Dataset distillation toolkit: synthetic sets, siamese augmentation, random networks, evaluation.

* :class:`SyntheticSet` / :class:`EvalSpec` (``synthetic.py``): learnable class-blocked images,
  labels, soft labels and learning rate, saved as an artifact with their evaluation settings.
* :class:`SiameseAugment` (``augment.py``): differentiable siamese augmentation (DSA).
* :class:`ConvNet`, :class:`ConvNetSpec`, :func:`random_network` (``networks.py``).
* :func:`evaluate_synthetic` and the baselines (``evaluate.py``): evaluation by retraining.
* :class:`ClassBalancedDataModule` (``data.py``): class-blocked real batches.
"""

from lightning_distill.dataset.augment import DSA_OPS, AugmentParams, SiameseAugment
from lightning_distill.dataset.data import ClassBalancedBatches, ClassBalancedDataModule
from lightning_distill.dataset.evaluate import (
    EvalResult,
    RetrainClassifier,
    classification_accuracy,
    evaluate_spec,
    evaluate_synthetic,
    full_training_set,
    herding_subset,
    random_real_subset,
    retrain_model,
    teacher_soft_labels,
)
from lightning_distill.dataset.matching import (
    attention_map,
    attention_matching_loss,
    classwise_mean_discrepancy,
)
from lightning_distill.dataset.networks import ConvNet, ConvNetSpec, random_network, reset_parameters
from lightning_distill.dataset.synthetic import EvalSpec, SyntheticSet

__all__ = [
    "DSA_OPS",
    "AugmentParams",
    "ClassBalancedBatches",
    "ClassBalancedDataModule",
    "ConvNet",
    "ConvNetSpec",
    "EvalResult",
    "EvalSpec",
    "RetrainClassifier",
    "SiameseAugment",
    "SyntheticSet",
    "attention_map",
    "attention_matching_loss",
    "classwise_mean_discrepancy",
    "evaluate_spec",
    "evaluate_synthetic",
    "full_training_set",
    "herding_subset",
    "random_network",
    "random_real_subset",
    "reset_parameters",
    "retrain_model",
    "teacher_soft_labels",
    "classification_accuracy",
]
