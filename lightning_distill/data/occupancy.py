"""4D semantic occupancy data (DynamicCity) and the HexPlane VAE trained on first use.

* :class:`OccupancyDataModule`: sequences of semantic occupancy grids ``(T, X, Y, Z)`` voxelised from
  the LiDAR street sequences (:func:`~lightning_distill.lidar_generation.occupancy.occupancy_sequence`);
  batches are ``(occupancy (B, T, X, Y, Z) int64,)``.
* :func:`trained_occupancy_vae`: a HexPlane (or 3D-latent) VAE trained on that data with CE + Lovász +
  β·KL on first use and cached (the first stage of DynamicCity), or loaded from the user's checkpoint.
  It lives here, not in the toolkit, because training needs this datamodule and the first-use cache.
* :class:`PlaneLatentDataModule`: the VAE's latents of those sequences (the rolled-out HexPlanes
  ``(B, C, H, W)``, divided by the VAE's ``latent_scale``), the training images of the DiT teacher
  and of its few-step distillation.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.lidar.scene import StreetSceneGenerator
from lightning_distill.lidar_generation.occupancy import OCCUPANCY_CLASSES, OccupancyGrid, occupancy_sequence
from lightning_distill.losses.lidar_generation import occupancy_vae_losses
from lightning_distill.models.first_use_cache import cached_training, load_weights, loss_summary
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["OccupancyDataModule", "PlaneLatentDataModule", "trained_occupancy_vae"]

_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}
#: DynamicCity's VAE loss: CE + Lovász + β·KL (see recipes/dynamiccity/README.md for β).
VAE_LOSS_WEIGHTS = {"ce": 1.0, "lovasz": 1.0, "kl": 1e-3}


class OccupancyDataModule(L.LightningDataModule):
    """4D semantic occupancy sequences from the synthetic street scenes, deterministic from ``seed``.

    Args:
        num_train: training sequences.
        num_val: validation sequences.
        num_test: test sequences.
        num_frames: ``T`` frames per sequence.
        grid_size: ``(X, Y, Z)`` voxels.
        voxel_size: voxel edges in metres.
        z_min: floor of the grid in the LiDAR frame (metres; the road is at -1.8).
        beams: LiDAR beams of the scans that are voxelised.
        azimuth_steps: rays per beam.
        batch_size: sequences per batch.
        num_workers: DataLoader workers.
        seed: sequence seeds derive from it (train, val and test never coincide).

    Raises:
        ValueError: a non-positive count.
    """

    num_classes = len(OCCUPANCY_CLASSES)

    def __init__(
        self,
        num_train: int = 256,
        num_val: int = 32,
        num_test: int = 32,
        num_frames: int = 4,
        grid_size: tuple[int, int, int] = (16, 16, 8),
        voxel_size: tuple[float, float, float] = (2.0, 2.0, 0.5),
        z_min: float = -2.0,
        beams: int = 24,
        azimuth_steps: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("num_frames", num_frames), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}; set `data.init_args.{name}`.")
        if num_val < 0 or num_test < 0:
            raise ValueError(f"`num_val` and `num_test` must be >= 0, got {num_val} and {num_test}.")
        self.num_train, self.num_val, self.num_test = int(num_train), int(num_val), int(num_test)
        self.num_frames, self.batch_size, self.num_workers, self.seed = (
            int(num_frames),
            batch_size,
            num_workers,
            seed,
        )
        self.grid_size, self.voxel_size, self.z_min = tuple(grid_size), tuple(voxel_size), float(z_min)
        self.beams, self.azimuth_steps = beams, azimuth_steps
        self.grid = OccupancyGrid(size=self.grid_size, voxel_size=self.voxel_size, z_min=self.z_min)
        self.generator = StreetSceneGenerator(beams=beams, azimuth_steps=azimuth_steps, image_size=(2, 2))
        self.splits: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        names = "num_train num_val num_test num_frames grid_size voxel_size z_min beams azimuth_steps seed".split()
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def sequences(self, split: str) -> Tensor:
        """All occupancy sequences of ``split`` (``"train"``, ``"val"``, ``"test"``): ``(N, T, X, Y, Z)`` int64."""
        if split not in self.splits:
            count = {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]
            seeds = [self.seed * 10_000_019 + _SPLIT_OFFSET[split] + i for i in range(count)]
            empty = torch.zeros(0, self.num_frames, *self.grid_size, dtype=torch.long)
            grids = [occupancy_sequence(self.generator, s, self.num_frames, self.grid) for s in seeds]
            self.splits[split] = torch.stack(grids) if grids else empty
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val") if stage in (None, "fit", "validate") else ("test",):
            self.sequences(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = TensorDataset(self.sequences(split))
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          generator=generator if shuffle else None)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def trained_occupancy_vae(
    model: nn.Module,
    data: OccupancyDataModule | None = None,
    steps: int = 2000,
    lr: float = 1e-3,
    loss_weights: dict[str, float] | None = None,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Return ``model`` (a :class:`~lightning_distill.lidar_generation.hexplane.HexPlaneVAE` or ``VolumeVAE``) trained.

    From ``checkpoint``, from the cache, or trained now: AdamW with cosine decay on
    ``Σ w · {ce, lovasz, kl}`` (:func:`~lightning_distill.losses.lidar_generation.occupancy_vae_losses`,
    weights ``loss_weights``, default CE 1, Lovász 1, KL 1e-3), the decoder fed the reparameterised
    latent. Afterwards ``latent_scale`` is set to the standard deviation of the training latents' means,
    so that :meth:`encode_latent` gives unit-scale images to the DiT. The module comes back in eval
    mode with ``distill_source`` (which its ``repr`` shows, so a cache keyed on it follows the weights)
    and ``training_record``.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``steps`` < 1, ``lr`` <= 0 or an unknown loss term.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)[:16]})"
        model.training_record = {}
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_occupancy_vae` needs `checkpoint` or `data`; set `teacher.init_args.data`."
        )
    if isinstance(steps, bool) or int(steps) < 1 or not lr > 0:
        raise ValueError(f"`steps` must be >= 1 and `lr` > 0, got {steps!r} and {lr!r}.")
    weights = dict(VAE_LOSS_WEIGHTS, **(loss_weights or {}))
    if set(weights) != set(VAE_LOSS_WEIGHTS):
        raise ValueError(
            f"`loss_weights` may name {sorted(VAE_LOSS_WEIGHTS)}, got {sorted(loss_weights or {})}."
        )
    settings = {"kind": "occupancy_vae", "steps": int(steps), "lr": lr, "loss_weights": weights,
                "max_grad_norm": max_grad_norm, "seed": seed}  # fmt: skip

    def fit() -> dict[str, Any]:
        losses = _fit_vae(model, data, steps=int(steps), lr=lr, weights=weights, max_grad_norm=max_grad_norm)
        return loss_summary(losses, "Occupancy VAE trained: loss")

    path, info = cached_training(model, data, settings, fit, seed=seed, stem=f"{type(model).__name__}-occupancy",
                                 what=f"{steps} steps", cache_dir=cache_dir, retrain=retrain)  # fmt: skip
    model.distill_source = f"trained_occupancy_vae cache {path.name}"
    model.training_record = info
    return model.eval()


def _fit_vae(
    model: nn.Module,
    data: OccupancyDataModule,
    *,
    steps: int,
    lr: float,
    weights: dict[str, float],
    max_grad_norm: float | None,
) -> list[float]:
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    generator = torch.Generator().manual_seed(int(torch.initial_seed()))
    model.train()
    losses: list[float] = []
    step = 0
    while step < steps:
        for (occupancy,) in loader:
            logits, mean, logvar = model(occupancy, generator)
            terms = occupancy_vae_losses(logits, occupancy, mean, logvar)
            loss = sum(weights[k] * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            step += 1
            if step == steps:
                break
    model.eval()
    with torch.no_grad():
        means = torch.cat(
            [model.encode(occupancy)[0] for (occupancy,) in data._loader("train", shuffle=False)]
        )
    model.latent_scale.fill_(float(means.std()))
    return losses


class PlaneLatentDataModule(L.LightningDataModule):
    """The VAE's unit-scale latents (``vae.encode_latent``) of an :class:`OccupancyDataModule`'s sequences.

    Batches are ``(latent (B, C, H, W),)``, the rolled-out HexPlanes the DiT learns to generate.

    Args:
        vae: a trained VAE (e.g. from :func:`trained_occupancy_vae`); frozen here.
        occupancy: the occupancy data it encodes.
        batch_size: latents per batch.

    Raises:
        TypeError: ``vae`` without ``encode_latent``.
    """

    def __init__(self, vae: nn.Module, occupancy: OccupancyDataModule, batch_size: int = 32) -> None:
        super().__init__()
        if not callable(getattr(vae, "encode_latent", None)):
            raise TypeError(f"`vae` must have `encode_latent` (a HexPlaneVAE), got {type(vae).__name__}.")
        self.vae = vae.eval().requires_grad_(False)
        self.occupancy = occupancy
        self.batch_size = batch_size
        self.seed = occupancy.seed
        self.splits: dict[str, Tensor] = {}

    def latents(self, split: str) -> Tensor:
        """``(N, C, H, W)`` latents of ``split``, encoded once."""
        if split not in self.splits:
            sequences = self.occupancy.sequences(split)
            with torch.no_grad():
                chunks = [self.vae.encode_latent(s) for s in sequences.split(64)] if len(sequences) else []
            self.splits[split] = torch.cat(chunks) if chunks else torch.zeros(0)
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val") if stage in (None, "fit", "validate") else ("test",):
            self.latents(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(self.latents(split)), batch_size=self.batch_size, shuffle=shuffle,
                          generator=generator if shuffle else None)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
