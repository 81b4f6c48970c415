"""Export a distilled one-/few-step diffusers student so that diffusers loads and samples it.

:func:`save_student` writes a folder::

    <path>/unet/                 student.save_pretrained(...)  (config.json + safetensors)
    <path>/scheduler/            the few-step scheduler: LCMScheduler (VP) or FlowMatchLCMScheduler (flow)
    <path>/distillation.json     {"timesteps": [...], "prediction_type": ..., "kind": ..., ...}

The schedulers are the diffusers ones that step like DMD2's few-step generator (predict x₀,
re-noise it with fresh noise to the next timestep), configured so that the distilled timesteps
are used as given (``original_inference_steps = T`` for ``LCMScheduler``, ``shift = 1`` for
``FlowMatchLCMScheduler``). With diffusers alone::

    unet = UNet2DModel.from_pretrained(path, subfolder="unet")
    scheduler = LCMScheduler.from_pretrained(path, subfolder="scheduler")
    scheduler.set_timesteps(timesteps=json.load(open(f"{path}/distillation.json"))["timesteps"])
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample

(DMD2's own SDXL demo samples its 4-step UNet with ``LCMScheduler`` and
``timesteps=[999, 749, 499, 249]`` in the same way.) :func:`load_student` and
:func:`sample_from_pretrained` do this with :func:`~lightning_distill.diffusion.sampling.few_step_sample`.

Students that are not diffusers models (an :class:`~lightning_distill.diffusion.denoisers.MLPDenoiser`
on toy data, a custom network) have no diffusers format: their artifact is the Lightning
checkpoint of the recipe, and :func:`~lightning_distill.diffusion.sampling.few_step_sample` samples them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import FlowMatchLCMScheduler, LCMScheduler
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond
from lightning_distill.diffusion.sampling import _check_timesteps, few_step_sample
from lightning_distill.diffusion.schedule import NoiseSchedule, scheduler_from_config

__all__ = ["PretrainedStudent", "load_student", "sample_from_pretrained", "save_student"]

_FORMAT = "lightning_distill/few_step_student"
_VERSION = 1
_META = "distillation.json"


@dataclass
class PretrainedStudent:
    """A loaded few-step student: the diffusers model, its schedule and its timesteps."""

    model: nn.Module
    schedule: NoiseSchedule
    timesteps: tuple[int | float, ...]

    @torch.no_grad()
    def sample(self, noise: Tensor, cond: Cond = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Few-step samples from ``noise`` ``(B, ...)`` (see :func:`few_step_sample`)."""
        return few_step_sample(self.model, self.schedule, noise, self.timesteps, cond, generator=generator)


def save_student(
    path: str | Path,
    student: nn.Module,
    schedule: NoiseSchedule,
    timesteps: Sequence[int | float],
    *,
    prediction_type: str | None = None,
) -> Path:
    """Save a diffusers student with its few-step scheduler and timesteps (see the module docstring).

    Args:
        path: the output folder (created; existing files are overwritten).
        student: a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ... with ``save_pretrained``).
        schedule: the schedule the student was distilled with.
        timesteps: the student's decreasing timesteps (one-step: ``(T - 1,)``).
        prediction_type: what the student predicts (default: the schedule's). VP students may
            predict ``epsilon``, ``sample`` or ``v_prediction``; flow students the velocity (``flow``).

    Returns:
        The folder.

    Raises:
        TypeError: if ``student`` is not a diffusers model (save the Lightning checkpoint instead).
        ValueError: for bad timesteps, or a ``prediction_type`` the diffusers scheduler cannot step.
    """
    if not isinstance(student, ModelMixin):
        raise TypeError(
            f"`student` must be a diffusers model with `save_pretrained`, got {type(student).__name__}. For other "
            "students the Lightning checkpoint is the artifact; sample them with `few_step_sample`."
        )
    steps = _check_timesteps(timesteps)
    prediction_type = schedule.prediction_type if prediction_type is None else prediction_type
    if schedule.kind == "vp":
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(
                f"A VP student exported for LCMScheduler must predict 'epsilon', 'sample' or 'v_prediction', got "
                f"{prediction_type!r}; wrap it to predict one of those."
            )
        scheduler = scheduler_from_config(
            LCMScheduler,
            schedule.scheduler.config,
            prediction_type=prediction_type,
            original_inference_steps=schedule.num_train_timesteps,
            clip_sample=False,
            thresholding=False,
        )
    else:
        if prediction_type != "flow":
            raise ValueError(
                f"A flow student exported for FlowMatchLCMScheduler must predict the velocity ('flow'), got "
                f"{prediction_type!r}; wrap it to return eps - x0."
            )
        scheduler = scheduler_from_config(
            FlowMatchLCMScheduler, schedule.scheduler.config, shift=1.0, use_dynamic_shifting=False
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(path / "unet")
    scheduler.save_pretrained(path / "scheduler")
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "timesteps": list(steps),
        "prediction_type": prediction_type,
        "kind": schedule.kind,
        "num_train_timesteps": schedule.num_train_timesteps,
        "student_class": type(student).__name__,
        "distilled_with_scheduler": type(schedule.scheduler).__name__,
    }
    (path / _META).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_student(
    path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> PretrainedStudent:
    """Load a folder written by :func:`save_student` (no network: the path must exist locally).

    Raises:
        FileNotFoundError: if the folder or one of its parts is missing.
        ValueError: if ``distillation.json`` is not of this format.
    """
    path = Path(path)
    meta_file = path / _META
    if not meta_file.is_file():
        raise FileNotFoundError(f"No {_META} in {str(path)!r}: not a folder written by `save_student`.")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(
            f"{meta_file} has format {meta.get('format')!r} version {meta.get('version')!r}; expected {_FORMAT!r} "
            f"version {_VERSION}."
        )
    model_cls = _diffusers_class(path / "unet" / "config.json", ModelMixin)
    scheduler_cls = _diffusers_class(path / "scheduler" / "scheduler_config.json", object)
    model = model_cls.from_pretrained(path / "unet")
    model = model.to(device=device, dtype=dtype).eval()
    scheduler = scheduler_cls.from_pretrained(path / "scheduler")
    schedule = NoiseSchedule.from_diffusers(scheduler)
    if schedule.prediction_type != meta["prediction_type"]:
        raise ValueError(
            f"{meta_file} says the student predicts {meta['prediction_type']!r} but its scheduler is configured for "
            f"{schedule.prediction_type!r}."
        )
    return PretrainedStudent(model=model, schedule=schedule, timesteps=tuple(meta["timesteps"]))


def sample_from_pretrained(
    path: str | Path,
    noise: Tensor,
    cond: Cond = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Load the student at ``path`` (on ``noise``'s device) and draw few-step samples from ``noise`` ``(B, ...)``."""
    return load_student(path, device=noise.device).sample(noise, cond, generator=generator)


def _diffusers_class(config_file: Path, base: type) -> type:
    if not config_file.is_file():
        raise FileNotFoundError(f"Missing {config_file}; the folder was not written by `save_student`.")
    name = json.loads(config_file.read_text()).get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ValueError(f"{config_file} names class {name!r}, which is not a diffusers {base.__name__}.")
    return cls
