"""LiSe's pseudo-boxes without 3D labels: LiDAR clusters, image boxes lifted with LiDAR points, their merge.

LiSe (Zhang et al., ECCV 2024; official code Ruiyang-061X/LiSe) starts self-training from two sets of
pseudo-boxes, which :class:`PseudoLabeler` builds per frame:

1. **LiDAR boxes** (MODEST's seed labels, scaled down): remove the ground (a RANSAC plane, scikit-learn's
   ``RANSACRegressor``), cluster what stands on it (scikit-learn's ``DBSCAN``), fit a box to each
   cluster (the smallest-area BEV rectangle over a yaw search) and drop clusters no object can be
   (too long, too high: walls, poles, trees). The official MODEST filters clusters by a multi-traversal
   persistence score that a single synthetic drive cannot give; we filter by size only.
2. **Image boxes** (GroundingDINO + FGR in the official code): every 2D detection is lifted with the
   LiDAR points in its frustum: the nearest DBSCAN cluster of non-ground points whose projection falls
   in the 2D box is the object's visible surface; the box takes the class's typical size and is pushed
   back along the viewing ray so that the surface is its near side.
3. **Merge** (``integration_with_2D_scenes.py``): all LiDAR boxes plus the image boxes at least
   ``min_image_distance`` (10 m) from the sensor. The official script concatenates both files and
   leaves duplicates to the NMS of the next label combination; we run that NMS here (a LiDAR box wins
   over an image box it overlaps).

Classes: a LiDAR box takes the class of the 2D detection its projection overlaps best (2D IoU >=
``class_iou``), else the class whose typical size is nearest. The typical sizes (:data:`SIZE_PRIORS`)
are KITTI's mean object sizes: a prior about the world, not about this data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_distill.detection.boxes import bev_iou, nms_bev, project_boxes
from lightning_distill.utils.checks import check_option

__all__ = [
    "SIZE_PRIORS",
    "PseudoLabeler",
    "box_iou_2d",
    "cluster_points",
    "estimate_ground",
    "fit_box",
    "merge_pseudo_boxes",
]

#: ``(3, 3)`` typical ``[dx, dy, dz]`` of car, pedestrian, cyclist (KITTI's mean sizes), metres.
SIZE_PRIORS = torch.tensor([[3.9, 1.6, 1.56], [0.8, 0.6, 1.73], [1.76, 0.6, 1.73]])


def estimate_ground(xyz: Tensor, *, max_points: int = 4000, threshold: float = 0.1, seed: int = 0) -> Tensor:
    """The ground plane ``z = a x + b y + c`` of a cloud, fitted by RANSAC; returns ``(a, b, c)`` float32.

    Raises:
        ValueError: fewer than 3 points.
    """
    from sklearn.linear_model import LinearRegression, RANSACRegressor

    if xyz.ndim != 2 or xyz.shape[1] < 3 or len(xyz) < 3:
        raise ValueError(f"`xyz` must be (N >= 3, 3) points, got {tuple(xyz.shape)}.")
    pts = xyz[:, :3].double().numpy()
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    ransac = RANSACRegressor(LinearRegression(), residual_threshold=threshold, random_state=seed).fit(
        pts[:, :2], pts[:, 2]
    )
    a, b = ransac.estimator_.coef_
    return torch.tensor([a, b, ransac.estimator_.intercept_], dtype=torch.float32)


def height_above(xyz: Tensor, plane: Tensor) -> Tensor:
    """Height of each point ``(N,)`` above the plane ``(a, b, c)``."""
    return xyz[:, 2] - (plane[0] * xyz[:, 0] + plane[1] * xyz[:, 1] + plane[2])


def cluster_points(xyz: Tensor, *, eps: float = 0.8, min_points: int = 3) -> Tensor:
    """DBSCAN cluster id per point ``(N,)`` int64 (``-1``: noise), on ``x, y, z`` with radius ``eps``."""
    from sklearn.cluster import DBSCAN

    if len(xyz) == 0:
        return torch.zeros(0, dtype=torch.long)
    ids = DBSCAN(eps=eps, min_samples=min_points).fit_predict(xyz[:, :3].double().numpy())
    return torch.as_tensor(ids, dtype=torch.long)


def fit_box(xyz: Tensor, *, yaw_steps: int = 30) -> Tensor:
    """Smallest-area BEV rectangle of ``(N, 3)`` points over ``yaw_steps`` yaws in ``[0, π/2)``; z spans the points.

    Returns ``[x, y, z, dx, dy, dz, yaw]`` with ``dx >= dy`` (the longer side is the heading).
    """
    yaws = torch.arange(yaw_steps, dtype=torch.float64) * (math.pi / 2 / yaw_steps)
    c, s = torch.cos(yaws), torch.sin(yaws)
    x, y = xyz[:, 0].double(), xyz[:, 1].double()
    u = c[:, None] * x + s[:, None] * y  # (Y, N): coordinates along the candidate heading
    v = -s[:, None] * x + c[:, None] * y
    lu, lv = u.amax(1) - u.amin(1), v.amax(1) - v.amin(1)
    best = int((lu * lv + 1e-6 * (lu + lv)).argmin())
    cu, cv = (u[best].amax() + u[best].amin()) / 2, (v[best].amax() + v[best].amin()) / 2
    yaw = float(yaws[best])
    cx, cy = float(c[best] * cu - s[best] * cv), float(s[best] * cu + c[best] * cv)
    dx, dy = float(lu[best]), float(lv[best])
    if dy > dx:
        dx, dy, yaw = dy, dx, yaw + math.pi / 2
    z0, z1 = float(xyz[:, 2].min()), float(xyz[:, 2].max())
    return torch.tensor([cx, cy, (z0 + z1) / 2, dx, dy, z1 - z0, yaw], dtype=torch.float32)


def box_iou_2d(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``(M, N)`` of pixel boxes ``[u0, v0, u1, v1]`` (inclusive extents)."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo + 1).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2] + 1).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def _grow_to_prior(box: Tensor, prior: Tensor, ground: float) -> Tensor:
    """A fitted box grown to at least the class's size, away from the sensor (the hidden side), standing on the ground."""
    box = box.clone()
    yaw = float(box[6])
    axes = torch.tensor([[math.cos(yaw), math.sin(yaw)], [-math.sin(yaw), math.cos(yaw)]])
    for i in range(2):
        grow = float(prior[i] - box[3 + i])
        if grow > 0:
            away = 1.0 if float(axes[i] @ box[:2]) >= 0 else -1.0
            box[:2] += axes[i] * away * grow / 2
            box[3 + i] = prior[i]
    top = float(box[2] + box[5] / 2)
    box[5] = max(top - ground, float(prior[2]))
    box[2] = ground + box[5] / 2
    return box


def merge_pseudo_boxes(
    lidar: dict[str, Tensor], image: dict[str, Tensor], *, min_image_distance: float = 10.0, iou_threshold: float = 0.1
) -> dict[str, Tensor]:  # fmt: skip
    """LiSe's distance-aware fusion: every LiDAR box, plus the image boxes ``>= min_image_distance`` m away.

    Image boxes that overlap a LiDAR box (BEV IoU > ``iou_threshold``) or a higher-scoring image box are
    dropped. Inputs and output: ``{"boxes" (M, 7), "labels" (M,), "scores" (M,), "source" (M,)}`` with
    ``source`` 0 for LiDAR, 1 for image boxes.
    """
    check_option(min_image_distance >= 0, "min_image_distance", min_image_distance, ">= 0")
    far = image["boxes"][:, :2].norm(dim=1) >= min_image_distance
    img = {k: v[far] for k, v in image.items()}
    if len(img["boxes"]) and len(lidar["boxes"]):
        img = {k: v[bev_iou(img["boxes"], lidar["boxes"]).amax(1) <= iou_threshold] for k, v in img.items()}
    if len(img["boxes"]) > 1:
        keep = nms_bev(img["boxes"], img["scores"], iou_threshold)
        img = {k: v[keep] for k, v in img.items()}
    return {k: torch.cat([lidar[k], img[k]]) for k in ("boxes", "labels", "scores", "source")}


def _empty() -> dict[str, Tensor]:
    return {"boxes": torch.zeros(0, 7), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0),
            "source": torch.zeros(0, dtype=torch.long)}  # fmt: skip


class PseudoLabeler:
    """LiSe's initial pseudo-boxes of one frame (see the module docstring).

    Args:
        ground_margin: points less than this above the ground plane are ground (m).
        max_point_height: points higher than this above the ground are ignored (canopies, roofs).
        eps: DBSCAN radius (m).
        min_points: DBSCAN core size; also the fewest frustum points that lift an image box.
        max_length: clusters with a longer BEV side are not objects (walls).
        max_height: clusters whose top is higher above the ground are not objects (poles, trees).
        class_iou: 2D IoU with a 2D detection that gives a LiDAR box that detection's class.
        min_image_distance: image boxes nearer than this are dropped at the merge (LiSe: 10 m).
        iou_threshold: BEV IoU above which an image box duplicates another box.
        point_confidence: ``n`` of the score ``n_points / (n_points + point_confidence)`` of a LiDAR box.

    Raises:
        ValueError: a non-positive ``eps`` or ``min_points`` < 1.
    """

    def __init__(
        self,
        ground_margin: float = 0.25,
        max_point_height: float = 4.0,
        eps: float = 0.8,
        min_points: int = 3,
        max_length: float = 6.5,
        max_height: float = 2.3,
        class_iou: float = 0.3,
        min_image_distance: float = 10.0,
        iou_threshold: float = 0.1,
        point_confidence: float = 10.0,
    ) -> None:
        check_option(eps > 0, "eps", eps, "> 0")
        check_option(isinstance(min_points, int) and min_points >= 1, "min_points", min_points, "an int >= 1")
        self.ground_margin, self.max_point_height = ground_margin, max_point_height
        self.eps, self.min_points = eps, min_points
        self.max_length, self.max_height, self.class_iou = max_length, max_height, class_iou
        self.min_image_distance, self.iou_threshold = min_image_distance, iou_threshold
        self.point_confidence = point_confidence

    def objects(self, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Non-ground points ``(P, 3)``, their heights ``(P,)`` and the ground plane of a ``(N, >=3)`` cloud."""
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"`points` must be (N, >= 3), got {tuple(points.shape)}.")
        xyz = points[:, :3].float()
        plane = estimate_ground(xyz)
        h = height_above(xyz, plane)
        keep = (h > self.ground_margin) & (h < self.max_point_height)
        return xyz[keep], h[keep], plane

    def lidar_boxes(self, xyz: Tensor, height: Tensor, plane: Tensor) -> dict[str, Tensor]:
        """Step 1: a box per DBSCAN cluster that could be an object, grown to its class's typical size."""
        ids = cluster_points(xyz, eps=self.eps, min_points=self.min_points)
        out = _empty()
        boxes, labels, scores = [], [], []
        for cid in ids.unique():
            if cid < 0:
                continue
            member = ids == cid
            box = fit_box(xyz[member])
            if box[3] > self.max_length or float(height[member].max()) > self.max_height:
                continue
            ground = float(plane[0] * box[0] + plane[1] * box[1] + plane[2])
            top = float(height[member].max())
            label = self.size_class(torch.tensor([float(box[3]), float(box[4]), top]))
            box = _grow_to_prior(box, SIZE_PRIORS[label], ground)
            n = int(member.sum())
            boxes.append(box), labels.append(label), scores.append(n / (n + self.point_confidence))
        if boxes:
            out = {"boxes": torch.stack(boxes), "labels": torch.tensor(labels), "scores": torch.tensor(scores),
                   "source": torch.zeros(len(boxes), dtype=torch.long)}  # fmt: skip
        return out

    @staticmethod
    def size_class(size: Tensor) -> int:
        """The class whose typical ``[dx, dy, dz]`` is nearest (log ratios; a partial view is never larger)."""
        ratio = torch.log(size.clamp(min=0.1) / SIZE_PRIORS)
        # a cluster smaller than the object is expected (one side seen); a larger one is not
        cost = torch.where(ratio > 0, 2 * ratio, -0.5 * ratio).abs().sum(1)
        return int(cost.argmin())

    def classify_by_image(self, lidar: dict[str, Tensor], detections: Sequence[dict[str, Tensor]], K: Tensor,
                          T_cam_from_lidar: Tensor, image_size: tuple[int, int]) -> None:  # fmt: skip
        """LiDAR boxes take the class of the 2D detection their projection overlaps best (in place)."""
        if not len(lidar["boxes"]):
            return
        projected, visible = project_boxes(lidar["boxes"], K, T_cam_from_lidar, image_size)
        best = torch.zeros(len(lidar["boxes"]))
        for cam, det in enumerate(detections):
            if not len(det["boxes_2d"]):
                continue
            iou = box_iou_2d(projected[:, cam], det["boxes_2d"]) * visible[:, cam, None]
            value, index = iou.max(1)
            better = (value >= self.class_iou) & (value > best)
            lidar["labels"][better] = det["labels"][index[better]]
            best = torch.where(better, value, best)

    def lift(self, xyz: Tensor, plane: Tensor, detections: Sequence[dict[str, Tensor]], K: Tensor,
             T_cam_from_lidar: Tensor, yaw: float = 0.0) -> dict[str, Tensor]:  # fmt: skip
        """Step 2: a 3D box per 2D detection, from the nearest cluster of points in its frustum.

        ``detections[c]`` holds camera ``c``'s ``{"boxes_2d", "labels", "scores"}``; ``yaw`` is used when
        the cluster has too few points for a fit (the frame's dominant LiDAR-box heading).
        """
        boxes, labels, scores = [], [], []
        homo = torch.cat([xyz, torch.ones(len(xyz), 1)], 1)
        for cam, det in enumerate(detections):
            pc = homo @ T_cam_from_lidar[cam].float().T
            depth = pc[:, 2]
            front = depth > 0.5
            u = K[cam, 0, 0] * pc[:, 0] / depth.clamp(min=1e-3) + K[cam, 0, 2]
            v = K[cam, 1, 1] * pc[:, 1] / depth.clamp(min=1e-3) + K[cam, 1, 2]
            for box2d, label, score in zip(det["boxes_2d"], det["labels"], det["scores"]):
                inside = (
                    front
                    & (u >= box2d[0] - 0.5)
                    & (u <= box2d[2] + 0.5)
                    & (v >= box2d[1] - 0.5)
                    & (v <= box2d[3] + 0.5)
                )
                if int(inside.sum()) < 1:
                    continue
                pts = xyz[inside]
                ids = cluster_points(pts, eps=self.eps, min_points=1)
                near = ids[depth[inside].argmin()]
                surface = pts[ids == near]
                prior = SIZE_PRIORS[int(label)]
                fitted = fit_box(surface)
                # a fit shows the heading only when the long side is seen; else the frame's dominant heading
                long_side = len(surface) >= 5 and float(fitted[3]) >= 0.8 * float(prior[0])
                heading = float(fitted[6]) if long_side else yaw
                centre = (surface[:, :2].amin(0) + surface[:, :2].amax(0)) / 2  # middle of the seen extent
                ray = centre / centre.norm().clamp(min=1e-6)
                rel = heading - math.atan2(float(ray[1]), float(ray[0]))
                extent = float(prior[0]) * abs(math.cos(rel)) + float(prior[1]) * abs(math.sin(rel))
                seen = float((surface[:, :2] @ ray).max() - (surface[:, :2] @ ray).min())
                centre = centre + ray * max(0.0, extent - seen) / 2
                ground = float(plane[0] * centre[0] + plane[1] * centre[1] + plane[2])
                boxes.append(torch.tensor([float(centre[0]), float(centre[1]), ground + float(prior[2]) / 2,
                                           *prior.tolist(), heading]))  # fmt: skip
                n = len(surface)
                labels.append(int(label)), scores.append(float(score) * n / (n + 3.0))
        if not boxes:
            return _empty()
        return {"boxes": torch.stack(boxes), "labels": torch.tensor(labels), "scores": torch.tensor(scores),
                "source": torch.ones(len(boxes), dtype=torch.long)}  # fmt: skip

    def __call__(self, points: Tensor, detections: Sequence[dict[str, Tensor]], K: Tensor, T_cam_from_lidar: Tensor,
                 image_size: tuple[int, int], *, use_images: bool = True) -> dict[str, Tensor]:  # fmt: skip
        """The merged pseudo-boxes of one frame (``use_images=False``: LiDAR boxes only, the clustering baseline)."""
        xyz, height, plane = self.objects(points)
        lidar = self.lidar_boxes(xyz, height, plane)
        if not use_images:
            return lidar
        self.classify_by_image(lidar, detections, K, T_cam_from_lidar, image_size)
        yaw = _dominant_yaw(lidar["boxes"][lidar["labels"] == 0]) if len(lidar["boxes"]) else 0.0
        image = self.lift(xyz, plane, detections, K, T_cam_from_lidar, yaw)
        return merge_pseudo_boxes(
            lidar, image, min_image_distance=self.min_image_distance, iou_threshold=self.iou_threshold
        )


def _dominant_yaw(boxes: Tensor) -> float:
    """The most common heading (mod π) of boxes, by a histogram of 10° bins; 0 without boxes."""
    if not len(boxes):
        return 0.0
    yaw = torch.remainder(boxes[:, 6], math.pi)
    bins = torch.floor(yaw / (math.pi / 18)).long().clamp(max=17)
    top = int(torch.bincount(bins, minlength=18).argmax())
    return float(yaw[bins == top].median())
