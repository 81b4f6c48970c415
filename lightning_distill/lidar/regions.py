"""Label-free regions of a LiDAR scan: ground removal, DBSCAN clustering and object-like filtering.

CALICO's "semantic pooling" (Sun et al., ICLR 2024, arXiv 2306.00349) splits every scan into
*semantic-rich* points, which belong to an object-like cluster, and *semantic-less* points (ground,
large structures, noise). The official code (jiachens/calico, ``mmdet3d/ops/semantic_pool``)
does it in three steps, which this module follows:

1. :func:`ground_mask`: ground-plane fitting per slab along x (the GPF method of Zermas et al.
   2017: seeds are the lowest points of the slab, a plane is fitted to them by SVD a few times,
   and every point within ``distance`` of the plane is ground).
2. DBSCAN over the non-ground points (``eps = 0.75`` m, ``min_points = 5``; scikit-learn).
3. :func:`cluster_is_object`: drop clusters that are too large or too small in footprint, too thin,
   too low (their top is near the ground) or too high (their top is far above the sensor).

:class:`RegionPartition` (or :func:`point_regions`) runs the three steps on a batch and gives every
point a batch-unique region id, ``-1`` for semantic-less points.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> ground = torch.cat([torch.rand(400, 2, generator=g) * 20 - 10, torch.full((400, 1), -1.8)], dim=1)
    >>> box = torch.rand(60, 3, generator=g) * torch.tensor([1.5, 1.0, 1.2]) + torch.tensor([5.0, 3.0, -1.4])
    >>> points = torch.cat([torch.zeros(460, 1), torch.cat([ground, box])], dim=1)
    >>> regions = point_regions(points, min_area=0.1)
    >>> regions[:400].unique().tolist(), regions[400:].unique().tolist()  # ground vs. the box
    ([-1], [0])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["RegionPartition", "cluster_is_object", "dbscan_clusters", "ground_mask", "point_regions"]


def ground_mask(
    xyz: np.ndarray,
    *,
    sensor_height: float = 1.8,
    slab_width: float = 10.0,
    iterations: int = 5,
    lowest_count: int = 50,
    seed_threshold: float = 0.5,
    distance: float = 0.2,
) -> np.ndarray:
    """Ground points of one scan by plane fitting per slab along x (GPF; CALICO's ``get_ground_plane_grf``).

    The scan is cut into slabs ``slab_width`` wide along x. In each slab with at least
    ``lowest_count`` points, the seeds are the points less than ``seed_threshold`` above the mean
    height of the ``lowest_count`` lowest points (ignoring points more than 0.5 m below the
    expected ground ``-sensor_height``); a plane ``n . p + d = 0`` is fitted to the seeds by SVD,
    the seeds are replaced by the slab's points within ``distance`` of it, ``iterations`` times.
    The last plane's inliers are ground. Slabs with fewer points have no ground.

    Args:
        xyz: ``(N, 3)`` points of one scan in the LiDAR frame (z up).
        sensor_height: height of the sensor above the ground, metres.
        slab_width: width of a slab along x, metres.
        iterations: plane refits per slab.
        lowest_count: points that estimate the lowest height (and the least a slab needs).
        seed_threshold: seeds lie less than this above the lowest height, metres.
        distance: a point within this distance of the plane is ground, metres.

    Returns:
        ``(N,)`` bool, True for ground.

    Raises:
        ValueError: ``xyz`` not ``(N, 3)`` or a non-positive size.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"`xyz` must be (N, 3), got {xyz.shape}.")
    for name, value in (
        ("slab_width", slab_width),
        ("iterations", iterations),
        ("lowest_count", lowest_count),
    ):
        if value <= 0:
            raise ValueError(f"`{name}` must be > 0, got {value}.")
    mask = np.zeros(len(xyz), dtype=bool)
    if len(xyz) == 0:
        return mask
    slab = np.floor(xyz[:, 0] / slab_width).astype(np.int64)
    for s in np.unique(slab):
        rows = np.flatnonzero(slab == s)
        if len(rows) < lowest_count:
            continue
        pts = xyz[rows]
        candidates = pts[pts[:, 2] >= -sensor_height - 0.5]
        if len(candidates) < 3:
            continue
        lowest = np.sort(candidates[:, 2])[:lowest_count].mean()
        seeds = candidates[candidates[:, 2] < lowest + seed_threshold]
        normal, offset = np.array([0.0, 0.0, 1.0]), -lowest
        for _ in range(iterations):
            if len(seeds) < 3:
                break
            centre = seeds.mean(axis=0)
            _, _, vt = np.linalg.svd(seeds - centre, full_matrices=False)
            normal = vt[2] if vt[2, 2] >= 0 else -vt[2]  # smallest direction, pointing up
            offset = -float(normal @ centre)
            seeds = pts[np.abs(pts @ normal + offset) < distance]
        mask[rows[np.abs(pts @ normal + offset) < distance]] = True
    return mask


def dbscan_clusters(xyz: np.ndarray, *, eps: float = 0.75, min_points: int = 5) -> np.ndarray:
    """DBSCAN cluster of every point (scikit-learn), ``-1`` for noise.

    Args:
        xyz: ``(N, D)`` coordinates (CALICO clusters in 3D with open3d, or on ``(x, y)`` with
            scikit-learn; pass the columns you want).
        eps: neighbourhood radius, metres (CALICO: 0.75).
        min_points: neighbours that make a core point (CALICO: 5).

    Returns:
        ``(N,)`` int64 cluster ids ``0..C-1`` or ``-1``.

    Raises:
        ValueError: ``eps`` <= 0 or ``min_points`` < 1.
    """
    if eps <= 0 or min_points < 1:
        raise ValueError(f"`eps` must be > 0 and `min_points` >= 1, got {eps} and {min_points}.")
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_points).fit(np.asarray(xyz)).labels_.astype(np.int64)


def cluster_is_object(
    xyz: np.ndarray,
    *,
    sensor_height: float = 1.8,
    min_top: float = 0.25,
    max_top: float = 3.0,
    min_area: float = 0.25,
    max_area: float = 20.0,
    min_aspect: float = 0.1,
) -> bool:
    """Whether a cluster looks like an object (CALICO's ``filter_segmentation``).

    A cluster is dropped when its highest point is less than ``min_top`` above the ground
    (``z < -sensor_height + min_top``) or higher than ``max_top`` in the sensor frame, when the area
    of its footprint (convex hull of ``(x, y)``) is outside ``[min_area, max_area]`` m², or when the
    footprint's short side over its long side (principal axes) is below ``min_aspect``.

    Args:
        xyz: ``(n, 3)`` points of one cluster.
        sensor_height: height of the sensor above the ground, metres.
        min_top: the top must be at least this far above the ground, metres.
        max_top: the top must be at most this high in the sensor frame, metres.
        min_area: smallest footprint, m².
        max_area: largest footprint, m² (large clusters are walls and terrain, not objects).
        min_aspect: smallest short/long side ratio of the footprint.

    Returns:
        True to keep the cluster.
    """
    top = float(xyz[:, 2].max())
    if top < -sensor_height + min_top or top > max_top:
        return False
    xy = xyz[:, :2] - xyz[:, :2].mean(axis=0)
    if len(xy) < 3:
        return False
    # extents along the principal axes (what the official code's minimum-area rectangle measures)
    _, _, vt = np.linalg.svd(xy, full_matrices=False)
    extent = np.ptp(xy @ vt.T, axis=0)
    if extent.max() <= 0 or extent.min() / extent.max() < min_aspect:
        return False
    from scipy.spatial import ConvexHull, QhullError

    try:
        area = float(ConvexHull(xy).volume)  # in 2D, "volume" is the area
    except QhullError:  # collinear points
        return False
    return min_area <= area <= max_area


class RegionPartition:
    """CALICO's semantic pooling on batched points: a batch-unique region id per point, -1 if semantic-less.

    For every cloud: :func:`ground_mask`, DBSCAN of the non-ground points (:func:`dbscan_clusters`),
    and :func:`cluster_is_object` on each cluster. Kept clusters are numbered cloud after cloud in
    DBSCAN's order, so ids are unique in the batch and reproducible. Defaults are the official
    code's; on sparse toy scans a car shows one or two faces, so its footprint is thin and small:
    set ``min_aspect=0`` and ``min_area=0`` there (``recipes/calico/config.yaml`` does).

    Args:
        eps: DBSCAN radius, metres.
        min_points: DBSCAN core neighbours.
        cluster_dims: 3 to cluster on ``(x, y, z)`` (open3d variant of the official code), 2 on
            ``(x, y)`` (its scikit-learn variant).
        sensor_height: sensor height above the ground, metres.
        ground_distance: plane distance of ground points, metres.
        min_top: see :func:`cluster_is_object`.
        max_top: see :func:`cluster_is_object`.
        min_area: see :func:`cluster_is_object`.
        max_area: see :func:`cluster_is_object`.
        min_aspect: see :func:`cluster_is_object`.

    Raises:
        ValueError: ``cluster_dims`` not 2 or 3, a non-positive ``eps``, ``min_points`` or
            ``sensor_height``, or ``min_area > max_area``.
    """

    def __init__(
        self,
        eps: float = 0.75,
        min_points: int = 5,
        cluster_dims: int = 3,
        sensor_height: float = 1.8,
        ground_distance: float = 0.2,
        min_top: float = 0.25,
        max_top: float = 3.0,
        min_area: float = 0.25,
        max_area: float = 20.0,
        min_aspect: float = 0.1,
    ) -> None:
        if cluster_dims not in (2, 3):
            raise ValueError(f"`cluster_dims` must be 2 or 3, got {cluster_dims}.")
        for name, value in (("eps", eps), ("min_points", min_points), ("sensor_height", sensor_height)):
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0, got {value}.")
        if min_area > max_area:
            raise ValueError(f"`min_area` ({min_area}) must be <= `max_area` ({max_area}).")
        self.eps = float(eps)
        self.min_points = int(min_points)
        self.cluster_dims = int(cluster_dims)
        self.sensor_height = float(sensor_height)
        self.ground_distance = float(ground_distance)
        self.filters = dict(
            sensor_height=self.sensor_height,
            min_top=float(min_top),
            max_top=float(max_top),
            min_area=float(min_area),
            max_area=float(max_area),
            min_aspect=float(min_aspect),
        )

    def __repr__(self) -> str:
        return (
            f"RegionPartition(eps={self.eps}, min_points={self.min_points}, cluster_dims={self.cluster_dims}, "
            f"ground_distance={self.ground_distance}, "
            + ", ".join(f"{k}={v}" for k, v in self.filters.items())
            + ")"
        )

    def __call__(self, points: Tensor) -> Tensor:
        """Region ids ``(N,)`` int64 (``-1``: semantic-less) of batched points ``(N, 4 + F)``.

        Raises:
            ValueError: ``points`` not ``(N, >= 4)``.
        """
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"`points` must be (N, 4 + F) [batch, x, y, z, ...], got {tuple(points.shape)}.")
        batch = points[:, 0].long().cpu().numpy()
        xyz = points[:, 1:4].detach().double().cpu().numpy()
        regions = np.full(len(points), -1, dtype=np.int64)
        next_id = 0
        for b in np.unique(batch):
            rows = np.flatnonzero(batch == b)
            cloud = xyz[rows]
            ground = ground_mask(cloud, sensor_height=self.sensor_height, distance=self.ground_distance)
            above = np.flatnonzero(~ground)
            labels = dbscan_clusters(
                cloud[above, : self.cluster_dims], eps=self.eps, min_points=self.min_points
            )
            for c in range(int(labels.max()) + 1 if len(labels) else 0):
                members = above[labels == c]
                if cluster_is_object(cloud[members], **self.filters):
                    regions[rows[members]] = next_id
                    next_id += 1
        return torch.from_numpy(regions).to(points.device)


def point_regions(points: Tensor, **settings: float) -> Tensor:
    """``RegionPartition(**settings)(points)``: region ids ``(N,)``, -1 for semantic-less points.

    Raises:
        TypeError: an unknown setting.
        ValueError: as :class:`RegionPartition`.
    """
    return RegionPartition(**settings)(points)
