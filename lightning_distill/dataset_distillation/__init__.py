"""Dataset distillation toolkit: synthetic sets, siamese augmentation, random networks, evaluation.

* :class:`SyntheticSet` / :class:`EvalSpec` (``synthetic.py``): learnable class-blocked images,
  labels, soft labels and learning rate, saved as an artifact with their evaluation settings.
* :class:`SiameseAugment` (``augment.py``): differentiable siamese augmentation (DSA).
* :class:`ConvNet`, :class:`ConvNetSpec`, :func:`random_network` (``networks.py``).
* :func:`evaluate_synthetic` and the baselines (``evaluate.py``): evaluation by retraining.
* :class:`ClassBalancedDataModule` (``data.py``): class-blocked real batches.
"""

from lightning_distill.dataset_distillation.augment import DSA_OPS, AugmentParams, SiameseAugment
from lightning_distill.dataset_distillation.data import ClassBalancedBatches, ClassBalancedDataModule
from lightning_distill.dataset_distillation.evaluate import (
    EvalResult,
    RetrainClassifier,
    classification_accuracy,
    evaluate_spec,
    evaluate_synthetic,
    fit_fresh_model,
    full_training_set,
    herding_subset,
    quiet_lightning,
    random_real_subset,
    retrain_model,
    retrain_trainer,
    teacher_soft_labels,
)
from lightning_distill.dataset_distillation.label_projector import (
    CLIPImageEncoder,
    LabelProjector,
    OnlineLabelClassifier,
    WeakTeacherEnsemble,
    clip_class_embeddings,
    clip_label_projector,
    evaluate_online_labels,
    hard_label_bytes,
    prototype_label_projector,
    retrain_with_online_labels,
    soft_label_cache_bytes,
    soft_label_loss,
    trajectory_checkpoints,
    trajectory_teachers,
)
from lightning_distill.dataset_distillation.matching import (
    attention_map,
    attention_matching_loss,
    classwise_mean_discrepancy,
)
from lightning_distill.dataset_distillation.networks import ConvNet, ConvNetSpec, random_network, reset_parameters
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from lightning_distill.dataset_distillation.recover import (
    CurriculumCrop,
    RecoverDataModule,
    batchnorm_paths,
    bn_matching_loss,
    bn_stat_taps,
    crop_schedule,
    running_stats,
)
from lightning_distill.dataset_distillation.relabel import (
    RelabelCache,
    build_relabel_cache,
    evaluate_relabel_cache,
    retrain_on_relabel_cache,
)
from lightning_distill.dataset_distillation.synthetic import EvalSpec, SyntheticSet
from lightning_distill.dataset_distillation.trajectory import (
    ExpertSpec,
    ExpertStep,
    ExpertTrajectories,
    ParamLayout,
    expert_trajectories,
    functional_logits,
    hessian_top_eigenvalue,
    train_expert,
    trajectory_matching_loss,
    unroll_student,
)

__all__ = [
    "AugmentParams",
    "CLIPImageEncoder",
    "ClassBalancedBatches",
    "ClassBalancedDataModule",
    "ConvNet",
    "ConvNetSpec",
    "CurriculumCrop",
    "DSA_OPS",
    "EvalResult",
    "EvalSpec",
    "ExpertSpec",
    "ExpertStep",
    "ExpertTrajectories",
    "LabelProjector",
    "OnlineLabelClassifier",
    "ParamLayout",
    "RecoverDataModule",
    "RelabelCache",
    "RetrainClassifier",
    "SiameseAugment",
    "SyntheticSet",
    "SyntheticSetModule",
    "WeakTeacherEnsemble",
    "attention_map",
    "attention_matching_loss",
    "batchnorm_paths",
    "bn_matching_loss",
    "bn_stat_taps",
    "build_relabel_cache",
    "classification_accuracy",
    "classwise_mean_discrepancy",
    "clip_class_embeddings",
    "clip_label_projector",
    "crop_schedule",
    "evaluate_online_labels",
    "evaluate_relabel_cache",
    "evaluate_spec",
    "evaluate_synthetic",
    "expert_trajectories",
    "fit_fresh_model",
    "full_training_set",
    "functional_logits",
    "hard_label_bytes",
    "herding_subset",
    "hessian_top_eigenvalue",
    "prototype_label_projector",
    "quiet_lightning",
    "random_network",
    "random_real_subset",
    "reset_parameters",
    "retrain_model",
    "retrain_on_relabel_cache",
    "retrain_trainer",
    "retrain_with_online_labels",
    "running_stats",
    "soft_label_cache_bytes",
    "soft_label_loss",
    "teacher_soft_labels",
    "train_expert",
    "trajectory_checkpoints",
    "trajectory_matching_loss",
    "trajectory_teachers",
    "unroll_student",
]
