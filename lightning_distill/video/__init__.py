"""The video-diffusion toolkit: a label-conditioned diffusers video UNet trained on first use, MCM's
spatial head and frame discriminator, moving-glyph metrics (per-frame FCD, motion error, temporal
consistency), the evaluation callback and video pictures. See README.md in this folder."""

from lightning_distill.video.denoiser import (
    LabelConditionedVideoUNet,
    tiny_video_unet,
    trained_video_denoiser,
)
from lightning_distill.video.evaluation import VideoMetrics
from lightning_distill.video.heads import FrameDiscriminator, SpatialHead, sample_frames
from lightning_distill.video.metrics import (
    center_of_mass,
    frame_fcd,
    motion_error,
    temporal_consistency,
    to_classifier_input,
    video_metrics,
)
from lightning_distill.video.pictures import log_video, save_gif, video_grid

__all__ = [
    "FrameDiscriminator",
    "LabelConditionedVideoUNet",
    "SpatialHead",
    "VideoMetrics",
    "center_of_mass",
    "frame_fcd",
    "log_video",
    "motion_error",
    "sample_frames",
    "save_gif",
    "temporal_consistency",
    "tiny_video_unet",
    "to_classifier_input",
    "trained_video_denoiser",
    "video_grid",
    "video_metrics",
]
