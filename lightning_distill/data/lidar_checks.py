"""Checks of what the LiDAR datamodules load: a scan's points, labels and images, before training on them.

:func:`check_lidar_sample` is called once per generated (or cache-loaded) synthetic scene at setup,
and once per real scan as it is read (the real datasets are read lazily, one file at a time). Each
check is one vectorised pass over the sample's tensors; a failure names the file or the scene and
what is wrong, as a ``ValueError``.

Example:
    >>> import torch
    >>> sample = {"points": torch.zeros(3, 4), "labels": torch.tensor([0, 1, -1])}
    >>> check_lidar_sample(sample, num_classes=2, where="scan 000001.bin")
    >>> sample["labels"][0] = 7
    >>> check_lidar_sample(sample, num_classes=2, where="scan 000001.bin")
    Traceback (most recent call last):
    ...
    ValueError: scan 000001.bin: 1 of 3 point labels are outside [0, 2) or -1 (ignored): values [7]; ...
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_distill.lidar.scene import IGNORE_INDEX

__all__ = ["check_lidar_sample"]


def check_lidar_sample(sample: Mapping[str, Tensor], *, num_classes: int, where: str) -> None:
    """Refuse a LiDAR sample that training would silently learn nothing (or NaN) from.

    Checks: ``points`` a non-empty floating ``(N, C)`` tensor with ``C >= 3`` (x, y, z, ...) and
    every value finite; ``labels`` (and ``instances``) integer ``(N,)`` with labels in
    ``[0, num_classes)`` or -1 (ignored); ``images`` (when present) finite.

    Args:
        sample: one scan as the datamodules build it (``points``, ``labels``, optional ``instances``, ``images``).
        num_classes: the dataset's number of classes.
        where: the file or scene, named in the message.

    Raises:
        ValueError: naming ``where`` and the problem.
    """
    points = sample.get("points")
    if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[1] < 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"{where}: `points` must be a (N, C >= 3) tensor of x, y, z[, ...], got {shape}.")
    if points.shape[0] == 0:
        raise ValueError(f"{where}: the scan is empty (0 points); remove it from the split or fix the file.")
    if not points.is_floating_point():
        raise ValueError(f"{where}: `points` must be floating point, got {points.dtype}.")
    finite = torch.isfinite(points)
    if not bool(finite.all()):
        rows = (~finite).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{where}: {len(rows)} of {points.shape[0]} points have NaN/inf coordinates or features "
            f"(e.g. points {rows[:5].tolist()}); fix or drop them before training."
        )
    for key in ("labels", "instances"):
        values = sample.get(key)
        if values is None:
            continue
        if values.shape != (points.shape[0],) or values.is_floating_point() or values.dtype == torch.bool:
            raise ValueError(
                f"{where}: `{key}` must be integers of shape ({points.shape[0]},), one per point; got "
                f"{values.dtype} of shape {tuple(values.shape)}."
            )
    labels = sample.get("labels")
    if labels is not None:
        outside = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_INDEX)
        if bool(outside.any()):
            bad = torch.unique(labels[outside])
            raise ValueError(
                f"{where}: {int(outside.sum())} of {len(labels)} point labels are outside [0, {num_classes}) or "
                f"-1 (ignored): values {bad[:5].tolist()}; the dataset has {num_classes} classes (check the "
                "label map or the files)."
            )
    images = sample.get("images")
    if isinstance(images, Tensor) and images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{where}: the camera images hold NaN/inf pixels.")
