"""MonoTAKD: teaching-assistant distillation into a monocular 3D detector (Liu et al., arXiv 2404.04910).

A LiDAR teacher is too far from a monocular student for its BEV features to be copied directly; a
camera-based teaching assistant (TA) sits in between (official code: hoiliu-0801/MonoTAKD,
``pcdet/models/detectors/cmkd_TAKD.py``):

1. The frozen LiDAR teacher sees the points in the student's camera view (``FOV_POINTS_ONLY``) and
   gives its BEV map ``F_T`` (before its BEV neck; SECOND's height compression in the paper).
2. The frozen TA (a camera detector that also gets the LiDAR depth: CaDDN's features placed at the
   ground-truth depth in the paper) gives ``F_TA`` on the same BEV grid.
3. The student (monocular camera detector) gives its BEV map ``F_S`` and, from a second branch on the
   same lifted features, a residual map ``R_S``; its detector runs on ``F_S + R_S`` (``fuse_residual``).
4. Intra-modal imitation: ``L_ipk = MSE(norm(F_S), sg[norm(F_TA)])`` (min-max normalisation).
5. Spatial cues: ``R = |F_T − norm(F_TA)|`` zeroed below ``θ · max R`` (θ = 0.6); ``L_lpk = MSE(R_S, R)``.
6. Total: the student's detection loss + ``L_ipk`` + 0.2 ``L_lpk``.

The official ``normalize_`` works on a detached copy, so the released ``L_ipk`` never reaches the
student; here the normalisation keeps the graph (the intended loss; see the README).
``distillation="direct"`` replaces 4-5 by ``MSE(norm(F_S), sg[norm(F_T)])`` (the LiDAR->mono imitation
the paper argues against) and ``"none"`` trains the student alone.

Hyper-parameters -> config keys (``model.init_args.*``):

=============================  ====================  =====================================
paper / official code          key                   default
=============================  ====================  =====================================
residual threshold 3/5         ``threshold``         0.6
``normalize_`` (min-max)       ``normalize``         True
fused BEV (IPK + LPK branch)   ``fuse_residual``     True
FOV_POINTS_ONLY                ``fov_points_only``   True
LPK weight 0.2, IPK weight 1   ``loss_weights``      {heatmap: 1, box: 0.25, ipk: 1, lpk: 0.2}
AdamW, lr 2e-4, clip 10        ``optimizer``         AdamW (clip: ``--trainer.gradient_clip_val``)
=============================  ====================  =====================================
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.detection.bev_distill import bev_low_channels, run_bev_detector
from lightning_distill.detection.boxes import nms_bev
from lightning_distill.detection.camera import CameraDetectorOutput
from lightning_distill.detection.metrics import DetectionEvaluation
from lightning_distill.losses.detection import bev_imitation_loss, takd_residual_loss, takd_residual_target
from lightning_distill.module import DistillationModule
from lightning_distill.representation.correspondence import FeatureCache
from lightning_distill.utils.checks import check_option

__all__ = ["MonoTAKD", "ResidualBranch", "camera_view_batch", "points_in_camera"]

Distillation = Literal["takd", "direct", "none"]


class ResidualBranch(nn.Module):
    """The student's spatial-cue branch: a 1x1 conv from the lifted BEV, then a small dilated-conv block.

    The official branch is a second 1x1 collapse of the student's voxel features followed by ``SAM``
    (ASPP + deformable conv, then two 3x3 conv + ReLU). Here: 1x1 conv, three parallel 3x3 convs with
    dilations 1, 2 and 3 (summed, the ASPP part; no deformable conv in the CPU stack), two 3x3 conv + ReLU.
    The output is non-negative, like its target ``|F_T − F_TA|``.

    Args:
        in_channels: channels of the student's lifted BEV map.
        out_channels: channels of the teacher's (and the TA's) BEV map.
        width: hidden channels.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 32) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.dilated = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=d, dilation=d, bias=False) for d in (1, 2, 3)
        )
        self.out = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, out_channels, 3, padding=1), nn.ReLU(),
        )  # fmt: skip

    def forward(self, bev: Tensor) -> Tensor:
        """``(B, C_in, X, Y)`` -> ``(B, C_out, X, Y)``."""
        x = self.reduce(bev)
        return self.out(sum(conv(x) for conv in self.dilated))


def points_in_camera(
    points: Tensor, batch_index: Tensor, K: Tensor, T_cam_from_lidar: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """``(N,)`` bool: the points in front of camera ``K[b], T[b]`` (``(B, 3, 3)``, ``(B, 4, 4)``) and inside its image."""
    homo = torch.cat([points[:, :3], torch.ones_like(points[:, :1])], dim=1)
    cam = torch.einsum("nij,nj->ni", T_cam_from_lidar[batch_index], homo)[:, :3]
    z = cam[:, 2].clamp(min=1e-6)
    k = K[batch_index]
    u = k[:, 0, 0] * cam[:, 0] / z + k[:, 0, 2]
    v = k[:, 1, 1] * cam[:, 1] / z + k[:, 1, 2]
    height, width = image_size
    return (cam[:, 2] > 0.1) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def camera_view_batch(batch: dict[str, Any], camera: int = 0) -> dict[str, Any]:
    """The batch as one camera sees it: its images / calibration only, and only the boxes it sees.

    Only objects in the camera's view are labelled for (and scored on) a monocular detector, as KITTI
    labels only what the front camera sees.
    """
    images = batch["images"]
    if images.ndim != 5 or not 0 <= camera < images.shape[1]:
        raise ValueError(
            f"`camera` must index the batch's cameras (images (B, C, 3, H, W) = {tuple(images.shape)}), got {camera}; "
            "set `model.init_args.camera` or `data.init_args.num_cameras`."
        )
    view = dict(batch)
    view["images"] = images[:, camera : camera + 1]
    view["K"] = batch["K"][:, camera : camera + 1]
    view["T_cam_from_lidar"] = batch["T_cam_from_lidar"][:, camera : camera + 1]
    seen = [v[:, camera] for v in batch["visible_2d"]]
    for key in ("boxes", "labels", "difficulty"):
        if key in batch:
            view[key] = [values[s] for values, s in zip(batch[key], seen)]
    return view


class MonoTAKD(DistillationModule):
    """MonoTAKD's teaching-assistant distillation from a LiDAR teacher into a monocular camera detector.

    Args:
        student: a monocular camera detector (e.g. :class:`~lightning_distill.detection.camera.LiftSplatDetector`
            fed one camera): ``lift_splat``, ``neck_and_head``, ``loss`` and ``detect``.
        teacher: the frozen LiDAR detector (e.g. :func:`~lightning_distill.models.detection.trained_detector`):
            ``forward(points, batch_index, batch_size)`` with a ``bev_low`` map on the same BEV grid.
        assistant: the frozen camera teaching assistant (a ``LiftSplatDetector``, usually with
            ``lidar_depth_input=True``), on the same grid.
        distillation: ``"takd"`` (the paper), ``"direct"`` (MSE to the LiDAR teacher's BEV, the baseline)
            or ``"none"`` (the student alone).
        threshold: ``θ``, the residual is kept where it reaches ``θ · max``.
        normalize: min-max normalise the BEV maps as the official code does.
        fuse_residual: the student's detector runs on ``F_S + R_S`` (the paper's fused BEV); ``False``
            keeps the residual branch as an auxiliary head only (the released configuration).
        residual_width: hidden channels of the residual branch.
        fov_points_only: the LiDAR teacher sees only the points inside the student's camera image.
        camera: which camera of the batch the monocular student (and the assistant) use.
        cache_frozen_outputs: keep the teacher's and the assistant's training BEV maps per frame (``scene``,
            ``frame`` of the batch) after their first computation: exact without data augmentation (the
            frozen models are deterministic), and it spares their forward passes in later epochs.
        nms_iou_threshold: BEV NMS of the evaluated detections; ``None``: heatmap peaks only.
        loss_weights: ``{"heatmap", "box", "ipk", "lpk", "direct"}``.
        optimizer: optimizer of the student and its residual branch (official: AdamW, lr 2e-4).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: an unknown ``distillation``, ``threshold`` outside ``[0, 1]``, a negative ``camera``,
            BEV grids that differ, or BEV channels that cannot be compared.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("heatmap", "box", "ipk", "lpk", "direct")
    default_loss_weights: ClassVar[dict[str, float]] = {"heatmap": 1.0, "box": 0.25, "ipk": 1.0, "lpk": 0.2, "direct": 1.0}  # fmt: skip

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        assistant: nn.Module,
        distillation: Distillation = "takd",
        threshold: float = 0.6,
        normalize: bool = True,
        fuse_residual: bool = True,
        residual_width: int = 64,
        fov_points_only: bool = True,
        camera: int = 0,
        cache_frozen_outputs: bool = False,
        nms_iou_threshold: float | None = 0.2,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student, teachers=[teacher, assistant], loss_weights=loss_weights, optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )  # fmt: skip
        check_option(distillation in ("takd", "direct", "none"), "distillation", distillation,
                     "'takd', 'direct' or 'none'")  # fmt: skip
        check_option(
            0.0 <= threshold <= 1.0, "threshold", threshold, "in [0, 1] (a share of the largest residual)"
        )
        check_option(
            isinstance(camera, int) and camera >= 0, "camera", camera, "an int >= 0 (a camera index)"
        )
        check_option(residual_width >= 1, "residual_width", residual_width, "an int >= 1")
        grids = {name: getattr(m, "grid", None) for name, m in (("student", student), ("teacher", teacher), ("assistant", assistant))}  # fmt: skip
        if len({tuple(g) if g is not None else None for g in grids.values()}) != 1:
            raise ValueError(
                f"`student`, `teacher` and `assistant` must share one BEV grid, got {grids}; build the camera "
                "detectors with `LiftSplatDetector.matching(teacher)` or give them the teacher's `grid`."
            )
        channels = {name: bev_low_channels(m) for name, m in (("student", student), ("teacher", teacher), ("assistant", assistant))}  # fmt: skip
        if distillation != "none" and len(set(channels.values())) != 1:
            raise ValueError(
                f"MonoTAKD compares BEV maps channel by channel, but their `bev_low` channels differ: {channels}; "
                "give the camera detectors `context_channels` (x `width_multiplier`) equal to the teacher's "
                "`sparse_widths[-1]` x height cells."
            )
        self.save_hyperparameters(ignore=["student", "teacher", "assistant", "optimizer", "lr_scheduler"])
        self.distillation, self.threshold, self.normalize = distillation, threshold, normalize
        self.fuse_residual, self.fov_points_only, self.camera = fuse_residual, fov_points_only, camera
        self.nms_iou_threshold = nms_iou_threshold
        self.cache_frozen_outputs = cache_frozen_outputs
        self.frozen_cache = FeatureCache()  # not in checkpoints: rebuilt from the frozen models on demand
        self.residual_branch: nn.Module | None = None
        if distillation == "takd":
            self.residual_branch = ResidualBranch(channels["student"], channels["teacher"], residual_width)
        self.detection_metrics = DetectionEvaluation()

    @property
    def lidar_teacher(self) -> nn.Module:
        """The frozen LiDAR teacher."""
        return self.teachers[0]

    @property
    def assistant(self) -> nn.Module:
        """The frozen camera teaching assistant."""
        return self.teachers[1]

    # ---------------------------------------------------------------- the paper
    @torch.no_grad()
    def teacher_output(self, batch: dict[str, Any], view: dict[str, Any]) -> Any:
        """Step 1: the LiDAR teacher on the points the student's camera sees (``FOV_POINTS_ONLY``)."""
        points, index = batch["points"], batch["batch_index"]
        if self.fov_points_only:
            keep = points_in_camera(points, index, view["K"][:, 0], view["T_cam_from_lidar"][:, 0], view["images"].shape[-2:])  # fmt: skip
            points, index = points[keep], index[keep]
        return self.lidar_teacher(points, index, len(batch["boxes"]))

    def teacher_bev(self, batch: dict[str, Any], view: dict[str, Any]) -> Tensor:
        """Step 1: the teacher's ``bev_low`` ``F_T`` ``(B, C, X, Y)``."""
        return self.teacher_output(batch, view).bev_low

    @torch.no_grad()
    def assistant_output(self, batch: dict[str, Any], view: dict[str, Any]) -> Any:
        """Step 2: the teaching assistant on the student's camera (plus the projected LiDAR depth when it takes it)."""
        return run_bev_detector(self.assistant, view)

    def frozen_bevs(self, batch: dict[str, Any], view: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        """Steps 1-2: the teacher's and the assistant's BEV maps this mode needs (``None`` for the others)."""
        models = {"none": 0, "direct": 1, "takd": 2}[self.distillation]
        if models == 0:
            return None, None

        def compute(rows: Tensor | None = None) -> Tensor:  # (B, models, C, X, Y)
            maps = [self.teacher_bev(batch, view)]
            if models == 2:
                maps.append(self.assistant_output(batch, view).bev_low)
            out = torch.stack(maps, dim=1)
            return out if rows is None else out[rows]

        if self.cache_frozen_outputs:
            if "scene" not in batch or "frame" not in batch:
                raise ValueError(
                    "`cache_frozen_outputs` needs batches with `scene` and `frame` (DetectionSceneDataModule)."
                )
            maps = self.frozen_cache.get(batch["scene"].long() * 1_000_000 + batch["frame"].long(), compute)
        else:
            maps = compute()
        return maps[:, 0], (maps[:, 1] if models == 2 else None)

    def student_forward(self, view: dict[str, Any]) -> tuple[CameraDetectorOutput, Tensor | None]:
        """Step 3: the student's output and its residual map ``R_S`` (``None`` without the branch).

        With ``fuse_residual`` the student's BEV neck and head run on ``F_S + R_S``; ``output.bev_low`` stays
        ``F_S`` (what the intra-modal term compares with the assistant).
        """
        s, images, K, T = self.student, view["images"], view["K"], view["T_cam_from_lidar"]
        if self.residual_branch is None or not self.fuse_residual:
            out = s(images, K, T)
            return out, (self.residual_branch(out.bev_low) if self.residual_branch is not None else None)
        depth_logits, bev_low = s.lift_splat(images, K, T)
        residual = self.residual_branch(bev_low)
        bev, head = s.neck_and_head(bev_low + residual)
        return CameraDetectorOutput(head["heatmap"], head["codes"], bev_low, bev, depth_logits), residual

    def intra_modal_loss(self, student_bev: Tensor, assistant_bev: Tensor) -> Tensor:
        """Step 4: ``MSE(norm(F_S), sg[norm(F_TA)])``; the gradient reaches ``F_S`` (unlike the official code)."""
        return bev_imitation_loss(student_bev, assistant_bev, normalize=self.normalize)

    def spatial_cue_loss(self, residual: Tensor, teacher_bev: Tensor, assistant_bev: Tensor) -> Tensor:
        """Step 5: ``MSE(R_S, threshold_θ(|F_T − norm(F_TA)|))``."""
        return takd_residual_loss(residual, teacher_bev, assistant_bev, threshold=self.threshold, normalize_assistant=self.normalize)  # fmt: skip

    def direct_loss(self, student_bev: Tensor, teacher_bev: Tensor) -> Tensor:
        """The baseline: ``MSE(norm(F_S), sg[norm(F_T)])``, LiDAR BEV straight into the monocular student."""
        return bev_imitation_loss(student_bev, teacher_bev, normalize=self.normalize)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        view = camera_view_batch(batch, self.camera)
        # 1.-2. The frozen LiDAR teacher and teaching assistant.
        teacher_bev, assistant_bev = self.frozen_bevs(batch, view)
        # 3. The student (its detector on the fused BEV) and its detection loss on the objects its camera sees.
        output, residual = self.student_forward(view)
        terms = self.student.loss(output, view["boxes"], view["labels"])
        if self.distillation == "takd":
            # 4.-5. Intra-modal imitation of the assistant, spatial cues from the teacher-assistant residual.
            terms["ipk"] = self.intra_modal_loss(output.bev_low, assistant_bev)
            terms["lpk"] = self.spatial_cue_loss(residual, teacher_bev, assistant_bev)
            self.log_diagnostics({"residual_share": float((takd_residual_target(teacher_bev, assistant_bev, threshold=self.threshold) > 0).float().mean())})  # fmt: skip
        elif self.distillation == "direct":
            terms["direct"] = self.direct_loss(output.bev_low, teacher_bev)
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _nms(self) -> Any:
        if self.nms_iou_threshold is None:
            return None
        return lambda boxes, scores, iou: nms_bev(boxes, scores, iou)

    @torch.no_grad()
    def detect(self, batch: dict[str, Any], model: str = "student") -> list[dict[str, Tensor]]:
        """Detections per frame of ``"student"``, ``"teacher"`` (LiDAR, camera-view points) or ``"assistant"``."""
        view = camera_view_batch(batch, self.camera)
        if model == "student":
            return self.student.detect(self.student_forward(view)[0], nms=self._nms())
        if model == "assistant":
            return self.assistant.detect(self.assistant_output(batch, view), nms=self._nms())
        return self.lidar_teacher.detect(self.teacher_output(batch, view), nms=self._nms())

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        view = camera_view_batch(batch, self.camera)
        targets = [
            {
                "boxes": b,
                "labels": lb,
                **({"difficulty": view["difficulty"][i]} if "difficulty" in view else {}),
            }
            for i, (b, lb) in enumerate(zip(view["boxes"], view["labels"]))
        ]
        models = ["student"]
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            models += ["teacher", "assistant"]
        for model in models:
            self.detection_metrics.update(stage, self.detect(batch, model), targets, model=model)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.detection_metrics.reset("val")
            return
        self.log_dict(self.detection_metrics.logs("val"))
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.detection_metrics.logs("test"))
        super().on_test_epoch_end()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Tensor]]:
        return self.detect(batch)

    def forward(self, images: Tensor, K: Tensor, T_cam_from_lidar: Tensor) -> CameraDetectorOutput:
        return self.student_forward({"images": images, "K": K, "T_cam_from_lidar": T_cam_from_lidar})[0]
