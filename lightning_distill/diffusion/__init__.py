"""Diffusion toolkit: schedules, CFG, samplers, fake scores, GAN head, DMD2's steps, rewards, optimizers, export.

Shared by the diffusion-distillation recipes (DMD2, SwiftBrush, Decoupled/Phased/Flash DMD, MSD)
and usable on its own; built on diffusers schedulers and models.

Names are imported on first use, so the parts that do not need diffusers (the Gaussian-mixture
bench, the metrics) import without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "AnalyticTeacher": "lightning_distill.diffusion.gmm",
    "Cond": "lightning_distill.diffusion.guidance",
    "DiffusionDistillationModule": "lightning_distill.diffusion.recipe_base",
    "FakeScore": "lightning_distill.diffusion.fake_score",
    "FrechetClassifierDistance": "lightning_distill.diffusion.frechet",
    "GANHead": "lightning_distill.diffusion.gan_head",
    "GaussianMixture": "lightning_distill.diffusion.gmm",
    "MLPDenoiser": "lightning_distill.diffusion.denoisers",
    "ModeCoverage": "lightning_distill.diffusion.metrics",
    "ModeWeightTV": "lightning_distill.diffusion.metrics",
    "NoiseSchedule": "lightning_distill.diffusion.schedule",
    "PREDICTION_TYPES": "lightning_distill.diffusion.schedule",
    "PhasedGenerator": "lightning_distill.diffusion.phases",
    "PredictionType": "lightning_distill.diffusion.schedule",
    "PretrainedStudent": "lightning_distill.diffusion.export",
    "RBFMMD": "lightning_distill.diffusion.distances",
    "RegionReward": "lightning_distill.diffusion.rewards",
    "ResidualScore": "lightning_distill.diffusion.fake_score",
    "RoutedDenoiser": "lightning_distill.diffusion.routing",
    "SlicedWasserstein": "lightning_distill.diffusion.distances",
    "backward_simulation": "lightning_distill.diffusion.sampling",
    "bottleneck_channels": "lightning_distill.diffusion.denoisers",
    "broadcast_to": "lightning_distill.diffusion.schedule",
    "cfg": "lightning_distill.diffusion.guidance",
    "check_option": "lightning_distill.diffusion.recipe_base",
    "check_partition": "lightning_distill.diffusion.routing",
    "check_teacher_schedule": "lightning_distill.diffusion.recipe_base",
    "contiguous_partition": "lightning_distill.diffusion.routing",
    "ddpm_schedule": "lightning_distill.diffusion.schedule",
    "denoising_batch_loss": "lightning_distill.diffusion.teachers",
    "derive_seed": "lightning_distill.diffusion.recipe_base",
    "discriminator_input": "lightning_distill.diffusion.dmd",
    "discriminator_logits": "lightning_distill.diffusion.gan_head",
    "distribution_matching_gradient": "lightning_distill.diffusion.dmd",
    "dmd2_adamw": "lightning_distill.diffusion.optimizers",
    "dmd2_settings": "lightning_distill.diffusion.dmd",
    "drop_condition": "lightning_distill.diffusion.guidance",
    "evenly_spaced_timesteps": "lightning_distill.diffusion.timesteps",
    "fake_score_denoising_loss": "lightning_distill.diffusion.dmd",
    "feature_path": "lightning_distill.diffusion.denoisers",
    "few_step_sample": "lightning_distill.diffusion.sampling",
    "first_tensor": "lightning_distill.diffusion.recipe_base",
    "fit_to_teacher": "lightning_distill.diffusion.recipe_base",
    "flow_schedule": "lightning_distill.diffusion.schedule",
    "generator_input": "lightning_distill.diffusion.dmd",
    "guidance_null_condition": "lightning_distill.diffusion.dmd",
    "guided_output": "lightning_distill.diffusion.guidance",
    "load_student": "lightning_distill.diffusion.export",
    "make_mixture": "lightning_distill.diffusion.gmm",
    "mode_coverage": "lightning_distill.diffusion.metrics",
    "mode_weight_tv": "lightning_distill.diffusion.metrics",
    "model_null_label": "lightning_distill.diffusion.recipe_base",
    "model_output": "lightning_distill.diffusion.guidance",
    "model_sample_shape": "lightning_distill.diffusion.recipe_base",
    "noise_floor": "lightning_distill.diffusion.metrics",
    "one_step_generate": "lightning_distill.diffusion.sampling",
    "paired_logits": "lightning_distill.diffusion.dmd",
    "per_student_heads": "lightning_distill.diffusion.dmd",
    "randn_like": "lightning_distill.diffusion.sampling",
    "rbf_mmd2": "lightning_distill.diffusion.metrics",
    "reassemble": "lightning_distill.diffusion.routing",
    "routed_students": "lightning_distill.diffusion.dmd",
    "sample": "lightning_distill.diffusion.sampling",
    "sample_from_pretrained": "lightning_distill.diffusion.export",
    "sample_metrics": "lightning_distill.diffusion.metrics",
    "save_student": "lightning_distill.diffusion.export",
    "scheduler_from_config": "lightning_distill.diffusion.schedule",
    "shifted_timesteps": "lightning_distill.diffusion.timesteps",
    "sinusoidal_embedding": "lightning_distill.diffusion.denoisers",
    "sliced_wasserstein": "lightning_distill.diffusion.metrics",
    "subinterval_coefficients": "lightning_distill.diffusion.phases",
    "subinterval_noise": "lightning_distill.diffusion.phases",
    "subinterval_target": "lightning_distill.diffusion.phases",
    "subinterval_timesteps": "lightning_distill.diffusion.timesteps",
    "swiftbrush_lora_adam": "lightning_distill.diffusion.optimizers",
    "swiftbrush_student_adam": "lightning_distill.diffusion.optimizers",
    "timesteps_in": "lightning_distill.diffusion.dmd",
    "tiny_unet": "lightning_distill.diffusion.denoisers",
    "trained_denoiser": "lightning_distill.diffusion.teachers",
    "uniform_timesteps": "lightning_distill.diffusion.timesteps",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from lightning_distill.diffusion.denoisers import (  # noqa: F401
        MLPDenoiser,
        bottleneck_channels,  # noqa: F401
        feature_path,
        sinusoidal_embedding,
        tiny_unet,
    )
    from lightning_distill.diffusion.distances import RBFMMD, SlicedWasserstein  # noqa: F401
    from lightning_distill.diffusion.dmd import (  # noqa: F401
        discriminator_input,
        distribution_matching_gradient,
        dmd2_settings,
        fake_score_denoising_loss,
        generator_input,
        guidance_null_condition,
        paired_logits,
        per_student_heads,
        routed_students,
        timesteps_in,
    )
    from lightning_distill.diffusion.export import (  # noqa: F401
        PretrainedStudent,
        load_student,
        sample_from_pretrained,
        save_student,
    )
    from lightning_distill.diffusion.fake_score import (
        FakeScore,  # noqa: F401
        ResidualScore,  # noqa: F401
    )
    from lightning_distill.diffusion.frechet import FrechetClassifierDistance  # noqa: F401
    from lightning_distill.diffusion.gan_head import GANHead, discriminator_logits  # noqa: F401
    from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture  # noqa: F401
    from lightning_distill.diffusion.guidance import Cond, cfg, drop_condition, guided_output, model_output  # noqa: F401
    from lightning_distill.diffusion.metrics import (  # noqa: F401
        ModeCoverage,
        ModeWeightTV,
        mode_coverage,
        mode_weight_tv,
        noise_floor,
        rbf_mmd2,
        sample_metrics,  # noqa: F401
        sliced_wasserstein,
    )
    from lightning_distill.diffusion.optimizers import (  # noqa: F401
        dmd2_adamw,
        swiftbrush_lora_adam,
        swiftbrush_student_adam,
    )
    from lightning_distill.diffusion.phases import (  # noqa: F401
        PhasedGenerator,
        subinterval_coefficients,
        subinterval_noise,
        subinterval_target,
    )
    from lightning_distill.diffusion.recipe_base import (  # noqa: F401
        DiffusionDistillationModule,
        check_option,
        check_teacher_schedule,
        derive_seed,
        first_tensor,
        fit_to_teacher,
        model_null_label,
        model_sample_shape,
    )
    from lightning_distill.diffusion.rewards import RegionReward  # noqa: F401
    from lightning_distill.diffusion.routing import (  # noqa: F401
        RoutedDenoiser,
        check_partition,
        contiguous_partition,
        reassemble,
    )
    from lightning_distill.diffusion.sampling import (  # noqa: F401
        backward_simulation,
        few_step_sample,
        one_step_generate,
        randn_like,  # noqa: F401
        sample,
    )
    from lightning_distill.diffusion.schedule import (  # noqa: F401
        PREDICTION_TYPES,
        NoiseSchedule,
        PredictionType,
        broadcast_to,
        ddpm_schedule,
        flow_schedule,
        scheduler_from_config,
    )
    from lightning_distill.diffusion.teachers import denoising_batch_loss, trained_denoiser  # noqa: F401
    from lightning_distill.diffusion.timesteps import (  # noqa: F401
        evenly_spaced_timesteps,
        shifted_timesteps,
        subinterval_timesteps,
        uniform_timesteps,
    )
