"""Dataset distillation toolkit: synthetic sets, siamese augmentation, random networks, evaluation.

* :class:`SyntheticSet` (``synthetic.py``) and :class:`EvalSpec` (``eval_spec.py``): learnable
  class-blocked images, labels, soft labels and learning rate, saved as an artifact with their
  evaluation settings.
* :class:`SiameseAugment` (``augment.py``): differentiable siamese augmentation (DSA).
* :class:`ConvNet`, :class:`ConvNetSpec`, :func:`random_network` (``networks.py``).
* :func:`evaluate_synthetic` (``evaluate.py``): evaluation by retraining, the family's metric; the
  baselines it is compared with (``baselines.py``).
* Recover (SRe2L / CDA, ``recover.py``), relabel caches (``relabel.py``), trajectory matching
  (``trajectory.py``, ``experts.py``), label projectors (HeLlO: ``label_projector.py``,
  ``weak_teachers.py``, ``online_labels.py``).
* :class:`SyntheticSetModule` (``recipe_base.py``): the plumbing the family's recipes share.
* The official optimizers of the synthetic images (``optimizers.py``): :func:`datadam_image_sgd`,
  :func:`cda_image_adam`, :func:`ftd_image_sgd`, :func:`hello_image_adam`, the recipes' defaults.

The losses are re-exported from :mod:`lightning_distill.losses.dataset_distillation`, the
datamodules (:class:`~lightning_distill.data.ClassBalancedDataModule`,
:class:`~lightning_distill.data.RecoverDataModule`) live in :mod:`lightning_distill.data`.
What this package may import: README.md.
"""

from lightning_distill.dataset_distillation.augment import DSA_OPS, AugmentParams, SiameseAugment
from lightning_distill.dataset_distillation.baselines import (
    full_training_set,
    herding_subset,
    random_real_subset,
    teacher_soft_labels,
)
from lightning_distill.dataset_distillation.eval_spec import EvalSpec
from lightning_distill.dataset_distillation.evaluate import (
    EvalResult,
    RetrainClassifier,
    classification_accuracy,
    evaluate_spec,
    evaluate_synthetic,
    fit_fresh_model,
    retrain_model,
    retrain_trainer,
)
from lightning_distill.dataset_distillation.experts import (
    ExpertSpec,
    ExpertStep,
    ExpertTrajectories,
    expert_trajectories,
    train_expert,
)
from lightning_distill.dataset_distillation.label_projector import (
    CLIPImageEncoder,
    LabelProjector,
    clip_class_embeddings,
    clip_label_projector,
    prototype_label_projector,
)
from lightning_distill.dataset_distillation.networks import (
    ConvNet,
    ConvNetSpec,
    random_network,
    reset_parameters,
)
from lightning_distill.dataset_distillation.online_labels import (
    OnlineLabelClassifier,
    evaluate_online_labels,
    hard_label_bytes,
    retrain_with_online_labels,
    soft_label_cache_bytes,
)
from lightning_distill.dataset_distillation.optimizers import (
    cda_image_adam,
    datadam_image_sgd,
    ftd_image_sgd,
    hello_image_adam,
)
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from lightning_distill.dataset_distillation.recover import (
    CurriculumCrop,
    batchnorm_paths,
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
from lightning_distill.dataset_distillation.synthetic import SyntheticSet
from lightning_distill.dataset_distillation.trajectory import (
    ParamLayout,
    functional_logits,
    hessian_top_eigenvalue,
    unroll_student,
)
from lightning_distill.dataset_distillation.weak_teachers import (
    WeakTeacherEnsemble,
    trajectory_checkpoints,
    trajectory_teachers,
)
from lightning_distill.losses.dataset_distillation import (
    attention_map,
    attention_matching_loss,
    bn_matching_loss,
    classwise_mean_discrepancy,
    soft_label_loss,
    trajectory_matching_loss,
)
from lightning_distill.utils.quiet import quiet_lightning

__all__ = [
    "AugmentParams",
    "CLIPImageEncoder",
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
    "cda_image_adam",
    "classification_accuracy",
    "classwise_mean_discrepancy",
    "clip_class_embeddings",
    "clip_label_projector",
    "crop_schedule",
    "datadam_image_sgd",
    "evaluate_online_labels",
    "evaluate_relabel_cache",
    "evaluate_spec",
    "evaluate_synthetic",
    "expert_trajectories",
    "fit_fresh_model",
    "ftd_image_sgd",
    "full_training_set",
    "functional_logits",
    "hard_label_bytes",
    "hello_image_adam",
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
