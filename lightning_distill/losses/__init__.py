"""Loss functions: pure functions of tensors, no Lightning."""

from lightning_distill.losses.kd import dkd_loss, js_divergence, kd_loss, soft_cross_entropy, symmetric_kl

__all__ = ["dkd_loss", "js_divergence", "kd_loss", "soft_cross_entropy", "symmetric_kl"]
