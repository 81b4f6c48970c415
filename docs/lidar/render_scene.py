"""Render docs/lidar/scene.png: a generated scene's LiDAR points coloured by label, and its camera images.

Run from the repository root: ``python docs/lidar/render_scene.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lightning_distill.data.lidar import SyntheticLidarDataModule  # noqa: E402
from lightning_distill.lidar import CLASS_COLORS, CLASS_NAMES  # noqa: E402
from lightning_distill.lidar.geometry import project_points  # noqa: E402


def main() -> None:
    dm = SyntheticLidarDataModule(
        num_scenes=1,
        val_scenes=0,
        test_scenes=0,
        beams=16,
        azimuth_steps=384,
        image_size=(64, 128),
        num_cameras=4,
        seed=3,
    )
    sample = dm.scenes("train")[0]
    points, labels = sample["points"].numpy(), sample["labels"].numpy()
    colors = np.array(CLASS_COLORS)
    fig = plt.figure(figsize=(14, 7.5))
    grid = fig.add_gridspec(3, 4, height_ratios=[2.2, 1, 1])
    top = fig.add_subplot(grid[0, :2])
    top.scatter(points[:, 0], points[:, 1], c=colors[labels], s=1.5)
    top.set_aspect("equal")
    top.set_title(f"LiDAR, bird's eye view ({len(points)} points, 16 beams), coloured by label")
    top.set_xlabel("x forward (m)")
    top.set_ylabel("y left (m)")
    side = fig.add_subplot(grid[0, 2:])
    front = points[:, 0] > 0
    side.scatter(points[front, 1], points[front, 2], c=colors[labels[front]], s=1.5)
    side.invert_xaxis()
    side.set_title("front half, seen from behind (y, z)")
    side.set_xlabel("y left (m)")
    side.set_ylabel("z up (m)")
    side.legend(
        handles=[Patch(color=c, label=n) for c, n in zip(CLASS_COLORS, CLASS_NAMES)],
        fontsize=8,
        loc="upper right",
    )
    names = ["front", "left", "back", "right"]
    for c in range(4):
        image = sample["images"][c].permute(1, 2, 0).numpy()
        ax = fig.add_subplot(grid[1, c])
        ax.imshow(image)
        uv, _, mask = project_points(
            sample["points"][:, :3], sample["K"][c], sample["T_cam_from_lidar"][c], (64, 128)
        )
        ax.scatter(uv[mask, 0], uv[mask, 1], c=colors[labels[mask.numpy()]], s=0.8)
        ax.set_title(f"camera {names[c]} + projected points", fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(grid[2, c])
        pixel = sample["pixel_labels"][c].numpy()
        rgb = np.where(pixel[..., None] >= 0, colors[np.clip(pixel, 0, None)], 1.0)
        ax.imshow(rgb)
        ax.contour(sample["superpixels"][c].numpy(), levels=np.arange(0.5, 40), colors="k", linewidths=0.3)
        ax.set_title("pixel labels + SLIC superpixels", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    out = Path(__file__).with_name("scene.png")
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()
