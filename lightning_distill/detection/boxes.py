"""3D boxes in the LiDAR frame: corners, rotated bird's-eye-view IoU, 3D IoU, rotated NMS, points in boxes.

A box is ``[x, y, z, dx, dy, dz, yaw]`` (DESIGN.md): centre ``(x, y, z)`` with ``z`` at the box
centre, size ``dx`` along the heading, ``dy`` across it, ``dz`` up, and ``yaw`` about ``+z`` from
``+x``. Batches of boxes are ``(M, 7)`` float tensors.

The rotated overlap is computed in plain torch, all pairs at once: the intersection of two convex
quadrilaterals is the convex hull of the corners of each inside the other and of the crossings of
their edges; those (at most 24) candidate points are ordered by angle about their mean and the
shoelace formula gives the area. No maintained rotated-IoU package runs here (no ``shapely``,
``mmcv`` or ``torchvision`` beside the CPU torch); the tests check this against an independent
Sutherland–Hodgman clipping written in plain Python.

Example:
    >>> a = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    >>> b = torch.tensor([[1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, math.pi / 2]])
    >>> bev_iou(a, b).tolist()
    [[0.3333333432674408, 1.0]]
    >>> nms_bev(torch.cat([a, b]), torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist()
    [0, 1]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bev_iou",
    "bev_overlap",
    "boxes_to_corners_3d",
    "boxes_to_corners_bev",
    "check_boxes",
    "iou_3d",
    "limit_yaw",
    "nms_bev",
    "points_in_boxes",
    "project_boxes",
]

_EPS = 1e-9


def check_boxes(name: str, boxes: object) -> Tensor:
    """Return ``boxes`` if it is a floating ``(M, 7)`` tensor with non-negative sizes.

    Raises:
        ValueError: another shape, an integer dtype, or a negative size.
    """
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 7:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"`{name}` must be an (M, 7) tensor [x, y, z, dx, dy, dz, yaw], got {shape}.")
    if not boxes.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {boxes.dtype}.")
    if boxes.numel() and bool((boxes[:, 3:6] < 0).any()):
        raise ValueError(f"`{name}` has a negative size (columns dx, dy, dz).")
    return boxes


def limit_yaw(yaw: Tensor) -> Tensor:
    """Wrap angles into ``[-pi, pi)``.

    >>> limit_yaw(torch.tensor([math.pi, 3 * math.pi / 2], dtype=torch.float64)).tolist()
    [-3.141592653589793, -1.5707963267948966]
    """
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


def boxes_to_corners_bev(boxes: Tensor) -> Tensor:
    """BEV corners ``(M, 4, 2)`` of ``(M, 7)`` boxes, counter-clockwise from the front-left corner.

    >>> boxes_to_corners_bev(torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]]))[0].tolist()
    [[2.0, 1.0], [-2.0, 1.0], [-2.0, -1.0], [2.0, -1.0]]

    Raises:
        ValueError: ``boxes`` is not ``(M, 7)``.
    """
    check_boxes("boxes", boxes)
    unit = boxes.new_tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])  # (4, 2)
    local = unit[None] * boxes[:, None, 3:5]  # (M, 4, 2)
    cos, sin = torch.cos(boxes[:, 6])[:, None], torch.sin(boxes[:, 6])[:, None]
    x = cos * local[..., 0] - sin * local[..., 1] + boxes[:, None, 0]
    y = sin * local[..., 0] + cos * local[..., 1] + boxes[:, None, 1]
    return torch.stack([x, y], dim=-1)


def boxes_to_corners_3d(boxes: Tensor) -> Tensor:
    """3D corners ``(M, 8, 3)``: the four BEV corners at the bottom (0-3), then the same at the top (4-7).

    Raises:
        ValueError: ``boxes`` is not ``(M, 7)``.
    """
    bev = boxes_to_corners_bev(boxes)
    bottom = (boxes[:, 2] - boxes[:, 5] / 2)[:, None, None].expand(-1, 4, 1)
    top = (boxes[:, 2] + boxes[:, 5] / 2)[:, None, None].expand(-1, 4, 1)
    return torch.cat([torch.cat([bev, bottom], -1), torch.cat([bev, top], -1)], dim=1)


def _cross(o: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """z of ``(a - o) x (b - o)``."""
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
        b[..., 0] - o[..., 0]
    )


def _inside(points: Tensor, quads: Tensor) -> Tensor:
    """``points (..., P, 2)`` inside (or on) counter-clockwise ``quads (..., 4, 2)`` -> ``(..., P)``."""
    start = quads[..., None, :, :]  # (..., 1, 4, 2)
    end = torch.roll(quads, -1, dims=-2)[..., None, :, :]
    p = points[..., :, None, :]  # (..., P, 1, 2)
    scale = (end - start).norm(dim=-1).clamp_min(_EPS)
    return (_cross(start, end, p) / scale >= -1e-6).all(dim=-1)


def _intersection_area(a: Tensor, b: Tensor) -> Tensor:
    """Areas ``(...)`` of the intersections of convex counter-clockwise quadrilaterals ``a, b (..., 4, 2)``."""
    # 1. corners of each quadrilateral inside the other
    a_in_b = _inside(a, b)
    b_in_a = _inside(b, a)
    # 2. crossings of every edge of a with every edge of b (segment-segment intersection)
    p, r = a[..., :, None, :], (torch.roll(a, -1, dims=-2) - a)[..., :, None, :]  # (..., 4, 1, 2)
    q, s = b[..., None, :, :], (torch.roll(b, -1, dims=-2) - b)[..., None, :, :]  # (..., 1, 4, 2)
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]  # (..., 4, 4)
    qp = q - p
    safe = torch.where(denom.abs() > _EPS, denom, torch.ones_like(denom))
    t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / safe
    u = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    tol = 1e-9
    crosses = (denom.abs() > _EPS) & (t >= -tol) & (t <= 1 + tol) & (u >= -tol) & (u <= 1 + tol)
    crossing = (p + t[..., None] * r).flatten(-3, -2)  # (..., 16, 2)
    # 3. the candidate vertices, ordered by angle about their mean, and the shoelace area
    points = torch.cat([a, b, crossing], dim=-2)  # (..., 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crosses.flatten(-2)], dim=-1)  # (..., 24)
    count = valid.sum(-1, keepdim=True)
    centre = (points * valid[..., None]).sum(-2) / count.clamp_min(1)
    rel = points - centre[..., None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid points sort last
    order = angle.argsort(dim=-1)
    rel = rel.gather(-2, order[..., None].expand(*order.shape, 2))
    valid = valid.gather(-1, order)
    # invalid slots repeat the first vertex, adding zero-area triangles
    rel = torch.where(valid[..., None], rel, rel[..., :1, :])
    nxt = torch.roll(rel, -1, dims=-2)
    area = 0.5 * (rel[..., 0] * nxt[..., 1] - rel[..., 1] * nxt[..., 0]).sum(-1)
    return torch.where(count.squeeze(-1) >= 3, area.abs(), torch.zeros_like(area))


def bev_overlap(a: Tensor, b: Tensor, *, chunk: int = 65_536) -> Tensor:
    """Area ``(M, K)`` of the BEV intersection of every box of ``a (M, 7)`` with every box of ``b (K, 7)``.

    Only pairs whose circumscribed circles meet are clipped (``chunk`` pairs at a time); computed in
    float64, returned in ``a``'s dtype.

    Raises:
        ValueError: ``a`` or ``b`` is not ``(M, 7)``.
    """
    check_boxes("a", a)
    check_boxes("b", b)
    out = torch.zeros(len(a), len(b), dtype=torch.float64, device=a.device)
    if len(a) == 0 or len(b) == 0:
        return out.to(a.dtype)
    a64, b64 = a.double(), b.double()
    radius_a, radius_b = a64[:, 3:5].norm(dim=1) / 2, b64[:, 3:5].norm(dim=1) / 2
    near = torch.cdist(a64[:, :2], b64[:, :2]) <= radius_a[:, None] + radius_b[None, :] + 1e-9
    rows, cols = near.nonzero(as_tuple=True)
    ca, cb = boxes_to_corners_bev(a64), boxes_to_corners_bev(b64)
    for start in range(0, len(rows), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[r, c] = _intersection_area(ca[r], cb[c])
    return out.to(a.dtype)


def bev_iou(a: Tensor, b: Tensor) -> Tensor:
    """Rotated bird's-eye-view IoU ``(M, K)`` between boxes ``a (M, 7)`` and ``b (K, 7)``.

    Raises:
        ValueError: ``a`` or ``b`` is not ``(M, 7)``.
    """
    inter = bev_overlap(a, b).double()
    area_a = (a[:, 3] * a[:, 4]).double()[:, None]
    area_b = (b[:, 3] * b[:, 4]).double()[None, :]
    return (inter / (area_a + area_b - inter).clamp_min(_EPS)).to(a.dtype)


def iou_3d(a: Tensor, b: Tensor) -> Tensor:
    """3D IoU ``(M, K)``: BEV overlap times height overlap, over the union of the volumes.

    Raises:
        ValueError: ``a`` or ``b`` is not ``(M, 7)``.
    """
    inter_bev = bev_overlap(a, b).double()
    a64, b64 = a.double(), b.double()
    top = torch.minimum((a64[:, 2] + a64[:, 5] / 2)[:, None], (b64[:, 2] + b64[:, 5] / 2)[None, :])
    bottom = torch.maximum((a64[:, 2] - a64[:, 5] / 2)[:, None], (b64[:, 2] - b64[:, 5] / 2)[None, :])
    inter = inter_bev * (top - bottom).clamp_min(0.0)
    vol_a = a64[:, 3:6].prod(-1)[:, None]
    vol_b = b64[:, 3:6].prod(-1)[None, :]
    return (inter / (vol_a + vol_b - inter).clamp_min(_EPS)).to(a.dtype)


def nms_bev(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    *,
    labels: Tensor | None = None,
    max_boxes: int | None = None,
) -> Tensor:
    """Greedy rotated non-maximum suppression in bird's-eye view.

    Boxes are visited by decreasing score; a box is kept unless a kept box overlaps it with BEV IoU
    above ``iou_threshold`` (with ``labels``, only a kept box of the same label suppresses it).

    Args:
        boxes: ``(M, 7)``.
        scores: ``(M,)``.
        iou_threshold: suppression threshold in [0, 1].
        labels: optional ``(M,)`` int classes, for per-class suppression.
        max_boxes: keep at most this many.

    Returns:
        ``(M',)`` int64 indices into ``boxes``, by decreasing score.

    Raises:
        ValueError: mismatched shapes or a threshold outside [0, 1].
    """
    check_boxes("boxes", boxes)
    if scores.shape != (len(boxes),):
        raise ValueError(f"`scores` must be ({len(boxes)},) to match `boxes`, got {tuple(scores.shape)}.")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"`iou_threshold` must be in [0, 1], got {iou_threshold}.")
    if labels is not None and labels.shape != (len(boxes),):
        raise ValueError(f"`labels` must be ({len(boxes)},) to match `boxes`, got {tuple(labels.shape)}.")
    order = scores.argsort(descending=True, stable=True)
    if len(order) == 0:
        return order
    iou = bev_iou(boxes[order], boxes[order])
    suppress = iou > iou_threshold
    if labels is not None:
        sorted_labels = labels[order]
        suppress &= sorted_labels[:, None] == sorted_labels[None, :]
    removed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        if max_boxes is not None and len(keep) >= max_boxes:
            break
        removed |= suppress[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def points_in_boxes(points_xyz: Tensor, boxes: Tensor, *, chunk: int = 65_536) -> Tensor:
    """Index ``(N,)`` int64 of the box each point lies in (faces included), ``-1`` for none.

    A point inside several boxes gets the lowest index.

    >>> points_in_boxes(torch.tensor([[0.5, 0.0, 0.0], [3.0, 0.0, 0.0]]),
    ...                 torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.3]])).tolist()
    [0, -1]

    Raises:
        ValueError: ``points_xyz`` not ``(N, >=3)`` or ``boxes`` not ``(M, 7)``.
    """
    if points_xyz.ndim != 2 or points_xyz.shape[1] < 3:
        raise ValueError(f"`points_xyz` must be (N, >=3) with x, y, z first, got {tuple(points_xyz.shape)}.")
    check_boxes("boxes", boxes)
    out = torch.full((len(points_xyz),), -1, dtype=torch.long, device=points_xyz.device)
    if len(boxes) == 0 or len(points_xyz) == 0:
        return out
    b = boxes.to(points_xyz.dtype)
    cos, sin = torch.cos(b[:, 6]), torch.sin(b[:, 6])
    half = b[:, 3:6] / 2 + 1e-5
    index = torch.arange(len(boxes), device=points_xyz.device)
    for start in range(0, len(points_xyz), chunk):
        d = points_xyz[start : start + chunk, None, :3] - b[None, :, :3]  # (n, M, 3)
        local_x = cos * d[..., 0] + sin * d[..., 1]
        local_y = -sin * d[..., 0] + cos * d[..., 1]
        inside = (
            (local_x.abs() <= half[:, 0]) & (local_y.abs() <= half[:, 1]) & (d[..., 2].abs() <= half[:, 2])
        )
        first = torch.where(inside, index, len(boxes)).min(dim=1).values
        out[start : start + chunk] = torch.where(first < len(boxes), first, -1)
    return out


_EDGES = torch.tensor(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def project_boxes(
    boxes: Tensor, K: Tensor, T_cam_from_lidar: Tensor, image_size: tuple[int, int], *, near: float = 0.1
) -> tuple[Tensor, Tensor]:
    """2D boxes of 3D boxes in each camera: the extent of the projected corners, clipped to the image.

    Box edges that cross the plane ``z_cam = near`` are cut there first, so a box partly behind
    the camera still gets the right extent.

    Args:
        boxes: ``(M, 7)`` in the LiDAR frame.
        K: ``(C, 3, 3)`` intrinsics.
        T_cam_from_lidar: ``(C, 4, 4)`` extrinsics.
        image_size: ``(H, W)``.
        near: depth of the cutting plane, metres.

    Returns:
        ``boxes_2d (M, C, 4)`` float32 ``[u0, v0, u1, v1]`` within ``[0, W - 1] x [0, H - 1]`` (zeros when
        not visible) and ``visible (M, C)`` bool.
    """
    height, width = image_size
    M, C = len(boxes), len(K)
    if M == 0:
        return torch.zeros(0, C, 4), torch.zeros(0, C, dtype=torch.bool)
    corners = boxes_to_corners_3d(boxes.double())  # (M, 8, 3)
    homo = torch.cat([corners, torch.ones(M, 8, 1, dtype=torch.float64)], -1)
    cam = torch.einsum("cij,mkj->mcki", T_cam_from_lidar.double(), homo)[..., :3]  # (M, C, 8, 3)
    a, b = cam[:, :, _EDGES[:, 0]], cam[:, :, _EDGES[:, 1]]  # (M, C, 12, 3)
    crosses = (a[..., 2] - near) * (b[..., 2] - near) < 0
    t = (near - a[..., 2]) / torch.where(crosses, b[..., 2] - a[..., 2], torch.ones_like(a[..., 2]))
    cut = a + t[..., None] * (b - a)
    points = torch.cat([cam, cut], dim=2)  # (M, C, 20, 3)
    valid = torch.cat([cam[..., 2] >= near, crosses], dim=2)
    z = points[..., 2].clamp_min(near)
    Kd = K.double()[None, :, None]  # (1, C, 1, 3, 3)
    u = Kd[..., 0, 0] * points[..., 0] / z + Kd[..., 0, 2]
    v = Kd[..., 1, 1] * points[..., 1] / z + Kd[..., 1, 2]
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    u0 = torch.where(valid, u, inf).amin(-1)
    v0 = torch.where(valid, v, inf).amin(-1)
    u1 = torch.where(valid, u, -inf).amax(-1)
    v1 = torch.where(valid, v, -inf).amax(-1)
    visible = valid.any(-1) & (u0 < width - 1) & (u1 > 0) & (v0 < height - 1) & (v1 > 0)
    out = torch.stack(
        [u0.clamp(0, width - 1), v0.clamp(0, height - 1), u1.clamp(0, width - 1), v1.clamp(0, height - 1)], -1
    )
    out = torch.where(visible[..., None], out, torch.zeros_like(out))
    return out.float(), visible
