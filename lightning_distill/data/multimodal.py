"""Multi-modal street views for PHG-MAE: RGB, depth, surface normals and semantic labels per pixel.

Each view is a camera image of :class:`~lightning_distill.lidar.scene.StreetSceneGenerator` (the
street scenes of the LiDAR toolkit, the same RGB-like rendering SLidR and CALICO use), rendered with
three more per-pixel layers from the same ray cast:

* ``depth`` ``(1, H, W)``: distance along the optical axis in metres, clipped at ``max_depth``
  (sky pixels hold ``max_depth``);
* ``normals`` ``(3, H, W)``: unit surface normals in the camera frame (OpenCV axes), turned to face
  the camera, zero on the sky; ``expert_noise`` adds Gaussian noise (then renormalises), standing in
  for the imperfect output of a pretrained normals expert, the way PHG-MAE's intermediate
  modalities come from experts;
* ``semantic`` ``(H, W)`` int64: the six street classes, ``-1`` on the sky.

Samples are dicts ``{"rgb", "depth", "normals", "semantic", "labelled"}``. In the training split only
a ``labelled_fraction`` of the views (chosen from the seed) keeps its task labels: the others have
``labelled = False``, ``semantic`` all ``-1`` and ``depth`` all zero (unknown). Validation and test
views are all labelled. Everything is deterministic from ``seed``; a view is ``H x W`` (small, so
CPU runs take minutes).
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.lidar.scene import CLASS_NAMES, StreetSceneGenerator, _cast
from lightning_distill.utils.checks import check_option

__all__ = ["MODALITIES", "MultiModalSceneDataModule", "render_views"]

#: The per-pixel layers of a view, in the order models stack them.
MODALITIES: tuple[str, ...] = ("rgb", "depth", "normals", "semantic")
_SPLIT_OFFSET = {"train": 0, "val": 500_000, "test": 900_000}


class _LayeredGenerator(StreetSceneGenerator):
    """The street generator that also keeps each camera's depth and normals (same rays, same rng use)."""

    def _cameras(self, scene, pose, surfaces, label_of, texture, rng):
        images, labels = super()._cameras(scene, pose, surfaces, label_of, texture, rng)
        height, width = self.image_size
        v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=0)
        depths, normals = [], []
        for K, T in zip(self.K, self.T_cam_from_lidar):
            rays_cam = np.linalg.inv(K) @ pixels
            rays_cam /= np.linalg.norm(rays_cam, axis=0, keepdims=True)
            lidar_from_cam = np.linalg.inv(T)
            directions = (lidar_from_cam[:3, :3] @ rays_cam).T
            origins = np.broadcast_to(lidar_from_cam[:3, 3], directions.shape)
            t, _, world_normals = _cast(scene, pose, origins, directions)
            depths.append((t * rays_cam[2]).reshape(height, width))
            # world -> LiDAR -> camera, then face the camera
            n_cam = (T[:3, :3] @ (pose[:3, :3].T @ world_normals.T)).T
            n_cam *= -np.sign((n_cam * rays_cam.T).sum(1, keepdims=True) + 1e-12)
            n_cam[~np.isfinite(t)] = 0.0
            normals.append(n_cam.T.reshape(3, height, width))
        self.layers = (np.stack(depths), np.stack(normals))
        return images, labels


def render_views(
    seed: int,
    image_size: tuple[int, int] = (32, 48),
    num_cameras: int = 4,
    max_depth: float = 40.0,
    expert_noise: float = 0.1,
) -> dict[str, Tensor]:
    """The ``num_cameras`` views of the street laid out from ``seed``, stacked: ``rgb (C, 3, H, W)``,
    ``depth (C, 1, H, W)``, ``normals (C, 3, H, W)``, ``semantic (C, H, W)``.

    Raises:
        ValueError: ``max_depth`` <= 0 or ``expert_noise`` < 0.
    """
    check_option(max_depth > 0, "max_depth", max_depth, "> 0")
    check_option(expert_noise >= 0, "expert_noise", expert_noise, ">= 0")
    views = _render_views(
        int(seed), tuple(int(s) for s in image_size), int(num_cameras), float(max_depth), float(expert_noise)
    )
    return {k: v.clone() for k, v in views.items()}


@functools.lru_cache(maxsize=512)  # a teacher's datamodule and the recipe's render the same scenes
def _render_views(
    seed: int, image_size: tuple[int, int], num_cameras: int, max_depth: float, expert_noise: float
) -> dict[str, Tensor]:
    generator = _LayeredGenerator(
        beams=2, azimuth_steps=16, image_size=tuple(image_size), num_cameras=num_cameras
    )
    frame = generator.generate(seed)[0]
    depth, normals = generator.layers
    depth = np.minimum(np.nan_to_num(depth, posinf=max_depth), max_depth)
    rng = np.random.default_rng([seed, 7])
    sky = np.linalg.norm(normals, axis=1, keepdims=True) == 0
    noisy = normals + expert_noise * rng.standard_normal(normals.shape)
    noisy = np.where(sky, 0.0, noisy / np.maximum(np.linalg.norm(noisy, axis=1, keepdims=True), 1e-6))
    return {
        "rgb": frame.images,
        "depth": torch.from_numpy(depth[:, None].astype(np.float32)),
        "normals": torch.from_numpy(noisy.astype(np.float32)),
        "semantic": frame.pixel_labels,
    }


class _Views(Dataset):
    def __init__(self, views: dict[str, Tensor]) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.views["rgb"])

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        return {k: v[item] for k, v in self.views.items()}


class MultiModalSceneDataModule(L.LightningDataModule):
    """Street views with four maskable modalities and a labelled fraction (semi-supervised).

    Args:
        image_size: ``(H, W)`` of a view (both divisible by 4 for the segmentation networks).
        num_cameras: views per scene (cameras at evenly spaced yaws, 90 degree field of view).
        num_train_scenes: scenes of the training split (``num_cameras`` views each).
        num_eval_scenes: scenes of the validation split and of the test split each.
        labelled_fraction: share of the training views that keep ``semantic`` and ``depth``
            (at least one view).
        max_depth: depth clip in metres (sky depth).
        expert_noise: Gaussian noise on the normals (an imperfect expert), before renormalising.
        batch_size: views per batch.
        seed: seed of the scenes and of the labelled subset.
        num_workers: data loader workers.

    Raises:
        ValueError: a size not divisible by 4, counts < 1, ``labelled_fraction`` outside (0, 1],
            ``max_depth`` <= 0 or ``expert_noise`` < 0.
    """

    num_classes = len(CLASS_NAMES)

    def __init__(
        self,
        image_size: tuple[int, int] = (32, 48),
        num_cameras: int = 4,
        num_train_scenes: int = 40,
        num_eval_scenes: int = 10,
        labelled_fraction: float = 0.25,
        max_depth: float = 40.0,
        expert_noise: float = 0.1,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        height, width = (int(s) for s in image_size)
        check_option(
            height > 0 and width > 0 and height % 4 == 0 and width % 4 == 0,
            "image_size", image_size, "two positive sizes divisible by 4",
        )  # fmt: skip
        for name, value in (
            ("num_cameras", num_cameras), ("num_train_scenes", num_train_scenes),
            ("num_eval_scenes", num_eval_scenes), ("batch_size", batch_size),
        ):  # fmt: skip
            check_option(int(value) >= 1, name, value, ">= 1")
        check_option(0 < labelled_fraction <= 1, "labelled_fraction", labelled_fraction, "in (0, 1]")
        check_option(max_depth > 0, "max_depth", max_depth, "> 0")
        check_option(expert_noise >= 0, "expert_noise", expert_noise, ">= 0")
        self.save_hyperparameters()
        self.image_size = (height, width)
        self.num_cameras, self.num_train_scenes, self.num_eval_scenes = (
            num_cameras,
            num_train_scenes,
            num_eval_scenes,
        )
        self.labelled_fraction, self.max_depth, self.expert_noise = labelled_fraction, max_depth, expert_noise
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._splits: dict[str, dict[str, Tensor]] | None = None

    def _render(self, split: str, scenes: int) -> dict[str, Tensor]:
        parts = [
            render_views(
                self.seed * 1_000_003 + _SPLIT_OFFSET[split] + i, self.image_size, self.num_cameras,
                self.max_depth, self.expert_noise,
            )
            for i in range(scenes)
        ]  # fmt: skip
        views = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        views["labelled"] = torch.ones(len(views["rgb"]), dtype=torch.bool)
        return views

    def _build(self) -> dict[str, dict[str, Tensor]]:
        train = self._render("train", self.num_train_scenes)
        n = len(train["rgb"])
        count = max(1, round(self.labelled_fraction * n))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + 1))
        hidden = order[count:]
        train["labelled"][hidden] = False
        train["semantic"][hidden] = -1
        train["depth"][hidden] = 0.0
        return {
            "train": train,
            "val": self._render("val", self.num_eval_scenes),
            "test": self._render("test", self.num_eval_scenes),
        }

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self._build()

    def split(self, name: str) -> dict[str, Tensor]:
        """All views of ``name`` (``"train"``, ``"val"`` or ``"test"``) as stacked tensors."""
        self.setup()
        return self._splits[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            _Views(self.split(name)), batch_size=self.batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.num_workers, drop_last=False,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}
