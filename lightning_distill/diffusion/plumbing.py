"""Free functions under the diffusion base: seeds, what a denoiser tells about itself, teacher checks.

Plain functions of networks and numbers, no LightningModule: the diffusion base
(:mod:`~lightning_distill.diffusion.recipe_base`) and the recipes call them, and so can a script.

* :func:`derive_seed`: a well-mixed torch seed from integers (``(noise_seed, iteration, rank)``);
* :func:`model_sample_shape`, :func:`model_null_label`, :func:`known_unconditional`: the sample
  shape, the null class label and "takes no labels" of the denoisers this toolkit knows
  (``MLPDenoiser``, the analytic teacher, diffusers ``UNet2DModel``);
* :func:`check_teacher_schedule`, :func:`check_teacher_prediction_type`: a teacher agrees with the
  recipe's noise schedule;
* :func:`fit_to_teacher`: regress a network onto a teacher's outputs ("start from the teacher"
  when the teacher has no weights to copy).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_distill.diffusion.denoisers import MLPDenoiser
from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.guidance import Cond, model_output
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.diffusion.timesteps import uniform_timesteps
from lightning_distill.utils.checks import check_option

__all__ = [
    "check_teacher_prediction_type",
    "check_teacher_schedule",
    "derive_seed",
    "fit_to_teacher",
    "known_unconditional",
    "model_null_label",
    "model_sample_shape",
]


def derive_seed(entropy: Sequence[int], words: int = 2) -> int:
    """A torch seed from integers via numpy's ``SeedSequence``: well mixed, so nearby inputs give unrelated seeds.

    Args:
        entropy: non-negative integers, e.g. ``(noise_seed, iteration, rank)``.
        words: 32-bit words of the sequence used: 2 gives a 62-bit seed, 1 a 32-bit one.

    Raises:
        ValueError: ``words`` not 1 or 2.

    Example:
        >>> derive_seed([0, 1, 0]) == derive_seed([0, 1, 0]) != derive_seed([0, 2, 0])
        True
    """
    if words not in (1, 2):
        raise ValueError(f"`words` must be 1 or 2, got {words!r}.")
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(words, dtype=np.uint32)
    return int(state[0]) if words == 1 else int(state[0]) << 31 | int(state[1]) >> 1


def model_sample_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one sample of a known denoiser, ``(D,)`` or ``(C, H, W)``; ``None`` when it cannot tell.

    Knows :class:`~lightning_distill.diffusion.gmm.AnalyticTeacher` (its mixture's dimension),
    :class:`MLPDenoiser` and models with a diffusers ``config`` holding ``in_channels`` and
    ``sample_size``.

    Example:
        >>> model_sample_shape(MLPDenoiser(dim=3, hidden=8, depth=1)), model_sample_shape(nn.Linear(2, 2))
        ((3,), None)
    """
    gmm = getattr(model, "gmm", None)
    if isinstance(gmm, GaussianMixture):
        return (gmm.dim,)
    if isinstance(model, MLPDenoiser):
        return (model.dim,)
    config = getattr(model, "config", None)
    if config is not None and "in_channels" in config and "sample_size" in config:
        size = config["sample_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (int(config["in_channels"]), *size)
    return None


def model_null_label(model: nn.Module) -> int | None:
    """The unconditional class label of a class-conditional denoiser, else ``None``.

    ``num_classes`` for :class:`MLPDenoiser` and the analytic teacher (labels ``0 .. C - 1`` are
    classes), the last class embedding of a ``UNet2DModel`` with ``num_class_embeds``.

    Example:
        >>> model_null_label(MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=4))
        4
    """
    if isinstance(model, UNet2DModel):
        return int(model.config.num_class_embeds) - 1 if model.config.num_class_embeds else None
    if isinstance(model, MLPDenoiser) or isinstance(getattr(model, "gmm", None), GaussianMixture):
        classes = getattr(model, "num_classes", None)
        return int(classes) if isinstance(classes, int) and classes > 0 else None
    return None


def fit_to_teacher(
    model: nn.Module,
    teacher: nn.Module,
    schedule: NoiseSchedule,
    batches: Iterable[tuple[Tensor, Cond]],
    steps: int,
    *,
    prediction_type: str | None = None,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    """Regress ``model`` onto ``teacher``'s outputs on noised data: "start from the teacher" without its weights.

    Minimises ``||model(x_t, t, c) - teacher(x_t, t, c)||²`` (the teacher's output converted to
    ``prediction_type``) over ``t ~ U[0, T)`` and ``x_t`` noised from ``(x0, c)`` batches, with Adam.
    For a parameter-free teacher (the analytic GMM denoiser) this stands in for copying weights.

    Args:
        model: the network to fit (its trainable parameters), called like the teacher.
        teacher: the frozen model to imitate.
        schedule: the noise schedule of both.
        batches: ``(x0 (B, ...), cond)`` pairs, cycled.
        steps: Adam steps.
        prediction_type: what ``model`` predicts (default: the schedule's).
        lr: Adam's learning rate.
        generator: source of the timesteps and the noise.

    Returns:
        The last step's loss.
    """
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = torch.zeros(())
    for _, (x0, cond) in zip(range(steps), itertools.cycle(batches)):
        T = schedule.num_train_timesteps
        t = uniform_timesteps(x0.shape[0], 0, T, num_train_timesteps=T, generator=generator, device=x0.device)
        x_t = schedule.add_noise(x0, randn_like(x0, generator), t)
        with torch.no_grad():
            target = schedule.convert(
                model_output(teacher, x_t, t, cond),
                x_t,
                t,
                target=prediction_type or schedule.prediction_type,
            )
        loss = (model_output(model, x_t, t, cond).float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def check_teacher_schedule(teacher: nn.Module, schedule: NoiseSchedule) -> None:
    """A teacher that carries its own schedule (the analytic teacher) must use the recipe's ``schedule``.

    Compares ``T`` and ``α_t`` at 50 timesteps; a teacher without a ``schedule`` passes.

    Raises:
        ValueError: the two schedules differ.
    """
    own = getattr(teacher, "schedule", None)
    if own is None or not callable(getattr(own, "alpha_sigma", None)):
        return
    T = schedule.num_train_timesteps
    t = torch.arange(0, T, max(1, T // 50))
    if getattr(own, "num_train_timesteps", None) != T or not torch.allclose(
        own.alpha_sigma(t)[0].float(), schedule.alpha_sigma(t)[0].float(), atol=1e-6
    ):
        raise ValueError(
            "The teacher's schedule differs from `model.init_args.schedule`; build both from the same arguments."
        )


def check_teacher_prediction_type(teacher: nn.Module, schedule: NoiseSchedule) -> None:
    """A teacher that states its ``prediction_type`` must predict what the schedule converts from."""
    teacher_type = getattr(teacher, "prediction_type", schedule.prediction_type)
    check_option(
        teacher_type == schedule.prediction_type,
        "schedule",
        schedule.prediction_type,
        f"a schedule predicting the teacher's {teacher_type!r}",
    )


def known_unconditional(model: nn.Module) -> bool:
    """A denoiser known to take no class labels (a ``FakeScore`` is read through its ``model``)."""
    model = getattr(model, "model", model)
    if isinstance(model, UNet2DModel):
        return not model.config.num_class_embeds
    return isinstance(model, MLPDenoiser) and getattr(model, "num_classes", None) is None
