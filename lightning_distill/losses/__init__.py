"""Loss functions: pure functions of tensors, no Lightning."""

from lightning_distill.losses.contrastive import (
    info_nce,
    point_region_contrast,
    region_aware_distillation,
    region_aware_point_contrast,
    superpixel_info_nce,
)
from lightning_distill.losses.dataset_distillation import (
    attention_map,
    attention_matching_loss,
    bn_matching_loss,
    classwise_mean_discrepancy,
    soft_label_loss,
    trajectory_matching_loss,
)
from lightning_distill.losses.distribution_matching import (
    cfg_augmentation_gradient,
    denoising_loss,
    distribution_matching_gradient,
    dmd_gradient,
    dmd_normaliser,
    gan_discriminator_loss,
    gan_generator_loss,
    pseudo_target_loss,
    vsd_gradient,
)
from lightning_distill.losses.feature import (
    attention_transfer_loss,
    cwd_loss,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)
from lightning_distill.losses.kd import (
    dkd_loss,
    js_divergence,
    kd_loss,
    labelled_cross_entropy,
    logit_discriminator_loss,
    soft_cross_entropy,
    symmetric_kl,
)
from lightning_distill.losses.pointset import chamfer_distance
from lightning_distill.losses.segmentation import (
    ignore_index_cross_entropy,
    paired_cosine_distance,
    probability_mse,
)

__all__ = [
    "info_nce",
    "point_region_contrast",
    "region_aware_distillation",
    "region_aware_point_contrast",
    "superpixel_info_nce",
    "ignore_index_cross_entropy",
    "paired_cosine_distance",
    "probability_mse",
    "attention_map",
    "attention_matching_loss",
    "attention_transfer_loss",
    "bn_matching_loss",
    "cfg_augmentation_gradient",
    "chamfer_distance",
    "classwise_mean_discrepancy",
    "cwd_loss",
    "denoising_loss",
    "distribution_matching_gradient",
    "dkd_loss",
    "dmd_gradient",
    "dmd_normaliser",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "hint_loss",
    "js_divergence",
    "kd_loss",
    "labelled_cross_entropy",
    "logit_discriminator_loss",
    "pseudo_target_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "soft_cross_entropy",
    "soft_label_loss",
    "symmetric_kl",
    "trajectory_matching_loss",
    "vsd_gradient",
]
