"""LiDAR toolkit: synthetic street scenes, voxels and projection, sparse 3D networks, evaluation,
and the parts the LiDAR recipes compose (see README.md in this folder). Its LightningDataModules
live in :mod:`lightning_distill.data.lidar` (and ``data.semantic_kitti`` / ``data.nuscenes``), its
losses in :mod:`lightning_distill.losses.contrastive` and :mod:`lightning_distill.losses.segmentation`.

open3d (scene generation, ``.pcd``/``.ply`` reading), spconv (sparse networks) and scikit-image
(superpixels) are imported only by the functions that need them, so importing this package needs
none of them.
"""

from lightning_distill.lidar.augment import (
    MixedScans,
    ScanAugmentation,
    inclination,
    laser_bands,
    laser_mix,
    laser_mix_indices,
    mix_pairs,
)
from lightning_distill.lidar.batches import batch_points, collate, read_scan
from lightning_distill.lidar.bev import (
    BEVBackbone,
    BEVGrid,
    PillarEncoder,
    bev_cell_labels,
    bev_cells,
    bev_linear_probe,
    gather_from_bev,
    scatter_to_bev,
)
from lightning_distill.lidar.cylindrical import (
    CylindricalGrid,
    cylindrical_coordinates,
    cylindrical_point_features,
)
from lightning_distill.lidar.datasets import (
    NUSCENES_CAMERAS,
    NUSCENES_LIDARSEG_CLASSES,
    NUSCENES_LIDARSEG_MAP,
    SEMANTIC_KITTI_CLASSES,
    SEMANTIC_KITTI_LEARNING_MAP,
    collate_frames,
)
from lightning_distill.lidar.evaluate import (
    SegmentationResult,
    extract_point_features,
    finetune,
    linear_probe,
    segmentation_metrics,
)
from lightning_distill.lidar.formats import from_openpcdet, from_pointcept, to_openpcdet, to_pointcept
from lightning_distill.lidar.geometry import (
    Pairs,
    Voxels,
    pair_points_with_pixels,
    project_points,
    region_pool,
    scaled_segment_count,
    slic_superpixels,
    to_sparse_tensor,
    voxelize,
)
from lightning_distill.lidar.image_to_lidar import slidr_sgd, superpixel_pool, superpixel_regions
from lightning_distill.lidar.networks import (
    ImageHead,
    PointHead,
    SmallImageBackbone,
    SparseUNet,
    point_inputs,
    sparse_point_features,
)
from lightning_distill.lidar.region_contrast import sample_region_points
from lightning_distill.lidar.regions import (
    RegionPartition,
    cluster_is_object,
    dbscan_clusters,
    ground_mask,
    point_regions,
)
from lightning_distill.lidar.scene import (
    CLASS_COLORS,
    CLASS_NAMES,
    IGNORE_INDEX,
    Frame,
    StreetSceneGenerator,
    camera_rig,
)
from lightning_distill.lidar.semi import (
    PointSegmenter,
    confident_pseudo_labels,
    labelled_split,
    lasermix_sgd,
    mask_labels,
)
from lightning_distill.lidar.sequence import (
    collate_sequence,
    cross_view_mean,
    gather_pixel_features,
    pair_points_with_past_pixels,
    relative_pose,
    transform_points,
)
from lightning_distill.lidar.spconv_cpu import apply_cpu_backward_fix, import_spconv
from lightning_distill.lidar.visualize import (
    PointCloudLogger,
    label_colors,
    pca_colors,
    render_points,
    save_point_cloud,
    wandb_point_cloud,
)

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "NUSCENES_CAMERAS",
    "NUSCENES_LIDARSEG_CLASSES",
    "NUSCENES_LIDARSEG_MAP",
    "SEMANTIC_KITTI_CLASSES",
    "SEMANTIC_KITTI_LEARNING_MAP",
    "BEVBackbone",
    "BEVGrid",
    "CylindricalGrid",
    "Frame",
    "ImageHead",
    "MixedScans",
    "Pairs",
    "PillarEncoder",
    "PointCloudLogger",
    "PointHead",
    "PointSegmenter",
    "RegionPartition",
    "ScanAugmentation",
    "SegmentationResult",
    "SmallImageBackbone",
    "SparseUNet",
    "StreetSceneGenerator",
    "Voxels",
    "apply_cpu_backward_fix",
    "batch_points",
    "bev_cell_labels",
    "bev_cells",
    "bev_linear_probe",
    "camera_rig",
    "cluster_is_object",
    "collate",
    "collate_frames",
    "collate_sequence",
    "confident_pseudo_labels",
    "cross_view_mean",
    "cylindrical_coordinates",
    "cylindrical_point_features",
    "dbscan_clusters",
    "extract_point_features",
    "finetune",
    "from_openpcdet",
    "from_pointcept",
    "gather_from_bev",
    "gather_pixel_features",
    "ground_mask",
    "import_spconv",
    "inclination",
    "label_colors",
    "labelled_split",
    "lasermix_sgd",
    "laser_bands",
    "laser_mix",
    "laser_mix_indices",
    "linear_probe",
    "mask_labels",
    "mix_pairs",
    "pair_points_with_past_pixels",
    "pair_points_with_pixels",
    "pca_colors",
    "point_inputs",
    "point_regions",
    "project_points",
    "read_scan",
    "region_pool",
    "relative_pose",
    "render_points",
    "sample_region_points",
    "save_point_cloud",
    "scaled_segment_count",
    "scatter_to_bev",
    "segmentation_metrics",
    "slic_superpixels",
    "slidr_sgd",
    "sparse_point_features",
    "superpixel_pool",
    "superpixel_regions",
    "to_openpcdet",
    "to_pointcept",
    "to_sparse_tensor",
    "transform_points",
    "voxelize",
    "wandb_point_cloud",
]
