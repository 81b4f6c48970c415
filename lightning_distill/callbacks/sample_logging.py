"""Pictures of a generator's samples, and sample metrics, at the end of every validation epoch.

:class:`SampleLogger` asks the LightningModule for samples through one documented method::

    def sample(self, n: int, generator: torch.Generator) -> Tensor: ...

which every generative recipe implements: ``n`` samples, ``(n, D)`` points or ``(n, C, H, W)``
images, drawn with ``generator`` as the only source of randomness (so the same noises are
pictured every epoch and progress is visible). The generator lives on the module's device.

It renders a scatter plot over the data (points: 1-D histograms, 2-D scatter, higher dimensions
the first two coordinates) or an image grid, and logs it to every W&B logger (``wandb.Image``
via ``WandbLogger.log_image``) and TensorBoard logger (``add_image``); with neither, it writes a
PNG under ``<log_dir>/samples/``.

When a reference Gaussian mixture is known — ``pl_module.reference_mixture``, else
``trainer.datamodule.mixture`` (what :class:`~lightning_distill.data.GMMDataModule` has) — it
also logs the exact-bench metrics against a data sample of the same size, and their noise floors
(the same metric between two independent data samples), under ``val/sample_<metric>`` and
``val/sample_<metric>_floor``: ``swd``, ``mmd``, ``mode_coverage``, ``mode_tv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.metrics import mode_coverage, mode_weight_tv, rbf_mmd2, sliced_wasserstein

__all__ = ["SampleLogger", "image_grid", "scatter_picture"]


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "SampleLogger's scatter plots need matplotlib: `pip install lightning_distill[diffusion]`."
        ) from err
    return Figure, FigureCanvasAgg


def scatter_picture(
    samples: Tensor, reference: Tensor | None = None, title: str = "", size: int = 400
) -> np.ndarray:
    """Render points ``(N, D)`` over optional data ``(M, D)`` as an RGB image ``(size, size, 3)`` uint8.

    1-D points are drawn as overlaid histograms, 2-D as a scatter, higher dimensions as a
    scatter of the first two coordinates.

    Example:
        >>> scatter_picture(torch.randn(50, 2), torch.randn(50, 2), size=120).shape
        (120, 120, 3)
    """
    if samples.ndim != 2:
        raise ValueError(f"`samples` must be points (N, D), got {tuple(samples.shape)}.")
    Figure, FigureCanvasAgg = _require_matplotlib()
    dpi = 100
    fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = samples.detach().float().cpu().numpy()
    ref = reference.detach().float().cpu().numpy() if reference is not None else None
    if x.shape[1] == 1:
        values = x[:, 0] if ref is None else np.concatenate([x[:, 0], ref[:, 0]])
        bins = np.linspace(values.min(), values.max() + 1e-9, 80)
        if ref is not None:
            ax.hist(ref[:, 0], bins=bins, density=True, color="0.6", alpha=0.6, label="data")
        ax.hist(x[:, 0], bins=bins, density=True, color="tab:red", alpha=0.6, label="samples")
    else:
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=3, c="0.6", alpha=0.5, linewidths=0, label="data")
        ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:red", alpha=0.7, linewidths=0, label="samples")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def image_grid(
    images: Tensor, value_range: tuple[float, float] | None = None, padding: int = 1, min_tile: int = 32
) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` into one RGB picture (about ``sqrt(N)`` tiles a side) of uint8 ``(H_grid, W_grid, 3)``.

    Args:
        images: ``C`` of 1 (grey) or 3 (RGB); other channel counts show the first channel.
        value_range: ``(low, high)`` mapped to black and white; ``None`` uses the batch's min/max.
        padding: pixels between tiles.
        min_tile: small images are enlarged (nearest neighbour) to at least this many pixels.

    Example:
        >>> image_grid(torch.rand(5, 1, 8, 8), min_tile=8).shape
        (19, 28, 3)
    """
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, C, H, W), got {tuple(images.shape)}.")
    x = images.detach().float().cpu()
    x = x if x.shape[1] in (1, 3) else x[:, :1]
    low, high = value_range if value_range is not None else (float(x.min()), float(x.max()))
    x = ((x - low) / max(high - low, 1e-12)).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(min_tile / max(x.shape[-2:])))
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    n, _, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(3, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class SampleLogger(Callback):
    """Log pictures of ``pl_module.sample(n, generator)`` (and sample metrics) each validation epoch.

    Args:
        num_samples: samples drawn per picture and for the metrics.
        every_n_epochs: log on epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1, ...``.
        seed: seed of the sampling generator (the same noises every epoch) and of the reference data.
        key: name of the picture (``val/<key>``) and of the PNG files.
        compute_metrics: log SWD, MMD, mode coverage and mode-weight TV when a reference mixture
            is known.
        num_projections: projections of the sliced Wasserstein distance.
        max_images: images shown in a grid (all are used for nothing else).
        value_range: ``(low, high)`` of image values for the grid; ``None``: the batch's min/max.

    Raises:
        ValueError: ``num_samples`` < 2, ``every_n_epochs`` < 1, ``max_images`` < 1.
        TypeError: (at setup) a LightningModule without a ``sample(n, generator)`` method.

    Example:
        >>> SampleLogger(num_samples=500, every_n_epochs=2).state_key
        "SampleLogger{'key': 'samples'}"
    """

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_epochs: int = 1,
        seed: int = 0,
        key: str = "samples",
        compute_metrics: bool = True,
        num_projections: int = 256,
        max_images: int = 64,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"`num_samples` must be >= 2, got {num_samples}.")
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1, got {every_n_epochs}.")
        if max_images < 1:
            raise ValueError(f"`max_images` must be >= 1, got {max_images}.")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.key = key
        self.compute_metrics = compute_metrics
        self.num_projections = num_projections
        self.max_images = max_images
        self.value_range = tuple(value_range) if value_range is not None else None
        self._reference: tuple[int, Tensor, dict[str, float]] | None = None  # (fingerprint, data, floors)
        self.last_metrics: dict[str, float] = {}
        self.last_picture: np.ndarray | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "sample", None)):
            raise TypeError(
                f"SampleLogger needs `{type(pl_module).__name__}.sample(n, generator)` returning (n, D) points or "
                "(n, C, H, W) images; implement it or remove the callback."
            )

    @staticmethod
    def reference_mixture(trainer: pl.Trainer, pl_module: pl.LightningModule) -> GaussianMixture | None:
        """``pl_module.reference_mixture``, else ``trainer.datamodule.mixture``, else ``None``."""
        gmm = getattr(pl_module, "reference_mixture", None)
        if not isinstance(gmm, GaussianMixture):
            gmm = getattr(getattr(trainer, "datamodule", None), "mixture", None)
        return gmm if isinstance(gmm, GaussianMixture) else None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        log_dir = trainer.log_dir  # a collective call: every rank must make it
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        with torch.no_grad():
            samples = pl_module.sample(self.num_samples, generator)
        if not isinstance(samples, Tensor) or samples.ndim not in (2, 4):
            shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
            raise ValueError(f"`sample` must return (n, D) points or (n, C, H, W) images, got {shape}.")
        samples = samples.detach().float().cpu()

        gmm = self.reference_mixture(trainer, pl_module) if samples.ndim == 2 else None
        reference = None
        if gmm is not None:
            reference, floors = self._reference_data(gmm)
            if self.compute_metrics:
                metrics = self._metrics(samples, reference, gmm)
                self.last_metrics = {**metrics, **{f"{k}_floor": v for k, v in floors.items()}}
                for name, value in self.last_metrics.items():
                    pl_module.log(f"val/sample_{name}", value, on_step=False, on_epoch=True)

        if not trainer.is_global_zero:
            return
        if samples.ndim == 2:
            title = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
            if self.last_metrics and gmm is not None:
                m = self.last_metrics
                title += (
                    f"\nSWD {m['swd']:.3f} (floor {m['swd_floor']:.3f}), coverage {m['mode_coverage']:.2f}"
                )
            picture = scatter_picture(samples, reference, title=title)
        else:
            picture = image_grid(samples[: self.max_images], self.value_range)
        self.last_picture = picture
        self._log_picture(trainer, picture, log_dir)

    # ------------------------------------------------------------------------------------------
    def _reference_data(self, gmm: GaussianMixture) -> tuple[Tensor, dict[str, float]]:
        """A data sample of ``num_samples`` points and the metrics' floors (cached per mixture content)."""
        fingerprint = hash(
            tuple(torch.cat([b.detach().double().flatten().cpu() for b in gmm.buffers()]).tolist())
        )
        if self._reference is None or self._reference[0] != fingerprint:
            gen = torch.Generator().manual_seed(self.seed + 1)
            reference = gmm.sample(self.num_samples, gen).cpu()
            other = gmm.sample(self.num_samples, gen).cpu()
            floors = self._metrics(other, reference, gmm) if self.compute_metrics else {}
            self._reference = (fingerprint, reference, floors)
        return self._reference[1], self._reference[2]

    def _metrics(self, samples: Tensor, reference: Tensor, gmm: GaussianMixture) -> dict[str, float]:
        gen = torch.Generator().manual_seed(self.seed)
        return {
            "swd": float(sliced_wasserstein(samples, reference, self.num_projections, gen)),
            "mmd": float(rbf_mmd2(samples, reference)),
            "mode_coverage": float(mode_coverage(samples, gmm)),
            "mode_tv": float(mode_weight_tv(samples, gmm)),
        }

    def _log_picture(self, trainer: pl.Trainer, picture: np.ndarray, log_dir: str | None) -> None:
        tag = f"val/{self.key}"
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[picture], step=trainer.global_step)
                logged = True
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, picture, global_step=trainer.global_step, dataformats="HWC")
                logged = True
        if not logged:
            self.save_png(picture, Path(log_dir or trainer.default_root_dir), trainer)

    def save_png(self, picture: np.ndarray, log_dir: Path, trainer: pl.Trainer) -> Path:
        """Write ``<log_dir>/samples/<key>_epoch<E>_step<S>.png`` and return its path."""
        from matplotlib.image import imsave

        path = (
            log_dir
            / "samples"
            / f"{self.key}_epoch{trainer.current_epoch:04d}_step{trainer.global_step:07d}.png"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        imsave(path, picture)
        return path
