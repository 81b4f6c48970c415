"""The batch layout of the LiDAR family: :func:`collate`, :func:`batch_points`, and :func:`read_scan` for real scans.

Every LiDAR data module (:mod:`lightning_distill.data.lidar` and the real-dataset modules next to it)
serves this layout. A batch (see :func:`collate`) is a dict:

=================== ============================ ==================================================
key                 shape                        meaning
=================== ============================ ==================================================
``points``          ``(N, 5)`` float32           ``[batch, x, y, z, intensity]``, LiDAR frame
``labels``          ``(N,)`` int64               class per point (:data:`~lightning_distill.lidar.scene.CLASS_NAMES`)
``instances``       ``(N,)`` int64               object id per point (unique within a scene)
``images``          ``(B, C, 3, H, W)`` float32  RGB in [0, 1], ``C`` cameras per cloud
``pixel_labels``    ``(B, C, H, W)`` int64       class per pixel, -1 for sky
``superpixels``     ``(B, C, H, W)`` int64       SLIC superpixel ids per image
``K``               ``(B, C, 3, 3)`` float32     intrinsics
``T_cam_from_lidar`` ``(B, C, 4, 4)`` float32    extrinsics (OpenCV camera from LiDAR)
``pose``            ``(B, 4, 4)`` float32        ``world_from_lidar`` (ego motion within a sequence)
``scene``/``frame`` ``(B,)`` int64               scene index in its split, frame within the sequence
=================== ============================ ==================================================

Real scans read by :func:`read_scan` come as ``(N, 4)`` ``[x, y, z, intensity]`` and are batched by
:func:`batch_points` into the same ``points`` layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["batch_points", "collate", "read_scan"]


def batch_points(scans: list[Tensor]) -> Tensor:
    """Concatenate ``(N_i, 3 + F)`` clouds into ``(sum N_i, 4 + F)`` with the batch index first.

    >>> batch_points([torch.zeros(2, 4), torch.ones(1, 4)])[:, 0].tolist()
    [0.0, 0.0, 1.0]

    Raises:
        ValueError: an empty list or clouds with different widths.
    """
    if not scans:
        raise ValueError("`scans` is empty.")
    widths = {s.shape[1] for s in scans}
    if len(widths) != 1 or min(widths) < 3:
        raise ValueError(f"every scan must be (N, 3 + F) with the same F, got widths {sorted(widths)}.")
    return torch.cat(
        [torch.cat([torch.full((len(s), 1), float(b), dtype=s.dtype), s], dim=1) for b, s in enumerate(scans)]
    )


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Batch scene samples: points concatenated with a batch index column, the rest stacked."""
    batch: dict[str, Tensor] = {
        "points": batch_points([s["points"] for s in samples]),
        "labels": torch.cat([s["labels"] for s in samples]),
        "instances": torch.cat([s["instances"] for s in samples]),
    }
    for key in ("images", "pixel_labels", "superpixels", "K", "T_cam_from_lidar", "pose", "scene", "frame"):
        batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    return batch


def read_scan(path: str | Path) -> Tensor:
    """A LiDAR scan as ``(N, 4)`` float32 ``[x, y, z, intensity]``.

    ``.bin``: KITTI / SemanticKITTI layout (float32, four values per point). ``.pcd`` / ``.ply``:
    read with open3d's tensor API; the ``intensity`` attribute is used when present, else zeros.

    Raises:
        ValueError: an unsupported suffix, or a ``.bin`` file whose size is not a multiple of 16 bytes.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No scan at {str(path)!r}.")
    suffix = path.suffix.lower()
    if suffix == ".bin":
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % 4:
            raise ValueError(
                f"{str(path)!r} holds {raw.size} floats, not a multiple of 4 (x, y, z, intensity)."
            )
        return torch.from_numpy(raw.reshape(-1, 4).copy())
    if suffix in (".pcd", ".ply"):
        import open3d as o3d

        cloud = o3d.t.io.read_point_cloud(str(path))
        xyz = cloud.point.positions.numpy().astype(np.float32)
        if "intensity" in cloud.point:
            intensity = cloud.point["intensity"].numpy().astype(np.float32).reshape(-1, 1)
        else:
            intensity = np.zeros((len(xyz), 1), dtype=np.float32)
        return torch.from_numpy(np.concatenate([xyz, intensity], axis=1))
    raise ValueError(f"`path` must end in .bin, .pcd or .ply, got {str(path)!r}.")
