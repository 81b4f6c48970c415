"""3D object detection toolkit: labelled street scenes, box geometry, AP metrics, BEV pictures (see README.md).

* ``scenes.py``: :class:`DetectionSceneGenerator` (cars, pedestrians, cyclists with boxes, tracks,
  difficulty and 2D boxes), :data:`CLASSES`.
* ``boxes.py``: corners, rotated BEV IoU, 3D IoU, rotated NMS, points in boxes, 2D boxes in cameras.
* ``metrics.py``: :class:`DetectionAP` (KITTI BEV/3D AP, nuScenes centre-distance AP, by range).
* ``visualize.py``: :func:`render_bev` (points, ground-truth and predicted boxes, top view).

The LightningDataModule is :class:`lightning_distill.data.detection.DetectionSceneDataModule`.
open3d (scenes) and matplotlib (pictures) are imported only by the functions that need them.
"""

from lightning_distill.detection.boxes import (
    bev_iou,
    bev_overlap,
    boxes_to_corners_3d,
    boxes_to_corners_bev,
    check_boxes,
    iou_3d,
    limit_yaw,
    nms_bev,
    points_in_boxes,
    project_boxes,
)
from lightning_distill.detection.metrics import DetectionAP, average_precision, greedy_match
from lightning_distill.detection.scenes import (
    CLASSES,
    DIFFICULTIES,
    POINT_CLASS_NAMES,
    DetectionFrame,
    DetectionSceneGenerator,
    difficulty_levels,
)

__all__ = [
    "CLASSES",
    "DIFFICULTIES",
    "POINT_CLASS_NAMES",
    "DetectionAP",
    "DetectionFrame",
    "DetectionSceneGenerator",
    "average_precision",
    "bev_iou",
    "bev_overlap",
    "boxes_to_corners_3d",
    "boxes_to_corners_bev",
    "check_boxes",
    "difficulty_levels",
    "greedy_match",
    "iou_3d",
    "limit_yaw",
    "nms_bev",
    "points_in_boxes",
    "project_boxes",
]
