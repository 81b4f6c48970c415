"""Multi-view scenes as a LightningDataModule: random ray batches to train on, whole views to evaluate.

:class:`MultiViewDataModule` renders one procedural scene (:func:`lightning_distill.radiance.scenes.make_scene`)
in ``setup`` and serves

* training batches ``(origins, directions, rgb)`` of ``rays_per_batch`` rays ``(R, 3)`` drawn from every
  pixel of the training views, a new shuffle each epoch (a pure function of ``seed`` and the epoch);
  an epoch is ``steps_per_epoch`` batches;
* validation / test batches of whole views ``(origins, directions, rgb)`` ``(B, H, W, 3)``. There is no
  separate validation set of cameras: validation and test both use the held-out views.

Example:
    >>> dm = MultiViewDataModule(image_size=16, num_views=6, num_test=2, rays_per_batch=32, steps_per_epoch=2)
    >>> dm.setup()
    >>> o, d, rgb = next(iter(dm.train_dataloader()))
    >>> tuple(o.shape), tuple(next(iter(dm.test_dataloader()))[2].shape)
    ((32, 3), (2, 16, 16, 3))
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from lightning_distill.radiance.rendering import camera_rays
from lightning_distill.radiance.scenes import SCENES, MultiViewScene, make_scene
from lightning_distill.utils.checks import check_choice, check_int, check_positive

__all__ = ["MultiViewDataModule", "RayBatches"]


class RayBatches(Dataset):
    """``steps`` batches per epoch of ``size`` rays drawn without replacement from a permutation of all rays."""

    def __init__(self, rays: tuple[Tensor, Tensor, Tensor], size: int, steps: int, seed: int) -> None:
        self.rays, self.size, self.steps, self.seed, self.epoch = rays, size, steps, seed, 0
        self._order: Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._order = epoch, None

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        total = self.rays[0].shape[0]
        if self._order is None:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            repeats = -(-self.size * self.steps // total)
            self._order = torch.cat([torch.randperm(total, generator=gen) for _ in range(repeats)])
        pick = self._order[index * self.size : (index + 1) * self.size]
        return tuple(r[pick] for r in self.rays)


class _EpochSampler(Sampler):
    """Batch indices in order; Lightning's ``set_epoch`` reaches the dataset's shuffle through it."""

    def __init__(self, batches: RayBatches) -> None:
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(range(len(self.batches)))


class MultiViewDataModule(L.LightningDataModule):
    """One procedural multi-view scene; see the module docstring.

    Args:
        scene_name: the scene's name (:data:`~lightning_distill.radiance.scenes.SCENES`).
        image_size: pixels per side.
        num_views: cameras on the sphere; ``num_test`` of them are held out (validation and test).
        rays_per_batch: training rays per batch.
        steps_per_epoch: training batches per epoch.
        radius, fov: the cameras' distance from the origin and horizontal field of view (degrees).
        seed: the scene's layout, the camera spiral and the ray shuffling.
        eval_batch_size: whole views per validation / test batch.

    Raises:
        ValueError: an unknown scene or a count out of range (naming the argument).
    """

    def __init__(
        self,
        scene_name: str = "objects",
        image_size: int = 32,
        num_views: int = 48,
        num_test: int = 8,
        rays_per_batch: int = 1024,
        steps_per_epoch: int = 100,
        radius: float = 3.0,
        fov: float = 38.0,
        seed: int = 0,
        eval_batch_size: int = 8,
    ) -> None:
        super().__init__()
        check_choice("scene_name", scene_name, tuple(SCENES))
        check_int("image_size", image_size, low=4)
        check_int("num_views", num_views, low=2)
        check_int("num_test", num_test, low=1, high=num_views - 1)
        check_int("rays_per_batch", rays_per_batch, low=1)
        check_int("steps_per_epoch", steps_per_epoch, low=1)
        check_int("eval_batch_size", eval_batch_size, low=1)
        check_positive("fov", fov)
        self.save_hyperparameters()
        self.scene_name = scene_name
        self.image_size, self.num_views, self.num_test = image_size, num_views, num_test
        self.rays_per_batch, self.steps_per_epoch = rays_per_batch, steps_per_epoch
        self.radius, self.fov, self.seed, self.eval_batch_size = radius, fov, seed, eval_batch_size
        self.scene: MultiViewScene | None = None
        self._views: tuple[Tensor, Tensor, Tensor] | None = None
        self._batches: RayBatches | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.scene is not None:
            return
        self.scene = make_scene(
            self.scene_name, seed=self.seed, image_size=self.image_size, num_views=self.num_views,
            num_test=self.num_test, radius=self.radius, fov=self.fov,
        )  # fmt: skip
        origins, directions = camera_rays(self.scene.cameras.K, self.scene.cameras.c2w, self.scene.image_size)
        self._views = (origins, directions, self.scene.images.permute(0, 2, 3, 1).contiguous())

    def view_rays(self, split: str = "test") -> tuple[Tensor, Tensor, Tensor]:
        """Origins, directions and true colours ``(V, H, W, 3)`` of the ``split`` views (val and test: held out)."""
        check_choice("split", split, ("train", "val", "test"))
        if self._views is None:
            self.setup()
        index = self.scene.train_index if split == "train" else self.scene.test_index
        return tuple(v[index] for v in self._views)

    @property
    def train_rays(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every training pixel as a ray: origins, directions, colours ``(R, 3)``."""
        return tuple(v.reshape(-1, 3) for v in self.view_rays("train"))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        self._batches = RayBatches(self.train_rays, self.rays_per_batch, self.steps_per_epoch, self.seed)
        return DataLoader(self._batches, batch_size=None, sampler=_EpochSampler(self._batches))

    def _views_loader(self) -> DataLoader:
        self.setup()
        return DataLoader(TensorDataset(*self.view_rays("test")), batch_size=self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._views_loader()

    def test_dataloader(self) -> DataLoader:
        return self._views_loader()
