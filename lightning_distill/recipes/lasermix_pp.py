"""LaserMix++: semi-supervised LiDAR segmentation with inclination-band mixing and camera distillation.

Kong, Xu, Ren, Zhang, Pan, Chen, Ooi, Liu, *Multi-Modal Data-Efficient 3D Scene Understanding for
Autonomous Driving*, TPAMI 2025, arXiv 2405.05258 (extends LaserMix, CVPR 2023, arXiv 2207.00026).

A few scans are labelled, most are not. A mean teacher (the EMA of the student) labels the
unlabelled scans; labelled and unlabelled scans are cut into bands of laser inclination and
interleaved, and the student must segment the mixed scans as the labels and pseudo-labels say.
LaserMix++ adds the cameras: every point keeps its pixel through the mixing, and the student's 3D
features are pulled towards the features a frozen 2D network gives that pixel.

One step (labelled batch ``L`` with labels ``y``, unlabelled batch ``U``):

1. Pair points with pixels (calibration, depth > 1 m), then augment every scan (rotation, flips,
   scaling); pairs and labels follow the points.
2. Pseudo-labels ``y_hat = argmax p_T(U)`` where ``max p_T >= 0.9`` (else ignored); ``T`` = EMA.
3. LaserMix: for each pair ``(L_b, U_b)`` draw ``n`` in ``num_bands``; mixed scan 1 = even bands of
   ``L_b`` + odd bands of ``U_b``, scan 2 the complement; labels, pseudo-labels and pixels follow.
4. ``L_sup = CE(S(L), y)``, ``L_mix = CE(S(mix), mix labels)``.
5. ``L_mt = MSE(softmax S(L u U), softmax T(L u U))`` (mean teacher consistency).
6. ``L_c2l = mean_pairs 1 - cos(h(F_S(p)), G(pixel(p)))`` on the mixed scans: ``G`` the frozen 2D
   backbone, ``h`` a trainable point head.
7. ``T <- d T + (1 - d) S`` after the optimizer step (:class:`EMATeacher`, ``d = 0.99``).

Total: ``L = L_sup + w_mix L_mix + w_mt L_mt + w_c2l L_c2l``.

=====================================  ===================================  ==============
paper / official code                  key (``model.init_args.*``)          default
=====================================  ===================================  ==============
inclination range (``pitch_angles``)   ``pitch_range_deg``                  (-25, 3)
number of bands (``num_areas``)        ``num_bands``                        (3, 4, 5, 6)
pseudo-label threshold (``pseudo_thr``) ``pseudo_threshold``                0.9
EMA decay (``MeanTeacherHook`` 0.01)   ``ema_decay``                        0.99
mixed-scan weight (``unsup_weight``)   ``loss_weights.ce_mixed``            1.0
consistency (``loss_mse`` weight)      ``loss_weights.consistency``         200
camera-to-LiDAR distillation           ``loss_weights.distill``             1.0 (unverified)
voxels (MinkUNet config)               ``voxel_size`` / ``grid``            0.05 m cubic
optimizer (``optim_wrapper``)          ``optimizer``                        ``lasermix_sgd``
=====================================  ===================================  ==============

``lasermix_sgd`` is the MinkUNet config's SGD: lr 0.24, Nesterov momentum 0.9, weight decay 1e-4.
Shared semi-supervised parts (segmenter, pseudo-labels, the official optimizer) are in
:mod:`lightning_distill.lidar.semi`, LaserMix itself in :mod:`lightning_distill.lidar.augment`, the
losses in :mod:`lightning_distill.losses.segmentation`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_distill.callbacks.ema_teacher import EMATeacher
from lightning_distill.lidar.augment import MixedScans, ScanAugmentation, laser_mix, mix_pairs
from lightning_distill.lidar.cylindrical import CylindricalGrid
from lightning_distill.lidar.geometry import Pairs, pair_points_with_pixels
from lightning_distill.lidar.networks import PointHead
from lightning_distill.lidar.scene import IGNORE_INDEX
from lightning_distill.lidar.semi import PointSegmenter, confident_pseudo_labels, lasermix_sgd
from lightning_distill.losses.segmentation import (
    ignore_index_cross_entropy,
    paired_cosine_distance,
    probability_mse,
)
from lightning_distill.module import DistillationModule

__all__ = ["LaserMixPP"]


class LaserMixPP(DistillationModule):
    """LaserMix++ recipe. See the module docstring for the algorithm.

    Args:
        student: sparse 3D backbone (:class:`~lightning_distill.lidar.networks.SparseUNet`) with an int
            ``out_channels``; the recipe adds a linear segmentation head
            (:class:`~lightning_distill.lidar.semi.PointSegmenter`) and keeps its EMA as ``ema_student``.
        teacher: frozen 2D image backbone ``(B, 3, H, W) -> (B, C, h, w)`` with an int ``out_channels``.
        num_classes: segmentation classes.
        voxel_size: cubic voxel edge (metres), used when ``grid`` is ``None``.
        grid: cylindrical voxel grid (Cylinder3D-style) instead of cubic voxels.
        input_features: ``"ones"`` or ``"intensity"`` as the 3D network's input.
        num_bands: choices for the number of inclination bands per mixed pair.
        pitch_range_deg: ``(down, up)`` inclination range split into bands, degrees.
        pseudo_threshold: teacher confidence below which a pseudo-label is ignored.
        ema_decay: mean-teacher EMA decay ``d`` (``T <- d T + (1 - d) S``).
        ema_buffers: ``"copy"`` or ``"average"`` the BatchNorm statistics into the teacher.
        min_depth: nearest depth (metres) at which a point is paired with a pixel.
        augment_scans: augment every scan (LaserMix does); ``False`` turns augmentation off.
        augmentation: the :class:`~lightning_distill.lidar.augment.ScanAugmentation`; ``None`` takes its
            defaults (LaserMix's MinkUNet pipeline plus flips).
        loss_weights: ``{"ce_labelled", "ce_mixed", "consistency", "distill"}``; a zero weight skips
            the term's computation.
        optimizer: optimizer of the segmenter and the distillation head (default
            :func:`~lightning_distill.lidar.semi.lasermix_sgd`, the official SGD).
        lr_scheduler: optional epoch-wise scheduler.

    Training batches are ``{"labelled": batch, "unlabelled": batch}`` from
    :class:`~lightning_distill.data.lidar.SemiSupervisedLidarDataModule`; without ``"unlabelled"``
    the step is supervised only (plus distillation on the labelled scans when its weight is > 0).

    Raises:
        ValueError: bad band choices, pitch range, threshold, EMA decay or buffer policy.
        TypeError: a student or teacher without an int ``out_channels``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ce_labelled", "ce_mixed", "consistency", "distill")
    default_loss_weights: ClassVar[dict[str, float]] = {
        "ce_labelled": 1.0,
        "ce_mixed": 1.0,
        "consistency": 200.0,
        "distill": 1.0,
    }

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        num_classes: int = 6,
        voxel_size: float = 0.05,
        grid: CylindricalGrid | None = None,
        input_features: Literal["ones", "intensity"] = "ones",
        num_bands: Sequence[int] = (3, 4, 5, 6),
        pitch_range_deg: tuple[float, float] = (-25.0, 3.0),
        pseudo_threshold: float = 0.9,
        ema_decay: float = 0.99,
        ema_buffers: Literal["copy", "average"] = "copy",
        min_depth: float = 1.0,
        augment_scans: bool = True,
        augmentation: ScanAugmentation | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = lasermix_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        for role, module in (("student", student), ("teacher", teacher)):
            if not isinstance(getattr(module, "out_channels", None), int):
                raise TypeError(
                    f"The {role} ({type(module).__name__}) needs an int `out_channels` attribute (its feature width)."
                )
        segmenter = PointSegmenter(student, num_classes, voxel_size, grid, input_features)
        super().__init__(
            segmenter,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.num_bands = [int(n) for n in num_bands]
        if not self.num_bands or min(self.num_bands) < 1:
            raise ValueError(f"`num_bands` must be a non-empty list of ints >= 1, got {list(num_bands)}.")
        if len(pitch_range_deg) != 2 or not pitch_range_deg[0] < pitch_range_deg[1]:
            raise ValueError(
                f"`pitch_range_deg` must be (down, up) with down < up, got {tuple(pitch_range_deg)}."
            )
        if not 0.0 <= pseudo_threshold <= 1.0:
            raise ValueError(f"`pseudo_threshold` must be in [0, 1], got {pseudo_threshold}.")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(
                f"`ema_decay` must be in [0, 1], got {ema_decay}; set `model.init_args.ema_decay`."
            )
        if ema_buffers not in ("copy", "average"):
            raise ValueError(f"`ema_buffers` must be 'copy' or 'average', got {ema_buffers!r}.")
        self.save_hyperparameters(
            ignore=["student", "teacher", "optimizer", "lr_scheduler", "augmentation", "grid"]
        )
        self.pitch_range_deg = (float(pitch_range_deg[0]), float(pitch_range_deg[1]))
        self.pseudo_threshold = pseudo_threshold
        self.ema_decay = ema_decay
        self.ema_buffers = ema_buffers
        self.min_depth = min_depth
        self.augmentation = (augmentation or ScanAugmentation()) if augment_scans else None
        self.num_classes = num_classes
        # the mean teacher, made here so checkpoints hold it from the first step (resume-safe)
        self.register_frozen("ema_student", copy.deepcopy(self.student))
        # LaserMix++ step 6: trainable projection of 3D features into the frozen 2D feature space
        self.distill_head = PointHead(student.out_channels, teacher.out_channels)
        self.confusion = nn.ModuleDict(
            {
                f"{stage}_{model}": MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
                for stage in ("val", "test")
                for model in ("student", "ema")
            }
        )
        self._generator: torch.Generator | None = None

    # ---------------------------------------------------------------- the paper
    def augment(self, points: Tensor) -> Tensor:
        """Step 1: the scan augmentation (identity when ``augmentation`` is ``None``)."""
        if self.augmentation is None:
            return points
        return self.augmentation(points, self._rng())[0]

    def pairs(self, batch: dict[str, Tensor]) -> Pairs:
        """Step 1: point-pixel pairs of the raw (not yet augmented) scans."""
        return pair_points_with_pixels(
            batch["points"],
            batch["K"],
            batch["T_cam_from_lidar"],
            tuple(batch["images"].shape[-2:]),
            min_depth=self.min_depth,
        )

    @torch.no_grad()
    def pseudo_labels(self, teacher_logits: Tensor) -> Tensor:
        """Step 2: ``argmax p_T`` where ``max p_T >= pseudo_threshold``, else the ignore index."""
        return confident_pseudo_labels(teacher_logits, self.pseudo_threshold)[0]

    def mix(self, points_l: Tensor, labels: Tensor, points_u: Tensor, pseudo: Tensor) -> MixedScans:
        """Step 3: LaserMix of labelled cloud ``b`` with unlabelled cloud ``b`` (two mixed clouds each)."""
        return laser_mix(
            points_l,
            labels,
            points_u,
            pseudo,
            num_bands=self.num_bands,
            pitch_range_deg=self.pitch_range_deg,
            generator=self._rng(),
        )

    @staticmethod
    def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Step 4: cross-entropy over the points whose label is not ignored (0 if there is none)."""
        return ignore_index_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)

    @staticmethod
    def consistency_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Step 5: mean squared difference of the class probabilities, teacher detached."""
        return probability_mse(student_logits, teacher_logits)

    def image_features(self, images: Tensor) -> Tensor:
        """Frozen 2D features ``(B * C, D, H, W)`` of images ``(B, C, 3, H, W)``, upsampled bilinearly."""
        flat = images.flatten(0, 1)
        with torch.no_grad():
            features = self.teacher(flat)
            return F.interpolate(features, size=tuple(flat.shape[-2:]), mode="bilinear", align_corners=True)

    def distillation_loss(self, point_features: Tensor, pixel_features: Tensor, pairs: Pairs) -> Tensor:
        """Step 6: ``mean_pairs 1 - cos(h(F_S(p)), G(pixel))`` (0 if no point is seen by a camera)."""
        if len(pairs.point) == 0:
            return point_features.sum() * 0.0
        projected = self.distill_head(point_features[pairs.point])
        return paired_cosine_distance(projected, pixel_features[pairs.image, :, pairs.v, pairs.u])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        labelled = batch["labelled"] if "labelled" in batch else batch
        unlabelled = batch.get("unlabelled")
        distill = self.loss_weights["distill"] > 0
        terms: dict[str, Tensor] = {}
        # 1. pairs on the raw scans, then augmentation (rows keep their order)
        pairs_l = self.pairs(labelled) if distill else None
        points_l = self.augment(labelled["points"])
        if unlabelled is None:  # supervised-only baseline
            features_l, logits_l = self.student(points_l)
            terms["ce_labelled"] = self.segmentation_loss(logits_l, labelled["labels"])
            if distill:
                terms["distill"] = self.distillation_loss(
                    features_l, self.image_features(labelled["images"]), pairs_l
                )
            return self.log_losses(terms)
        if _clouds(unlabelled) != _clouds(labelled):
            raise ValueError(
                f"LaserMix pairs labelled and unlabelled clouds one to one, got {_clouds(labelled)} "
                f"labelled and {_clouds(unlabelled)} unlabelled clouds; serve batches of equal size "
                "(drop the last incomplete batch)."
            )
        pairs_u = self.pairs(unlabelled) if distill else None
        points_u = self.augment(unlabelled["points"])
        # 2. pseudo-labels from the mean teacher
        with torch.no_grad():
            teacher_logits_u = self.ema_student(points_u)[1]
        pseudo = self.pseudo_labels(teacher_logits_u)
        # 3. LaserMix
        mixed = self.mix(points_l, labelled["labels"], points_u, pseudo)
        # 4. supervised and mixed cross-entropy
        features_l, logits_l = self.student(points_l)
        features_m, logits_m = self.student(mixed.points)
        terms["ce_labelled"] = self.segmentation_loss(logits_l, labelled["labels"])
        if self.loss_weights["ce_mixed"] > 0:
            terms["ce_mixed"] = self.segmentation_loss(logits_m, mixed.labels)
        # 5. mean-teacher consistency on the un-mixed scans
        if self.loss_weights["consistency"] > 0:
            logits_u = self.student(points_u)[1]
            with torch.no_grad():
                teacher_logits_l = self.ema_student(points_l)[1]
            terms["consistency"] = self.consistency_loss(
                torch.cat([logits_l, logits_u]), torch.cat([teacher_logits_l, teacher_logits_u])
            )
        # 6. camera-to-LiDAR distillation on the mixed scans, pixels following their points
        if distill:
            images = torch.cat([labelled["images"], unlabelled["images"]])
            pairs_m = mix_pairs(
                pairs_l,
                pairs_u,
                mixed.origin,
                num_points_a=len(points_l),
                num_images_a=labelled["images"].shape[0] * labelled["images"].shape[1],
            )
            terms["distill"] = self.distillation_loss(features_m, self.image_features(images), pairs_m)
        self.log_diagnostics({"pseudo_confident": (pseudo != IGNORE_INDEX).float().mean()})
        return self.log_losses(terms)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        labelled = batch["labelled"] if "labelled" in batch else batch
        self._batch_size_hint = _clouds(labelled)  # clouds, not points

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> None:
        """Accumulates the confusion matrices of the student and the mean teacher."""
        for model, module in (("student", self.student), ("ema", self.ema_student)):
            logits = module(batch["points"])[1]
            self.confusion[f"{stage}_{model}"].update(logits.argmax(dim=1), batch["labels"])

    def _log_miou(self, stage: str) -> None:
        """Logs ``<stage>/miou`` and ``<stage>/acc`` (student) and ``<stage>/ema_miou`` (mean teacher).

        The mean IoU is over the classes present in the labels, as in
        :func:`~lightning_distill.lidar.evaluate.segmentation_metrics`.
        """
        for model, prefix in (("student", ""), ("ema", "ema_")):
            metric = self.confusion[f"{stage}_{model}"]
            if not metric.update_called:
                continue
            matrix = metric.compute().double()  # rows: target, columns: prediction
            metric.reset()
            hits, support = matrix.diagonal(), matrix.sum(dim=1)
            union = support + matrix.sum(dim=0) - hits
            present = support > 0
            miou = (hits[present] / union[present]).mean() if present.any() else hits.new_tensor(float("nan"))
            accuracy = hits.sum() / support.sum().clamp_min(1)
            self.log(f"{stage}/{prefix}miou", miou.float(), prog_bar=not prefix)
            self.log(f"{stage}/{prefix}acc", accuracy.float())

    def on_validation_epoch_end(self) -> None:
        self._log_miou("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_miou("test")
        super().on_test_epoch_end()

    def forward(self, points: Tensor) -> Tensor:
        """Student class logits ``(N, K)`` of batched points ``(N, 4 + F)``."""
        return self.student(points)[1]

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Per-point classes ``(N,)`` from the mean teacher (LaserMix predicts with the teacher)."""
        return self.ema_student(batch["points"])[1].argmax(dim=1)

    def configure_callbacks(self) -> list[EMATeacher]:
        return [
            EMATeacher(
                source="student",
                target="ema_student",
                decay=self.ema_decay,
                buffers=self.ema_buffers,
                log_name="ema/decay",
            )
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lasermix_pp_generator"] = self._rng().get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "lasermix_pp_generator" in checkpoint:
            self._rng().set_state(checkpoint["lasermix_pp_generator"])

    # ---------------------------------------------------------------- helpers
    def _rng(self) -> torch.Generator:
        """The CPU generator of augmentation and band draws, seeded from ``seed_everything``."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        return self._generator


def _clouds(batch: dict[str, Tensor]) -> int:
    """Number of clouds in a batch (LiDAR-only batches carry no images)."""
    points = batch["points"]
    return int(points[:, 0].max()) + 1 if points.numel() else 0
