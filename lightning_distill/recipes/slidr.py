"""SLidR: image-to-LiDAR self-supervised distillation (Sautier et al., CVPR 2022, arXiv 2203.16258).

A 3D network learns from a frozen, self-supervised 2D network without labels: points and pixels
that see the same surface should have the same features, compared region by region.

Algorithm (one step):

1. Voxelise the batch's point clouds; the sparse 3D UNet (student) and a trainable point head give
   64-d features per point, L2-normalised (``F3D``).
2. The frozen image backbone (teacher) and a trainable 2D head (1x1 convolution, bilinear
   upsampling) give 64-d features per pixel, L2-normalised (``G2D``).
3. Pair every point with the pixel it projects to (calibration, depth > 1 m, inside the image).
4. Superpixel level (the paper): average ``F3D`` over the paired points and ``G2D`` over all
   pixels of each SLIC superpixel (150 per image, compactness 6, sigma 3), then InfoNCE over the
   superpixels of the batch, ``tau = 0.07``. Point level (``level="point"``, the PPKT baseline):
   InfoNCE over ``num_matches`` random point-pixel pairs.

Total loss: ``L = InfoNCE(f, g)`` with ``f_s = mean_{p in s} F3D(p)`` and ``g_s = mean_{x in s} G2D(x)``.

Hyper-parameters -> config keys (``model.init_args.*``):

=================================  ===================  ===============
paper / official code              key                  default
=================================  ===================  ===============
output feature size                ``feature_dim``      64
InfoNCE temperature                ``temperature``      0.07
superpixel or point-level loss     ``level``            ``"superpixel"``
pairs per batch (point level)      ``num_matches``      4096
voxel size (cubic here)            ``voxel_size``       0.1 m
3D input features                  ``input_features``   ``"ones"``
nearest projected depth            ``min_depth``        1.0 m
control: shuffled pairing          ``shuffle_pairs``    False
official optimizer                 ``optimizer``        :func:`slidr_sgd`
=================================  ===================  ===============

``slidr_sgd`` is valeoai/SLidR ``config/slidr_minkunet.yaml``'s SGD: lr 0.5, momentum 0.9,
dampening 0.1, weight decay 1e-4 (its cosine schedule over 50 epochs is ``lr_scheduler``'s job).
The shared steps (features, pairing, superpixel pooling, the InfoNCE step) are parts of
:mod:`lightning_distill.lidar.image_to_lidar`, which LiMA composes too.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.lidar import image_to_lidar as i2l
from lightning_distill.lidar.geometry import Pairs
from lightning_distill.lidar.image_to_lidar import slidr_sgd
from lightning_distill.lidar.networks import ImageHead, PointHead, sparse_point_features
from lightning_distill.module import DistillationModule

__all__ = ["SLidR", "slidr_sgd"]


class SLidR(DistillationModule):
    """SLidR recipe. See the module docstring for the algorithm.

    Args:
        student: sparse 3D backbone, ``SparseConvTensor -> SparseConvTensor`` with an
            ``out_channels`` attribute (:class:`~lightning_distill.lidar.networks.SparseUNet`).
        teacher: frozen image backbone ``(B, 3, H, W) -> (B, C, h, w)`` with an ``out_channels``
            attribute (:class:`~lightning_distill.lidar.networks.SmallImageBackbone`, or a DINO ViT
            wrapper at scale).
        feature_dim: size of the shared feature space.
        temperature: InfoNCE temperature ``tau``.
        level: ``"superpixel"`` (SLidR) or ``"point"`` (InfoNCE over point-pixel pairs, PPKT).
        num_matches: pairs drawn per batch at the point level.
        voxel_size: cubic voxel edge, metres.
        input_features: ``"ones"`` (SLidR) or ``"intensity"`` as the 3D network's input.
        min_depth: points nearer than this to a camera are not paired (metres).
        shuffle_pairs: permute the points among the pairs (a control: the loss then carries no
            information about the scene, and the features should be no better than random).
        loss_weights: ``{"infonce": ...}``.
        optimizer: optimizer of the student and both heads (default :func:`slidr_sgd`, the
            official SGD).
        lr_scheduler: optional epoch-wise scheduler (the official one is cosine over 50 epochs).

    Batches are dicts from :class:`~lightning_distill.data.lidar.SyntheticLidarDataModule`.

    Raises:
        ValueError: an unknown ``level`` or ``input_features``, a non-positive ``temperature``,
            ``feature_dim``, ``num_matches`` or ``voxel_size``.
        TypeError: a student or teacher without an integer ``out_channels``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("infonce",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
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
        # trainable heads into the shared space (SLidR: last layer of the 3D net, 2D "decoder")
        self.point_head = PointHead(student.out_channels, feature_dim)
        self.image_head = ImageHead(teacher.out_channels, feature_dim)

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

    def pairs(self, batch: dict[str, Tensor]) -> Pairs:
        """Step 3: point-pixel pairs from the calibration (shuffled when ``shuffle_pairs``)."""
        pairs = i2l.calibrated_pairs(batch, min_depth=self.min_depth)
        return i2l.shuffle_pair_points(pairs) if self.shuffle_pairs else pairs

    def superpixel_loss(
        self, point_features: Tensor, pixel_features: Tensor, superpixels: Tensor, pairs: Pairs
    ) -> tuple[Tensor, Tensor]:
        """Step 4 (paper eq. 3): InfoNCE between superpixel-pooled 3D and 2D features; also the logits."""
        f, g = i2l.superpixel_pool(point_features, pixel_features, superpixels, *pairs)
        return i2l.info_nce_with_logits(f, g, temperature=self.temperature)

    def point_loss(
        self, point_features: Tensor, pixel_features: Tensor, pairs: Pairs
    ) -> tuple[Tensor, Tensor]:
        """Step 4, point level: InfoNCE over ``num_matches`` random point-pixel pairs; also the logits."""
        pick = i2l.random_pair_rows(pairs, self.num_matches)
        f = point_features[pairs.point[pick]]
        g = pixel_features[pairs.image[pick], :, pairs.v[pick], pairs.u[pick]]
        return i2l.info_nce_with_logits(f, g, temperature=self.temperature)

    def contrastive_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Steps 1-4 on one batch: the InfoNCE loss and the ``(M, M)`` similarity matrix behind it."""
        point_features = self.point_features(batch["points"])  # (N, D)
        pixel_features = self.pixel_features(batch["images"])  # (B*C, D, H, W)
        pairs = self.pairs(batch)
        if self.level == "superpixel":
            return self.superpixel_loss(
                point_features, pixel_features, batch["superpixels"].flatten(0, 1), pairs
            )
        return self.point_loss(point_features, pixel_features, pairs)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, similarity = self.contrastive_loss(batch)
        self.log_diagnostics({"regions": float(len(similarity))})
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
