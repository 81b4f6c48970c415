"""Diffusion toolkit: noise schedules and parameterisations, CFG, samplers, fake scores, GAN head, export.

Shared by the diffusion-distillation recipes (DMD2, SwiftBrush, Decoupled/Phased/Flash DMD, MSD)
and usable on its own; built on diffusers schedulers and models.
"""

from lightning_distill.diffusion.denoisers import MLPDenoiser, feature_path, sinusoidal_embedding, tiny_unet
from lightning_distill.diffusion.export import (
    PretrainedStudent,
    load_student,
    sample_from_pretrained,
    save_student,
)
from lightning_distill.diffusion.fake_score import FakeScore
from lightning_distill.diffusion.gan_head import GANHead, discriminator_logits
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture
from lightning_distill.diffusion.guidance import Cond, cfg, drop_condition, guided_output, model_output
from lightning_distill.diffusion.metrics import (
    RBFMMD,
    FrechetClassifierDistance,
    ModeCoverage,
    ModeWeightTV,
    SlicedWasserstein,
    mode_coverage,
    mode_weight_tv,
    noise_floor,
    rbf_mmd2,
    sliced_wasserstein,
)
from lightning_distill.diffusion.sampling import (
    backward_simulation,
    few_step_sample,
    one_step_generate,
    sample,
)
from lightning_distill.diffusion.schedule import (
    PREDICTION_TYPES,
    NoiseSchedule,
    PredictionType,
    broadcast_to,
    ddpm_schedule,
    flow_schedule,
    scheduler_from_config,
)
from lightning_distill.diffusion.timesteps import (
    evenly_spaced_timesteps,
    shifted_timesteps,
    subinterval_timesteps,
    uniform_timesteps,
)

__all__ = [
    "AnalyticTeacher",
    "FrechetClassifierDistance",
    "GaussianMixture",
    "ModeCoverage",
    "ModeWeightTV",
    "RBFMMD",
    "SlicedWasserstein",
    "make_mixture",
    "mode_coverage",
    "mode_weight_tv",
    "noise_floor",
    "rbf_mmd2",
    "sliced_wasserstein",
    "PREDICTION_TYPES",
    "Cond",
    "FakeScore",
    "GANHead",
    "MLPDenoiser",
    "NoiseSchedule",
    "PredictionType",
    "PretrainedStudent",
    "backward_simulation",
    "broadcast_to",
    "ddpm_schedule",
    "flow_schedule",
    "cfg",
    "discriminator_logits",
    "drop_condition",
    "evenly_spaced_timesteps",
    "feature_path",
    "few_step_sample",
    "guided_output",
    "load_student",
    "model_output",
    "one_step_generate",
    "sample",
    "sample_from_pretrained",
    "save_student",
    "scheduler_from_config",
    "shifted_timesteps",
    "sinusoidal_embedding",
    "subinterval_timesteps",
    "tiny_unet",
    "uniform_timesteps",
]
