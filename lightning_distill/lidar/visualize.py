"""Pictures of point clouds: colours by label, prediction or feature PCA; PNGs, PLY files, W&B objects.

Three ways to look at a cloud, from the cheapest:

* :func:`render_points` draws a bird's-eye view and a side view with matplotlib (headless, no
  OpenGL: open3d's offscreen renderer needs EGL/Vulkan, which servers and CI machines often lack);
* :func:`save_point_cloud` writes ``.ply``/``.pcd`` with open3d, for MeshLab, CloudCompare or
  ``open3d.visualization.draw_geometries`` on a desktop;
* :func:`wandb_point_cloud` builds a ``wandb.Object3D`` that W&B shows as an interactive cloud.

:class:`PointCloudLogger` does it every validation epoch for a fixed validation scan, with the
module's per-point features (``pl_module(points)``, what the LiDAR recipes' ``forward`` returns)
coloured by their first three principal components: when pretraining works, points of one class
come out in one colour long before any label is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from lightning_distill.lidar.scene import CLASS_COLORS

__all__ = [
    "PointCloudLogger",
    "label_colors",
    "pca_colors",
    "render_points",
    "save_point_cloud",
    "wandb_point_cloud",
]

_IGNORED_GREY = (0.75, 0.75, 0.75)


def label_colors(labels: Tensor, palette: Sequence[Sequence[float]] = CLASS_COLORS) -> Tensor:
    """RGB in [0, 1] ``(N, 3)`` for class labels ``(N,)``; :data:`IGNORE_INDEX` (and any label
    outside the palette) is light grey.

    Example:
        >>> label_colors(torch.tensor([0, -1])).tolist()[1]
        [0.75, 0.75, 0.75]
    """
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be (N,), got {tuple(labels.shape)}.")
    table = torch.tensor([*palette, _IGNORED_GREY], dtype=torch.float32)
    index = labels.long().cpu().clone()
    index[(index < 0) | (index >= len(palette))] = len(palette)
    return table[index]


def pca_colors(features: Tensor) -> Tensor:
    """RGB in [0, 1] ``(N, 3)`` from the first three principal components of ``features (N, C)``.

    Each component is scaled to [0, 1] between its 1st and 99th percentiles (so a few outliers do
    not wash out the picture). Fewer than three channels repeat the last component.

    Example:
        >>> colors = pca_colors(torch.randn(100, 8))
        >>> colors.shape, bool(colors.min() >= 0), bool(colors.max() <= 1)
        (torch.Size([100, 3]), True, True)
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"`features` must be (N >= 2, C), got {tuple(features.shape)}.")
    x = features.detach().float().cpu()
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = x @ v[: min(3, v.shape[0])].T
    while components.shape[1] < 3:
        components = torch.cat([components, components[:, -1:]], dim=1)
    low = torch.quantile(components, 0.01, dim=0)
    high = torch.quantile(components, 0.99, dim=0)
    return ((components - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)


def render_points(
    points: Tensor,
    colors: Tensor,
    title: str = "",
    size: tuple[int, int] = (800, 400),
    max_points: int = 50_000,
    point_size: float = 1.0,
) -> np.ndarray:
    """A bird's-eye view (x forward up the page, y left) and a side view (x, z) as RGB uint8 ``(H, W, 3)``.

    Args:
        points: ``(N, >=3)`` with x, y, z in the first three columns (LiDAR frame).
        colors: ``(N, 3)`` RGB in [0, 1] (e.g. :func:`label_colors` or :func:`pca_colors`).
        title: drawn above the two views.
        size: ``(width, height)`` in pixels.
        max_points: a random (fixed-seed) subset is drawn above this many points.
        point_size: marker area in points².

    Raises:
        ValueError: mismatched shapes.

    Example:
        >>> render_points(torch.randn(200, 3), torch.rand(200, 3), size=(200, 100)).shape
        (100, 200, 3)
    """
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"`points` must be (N, >=3) with x, y, z first, got {tuple(points.shape)}.")
    if colors.shape != (points.shape[0], 3):
        raise ValueError(f"`colors` must be (N, 3) = ({points.shape[0]}, 3), got {tuple(colors.shape)}.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("render_points needs matplotlib: `pip install matplotlib`.") from err
    xyz = points[:, :3].detach().float().cpu().numpy()
    rgb = colors.detach().float().cpu().clamp(0, 1).numpy()
    if len(xyz) > max_points:
        keep = np.random.default_rng(0).choice(len(xyz), max_points, replace=False)
        xyz, rgb = xyz[keep], rgb[keep]
    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    bev, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 1)})
    bev.scatter(-xyz[:, 1], xyz[:, 0], c=rgb, s=point_size, linewidths=0)  # y left -> page left
    bev.set_aspect("equal", adjustable="datalim")
    bev.set_xlabel("-y (m)", fontsize=7)
    bev.set_ylabel("x (m)", fontsize=7)
    bev.set_title("bird's-eye view", fontsize=8)
    side.scatter(xyz[:, 0], xyz[:, 2], c=rgb, s=point_size, linewidths=0)
    side.set_xlabel("x (m)", fontsize=7)
    side.set_ylabel("z (m)", fontsize=7)
    side.set_title("side view", fontsize=8)
    for ax in (bev, side):
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_point_cloud(path: str | Path, points: Tensor, colors: Tensor | None = None) -> Path:
    """Write x, y, z (and RGB in [0, 1]) to ``.ply``, ``.pcd`` or ``.xyz`` through open3d.

    Raises:
        ValueError: mismatched shapes or an extension open3d cannot write.
    """
    path = Path(path)
    if path.suffix.lower() not in (".ply", ".pcd", ".xyz", ".xyzrgb", ".pts"):
        raise ValueError(f"`path` must end in .ply, .pcd, .xyz, .xyzrgb or .pts, got {path.name!r}.")
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"`points` must be (N, >=3) with x, y, z first, got {tuple(points.shape)}.")
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3].detach().double().cpu().numpy()))
    if colors is not None:
        if colors.shape != (points.shape[0], 3):
            raise ValueError(f"`colors` must be (N, 3), got {tuple(colors.shape)}.")
        cloud.colors = o3d.utility.Vector3dVector(colors.detach().double().cpu().clamp(0, 1).numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_point_cloud(str(path), cloud):
        raise OSError(f"open3d could not write {path}.")
    return path


def wandb_point_cloud(points: Tensor, colors: Tensor) -> Any:
    """A ``wandb.Object3D`` of x, y, z coloured by RGB in [0, 1] (W&B takes 0-255 colours)."""
    import wandb

    xyz = points[:, :3].detach().float().cpu().numpy()
    rgb = (colors.detach().float().cpu().clamp(0, 1).numpy() * 255).round()
    return wandb.Object3D(np.concatenate([xyz, rgb], axis=1))


class PointCloudLogger(Callback):
    """Log one validation scan coloured by label and by the module's feature PCA, every few epochs.

    The scan is the first cloud of the first validation batch (a dict with ``points (N, 5)``
    ``[batch, x, y, z, intensity]`` and ``labels (N,)``, the layout of
    :class:`~lightning_distill.data.lidar.SyntheticLidarDataModule`). Features come from
    ``pl_module(points)`` (``(N, C)`` per point); with ``predictions=True`` the module's
    ``predict_labels(points) -> (N,)`` is pictured too.

    Pictures go to every W&B logger (an image and, with ``object3d=True``, an interactive
    ``wandb.Object3D``) and TensorBoard logger; with neither, PNGs are written under
    ``<log_dir>/point_clouds/``.

    Args:
        every_n_epochs: log after epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1, ...``.
        predictions: also picture ``pl_module.predict_labels(points)``.
        object3d: also log ``wandb.Object3D`` clouds to W&B loggers.
        save_ply: also write ``.ply`` files (label and feature colours) next to the PNGs.
        key: name of the pictures (``val/<key>_labels``, ``val/<key>_features``, ...).

    Raises:
        ValueError: ``every_n_epochs < 1``.
        TypeError: (at setup) ``predictions=True`` but the module has no ``predict_labels``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        predictions: bool = False,
        object3d: bool = True,
        save_ply: bool = False,
        key: str = "point_cloud",
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1, got {every_n_epochs}.")
        self.every_n_epochs = every_n_epochs
        self.predictions = predictions
        self.object3d = object3d
        self.save_ply = save_ply
        self.key = key
        self._scan: dict[str, Tensor] | None = None
        self.last_pictures: dict[str, np.ndarray] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.predictions and not callable(getattr(pl_module, "predict_labels", None)):
            raise TypeError(
                f"PointCloudLogger(predictions=True) needs `{type(pl_module).__name__}.predict_labels(points)` "
                "returning (N,) classes; implement it or set predictions=False."
            )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._scan is None and batch_idx == 0 and isinstance(batch, dict) and "points" in batch:
            points = batch["points"]
            first = points[:, 0] == points[0, 0]
            self._scan = {"points": points[first].detach().clone()}
            if "labels" in batch:
                self._scan["labels"] = batch["labels"][first].detach().clone()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._scan is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        log_dir = trainer.log_dir  # a collective call: every rank must make it
        if not trainer.is_global_zero:
            return
        points = self._scan["points"].to(pl_module.device)
        with torch.no_grad():
            features = pl_module(points)
            views = {"features": pca_colors(features)}
            if "labels" in self._scan:
                views["labels"] = label_colors(self._scan["labels"])
            if self.predictions:
                views["predictions"] = label_colors(pl_module.predict_labels(points).cpu())
        xyz = self._scan["points"][:, 1:4]
        step = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        self.last_pictures = {
            name: render_points(xyz, rgb, title=f"{name} ({step})") for name, rgb in views.items()
        }
        out = Path(log_dir or trainer.default_root_dir) / "point_clouds"
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for name, picture in self.last_pictures.items():
                    logger.log_image(key=f"val/{self.key}_{name}", images=[picture], step=trainer.global_step)
                if self.object3d:
                    clouds = {
                        f"val/{self.key}_{n}_3d": wandb_point_cloud(xyz, rgb) for n, rgb in views.items()
                    }
                    logger.log_metrics(clouds, step=trainer.global_step)
                logged = True
            elif isinstance(logger, TensorBoardLogger):
                for name, picture in self.last_pictures.items():
                    logger.experiment.add_image(
                        f"val/{self.key}_{name}", picture, global_step=trainer.global_step, dataformats="HWC"
                    )
                logged = True
        tag = f"epoch{trainer.current_epoch:04d}_step{trainer.global_step:07d}"
        if not logged:
            from matplotlib.image import imsave

            out.mkdir(parents=True, exist_ok=True)
            for name, picture in self.last_pictures.items():
                imsave(out / f"{self.key}_{name}_{tag}.png", picture)
        if self.save_ply:
            for name, rgb in views.items():
                save_point_cloud(out / f"{self.key}_{name}_{tag}.ply", xyz, rgb)
