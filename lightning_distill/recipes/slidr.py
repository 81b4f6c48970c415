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
=================================  ===================  ===============
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.lidar.geometry import Pairs, pair_points_with_pixels
from lightning_distill.lidar.losses import info_nce, superpixel_pool
from lightning_distill.lidar.networks import ImageHead, PointHead, sparse_point_features
from lightning_distill.module import DistillationModule

__all__ = ["SLidR"]


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
        optimizer: optimizer of the student and both heads.
        lr_scheduler: optional epoch-wise scheduler.

    Batches are dicts from :class:`~lightning_distill.lidar.data.SyntheticLidarDataModule`.

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
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if level not in ("superpixel", "point"):
            raise ValueError(
                f"`level` must be 'superpixel' or 'point', got {level!r}; set `model.init_args.level`."
            )
        if input_features not in ("ones", "intensity"):
            raise ValueError(
                f"`input_features` must be 'ones' or 'intensity', got {input_features!r}; "
                "set `model.init_args.input_features`."
            )
        for name, value in (
            ("temperature", temperature),
            ("feature_dim", feature_dim),
            ("num_matches", num_matches),
            ("voxel_size", voxel_size),
        ):
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0, got {value}; set `model.init_args.{name}`.")
        for role, module in (("student", student), ("teacher", teacher)):
            if not isinstance(getattr(module, "out_channels", None), int):
                raise TypeError(
                    f"The {role} ({type(module).__name__}) needs an int `out_channels` attribute (its feature "
                    "width) so the recipe can build its head."
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
        backbone = sparse_point_features(
            self.student, points, voxel_size=self.voxel_size, input_features=self.input_features
        )
        return F.normalize(self.point_head(backbone), dim=1)

    def pixel_features(self, images: Tensor) -> Tensor:
        """Step 2: ``G2D``, per-pixel L2-normalised features ``(B * C, D, H, W)`` from ``(B, C, 3, H, W)``."""
        flat = images.flatten(0, 1)
        with torch.no_grad():
            backbone = self.teacher(flat)
        return F.normalize(self.image_head(backbone, tuple(flat.shape[-2:])), dim=1)

    def pairs(self, batch: dict[str, Tensor]) -> Pairs:
        """Step 3: point-pixel pairs from the calibration (shuffled when ``shuffle_pairs``)."""
        pairs = pair_points_with_pixels(
            batch["points"],
            batch["K"],
            batch["T_cam_from_lidar"],
            tuple(batch["images"].shape[-2:]),
            min_depth=self.min_depth,
        )
        if self.shuffle_pairs:
            order = torch.randperm(len(pairs.point), device=pairs.point.device)
            pairs = pairs._replace(point=pairs.point[order])
        return pairs

    def superpixel_loss(
        self, point_features: Tensor, pixel_features: Tensor, superpixels: Tensor, pairs: Pairs
    ) -> tuple[Tensor, Tensor]:
        """Step 4 (paper eq. 3): InfoNCE between superpixel-pooled 3D and 2D features; also the logits."""
        f, g = superpixel_pool(point_features, pixel_features, superpixels, *pairs)
        return info_nce(f, g, temperature=self.temperature), f @ g.T

    def point_loss(
        self, point_features: Tensor, pixel_features: Tensor, pairs: Pairs
    ) -> tuple[Tensor, Tensor]:
        """Step 4, point level: InfoNCE over ``num_matches`` random point-pixel pairs; also the logits."""
        count = len(pairs.point)
        if count == 0:
            raise ValueError("No point projects into any image: check the calibration or `min_depth`.")
        pick = torch.randperm(count, device=pairs.point.device)[: self.num_matches]
        f = point_features[pairs.point[pick]]
        g = pixel_features[pairs.image[pick], :, pairs.v[pick], pairs.u[pick]]
        return info_nce(f, g, temperature=self.temperature), f @ g.T

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
        self.log(
            "train/regions", float(len(similarity)), on_step=True, on_epoch=False, batch_size=self._bs(batch)
        )
        return self.log_losses({"infonce": loss})

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._batch_size_hint = self._bs(batch)  # clouds, not points

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Logs ``<stage>/infonce`` and ``<stage>/match_acc`` (how often the true region scores highest)."""
        loss, similarity = self.contrastive_loss(batch)
        target = torch.arange(len(similarity), device=similarity.device)
        metrics = {"infonce": loss, "match_acc": (similarity.argmax(dim=1) == target).float().mean()}
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=self._bs(batch),
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

    @staticmethod
    def _bs(batch: dict[str, Any]) -> int:
        return int(batch["images"].shape[0])
