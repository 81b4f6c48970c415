"""Representation learning toolkit: ViT-MAE plumbing, masks, HOG targets, probes, MAE teachers (README.md)."""

from lightning_distill.representation.encoding import (
    Encoded,
    decode,
    encode,
    encoder_of,
    mask_noise,
    num_patches_of,
    pooled_features,
    set_prediction_head,
)
from lightning_distill.representation.evaluation import (
    BackboneProbes,
    FeatureProbe,
    extract_features,
    labelled_training_images,
    probe_accuracy,
)
from lightning_distill.representation.hog import HOGFeatures, hog_dim, hog_targets
from lightning_distill.representation.masking import (
    block_masks,
    disjoint_masks,
    grid_side,
    num_visible,
    random_masks,
    visible_tokens,
)
from lightning_distill.representation.teachers import mae_step_loss, trained_mae

__all__ = [
    "Encoded",
    "BackboneProbes",
    "FeatureProbe",
    "HOGFeatures",
    "block_masks",
    "decode",
    "disjoint_masks",
    "encode",
    "encoder_of",
    "extract_features",
    "grid_side",
    "hog_dim",
    "hog_targets",
    "labelled_training_images",
    "mae_step_loss",
    "mask_noise",
    "num_patches_of",
    "num_visible",
    "pooled_features",
    "probe_accuracy",
    "random_masks",
    "set_prediction_head",
    "trained_mae",
    "visible_tokens",
]
