"""Loss functions: pure functions of tensors, no Lightning."""

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
    soft_cross_entropy,
    symmetric_kl,
)
from lightning_distill.losses.pointset import chamfer_distance

__all__ = [
    "attention_transfer_loss",
    "cfg_augmentation_gradient",
    "chamfer_distance",
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
    "pseudo_target_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "soft_cross_entropy",
    "symmetric_kl",
    "vsd_gradient",
]
