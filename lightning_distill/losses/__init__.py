"""Loss functions: pure functions of tensors, no Lightning."""

from lightning_distill.losses.distribution_matching import (
    denoising_loss,
    dmd_gradient,
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
    "denoising_loss",
    "dmd_gradient",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "pseudo_target_loss",
    "vsd_gradient",
    "attention_transfer_loss",
    "chamfer_distance",
    "cwd_loss",
    "dkd_loss",
    "hint_loss",
    "js_divergence",
    "kd_loss",
    "labelled_cross_entropy",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "soft_cross_entropy",
    "symmetric_kl",
]
