"""LiMA: cross-view and long-horizon image-to-LiDAR distillation (Xu et al., ICCV 2025, arXiv 2507.05260).

*Beyond One Shot, Beyond One Perspective: Cross-View and Long-Horizon Distillation for Better LiDAR
Representations.* SLidR (:mod:`lightning_distill.recipes.slidr`) distils one frame's images into
the same frame's scan; LiMA builds the 2D target of every point from all the cameras that see it
and from the images of the past frames, moved to the current scan with the ego poses.

Algorithm (one step, on a window of the current frame ``t`` and its past frames):

1. ``F3D``: sparse UNet + point head on the current scan, L2-normalised (SLidR step 1).
2. ``G2D``: frozen image backbone + trainable head on the current images (SLidR step 2).
3. Cross-view aggregation: a point seen by several (overlapping) cameras gets one unified
   feature, the mean of its pixels' ``G2D`` in all of them: ``U_t(p) = mean_c G2D_c(pi_c(p))``.
4. Long-term propagation: each point is moved into past frame ``t-k`` by
   ``inv(pose_{t-k}) @ pose_t``, projected into that frame's cameras, and takes their unified
   feature ``U_{t-k}(p)`` (the memory bank: detached features of the past ``K`` frames).
5. Temporal fusion: ``D_t(p) = (1 - a) U_t(p) + a mean_{k: p visible at t-k} U_{t-k}(p)``
   (``D_t = U_t`` where no past frame sees ``p``).
6. Distillation: superpixel-pooled InfoNCE (SLidR's eq. 3) between ``F3D`` and ``D_t``, both
   averaged over the (point, pixel) pairs of each current superpixel, ``tau = 0.07``.

Total loss ``L = L_dist``. Steps 3-5 are our reading of the paper's figure and abstract (no method
code is public); the cross-sequence memory alignment is not implemented (recipes/lima/README.md).

Hyper-parameters -> config keys (``model.init_args.*``), besides those shared with SLidR:

=====================================  ===================  ================================
paper                                  key                  default
=====================================  ===================  ================================
cross-view aggregation on / off        ``cross_view``       True
past frames in the memory (6 frames)   ``memory_frames``    5 (0 turns the memory off)
share of the propagated memory         ``memory_share``     0.5 (not given by the paper)
optimizer (not published)              ``optimizer``        SLidR's official SGD (``slidr_sgd``)
=====================================  ===================  ================================

LiMA composes SLidR's steps from :mod:`lightning_distill.lidar.image_to_lidar` (it does not
subclass the SLidR recipe); the sequence geometry is :mod:`lightning_distill.lidar.sequence`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.lidar import image_to_lidar as i2l
from lightning_distill.lidar.geometry import Pairs, region_pool
from lightning_distill.lidar.image_to_lidar import slidr_sgd
from lightning_distill.lidar.networks import ImageHead, PointHead, sparse_point_features
from lightning_distill.lidar.sequence import (
    cross_view_mean,
    gather_pixel_features,
    pair_points_with_past_pixels,
)
from lightning_distill.module import DistillationModule

__all__ = ["LiMA"]


class LiMA(DistillationModule):
    """LiMA recipe. See the module docstring for the algorithm.

    Args:
        student: sparse 3D backbone with an ``out_channels`` attribute.
        teacher: frozen image backbone ``(B, 3, H, W) -> (B, C, h, w)`` with ``out_channels``.
        cross_view: fuse the views of a point seen by several cameras (step 3). Off, every
            (point, camera) pair keeps its own pixel's feature and the memory is kept per camera.
        memory_frames: past frames propagated to the current scan (step 4); 0 turns the memory off.
            Batches need ``past_*`` keys with at least this many frames
            (:class:`~lightning_distill.data.lidar.SyntheticSequenceDataModule`).
        memory_share: ``a`` in step 5, in ``[0, 1]``.
        feature_dim, temperature, level, num_matches, voxel_size, input_features, min_depth,
            shuffle_pairs, loss_weights, optimizer, lr_scheduler: as in
            :class:`~lightning_distill.recipes.slidr.SLidR` (same defaults). ``shuffle_pairs``
            permutes the points among the pairs after the targets are built (the control).

    Raises:
        ValueError: SLidR's checks, ``memory_frames < 0`` or ``memory_share`` outside ``[0, 1]``.
        TypeError: a student or teacher without an integer ``out_channels``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("infonce",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cross_view: bool = True,
        memory_frames: int = 5,
        memory_share: float = 0.5,
        feature_dim: int = 64,
        temperature: float = 0.07,
        level: Literal["superpixel", "point"] = "superpixel",
        num_matches: int = 4096,
        voxel_size: float = 0.1,
        input_features: Literal["ones", "intensity"] = "ones",
        min_depth: float = 1.0,
        shuffle_pairs: bool = False,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = slidr_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(memory_frames, int) or memory_frames < 0:
            raise ValueError(
                f"`memory_frames` must be an int >= 0, got {memory_frames!r}; set `model.init_args.memory_frames`."
            )
        if not 0.0 <= memory_share <= 1.0:
            raise ValueError(
                f"`memory_share` must be in [0, 1], got {memory_share}; set `model.init_args.memory_share`."
            )
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        i2l.check_image_to_lidar(
            student,
            teacher,
            level=level,
            input_features=input_features,
            temperature=temperature,
            feature_dim=feature_dim,
            num_matches=num_matches,
            voxel_size=voxel_size,
        )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.temperature = temperature
        self.level = level
        self.num_matches = num_matches
        self.voxel_size = voxel_size
        self.input_features = input_features
        self.min_depth = min_depth
        self.shuffle_pairs = shuffle_pairs
        self.point_head = PointHead(student.out_channels, feature_dim)
        self.image_head = ImageHead(teacher.out_channels, feature_dim)
        self.cross_view = cross_view
        self.memory_frames = memory_frames
        self.memory_share = memory_share
        self._stats: dict[str, float] = {}

    # ---------------------------------------------------------------- the paper
    def point_features(self, points: Tensor) -> Tensor:
        """Step 1: ``F3D``, per-point L2-normalised features ``(N, D)``."""
        return i2l.point_features(
            self.student,
            self.point_head,
            points,
            voxel_size=self.voxel_size,
            input_features=self.input_features,
        )

    def pixel_features(self, images: Tensor) -> Tensor:
        """Step 2: ``G2D``, per-pixel L2-normalised features ``(B * C, D, H, W)`` from ``(B, C, 3, H, W)``."""
        return i2l.pixel_features(self.teacher, self.image_head, images)

    def current_pairs(self, batch: dict[str, Tensor]) -> Pairs:
        """Point-pixel pairs of the current frame (never shuffled: the control acts in :meth:`contrastive_loss`)."""
        return i2l.calibrated_pairs(batch, min_depth=self.min_depth)

    def aggregate_views(self, pixel_features: Tensor, pairs: Pairs, num_points: int) -> Tensor:
        """Step 3: ``U(p)`` per pair ``(P, D)``; each pair's own pixel feature when ``cross_view`` is off."""
        features = gather_pixel_features(pixel_features, pairs)
        if not self.cross_view:
            return features
        unified, _ = cross_view_mean(features, pairs.point, num_points)
        return unified

    def propagate_memory(self, batch: dict[str, Tensor], pairs: Pairs) -> tuple[Tensor, Tensor]:
        """Step 4: the mean over the memory frames of the propagated features of each current pair.

        Returns:
            ``(P, D)`` mean of ``U_{t-k}`` over the past frames that see the pair's point (zeros where
            none does) and ``(P,)`` the number of those frames.

        Raises:
            ValueError: the batch has no ``past_*`` keys or fewer past frames than ``memory_frames``.
        """
        if "past_images" not in batch or batch["past_images"].shape[1] < self.memory_frames:
            have = batch["past_images"].shape[1] if "past_images" in batch else 0
            raise ValueError(
                f"`memory_frames` is {self.memory_frames} but the batch holds {have} past frames; use "
                "lightning_distill.data.lidar.SyntheticSequenceDataModule with `history` >= memory_frames, "
                "or set `model.init_args.memory_frames`."
            )
        points = batch["points"]
        num_points, num_cameras = len(points), batch["K"].shape[1]
        # memory slots: one per point (unified memory) or one per (point, camera) (per-camera memory)
        slots = num_points if self.cross_view else num_points * num_cameras
        own_slot = pairs.point if self.cross_view else pairs.point * num_cameras + pairs.image % num_cameras
        total = torch.zeros(len(pairs.point), self.hparams.feature_dim, device=points.device)
        frames_seen = torch.zeros(len(pairs.point), device=points.device)
        for k in range(self.memory_frames):
            with torch.no_grad():  # the memory bank holds stored features: no gradient
                past_features = self.pixel_features(batch["past_images"][:, k])
            past = pair_points_with_past_pixels(
                points,
                batch["pose"],
                batch["past_pose"][:, k],
                batch["past_K"][:, k],
                batch["past_T_cam_from_lidar"][:, k],
                tuple(batch["past_images"].shape[-2:]),
                min_depth=self.min_depth,
            )
            slot = past.point if self.cross_view else past.point * num_cameras + past.image % num_cameras
            features = gather_pixel_features(past_features, past)
            memory = region_pool(features, slot, slots)[own_slot]  # (P, D) this frame's U_{t-k}
            seen = (torch.bincount(slot, minlength=slots) > 0)[own_slot].float()
            total = total + memory * seen[:, None]
            frames_seen = frames_seen + seen
        return total / frames_seen.clamp_min(1.0)[:, None], frames_seen

    def temporal_fusion(self, current: Tensor, memory: Tensor, frames_seen: Tensor) -> Tensor:
        """Step 5: ``D = (1 - a) U_t + a mean_k U_{t-k}`` where some past frame sees the point, else ``U_t``."""
        weight = self.memory_share * (frames_seen > 0).to(current.dtype)[:, None]
        return (1.0 - weight) * current + weight * memory

    def distillation_loss(
        self, point_features: Tensor, targets: Tensor, superpixels: Tensor, pairs: Pairs
    ) -> tuple[Tensor, Tensor]:
        """Step 6: InfoNCE between ``F3D`` and ``D_t`` pooled over the pairs of each superpixel; also the logits.

        At ``level="point"``: InfoNCE over ``num_matches`` random pairs instead.
        """
        if len(pairs.point) == 0:
            raise ValueError("No point projects into any image: check the calibration or `min_depth`.")
        if self.level == "point":
            pick = i2l.random_pair_rows(pairs, self.num_matches)
            f, g = point_features[pairs.point[pick]], targets[pick]
        else:
            regions, num_regions = i2l.superpixel_regions(superpixels)
            pair_region = regions[pairs.image, pairs.v, pairs.u]
            keep = torch.bincount(pair_region, minlength=num_regions) > 0
            f = region_pool(point_features[pairs.point], pair_region, num_regions)[keep]
            g = region_pool(targets, pair_region, num_regions)[keep]
        return i2l.info_nce_with_logits(f, g, temperature=self.temperature)

    def contrastive_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Steps 1-6 on one batch: ``L_dist`` and the ``(M, M)`` similarity matrix behind it."""
        point_features = self.point_features(batch["points"])  # 1. (N, D)
        pixel_features = self.pixel_features(batch["images"])  # 2. (B*C, D, H, W)
        pairs = self.current_pairs(batch)
        num_points = len(point_features)
        targets = self.aggregate_views(pixel_features, pairs, num_points)  # 3. (P, D)
        views = torch.bincount(pairs.point, minlength=num_points)
        self._stats = {"multi_view": float((views > 1).sum() / (views > 0).sum().clamp_min(1))}
        if self.memory_frames:
            memory, frames_seen = self.propagate_memory(batch, pairs)  # 4.
            targets = self.temporal_fusion(targets, memory, frames_seen)  # 5.
            self._stats["memory_coverage"] = (
                float((frames_seen > 0).float().mean()) if len(frames_seen) else 0.0
            )
        if self.shuffle_pairs:  # control: the targets stay, the points are permuted
            pairs = i2l.shuffle_pair_points(pairs)
        superpixels = batch["superpixels"].flatten(0, 1)
        return self.distillation_loss(point_features, targets, superpixels, pairs)  # 6.

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, similarity = self.contrastive_loss(batch)
        self.log_diagnostics({"regions": float(len(similarity)), **self._stats})
        return self.log_losses({"infonce": loss})

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._batch_size_hint = int(batch["images"].shape[0])  # clouds, not points

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Logs ``<stage>/infonce`` and ``<stage>/match_acc`` (how often the true region scores highest)."""
        metrics = i2l.contrastive_metrics(*self.contrastive_loss(batch))
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=int(batch["images"].shape[0]),
            prog_bar=True,
        )

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Per-point features of the 3D backbone ``(N, C)`` (before the head)."""
        return self.forward(batch["points"])

    def forward(self, points: Tensor) -> Tensor:
        """Per-point features of the 3D backbone ``(N, C)`` for batched points ``(N, 5)``."""
        return sparse_point_features(
            self.student, points, voxel_size=self.voxel_size, input_features=self.input_features
        )
