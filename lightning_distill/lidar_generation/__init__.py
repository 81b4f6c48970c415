"""LiDAR generation toolkit: scene completion (LiDiff-style point diffusion, Distillation-DPO) and
4D occupancy generation (DynamicCity). See README.md in this folder for the table of parts.

Names are imported on first use (spconv, diffusers and open3d are needed only by the parts that use
them). Each helper adds its names to ``_LAZY`` below, one line per name.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    # completion (Distillation-DPO)
    "CompletionSample": "lightning_distill.lidar_generation.completion",
    "completion_sample": "lightning_distill.lidar_generation.completion",
    "voxel_downsample": "lightning_distill.lidar_generation.completion",
    "PointDenoiser": "lightning_distill.lidar_generation.point_diffusion",
    "PointDiffusion": "lightning_distill.lidar_generation.point_diffusion",
    "trained_point_diffusion": "lightning_distill.lidar_generation.point_diffusion",
    "CompletionMetrics": "lightning_distill.lidar_generation.metrics",
    "bev_jsd": "lightning_distill.lidar_generation.metrics",
    "voxel_scores": "lightning_distill.lidar_generation.metrics",
    "crop_points": "lightning_distill.lidar_generation.completion",
    "draw_target_points": "lightning_distill.lidar_generation.point_diffusion",
    "duplicate_scan": "lightning_distill.lidar_generation.point_diffusion",
    "completion_metrics": "lightning_distill.lidar_generation.metrics",
    # 4D occupancy (DynamicCity)
    "OCCUPANCY_CLASSES": "lightning_distill.lidar_generation.occupancy",
    "OccupancyGrid": "lightning_distill.lidar_generation.occupancy",
    "OccupancyIoU": "lightning_distill.lidar_generation.occupancy",
    "class_frequency_distance": "lightning_distill.lidar_generation.occupancy",
    "occupancy_sequence": "lightning_distill.lidar_generation.occupancy",
    "voxelise": "lightning_distill.lidar_generation.occupancy",
    "PLANES": "lightning_distill.lidar_generation.hexplane",
    "HexPlaneVAE": "lightning_distill.lidar_generation.hexplane",
    "VolumeVAE": "lightning_distill.lidar_generation.hexplane",
    "expand_planes": "lightning_distill.lidar_generation.hexplane",
    "project_to_planes": "lightning_distill.lidar_generation.hexplane",
    "rollout_mask": "lightning_distill.lidar_generation.hexplane",
    "rollout_planes": "lightning_distill.lidar_generation.hexplane",
    "rollout_shape": "lightning_distill.lidar_generation.hexplane",
    "unroll_planes": "lightning_distill.lidar_generation.hexplane",
    "PlaneDiT": "lightning_distill.lidar_generation.dit",
    "tiny_plane_dit": "lightning_distill.lidar_generation.dit",
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
