"""Pictures of videos: a grid of clips as frames, a GIF file, a W&B video.

:func:`video_grid` tiles videos ``(B, 1, F, H, W)`` into one clip ``(F, H', W')`` of uint8 frames;
:func:`save_gif` writes it with Pillow; :func:`log_video` hands it to a ``WandbLogger`` as a
``wandb.Video`` (and does nothing for other loggers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["log_video", "save_gif", "video_grid"]


def video_grid(videos: Tensor, ncol: int | None = None, pad: int = 1) -> Tensor:
    """Tile ``(B, C, F, H, W)`` videos in ``[-1, 1]`` into uint8 frames ``(F, rows·(H+pad)+pad, ncol·(W+pad)+pad)`` (first channel).

    Example:
        >>> video_grid(torch.zeros(3, 1, 2, 4, 4), ncol=2).shape
        torch.Size([2, 11, 11])
    """
    if videos.ndim != 5:
        raise ValueError(f"`videos` must be (B, C, F, H, W), got {tuple(videos.shape)}.")
    b, _, f, h, w = videos.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    rows = math.ceil(b / ncol)
    grid = torch.zeros(f, rows * (h + pad) + pad, ncol * (w + pad) + pad, dtype=torch.uint8)
    pixels = ((videos[:, 0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[
            :, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w
        ] = pixels[i]
    return grid


def save_gif(
    videos: Tensor, path: str | Path, *, ncol: int | None = None, fps: int = 4, scale: int = 4
) -> Path:
    """Write :func:`video_grid` of ``videos`` to ``path`` as a looping GIF (pixels enlarged ``scale`` times)."""
    from PIL import Image

    grid = video_grid(videos, ncol)
    frames = [
        Image.fromarray(frame.numpy()).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
        for frame in grid
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def log_video(logger: Any, key: str, videos: Tensor, *, step: int | None = None, fps: int = 4) -> bool:
    """Log :func:`video_grid` of ``videos`` as a ``wandb.Video`` under ``key`` when ``logger`` is a ``WandbLogger``."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return False
    import wandb

    grid = video_grid(videos)[:, None].expand(-1, 3, -1, -1).numpy()  # (F, 3, H, W)
    logger.experiment.log({key: wandb.Video(grid, fps=fps, format="gif")}, step=step)
    return True
