"""The recover step of SRe2L / CDA: images inverted from a BatchNorm teacher, with a crop curriculum.

SRe2L (Yin, Xing, Shen, arXiv 2306.13092) and CDA (Yin, Shen, arXiv 2311.18838) synthesise images
from Gaussian noise by making a frozen, trained BatchNorm network ("squeezed" teacher) see them as
its training data: the cross-entropy of the target class, plus the distance between the batch
statistics of every BatchNorm layer's input and that layer's running statistics. The images are
augmented by a random resized crop (and flip, and a small circular shift) before each step; CDA's
change is a curriculum on the crop's smallest area fraction, from whole images (easy, global) to
small crops (hard, local).

* :func:`bn_matching_loss`: ``sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2)``,
  ``w_0`` = the first-BN multiplier (10 in the official code), the other ``w_l = 1``.
* :func:`batchnorm_paths`, :func:`bn_stat_taps`, :func:`running_stats`: the BatchNorm layers of a
  network as :class:`~lightning_distill.callbacks.FeatureHooks` input taps with the ``bn_stats``
  transform, and their running statistics.
* :func:`crop_schedule`: the smallest crop scale per step as a
  :class:`~lightning_distill.callbacks.progressive_schedule.Schedule` (CDA: cosine 1.0 -> 0.08;
  SRe2L: constant 0.08), for :class:`~lightning_distill.callbacks.ProgressiveSchedule`.
* :class:`CurriculumCrop`: the differentiable random resized crop + flip + shift whose
  ``min_scale`` that schedule sets.

Its datamodule (step indices for training, real images for validation and testing) is
:class:`~lightning_distill.data.RecoverDataModule`; the loss :func:`bn_matching_loss` lives in
:mod:`lightning_distill.losses.dataset_distillation` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_distill.losses.dataset_distillation import bn_matching_loss
from lightning_distill.utils.augment import RandomResizedCropFlip
from lightning_distill.utils.schedules import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    Schedule,
    StageSchedule,
)

__all__ = [
    "CurriculumCrop",
    "batchnorm_paths",
    "bn_matching_loss",
    "bn_stat_taps",
    "crop_schedule",
    "running_stats",
]

Curriculum = Literal["cosine", "linear", "step", "none"]
_CURRICULA = ("cosine", "linear", "step", "none")


def batchnorm_paths(module: nn.Module, prefix: str = "") -> list[str]:
    """Dotted paths of every BatchNorm layer of ``module``, in ``named_modules`` order.

    The first path is the "first BN" that the first-BN multiplier weighs (the official code takes
    the first ``nn.BatchNorm2d`` of ``model.modules()``, the same order).

    Args:
        module: the network.
        prefix: prepended with a dot (``"teacher"`` -> ``"teacher.stem.1"``).

    Raises:
        ValueError: the network has no BatchNorm layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        >>> batchnorm_paths(net, prefix="teacher")
        ['teacher.1', 'teacher.4']
    """
    paths = [
        f"{prefix}.{name}" if prefix else name
        for name, child in module.named_modules()
        if isinstance(child, nn.modules.batchnorm._BatchNorm)
    ]
    if not paths:
        raise ValueError(
            f"{type(module).__name__} has no BatchNorm layer; SRe2L/CDA recovery needs a BatchNorm teacher "
            "(its running statistics are what the images are matched to)."
        )
    return paths


def bn_stat_taps(paths: Sequence[str]) -> dict[str, dict[str, object]]:
    """FeatureHooks taps ``bn0, bn1, ...``: the batch mean and variance at each layer's input.

    Not detached (the loss is differentiated through the frozen teacher to the images).

    Example:
        >>> bn_stat_taps(["teacher.stem.1"])["bn0"]["transform"]
        'bn_stats'
    """
    return {
        f"bn{k}": {"path": path, "kind": "input", "transform": "bn_stats", "detach": False}
        for k, path in enumerate(paths)
    }


def running_stats(module: nn.Module, paths: Sequence[str], prefix: str = "") -> list[tuple[Tensor, Tensor]]:
    """``(running_mean, running_var)`` of the BatchNorm layers at ``paths`` (relative to ``prefix``).

    Raises:
        ValueError: a path is not a BatchNorm layer with running statistics.
    """
    out = []
    for path in paths:
        name = path[len(prefix) + 1 :] if prefix and path.startswith(prefix + ".") else path
        layer = module.get_submodule(name)
        if getattr(layer, "running_mean", None) is None or getattr(layer, "running_var", None) is None:
            raise ValueError(
                f"{path!r} has no running statistics (track_running_stats=False?); the BN loss needs them."
            )
        out.append((layer.running_mean, layer.running_var))
    return out


def crop_schedule(
    curriculum: Curriculum,
    iterations: int,
    *,
    milestone: float = 1.0,
    start: float = 1.0,
    end: float = 0.08,
) -> Schedule:
    """The smallest area fraction of the recovery crop at each step, as a pure schedule.

    With ``T = round(milestone * iterations)`` (the official ``milestone * iterations_per_layer``)
    and step ``t``:

    * ``"cosine"`` (CDA): ``end + (start - end) (1 + cos(pi t / T)) / 2`` for ``t < T``, then ``end``;
    * ``"linear"``: ``end + (start - end) (1 - t / T)``, then ``end``;
    * ``"step"``: ``start`` for ``t < T``, then ``end``;
    * ``"none"`` (SRe2L): always ``end``.

    Args:
        curriculum: one of the four kinds.
        iterations: recovery steps.
        milestone: fraction of the steps the curriculum lasts, in ``[0, 1]`` (0 = no curriculum).
        start: the first value (1.0: whole images).
        end: the final value (0.08, torchvision's default).

    Raises:
        ValueError: an unknown curriculum, ``iterations < 1``, ``milestone`` outside ``[0, 1]``, or
            scales outside ``(0, 1]``.

    Example:
        >>> s = crop_schedule("cosine", 100)
        >>> s.value_at(0), round(s.value_at(50), 2), round(s.value_at(100), 6)
        (1.0, 0.54, 0.08)
    """
    if curriculum not in _CURRICULA:
        raise ValueError(f"`curriculum` must be one of {_CURRICULA}, got {curriculum!r}.")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an integer >= 1, got {iterations!r}.")
    if not 0.0 <= milestone <= 1.0:
        raise ValueError(f"`milestone` must be in [0, 1], got {milestone}.")
    if not (0.0 < end <= 1.0 and 0.0 < start <= 1.0):
        raise ValueError(f"`start` and `end` must be in (0, 1], got {start} and {end}.")
    steps = round(milestone * iterations)
    if curriculum == "none" or steps == 0:
        return ConstantSchedule(float(end))
    if curriculum == "cosine":
        return CosineSchedule(start=float(start), end=float(end), steps=steps)
    if curriculum == "linear":
        return LinearSchedule(start=float(start), end=float(end), steps=steps)
    return StageSchedule(boundaries=[steps], values=[float(start), float(end)])


class CurriculumCrop:
    """Random resized crop + flip + circular shift of the recovery step, with a settable ``min_scale``.

    A crop's area fraction is drawn from ``[min_scale, max_scale]`` (torchvision's
    ``RandomResizedCrop`` sampling, via :class:`~lightning_distill.callbacks.RandomResizedCropFlip`,
    bilinear resize back to the image size), then the image is flipped with probability ``flip_p``
    and rolled by ``(a, b)`` pixels, ``a, b`` uniform in ``0..jitter`` (the official ``torch.roll``
    jitter). Everything is differentiable with respect to the images.

    ``shared=True`` (the official code, which applies a torchvision transform to the whole batch
    tensor) draws one crop, flip and shift per call for every image; ``False`` one per image.

    Args:
        size: ``(H, W)`` of the images.
        min_scale: smallest area fraction (the curriculum sets this attribute).
        max_scale: largest area fraction.
        flip_p: flip probability (0 for digits).
        jitter: largest shift in pixels (0 = none).
        shared: one set of parameters per call instead of per image.

    Raises:
        ValueError: scales outside ``0 < min_scale <= max_scale <= 1``, ``flip_p`` outside [0, 1] or
            ``jitter < 0``.

    Example:
        >>> crop = CurriculumCrop((8, 8), min_scale=1.0, jitter=0, flip_p=0.0)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> torch.allclose(crop(x, torch.Generator().manual_seed(0)), x)  # whole image, no flip or shift
        True
    """

    def __init__(
        self,
        size: Sequence[int],
        *,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        flip_p: float = 0.5,
        jitter: int = 0,
        shared: bool = True,
    ) -> None:
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"`size` must be (H, W) with positive sides, got {size}.")
        if not 0.0 < max_scale <= 1.0:
            raise ValueError(f"`max_scale` must be in (0, 1], got {max_scale}.")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"`flip_p` must be in [0, 1], got {flip_p}.")
        if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
            raise ValueError(f"`jitter` must be an integer >= 0, got {jitter!r}.")
        self.size = size
        self.max_scale = float(max_scale)
        self.min_scale = float(min_scale)
        self.flip_p = float(flip_p)
        self.jitter = jitter
        self.shared = shared

    @property
    def min_scale(self) -> float:
        """The smallest area fraction of the next crops (set by the curriculum)."""
        return self._min_scale

    @min_scale.setter
    def min_scale(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value <= self.max_scale:
            raise ValueError(f"`min_scale` must be in (0, max_scale={self.max_scale}], got {value}.")
        self._min_scale = value

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Crop boxes and flips ``(B, 5)`` (``[top, left, h, w, flip]``) and shifts ``(B, 2)``.

        With ``shared`` one row is drawn and repeated ``batch_size`` times.
        """
        rows = 1 if self.shared else batch_size
        crop = RandomResizedCropFlip(self.size, scale=(self.min_scale, self.max_scale), flip_p=self.flip_p)
        params = crop.sample_params(rows, *self.size, generator=generator)
        shifts = torch.randint(0, self.jitter + 1, (rows, 2), generator=generator)
        return params.expand(batch_size, -1), shifts.expand(batch_size, -1)

    def apply(self, images: Tensor, params: Tensor, shifts: Tensor) -> Tensor:
        """Crop, resize, flip ``(B, C, H, W)`` images with ``params`` ``(B, 5)``, then roll by ``shifts`` ``(B, 2)``."""
        crop = RandomResizedCropFlip(self.size, scale=(self.min_scale, self.max_scale), flip_p=self.flip_p)
        out = crop.apply(images, params)
        if self.jitter == 0:
            return out
        if bool((shifts == shifts[:1]).all()):  # one shift for the whole batch
            return torch.roll(out, shifts=(int(shifts[0, 0]), int(shifts[0, 1])), dims=(2, 3))
        return torch.stack(
            [torch.roll(o, shifts=(int(s[0]), int(s[1])), dims=(1, 2)) for o, s in zip(out, shifts)]
        )

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Sample parameters from ``generator`` and apply them to ``images`` ``(B, C, H, W)``.

        Raises:
            ValueError: the images are not ``(B, C, *size)``.
        """
        if images.ndim != 4 or tuple(images.shape[-2:]) != self.size:
            raise ValueError(
                f"`images` must be (B, C, {self.size[0]}, {self.size[1]}), got {tuple(images.shape)}."
            )
        params, shifts = self.sample(images.shape[0], generator)
        return self.apply(images, params.to(images.device), shifts)
