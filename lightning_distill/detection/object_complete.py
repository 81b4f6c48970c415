"""Object-complete frames (X-Ray distillation, Gambashidze et al., arXiv 2404.00679).

A tracked object is seen from many viewpoints over a LiDAR sequence, but each frame holds only the
few points of one viewpoint (fewer still when it is far or occluded). An *object-complete* frame
replaces the points of every tracked box by all the points that box held over the whole sequence,
so each object looks as if it were seen through X-rays:

1. **Gather**: in every frame, the points inside each box (:func:`~lightning_distill.detection.boxes.points_in_boxes`)
   are moved into that box's own coordinates (origin at the centre, ``x`` along the heading, ``z``
   up): ``p_box = R(-yaw) (p - centre)``.
2. **Accumulate** per track id over the frames (the official tools concatenate every frame's points,
   step 1, no registration: their "default" strategy); optionally keep one point per
   ``voxel_size`` cell in box coordinates (a deterministic de-duplication).
3. **Paste**: in every frame, the points inside each tracked box are removed and the accumulated
   points are put back into that frame's box: ``p = R(yaw) p_box + centre``. Points of the street
   and of untracked objects stay exactly as they were.

Boxes here are in each frame's LiDAR frame, so the world pose cancels: ``world_from_box = world_from_lidar
· lidar_from_box``, hence ``box_from_world · world_from_lidar = box_from_lidar``. The official tools go
through the world frame because nuScenes / Waymo annotations are global; with per-frame LiDAR boxes
the direct transform is the same map without the round trip.

Example:
    >>> box = torch.tensor([[5.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    >>> frames = [
    ...     {"points": torch.tensor([[5.5, 0.0, 0.0, 1.0]]), "boxes": box, "track_ids": torch.tensor([7])},
    ...     {"points": torch.tensor([[5.5, 0.5, 0.0, 1.0]]), "boxes": box + torch.tensor([1.0, 0, 0, 0, 0, 0, 0]),
    ...      "track_ids": torch.tensor([7])},
    ... ]  # the object moved 1 m forward; each frame saw one point of it
    >>> out = object_complete_sequence(frames)
    >>> out[0]["points"][:, :2].tolist(), out[1]["points"][:, :2].tolist()
    ([[5.5, 0.0], [4.5, 0.5]], [[6.5, 0.0], [5.5, 0.5]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_distill.detection.boxes import check_boxes, points_in_boxes

__all__ = ["from_box_frame", "object_complete_sequence", "to_box_frame", "voxel_dedup"]

#: Per-point keys carried along with the points (any other per-point key is dropped from a completed frame).
CARRIED_POINT_KEYS = ("point_labels",)


def to_box_frame(points: Tensor, box: Tensor) -> Tensor:
    """``(N, >=3)`` points (LiDAR frame) -> the same points in the coordinates of ``box`` ``(7,)``.

    Extra columns (intensity, ...) are kept unchanged.
    """
    out = points.clone()
    c, s = torch.cos(box[6]), torch.sin(box[6])
    d = points[:, :3] - box[:3]
    out[:, 0] = c * d[:, 0] + s * d[:, 1]
    out[:, 1] = -s * d[:, 0] + c * d[:, 1]
    out[:, 2] = d[:, 2]
    return out


def from_box_frame(points: Tensor, box: Tensor) -> Tensor:
    """Inverse of :func:`to_box_frame`: points in the coordinates of ``box`` -> LiDAR frame."""
    out = points.clone()
    c, s = torch.cos(box[6]), torch.sin(box[6])
    out[:, 0] = c * points[:, 0] - s * points[:, 1] + box[0]
    out[:, 1] = s * points[:, 0] + c * points[:, 1] + box[1]
    out[:, 2] = points[:, 2] + box[2]
    return out


def voxel_dedup(points: Tensor, voxel_size: float) -> Tensor:
    """Indices ``(K,)`` (ascending) of the first point in each ``voxel_size`` cubic cell of ``points[:, :3]``.

    Deterministic: the kept point of a cell is the one that comes first in ``points``.

    Raises:
        ValueError: ``voxel_size`` <= 0.
    """
    if not voxel_size > 0:
        raise ValueError(f"`voxel_size` must be > 0 (metres), got {voxel_size}.")
    if len(points) == 0:
        return torch.zeros(0, dtype=torch.long)
    cells = torch.floor(points[:, :3].double() / voxel_size).long()
    _, inverse = torch.unique(cells, dim=0, return_inverse=True)
    order = torch.arange(len(points))
    first = torch.full((int(inverse.max()) + 1,), len(points), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")
    return first.sort().values


def object_complete_sequence(
    frames: Sequence[Mapping[str, Any]],
    *,
    voxel_size: float | None = None,
) -> list[dict[str, Any]]:
    """The object-complete version of every frame of one sequence (see the module docstring).

    Args:
        frames: the frames of one scene, in order, each with ``"points"`` ``(N, >=3)`` (LiDAR frame),
            ``"boxes"`` ``(M, 7)`` in the same frame and ``"track_ids"`` ``(M,)`` (the same object keeps
            its id across frames); other keys are copied. Per-point ``"point_labels"`` travel with their
            points; ``"point_boxes"`` and ``"num_points_in_box"`` are recomputed for the new points.
        voxel_size: keep one accumulated point per cell of this size (metres, in box coordinates);
            ``None`` keeps them all (the official default strategy).

    Returns:
        New frame dicts (the inputs are not modified). With one frame the output equals the input.

    Raises:
        ValueError: no frames, a frame without those keys, mismatched shapes, or a track id that
            appears twice in one frame.
    """
    if not frames:
        raise ValueError("`frames` is empty: give the frames of one sequence.")
    if voxel_size is not None and not voxel_size > 0:
        raise ValueError(f"`voxel_size` must be None or > 0 (metres), got {voxel_size}.")
    inside, gathered = [], {}
    for t, frame in enumerate(frames):
        for key in ("points", "boxes", "track_ids"):
            if key not in frame:
                raise ValueError(
                    f"frame {t} has no {key!r}; object-complete frames need points, boxes and track ids."
                )
        points, boxes, tracks = frame["points"], frame["boxes"], frame["track_ids"]
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"frame {t}: `points` must be (N, >=3), got {tuple(points.shape)}.")
        check_boxes(f"frame {t} boxes", boxes)
        if tracks.shape != (len(boxes),):
            raise ValueError(
                f"frame {t}: `track_ids` must be (M,) = ({len(boxes)},), got {tuple(tracks.shape)}."
            )
        if len(torch.unique(tracks)) != len(tracks):
            raise ValueError(f"frame {t}: a track id appears twice ({tracks.tolist()}).")
        index = points_in_boxes(points[:, :3], boxes)
        inside.append(index)
        extra = {k: frame[k] for k in CARRIED_POINT_KEYS if k in frame}
        for j, track in enumerate(tracks.tolist()):
            mine = index == j
            local = to_box_frame(points[mine].double(), boxes[j].double())  # float64: pasting back is exact
            gathered.setdefault(track, []).append((local, {k: v[mine] for k, v in extra.items()}))
    clouds: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}
    for track, parts in gathered.items():
        local = torch.cat([p for p, _ in parts])
        extra = {k: torch.cat([e[k] for _, e in parts]) for k in parts[0][1]}
        if voxel_size is not None:
            keep = voxel_dedup(local, voxel_size)
            local, extra = local[keep], {k: v[keep] for k, v in extra.items()}
        clouds[track] = (local, extra)
    return [_paste(frame, inside[t], clouds) for t, frame in enumerate(frames)]


def _paste(
    frame: Mapping[str, Any], inside: Tensor, clouds: Mapping[int, tuple[Tensor, dict[str, Tensor]]]
) -> dict[str, Any]:
    """Step 3: the frame with the points of its tracked boxes replaced by their accumulated clouds."""
    points, boxes, tracks = frame["points"], frame["boxes"], frame["track_ids"]
    outside = inside < 0
    new_points = [points[outside]]
    new_extra = {k: [frame[k][outside]] for k in CARRIED_POINT_KEYS if k in frame}
    new_boxes = [torch.full((int(outside.sum()),), -1, dtype=torch.long)]
    for j, track in enumerate(tracks.tolist()):
        local, extra = clouds[track]
        half = boxes[j, 3:6].double() / 2 + 1e-5  # the tolerance of points_in_boxes
        fits = (local[:, :3].abs() <= half).all(dim=1)  # a box whose size changed keeps only what fits
        new_points.append(from_box_frame(local[fits], boxes[j].double()).to(points.dtype))
        for k in new_extra:
            new_extra[k].append(extra[k][fits])
        new_boxes.append(torch.full((int(fits.sum()),), j, dtype=torch.long))
    out = dict(frame)
    out["points"] = torch.cat(new_points).to(points.dtype)
    for k, parts in new_extra.items():
        out[k] = torch.cat(parts)
    point_boxes = torch.cat(new_boxes)
    if "point_boxes" in frame:
        out["point_boxes"] = point_boxes
    if "num_points_in_box" in frame:
        out["num_points_in_box"] = torch.bincount(point_boxes[point_boxes >= 0], minlength=len(boxes))
    return out
