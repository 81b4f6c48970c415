"""Camera 3D detectors in bird's-eye view: lift-splat-shoot with depth bins, on the LiDAR detector's BEV grid.

:class:`LiftSplatDetector` follows Lift-Splat-Shoot (Philion & Fidler, arXiv 2008.05711) with
BEVDepth's depth supervision (Li et al., arXiv 2206.10092):

1. Image backbone: a transformers ``ResNetModel`` (built from a ``ResNetConfig``, so a user's
   ``from_pretrained`` checkpoint loads); the last stage is up-sampled to the stage before and the two
   are concatenated (LSS's ``Up`` block), giving features at stride ``feature_stride``.
2. Lift: a 1x1 convolution predicts per feature pixel ``D`` depth logits and ``C`` context features;
   the frustum feature at depth bin ``k`` is ``softmax(depth)_k · context`` (an outer product).
3. Frustum geometry: the feature pixel's centre ``(u, v)`` at bin-centre depth ``d_k`` is
   ``d_k K⁻¹ [u, v, 1]ᵀ`` in the camera, then ``T_cam_from_lidar⁻¹`` takes it to the LiDAR frame.
4. Splat: frustum points inside the BEV grid (and ``z_range``) are sum-pooled into their BEV cell:
   ``bev_low (B, C, X, Y)``.
5. The BEV neck (a stride-1 and a stride-2 block, brought back and concatenated, as the LiDAR
   detector's) -> ``bev``, then the same :class:`~lightning_distill.detection.heads.CenterHead`, targets,
   loss and decoding as :class:`~lightning_distill.detection.detector.VoxelDetector`.

With ``lidar_depth_input=True`` a projected LiDAR depth map (:func:`project_lidar_depth`, scaled by the
far depth) is a fourth image channel: VCD's multi-modal "expert" with the apprentice's architecture.
A monocular detector is this class fed one (front) camera. :meth:`LiftSplatDetector.matching` builds one
whose BEV maps have exactly a LiDAR detector's ``(X, Y)`` and cell size, so BEV features of the two can be
compared cell by cell (UniDistill, MonoTAKD).

Pixel convention: the scene generator's intrinsics put pixel centres at integer ``(u, v)``
(``c = (W - 1) / 2``); feature pixel ``j`` of a stride ``s = W / w`` map covers image pixels
``[j s, (j + 1) s)``, so its centre is ``u = (j + 0.5) s - 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.detection.heads import (
    BEVGrid,
    CenterHead,
    build_targets,
    decode_detections,
    gather_codes,
)
from lightning_distill.losses.detection import box_regression_l1, depth_bin_loss, heatmap_focal_loss

__all__ = [
    "CameraDetectorOutput",
    "LiftSplatDetector",
    "camera_targets",
    "frustum_points",
    "project_lidar_depth",
    "visible_boxes",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class CameraDetectorOutput(NamedTuple):
    """What :meth:`LiftSplatDetector.forward` returns.

    Attributes:
        heatmap: ``(B, K, X, Y)`` class logits on the BEV grid.
        codes: ``(B, 8, X, Y)`` box codes (as :class:`~lightning_distill.detection.detector.DetectorOutput`).
        bev_low: ``(B, C_low, X, Y)`` the splatted BEV, before the BEV neck (the low-level BEV features).
        bev: ``(B, C, X, Y)`` the neck's output, the head's input (the high-level BEV features).
        depth_logits: ``(B, C_cam, D, h, w)`` depth-bin logits per feature pixel of each camera.
    """

    heatmap: Tensor
    codes: Tensor
    bev_low: Tensor
    bev: Tensor
    depth_logits: Tensor


def _check_cameras(images: Tensor, K: Tensor, T_cam_from_lidar: Tensor) -> None:
    if images.ndim != 5:
        raise ValueError(f"`images` must be (B, C_cam, 3, H, W), got {tuple(images.shape)}.")
    b, c = images.shape[:2]
    if K.shape != (b, c, 3, 3):
        raise ValueError(f"`K` must be (B, C_cam, 3, 3) = ({b}, {c}, 3, 3), got {tuple(K.shape)}.")
    if T_cam_from_lidar.shape != (b, c, 4, 4):
        raise ValueError(
            f"`T_cam_from_lidar` must be (B, C_cam, 4, 4) = ({b}, {c}, 4, 4), got {tuple(T_cam_from_lidar.shape)}."
        )


def _project(
    points: Tensor, batch_index: Tensor, K: Tensor, T_cam_from_lidar: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every point in every camera of its frame: ``(u, v, depth, camera)`` flattened over (point, camera)."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"`points` must be (N, >=3) [x, y, z, ...], got {tuple(points.shape)}.")
    if batch_index.shape != (points.shape[0],):
        raise ValueError(
            f"`batch_index` must be (N,) = ({points.shape[0]},), got {tuple(batch_index.shape)}."
        )
    num_cams = K.shape[1]
    T = T_cam_from_lidar.float()[batch_index.long()]  # (N, C, 4, 4)
    cam = torch.einsum("ncij,nj->nci", T[..., :3, :3], points[:, :3].float()) + T[..., :3, 3]
    depth = cam[..., 2]
    pix = torch.einsum("ncij,ncj->nci", K.float()[batch_index.long()], cam)
    z = depth.clamp_min(1e-6)
    u, v = pix[..., 0] / z, pix[..., 1] / z
    camera = torch.arange(num_cams, device=points.device).expand(len(points), -1)
    return u.flatten(), v.flatten(), depth.flatten(), camera.flatten()


def _min_depth_map(
    points: Tensor,
    batch_index: Tensor,
    K: Tensor,
    T_cam_from_lidar: Tensor,
    image_size: Sequence[int],
    out_size: Sequence[int],
) -> Tensor:
    """Nearest LiDAR depth per cell of an ``out_size`` grid over the image (0 where no point): ``(B, C, h, w)``."""
    b, c = K.shape[:2]
    height, width = int(image_size[0]), int(image_size[1])
    h, w = int(out_size[0]), int(out_size[1])
    u, v, depth, camera = _project(points, batch_index, K, T_cam_from_lidar)
    batch = batch_index.long().repeat_interleave(c)
    # image pixel p (centre at integer p) belongs to cell floor((p + 0.5) * w / W)
    col = torch.floor((u + 0.5) * w / width).long()
    row = torch.floor((v + 0.5) * h / height).long()
    ok = (depth > 0.1) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = ((batch * c + camera) * h + row) * w + col
    out = depth.new_full((b * c * h * w,), float("inf"))
    out = out.scatter_reduce(0, flat[ok], depth[ok], reduce="amin")
    return torch.where(torch.isinf(out), torch.zeros_like(out), out).view(b, c, h, w)


def project_lidar_depth(
    points: Tensor, batch_index: Tensor, K: Tensor, T_cam_from_lidar: Tensor, image_size: Sequence[int]
) -> Tensor:
    """The nearest LiDAR point's depth at each image pixel, 0 where no point projects: ``(B, C_cam, 1, H, W)``.

    Args:
        points: ``(N, >=3)`` LiDAR-frame points.
        batch_index: ``(N,)`` frame of each point.
        K: ``(B, C_cam, 3, 3)`` intrinsics (pixel centres at integer coordinates).
        T_cam_from_lidar: ``(B, C_cam, 4, 4)`` extrinsics (OpenCV camera axes).
        image_size: ``(H, W)``.

    Raises:
        ValueError: malformed shapes.
    """
    if K.ndim != 4 or K.shape[-2:] != (3, 3) or T_cam_from_lidar.shape != (*K.shape[:2], 4, 4):
        raise ValueError(
            f"`K` must be (B, C, 3, 3) and `T_cam_from_lidar` (B, C, 4, 4), got {tuple(K.shape)} and "
            f"{tuple(T_cam_from_lidar.shape)}."
        )
    return _min_depth_map(points, batch_index, K, T_cam_from_lidar, image_size, image_size).unsqueeze(2)


def frustum_points(
    K: Tensor,
    T_cam_from_lidar: Tensor,
    image_size: Sequence[int],
    feature_size: Sequence[int],
    depths: Tensor,
) -> Tensor:
    """LiDAR-frame positions of the frustum points: ``(B, C_cam, D, h, w, 3)``.

    Feature pixel ``(i, j)`` of an ``(h, w)`` map over an ``(H, W)`` image has its centre at image pixel
    ``((j + 0.5) W / w - 0.5, (i + 0.5) H / h - 0.5)``; at depth ``d`` (distance along the optical axis)
    it is ``d K⁻¹ [u, v, 1]ᵀ`` in the camera and ``T_cam_from_lidar⁻¹`` of that in the LiDAR frame.
    """
    height, width = int(image_size[0]), int(image_size[1])
    h, w = int(feature_size[0]), int(feature_size[1])
    dev = K.device
    u = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * (width / w) - 0.5
    v = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * (height / h) - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1)  # (h, w, 3)
    rays = torch.einsum("bcij,hwj->bchwi", torch.linalg.inv(K.float()), pix)  # z = 1
    cam = depths.float().view(1, 1, -1, 1, 1, 1) * rays.unsqueeze(2)  # (B, C, D, h, w, 3)
    lidar_from_cam = torch.linalg.inv(T_cam_from_lidar.float())
    R, t = lidar_from_cam[..., :3, :3], lidar_from_cam[..., :3, 3]
    return torch.einsum("bcij,bcdhwj->bcdhwi", R, cam) + t[:, :, None, None, None, :]


def visible_boxes(batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per frame, the boxes, labels and their indices that at least one camera sees (``batch["visible_2d"]``).

    Raises:
        ValueError: the batch has no ``"visible_2d"``.
    """
    if "visible_2d" not in batch:
        raise ValueError(
            "the batch has no `visible_2d` (per-camera visibility); use DetectionSceneDataModule."
        )
    keep = [vis.any(dim=1).nonzero().flatten() for vis in batch["visible_2d"]]
    boxes = [bx[k] for bx, k in zip(batch["boxes"], keep)]
    labels = [lb[k] for lb, k in zip(batch["labels"], keep)]
    return boxes, labels, keep


def camera_targets(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
    """The metric's targets of a camera detector: per frame ``{"boxes", "labels", "difficulty"}`` where objects
    no camera sees get difficulty -1 (ignored, KITTI's DontCare: neither counted nor a false positive when
    detected), so only objects in a camera's view count."""
    _, _, keep = visible_boxes(batch)
    targets = []
    for i, (bx, lb, k) in enumerate(zip(batch["boxes"], batch["labels"], keep)):
        difficulty = batch["difficulty"][i].clone() if "difficulty" in batch else torch.full_like(lb, 2)
        seen = torch.zeros(len(lb), dtype=torch.bool, device=lb.device)
        seen[k] = True
        difficulty[~seen] = -1
        targets.append({"boxes": bx, "labels": lb, "difficulty": difficulty})
    return targets


def _scaled(widths: Sequence[int], multiplier: float) -> list[int]:
    return [max(1, int(round(w * multiplier))) for w in widths]


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]  # fmt: skip


class LiftSplatDetector(nn.Module):
    """Lift-splat-shoot camera detector with a CenterPoint head (see the module docstring).

    Args:
        grid: the BEV grid (origin, cell size, ``(X, Y)``); :meth:`matching` copies a LiDAR detector's.
        num_classes: heatmap classes.
        image_size: ``(H, W)`` of the input images.
        depth_bins: ``(d_min, d_max, D)``: ``D`` bins of equal width, frustum points at the bin centres.
        z_range: ``(z_min, z_max)`` of frustum points kept (metres, LiDAR frame).
        backbone_widths: ``hidden_sizes`` of the ResNet stages (``ResNetConfig``).
        backbone_depths: blocks per ResNet stage.
        backbone_layer_type: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50).
        stem_width: ``embedding_size`` of the ResNet stem.
        context_channels: ``C`` of the lifted context features (LSS: 64, BEVDepth: 80).
        neck_blocks, neck_widths, neck_up: the BEV neck (as :class:`VoxelDetector`'s).
        head_width: CenterHead width.
        width_multiplier: scales every width above (a student: 0.5).
        lidar_depth_input: a projected LiDAR depth map is a fourth image channel (VCD's expert).
        max_objects, min_radius, code_weights, top_k, score_threshold, code_bias_init: as :class:`VoxelDetector`.

    Raises:
        ValueError: malformed grid, image size, depth bins, ranges or widths.
    """

    def __init__(
        self,
        grid: Sequence[Any] = BEVGrid(-51.2, -51.2, 0.8, (128, 128)),
        num_classes: int = 3,
        image_size: Sequence[int] = (256, 704),
        depth_bins: Sequence[float] = (2.0, 58.0, 112),
        z_range: Sequence[float] = (-5.0, 3.0),
        backbone_widths: Sequence[int] = (256, 512, 1024, 2048),
        backbone_depths: Sequence[int] = (3, 4, 6, 3),
        backbone_layer_type: str = "bottleneck",
        stem_width: int = 64,
        context_channels: int = 80,
        neck_blocks: int = 5,
        neck_widths: Sequence[int] = (128, 256),
        neck_up: int = 256,
        head_width: int = 64,
        width_multiplier: float = 1.0,
        lidar_depth_input: bool = False,
        max_objects: int = 500,
        min_radius: int = 2,
        code_weights: Sequence[float] | None = None,
        top_k: int = 500,
        score_threshold: float = 0.1,
        code_bias_init: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        from transformers import ResNetConfig, ResNetModel

        grid = BEVGrid(float(grid[0]), float(grid[1]), float(grid[2]), (int(grid[3][0]), int(grid[3][1])))
        if grid.cell_size <= 0 or min(grid.size) < 1:
            raise ValueError(f"`grid` must have a positive cell size and (X, Y) >= 1, got {grid}.")
        if len(image_size) != 2 or min(image_size) < 8:
            raise ValueError(f"`image_size` must be (H, W) with both >= 8, got {image_size}.")
        if len(depth_bins) != 3 or not 0 < depth_bins[0] < depth_bins[1] or int(depth_bins[2]) < 1:
            raise ValueError(f"`depth_bins` must be (d_min, d_max, D) with 0 < d_min < d_max and D >= 1, got {depth_bins}.")  # fmt: skip
        if len(z_range) != 2 or z_range[0] >= z_range[1]:
            raise ValueError(f"`z_range` must be (z_min, z_max) with z_min < z_max, got {z_range}.")
        if len(backbone_widths) < 1 or len(backbone_widths) != len(backbone_depths) or width_multiplier <= 0:
            raise ValueError(
                "`backbone_widths` and `backbone_depths` must be non-empty and of one length, `width_multiplier` "
                f"> 0; got {backbone_widths}, {backbone_depths}, {width_multiplier}."
            )
        if len(neck_widths) != 2 or neck_blocks < 1 or num_classes < 1:
            raise ValueError(f"`neck_widths` must be two values, `neck_blocks` and `num_classes` >= 1; got {neck_widths}, {neck_blocks}, {num_classes}.")  # fmt: skip
        self.grid, self.num_classes = grid, num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.depth_bins = (float(depth_bins[0]), float(depth_bins[1]), int(depth_bins[2]))
        self.z_range = (float(z_range[0]), float(z_range[1]))
        self.lidar_depth_input = bool(lidar_depth_input)
        self.max_objects, self.min_radius = max_objects, min_radius
        self.code_weights = list(code_weights) if code_weights is not None else [1.0] * 8
        self.top_k, self.score_threshold = top_k, score_threshold
        d_min, d_max, num_bins = self.depth_bins
        step = (d_max - d_min) / num_bins
        self.register_buffer("depths", d_min + (torch.arange(num_bins) + 0.5) * step, persistent=False)
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        widths = _scaled(backbone_widths, width_multiplier)
        self.backbone = ResNetModel(
            ResNetConfig(
                num_channels=4 if lidar_depth_input else 3,
                embedding_size=_scaled([stem_width], width_multiplier)[0],
                hidden_sizes=widths,
                depths=list(backbone_depths),
                layer_type=backbone_layer_type,
                downsample_in_first_stage=False,
            )
        )
        # stem /4, first stage /1, every later stage /2; features at the last-but-one stage's stride
        self.feature_stride = 4 * 2 ** max(0, len(widths) - 2)
        feature_in = widths[-1] + (widths[-2] if len(widths) > 1 else 0)
        self.context_channels = _scaled([context_channels], width_multiplier)[0]
        self.image_neck = nn.Sequential(*_conv(feature_in, widths[-1]))
        self.depth_net = nn.Conv2d(widths[-1], num_bins + self.context_channels, 1)
        n1, n2 = _scaled(neck_widths, width_multiplier)
        up = _scaled([neck_up], width_multiplier)[0]
        self.block1 = nn.Sequential(*_conv(self.context_channels, n1), *[m for _ in range(neck_blocks - 1) for m in _conv(n1, n1)])  # fmt: skip
        self.block2 = nn.Sequential(*_conv(n1, n2, 2), *[m for _ in range(neck_blocks - 1) for m in _conv(n2, n2)])  # fmt: skip
        self.up1 = nn.Sequential(nn.Conv2d(n1, up, 1, bias=False), nn.BatchNorm2d(up, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))  # fmt: skip
        self.up2 = nn.Sequential(nn.ConvTranspose2d(n2, up, 2, stride=2, bias=False), nn.BatchNorm2d(up, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))  # fmt: skip
        self.head = CenterHead(
            2 * up, num_classes, _scaled([head_width], width_multiplier)[0], code_bias_init=code_bias_init
        )

    @classmethod
    def matching(cls, lidar_detector: nn.Module, **overrides: Any) -> LiftSplatDetector:
        """A camera detector on ``lidar_detector``'s BEV grid and height range (and its number of classes)."""
        kw: dict[str, Any] = {"grid": lidar_detector.grid, "num_classes": lidar_detector.num_classes}
        point_range = getattr(lidar_detector, "point_range", None)
        if point_range is not None:
            kw["z_range"] = (point_range[2], point_range[5])
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def real_scale(cls, num_classes: int = 3, **overrides: Any) -> LiftSplatDetector:
        """BEVDepth's nuScenes setting: ResNet-50, 256 x 704 images, 112 depth bins over 2-58 m, 80 context
        channels, a 128 x 128 BEV grid of 0.8 m cells over ±51.2 m."""
        return cls(num_classes=num_classes, **overrides)

    # ------------------------------------------------------------------ forward
    def image_features(self, images: Tensor, lidar_depth: Tensor | None = None) -> Tensor:
        """Step 1: ``(B, C_cam, 3, H, W)`` images (values in [0, 1]) -> ``(B·C_cam, F, h, w)`` features."""
        b, c = images.shape[:2]
        x = (images.flatten(0, 1).float() - self.pixel_mean) / self.pixel_std
        if self.lidar_depth_input:
            if lidar_depth is None:
                raise ValueError(
                    "this detector takes a LiDAR depth channel (`lidar_depth_input=True`): pass `lidar_depth` "
                    "(B, C_cam, 1, H, W), e.g. from `project_lidar_depth`."
                )
            if lidar_depth.shape != (b, c, 1, *images.shape[-2:]):
                raise ValueError(f"`lidar_depth` must be (B, C_cam, 1, H, W) = {(b, c, 1, *images.shape[-2:])}, got {tuple(lidar_depth.shape)}.")  # fmt: skip
            x = torch.cat([x, lidar_depth.flatten(0, 1).float() / self.depth_bins[1]], dim=1)
        hidden = self.backbone(x, output_hidden_states=True).hidden_states
        feats = hidden[-1]
        if len(hidden) > 2:  # LSS's Up: the last stage up-sampled onto the one before, concatenated
            prev = hidden[-2]
            feats = torch.cat([prev, F.interpolate(feats, size=prev.shape[-2:], mode="bilinear", align_corners=False)], 1)  # fmt: skip
        return self.image_neck(feats)

    def lift(self, features: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Step 2: depth logits ``(B, C_cam, D, h, w)`` and frustum features ``(B, C_cam, D, h, w, C)``."""
        num_bins = self.depth_bins[2]
        out = self.depth_net(features)
        depth_logits = out[:, :num_bins]
        context = out[:, num_bins:]
        volume = depth_logits.float().softmax(1).unsqueeze(2) * context.float().unsqueeze(
            1
        )  # (N, D, C, h, w)
        n, _, h, w = depth_logits.shape
        depth_logits = depth_logits.view(batch_size, n // batch_size, num_bins, h, w)
        volume = volume.permute(0, 1, 3, 4, 2).reshape(batch_size, n // batch_size, num_bins, h, w, -1)
        return depth_logits, volume

    def splat(self, volume: Tensor, points: Tensor) -> Tensor:
        """Step 4: sum-pool frustum features ``(B, C_cam, D, h, w, C)`` at ``points`` ``(..., 3)`` into ``(B, C, X, Y)``."""
        g = self.grid
        b, ch = volume.shape[0], volume.shape[-1]
        nx, ny = g.size
        ix = torch.floor((points[..., 0] - g.x_min) / g.cell_size).long()
        iy = torch.floor((points[..., 1] - g.y_min) / g.cell_size).long()
        z = points[..., 2]
        keep = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (z >= self.z_range[0]) & (z < self.z_range[1])
        batch = torch.arange(b, device=volume.device).view(b, 1, 1, 1, 1).expand_as(ix)
        flat = (batch * nx + ix) * ny + iy
        bev = volume.new_zeros(b * nx * ny, ch).index_add_(0, flat[keep], volume[keep])
        return bev.view(b, nx, ny, ch).permute(0, 3, 1, 2).contiguous()

    def forward(
        self, images: Tensor, K: Tensor, T_cam_from_lidar: Tensor, lidar_depth: Tensor | None = None
    ) -> CameraDetectorOutput:
        """Images ``(B, C_cam, 3, H, W)`` with their cameras -> BEV heatmap, box codes, BEV features, depth logits."""
        _check_cameras(images, K, T_cam_from_lidar)
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"`images` must be {self.image_size} (the detector's `image_size`), got {tuple(images.shape[-2:])}."
            )
        depth_logits, bev_low = self.lift_splat(images, K, T_cam_from_lidar, lidar_depth)
        bev, out = self.neck_and_head(bev_low)
        return CameraDetectorOutput(out["heatmap"], out["codes"], bev_low, bev, depth_logits)

    def lift_splat(
        self, images: Tensor, K: Tensor, T_cam_from_lidar: Tensor, lidar_depth: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Images -> ``(depth_logits (B, C_cam, D, h, w), bev_low (B, C_low, X, Y))``: lift, then splat."""
        depth_logits, volume = self.lift(self.image_features(images, lidar_depth), images.shape[0])
        points = frustum_points(K, T_cam_from_lidar, self.image_size, depth_logits.shape[-2:], self.depths)
        return depth_logits, self.splat(volume, points)

    def neck_and_head(self, bev_low: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """A BEV map ``(B, C_low, X, Y)`` -> the neck's output ``bev`` and the head's ``{"heatmap", "codes"}``."""
        f1 = self.block1(bev_low)
        f2 = self.block2(f1)
        bev = torch.cat(
            [self.up1(f1), self.up2(f2)[..., : f1.shape[-2], : f1.shape[-1]]], dim=1
        )  # odd X, Y: crop
        return bev, self.head(bev)

    # ------------------------------------------------------------- training
    def loss(
        self, output: CameraDetectorOutput, boxes: Sequence[Tensor], labels: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """CenterPoint's terms, ``{"heatmap": focal loss, "box": code-weighted L1 at centres}`` (as VoxelDetector)."""
        targets = build_targets(
            self.grid, boxes, labels, num_classes=self.num_classes, max_objects=self.max_objects,
            min_radius=self.min_radius,
        )  # fmt: skip
        pred = gather_codes(output.codes, targets.indices)
        return {
            "heatmap": heatmap_focal_loss(output.heatmap, targets.heatmap),
            "box": box_regression_l1(pred, targets.codes, targets.mask, code_weights=self.code_weights),
        }

    def depth_targets(self, points: Tensor, batch_index: Tensor, K: Tensor, T_cam_from_lidar: Tensor, feature_size: Sequence[int]) -> Tensor:  # fmt: skip
        """BEVDepth's depth labels: per feature pixel the bin of its nearest LiDAR point, -1 where none or out of range."""
        depth = _min_depth_map(points, batch_index, K, T_cam_from_lidar, self.image_size, feature_size)
        d_min, d_max, num_bins = self.depth_bins
        bins = torch.floor((depth - d_min) / ((d_max - d_min) / num_bins)).long()
        valid = (depth > 0) & (bins >= 0) & (bins < num_bins)
        return torch.where(valid, bins, torch.full_like(bins, -1))

    def depth_loss(
        self,
        output: CameraDetectorOutput,
        points: Tensor,
        batch_index: Tensor,
        K: Tensor,
        T_cam_from_lidar: Tensor,
    ) -> Tensor:
        """BEVDepth's depth supervision: binary cross-entropy of the depth distribution against one-hot bins of
        projected LiDAR points (:func:`~lightning_distill.losses.detection.depth_bin_loss`)."""
        target = self.depth_targets(points, batch_index, K, T_cam_from_lidar, output.depth_logits.shape[-2:])
        return depth_bin_loss(output.depth_logits, target)

    @torch.no_grad()
    def detect(self, output: CameraDetectorOutput, nms: Any = None) -> list[dict[str, Tensor]]:
        """Per-sample ``{"boxes", "scores", "labels"}`` (peak NMS; box NMS when ``nms`` is given)."""
        return decode_detections(
            self.grid, {"heatmap": output.heatmap, "codes": output.codes}, top_k=self.top_k,
            score_threshold=self.score_threshold, nms=nms,
        )  # fmt: skip
