"""Bird's-eye-view pictures of detections: points, ground-truth boxes and predicted boxes, for W&B.

:func:`render_bev` draws one frame seen from above with matplotlib's Agg canvas (headless) and
returns an RGB ``uint8`` array ``(H, W, 3)``, the picture type the repository's loggers take
(``WandbLogger.log_image``, TensorBoard's ``add_image(..., dataformats="HWC")``), as
:func:`lightning_distill.lidar.visualize.render_points` does. The page shows the LiDAR frame with
x (forward) up and y (left) to the left. Ground-truth boxes are solid, predictions dashed, each
with a tick from the centre to the front face (the heading); colours follow the class.

:class:`DetectionPictures` logs that picture for the first validation frame every few epochs,
with the module's ``predict_boxes(batch)`` (a list of ``{"boxes", "scores", "labels"}`` dicts, one
per frame) when it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from lightning_distill.detection.boxes import boxes_to_corners_bev, check_boxes
from lightning_distill.detection.scenes import CLASSES

__all__ = [
    "CLASS_BOX_COLORS",
    "CameraDetectionPictures",
    "DetectionPictures",
    "render_bev",
    "render_camera_detections",
]

#: One colour per class of :data:`~lightning_distill.detection.scenes.CLASSES` (RGB in [0, 1]).
CLASS_BOX_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.10, 0.45, 0.95),
    (0.90, 0.15, 0.55),
    (0.10, 0.70, 0.35),
)


def render_bev(
    points: Tensor,
    gt_boxes: Tensor | None = None,
    pred_boxes: Tensor | None = None,
    *,
    gt_labels: Tensor | None = None,
    pred_labels: Tensor | None = None,
    pred_scores: Tensor | None = None,
    score_threshold: float = 0.0,
    extent: float = 50.0,
    title: str = "",
    size: tuple[int, int] = (600, 600),
    point_size: float = 0.5,
) -> np.ndarray:
    """One frame from above as RGB ``uint8`` ``(H, W, 3)``: grey points by height, boxes by class.

    Args:
        points: ``(N, >=3)`` x, y, z first (LiDAR frame).
        gt_boxes: ``(M, 7)`` ground truth, drawn solid.
        pred_boxes: ``(P, 7)`` predictions, drawn dashed.
        gt_labels: ``(M,)`` classes (colours); all class 0 when absent.
        pred_labels: ``(P,)`` classes.
        pred_scores: ``(P,)``; predictions under ``score_threshold`` are skipped, scores are written.
        score_threshold: smallest score drawn.
        extent: half-width of the square drawn around the sensor, metres.
        title: drawn above.
        size: ``(width, height)`` in pixels.
        point_size: marker area in points².

    Raises:
        ValueError: boxes that are not ``(M, 7)`` or labels/scores that do not match them.

    Example:
        >>> picture = render_bev(torch.randn(100, 4) * 10, torch.tensor([[5.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3]]),
        ...                      size=(120, 100))
        >>> picture.shape, picture.dtype
        ((100, 120, 3), dtype('uint8'))
    """
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"`points` must be (N, >=3) with x, y, z first, got {tuple(points.shape)}.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xyz = points[:, :3].detach().float().cpu().numpy()
    near = (np.abs(xyz[:, 0]) <= extent) & (np.abs(xyz[:, 1]) <= extent)
    height = np.clip((xyz[near, 2] + 2.0) / 4.0, 0.0, 1.0)
    ax.scatter(
        -xyz[near, 1],
        xyz[near, 0],
        c=0.75 - 0.6 * height,
        cmap="gray",
        vmin=0,
        vmax=1,
        s=point_size,
        linewidths=0,
    )
    for boxes, labels, scores, style in (
        (gt_boxes, gt_labels, None, "-"),
        (pred_boxes, pred_labels, pred_scores, "--"),
    ):
        if boxes is None:
            continue
        boxes = check_boxes("boxes", boxes).detach().float().cpu()
        labels = torch.zeros(len(boxes), dtype=torch.long) if labels is None else labels.detach().long().cpu()
        if labels.shape != (len(boxes),) or (scores is not None and scores.shape != (len(boxes),)):
            raise ValueError(f"labels and scores must be ({len(boxes)},) to match the boxes.")
        keep = (
            torch.ones(len(boxes), dtype=torch.bool)
            if scores is None
            else scores.detach().cpu() >= score_threshold
        )
        corners = boxes_to_corners_bev(boxes[keep]).numpy()  # (M, 4, 2)
        for k, (quad, label) in enumerate(zip(corners, labels[keep].tolist())):
            color = CLASS_BOX_COLORS[label % len(CLASS_BOX_COLORS)]
            ring = np.concatenate([quad, quad[:1]])
            ax.plot(-ring[:, 1], ring[:, 0], style, color=color, linewidth=1.0)
            centre, front = quad.mean(0), quad[[0, 3]].mean(0)  # corners 0 and 3 bound the front face
            ax.plot([-centre[1], -front[1]], [centre[0], front[0]], style, color=color, linewidth=1.0)
            if scores is not None:
                ax.text(-quad[0, 1], quad[0, 0], f"{float(scores[keep][k]):.2f}", fontsize=5, color=color)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m)", fontsize=7)
    ax.set_ylabel("x (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class DetectionPictures(Callback):
    """Log a BEV picture of the first validation frame (points, ground truth, predictions) every few epochs.

    Batches are those of :class:`~lightning_distill.data.detection.DetectionSceneDataModule`. With
    ``pl_module.predict_boxes(batch) -> list[dict]`` the frame's predictions are drawn too. Pictures
    go to W&B and TensorBoard loggers (key ``val/<key>``); with neither, PNGs are written under
    ``<log_dir>/detections/``.

    Args:
        every_n_epochs: log after epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1, ...``.
        score_threshold: predictions below it are not drawn.
        key: name of the picture.

    Raises:
        ValueError: ``every_n_epochs < 1``.
    """

    def __init__(
        self, every_n_epochs: int = 1, score_threshold: float = 0.3, key: str = "detections"
    ) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an int >= 1, got {every_n_epochs!r}.")
        self.every_n_epochs = every_n_epochs
        self.score_threshold = score_threshold
        self.key = key
        self._batch: dict[str, Any] | None = None
        self.last_picture: np.ndarray | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._batch is None and batch_idx == 0 and isinstance(batch, dict) and "boxes" in batch:
            first = batch["batch_index"] == 0
            self._batch = {
                "points": batch["points"][first].detach().clone(),
                "batch_index": batch["batch_index"][first].detach().clone(),
                **{k: [v[0].detach().clone()] for k, v in batch.items() if isinstance(v, list) and v},
            }

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or self._batch is None
            or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        log_dir = trainer.log_dir  # a collective call: every rank must make it
        if not trainer.is_global_zero:
            return
        pred: dict[str, Tensor] = {}
        if callable(getattr(pl_module, "predict_boxes", None)):
            device_batch = {
                k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in self._batch.items()
            }
            with torch.no_grad():
                pred = pl_module.predict_boxes(device_batch)[0]
        self.last_picture = render_bev(
            self._batch["points"],
            self._batch["boxes"][0],
            pred.get("boxes"),
            gt_labels=self._batch["labels"][0],
            pred_labels=pred.get("labels"),
            pred_scores=pred.get("scores"),
            score_threshold=self.score_threshold,
            title=f"epoch {trainer.current_epoch}, step {trainer.global_step} ({', '.join(CLASSES)})",
        )
        _log_picture(trainer, self.key, self.last_picture, log_dir)


def render_camera_detections(
    image: Tensor,
    K: Tensor,
    T_cam_from_lidar: Tensor,
    gt_boxes: Tensor,
    pred_boxes: Tensor | None = None,
    *,
    bev_maps: dict[str, Tensor] | None = None,
    bev_extent: tuple[float, float, float, float] | None = None,
    title: str = "",
    size: tuple[int, int] = (900, 300),
) -> np.ndarray:
    """A camera image with projected 3D boxes (ground truth solid green, predictions dashed red) and, beside it,
    BEV feature maps (e.g. teacher and student) as per-cell channel norms with the ground-truth boxes on top.

    Args:
        image: ``(3, H, W)`` in ``[0, 1]``.
        K: ``(3, 3)`` intrinsics; ``T_cam_from_lidar``: ``(4, 4)``.
        gt_boxes: ``(M, 7)`` LiDAR-frame boxes; ``pred_boxes``: ``(P, 7)`` or ``None``.
        bev_maps: name -> ``(C, X, Y)`` BEV features (drawn x up, y to the left, as :func:`render_bev`).
        bev_extent: ``(x_min, x_max, y_min, y_max)`` metres of the BEV maps.
        title: drawn above the image.
        size: ``(width, height)`` in pixels.

    Returns:
        An RGB ``uint8`` array ``(height, width, 3)``.

    Raises:
        ValueError: an image that is not ``(3, H, W)`` or boxes that are not ``(M, 7)``.

    Example:
        >>> K = torch.tensor([[16.0, 0, 15.5], [0, 16.0, 7.5], [0, 0, 1]])
        >>> T = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
        >>> pic = render_camera_detections(torch.rand(3, 16, 32), K, T, torch.tensor([[8.0, 0, 0, 4, 2, 1.5, 0]]),
        ...                                bev_maps={"teacher": torch.rand(4, 8, 8)}, bev_extent=(0, 8, -4, 4),
        ...                                size=(300, 100))
        >>> pic.shape
        (100, 300, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lightning_distill.detection.boxes import boxes_to_corners_3d

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"`image` must be (3, H, W), got {tuple(image.shape)}.")
    check_boxes("gt_boxes", gt_boxes)
    maps = bev_maps or {}
    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    height, width = image.shape[-2:]
    widths = [2.0 * width / height] + [1.0] * len(maps)
    axes = fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    ax = axes[0]
    ax.imshow(image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
    for boxes, color, style in ((gt_boxes, "lime", "-"), (pred_boxes, "red", "--")):
        if boxes is None or not len(boxes):
            continue
        check_boxes("pred_boxes", boxes)
        corners = boxes_to_corners_3d(boxes.detach().float().cpu())  # (M, 8, 3)
        cam = corners @ T_cam_from_lidar[:3, :3].float().cpu().T + T_cam_from_lidar[:3, 3].float().cpu()
        for box in cam:
            if float(box[:, 2].min()) < 0.5:  # partly behind the camera: skip rather than clip
                continue
            uv = box @ K.float().cpu().T
            uv = (uv[:, :2] / uv[:, 2:3]).numpy()
            for a, b in edges:
                ax.plot([uv[a, 0], uv[b, 0]], [uv[a, 1], uv[b, 1]], style, color=color, linewidth=0.8)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=7)
    x0, x1, y0, y1 = bev_extent if bev_extent is not None else (0.0, 1.0, 0.0, 1.0)
    corners_bev = boxes_to_corners_bev(gt_boxes.detach().float().cpu()) if len(gt_boxes) else None
    for ax, (name, feats) in zip(axes[1:], maps.items()):
        norm = feats.detach().float().norm(dim=0).cpu()  # (X, Y)
        norm = norm / norm.max().clamp_min(1e-12)
        # x forward up, y left to the left: rows = x from top (x1) down, columns = -y
        ax.imshow(norm.flip(0).flip(1).numpy(), cmap="magma", extent=(-y1, -y0, x0, x1), vmin=0, vmax=1)
        if corners_bev is not None:
            for quad in corners_bev:
                loop = torch.cat([quad, quad[:1]])
                ax.plot(-loop[:, 1].numpy(), loop[:, 0].numpy(), "-", color="lime", linewidth=0.6)
        ax.set_xlim(-y1, -y0)
        ax.set_ylim(x0, x1)
        ax.set_title(f"{name} BEV", fontsize=7)
        ax.tick_params(labelsize=5)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class CameraDetectionPictures(Callback):
    """Log, every few epochs, the first validation frame's first camera image with projected ground-truth and
    predicted 3D boxes, beside the BEV feature maps of the module's ``bev_features(batch)`` (a dict name ->
    ``(B, C, X, Y)``, e.g. teacher and student; a module without it gets the image only).

    Predictions come from ``pl_module.predict_boxes(batch)``; the BEV extent from ``pl_module.grid``.
    Pictures go to W&B / TensorBoard (``val/<key>``), else PNGs under ``<log_dir>/detections/``.

    Args:
        every_n_epochs: log after epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1, ...``.
        score_threshold: predictions below it are not drawn.
        key: name of the picture.

    Raises:
        ValueError: ``every_n_epochs < 1``.
    """

    def __init__(
        self, every_n_epochs: int = 1, score_threshold: float = 0.3, key: str = "camera_detections"
    ) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an int >= 1, got {every_n_epochs!r}.")
        self.every_n_epochs, self.score_threshold, self.key = every_n_epochs, score_threshold, key
        self._batch: dict[str, Any] | None = None
        self.last_picture: np.ndarray | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._batch is None and batch_idx == 0 and isinstance(batch, dict) and "images" in batch:
            first = batch["batch_index"] == 0
            self._batch = {
                "points": batch["points"][first].detach().clone(),
                "batch_index": batch["batch_index"][first].detach().clone(),
                **{k: [v[0].detach().clone()] for k, v in batch.items() if isinstance(v, list) and v},
                **{
                    k: batch[k][:1].detach().clone()
                    for k in ("images", "K", "T_cam_from_lidar")
                    if k in batch
                },
            }

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or self._batch is None
            or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        log_dir = trainer.log_dir  # a collective call: every rank must make it
        if not trainer.is_global_zero:
            return
        batch = {k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in self._batch.items()}
        pred, maps = None, {}
        with torch.no_grad():
            if callable(getattr(pl_module, "predict_boxes", None)):
                found = pl_module.predict_boxes(batch)[0]
                pred = found["boxes"][found["scores"] >= self.score_threshold]
            if callable(getattr(pl_module, "bev_features", None)):
                maps = {name: m[0] for name, m in pl_module.bev_features(batch).items()}
        grid = getattr(pl_module, "grid", None)
        extent = None
        if grid is not None:
            extent = (grid.x_min, grid.x_min + grid.size[0] * grid.cell_size,
                      grid.y_min, grid.y_min + grid.size[1] * grid.cell_size)  # fmt: skip
        self.last_picture = render_camera_detections(
            batch["images"][0, 0].cpu(), batch["K"][0, 0].cpu(), batch["T_cam_from_lidar"][0, 0].cpu(),
            batch["boxes"][0].cpu(), None if pred is None else pred.cpu(), bev_maps=maps, bev_extent=extent,
            title=f"epoch {trainer.current_epoch}, step {trainer.global_step}",
        )  # fmt: skip
        _log_picture(trainer, self.key, self.last_picture, log_dir)


def _log_picture(trainer: Any, key: str, picture: Any, log_dir: str | None) -> None:
    """``val/<key>`` to W&B and TensorBoard, or a PNG under ``<log_dir>/detections/`` without such a logger."""
    logged = False
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=f"val/{key}", images=[picture], step=trainer.global_step)
            logged = True
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(
                f"val/{key}", picture, global_step=trainer.global_step, dataformats="HWC"
            )
            logged = True
    if not logged:
        from matplotlib.image import imsave

        out = Path(log_dir or trainer.default_root_dir) / "detections"
        out.mkdir(parents=True, exist_ok=True)
        imsave(out / f"{key}_epoch{trainer.current_epoch:04d}.png", picture)
