"""Procedural, tileable material maps with text-like labels: StableMaterials' data at toy scale.

Every map is an 8-channel stack ``(8, S, S)`` in ``[-1, 1]``, the channel layout of a PBR material:

====  ==========================  =========================================
ch.   map                          made from
====  ==========================  =========================================
0-2   albedo (base colour) RGB     the palette, modulated by the height
3-5   normal (x, y, z)             periodic finite differences of the height
6     height                       the pattern (bricks, tiles, wood, stone)
7     roughness                    per-class base value plus periodic noise
====  ==========================  =========================================

Everything is periodic on the ``S x S`` grid by construction (integer frequencies, patterns with an
integer number of repeats, integer random rolls, ``np.roll`` differences), so the maps tile:
:func:`seam_error` of a batch of data is ~0.

A condition is one of ``4 classes x 3 palettes x 2 scales = 24`` combinations, labelled as a short
text (:func:`condition_name`, e.g. ``"bricks, red, fine"``) and indexed ``0 .. 23``. A quarter of the
combinations are *novel* (:func:`is_novel`): no annotated map has them. The *unannotated* set stands
in for StableMaterials' SDXL textures: only the albedo (3 channels) of maps of every condition,
novel ones included, without the other maps.

:class:`MaterialMapsDataModule` serves ``(maps, labels, textures, texture_labels)`` training batches
(annotated maps of the seen conditions and unannotated textures), and ``(maps, labels)`` for
validation and test (held-out annotated maps). Offline and deterministic from ``seed``.
"""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader

__all__ = [
    "CLASSES",
    "NUM_CONDITIONS",
    "PALETTES",
    "SCALES",
    "MaterialMapsDataModule",
    "condition_name",
    "is_novel",
    "material_maps",
    "seam_error",
]

CLASSES = ("bricks", "tiles", "wood", "stone")
PALETTES = ("red", "grey", "brown")
SCALES = ("fine", "coarse")
NUM_CONDITIONS = len(CLASSES) * len(PALETTES) * len(SCALES)
_COLOURS = {"red": (0.70, 0.25, 0.20), "grey": (0.55, 0.55, 0.58), "brown": (0.45, 0.30, 0.15)}
_ROUGHNESS = {"bricks": 0.8, "tiles": 0.3, "wood": 0.55, "stone": 0.9}


def _parts(condition: int) -> tuple[int, int, int]:
    if not 0 <= int(condition) < NUM_CONDITIONS:
        raise ValueError(f"`condition` must be in [0, {NUM_CONDITIONS}), got {condition!r}.")
    c = int(condition)
    return c // (len(PALETTES) * len(SCALES)), (c // len(SCALES)) % len(PALETTES), c % len(SCALES)


def condition_name(condition: int) -> str:
    """The text label of a condition index, e.g. ``condition_name(0) == "bricks, red, fine"``."""
    k, p, s = _parts(condition)
    return f"{CLASSES[k]}, {PALETTES[p]}, {SCALES[s]}"


def is_novel(condition: int) -> bool:
    """Whether no annotated map has this condition (6 of the 24: ``(class + 2 palette + scale) % 4 == 0``)."""
    k, p, s = _parts(condition)
    return (k + 2 * p + s) % 4 == 0


def _periodic_noise(rng: np.random.Generator, size: int, max_freq: int, terms: int = 6) -> np.ndarray:
    """Sum of cosines with integer frequencies: periodic on the grid, scaled to max |value| 1."""
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.zeros((size, size))
    for _ in range(terms):
        kx, ky = rng.integers(-max_freq, max_freq + 1, size=2)
        if kx == 0 and ky == 0:
            kx = 1
        out += rng.normal() * np.cos(2 * np.pi * (kx * x + ky * y) / size + rng.uniform(0, 2 * np.pi))
    return out / (np.abs(out).max() + 1e-8)


def _height(kind: str, repeats: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(height, groove mask)`` ``(S, S)`` of one pattern, periodic on the grid."""
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    noise = _periodic_noise(rng, size, max_freq=repeats + 1)
    groove = np.zeros((size, size), dtype=bool)
    if kind == "bricks":
        rows, cols = repeats, max(1, repeats // 2)
        row_h, brick_w = size // rows, size // cols
        offset = (y // row_h) % 2 * (brick_w // 2)
        groove = (y % row_h == 0) | ((x + offset) % brick_w == 0)
        height = 0.5 + 0.2 * noise
    elif kind == "tiles":
        step = size // repeats
        groove = (y % step == 0) | (x % step == 0)
        tile_level = rng.uniform(-0.15, 0.15, size=(repeats, repeats))
        height = 0.5 + tile_level[y // step, x // step] + 0.05 * noise
    elif kind == "wood":
        warp = _periodic_noise(rng, size, max_freq=2)
        height = 0.6 * np.sin(2 * np.pi * (2 * repeats * x / size) + 1.5 * warp) + 0.1 * noise
    else:  # stone
        height = 0.8 * _periodic_noise(rng, size, max_freq=repeats + 1, terms=10)
    height = np.where(groove, -0.6, height)
    return np.clip(height, -1, 1), groove


def _one_map(condition: int, rng: np.random.Generator, size: int) -> np.ndarray:
    k, p, s = _parts(condition)
    kind, palette = CLASSES[k], PALETTES[p]
    repeats = 4 if SCALES[s] == "fine" else 2
    height, groove = _height(kind, repeats, rng, size)
    shade = _periodic_noise(rng, size, max_freq=3)
    base = np.clip(np.asarray(_COLOURS[palette]) + rng.uniform(-0.05, 0.05, size=3), 0, 1)
    grain = 0.75 + 0.25 * (height + 1) / 2 if kind == "wood" else 0.85 + 0.1 * shade
    albedo = base[:, None, None] * grain[None]
    if kind in ("bricks", "tiles"):
        mortar = np.asarray((0.8, 0.78, 0.74) if kind == "bricks" else (0.2, 0.2, 0.22))
        albedo = np.where(groove[None], mortar[:, None, None], albedo)
    roughness = np.clip(_ROUGHNESS[kind] + 0.1 * shade + 0.15 * groove, 0, 1)
    strength = 2.0
    dx = (np.roll(height, -1, axis=1) - np.roll(height, 1, axis=1)) / 2
    dy = (np.roll(height, -1, axis=0) - np.roll(height, 1, axis=0)) / 2
    normal = np.stack([-strength * dx, -strength * dy, np.ones_like(height)])
    normal = normal / np.linalg.norm(normal, axis=0, keepdims=True)
    maps = np.concatenate([2 * albedo - 1, normal, height[None], 2 * roughness[None] - 1])
    shift = rng.integers(0, size, size=2)
    return np.roll(maps, tuple(int(v) for v in shift), axis=(1, 2)).astype(np.float32)


def material_maps(
    n: int, seed: int = 0, size: int = 16, conditions: list[int] | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` maps ``(n, 8, size, size)`` in ``[-1, 1]`` and their condition labels ``(n,)``.

    Args:
        n: how many maps.
        seed: the seed; the same arguments give the same maps.
        size: side length, a multiple of 4 (>= 8).
        conditions: the conditions drawn from (uniformly); ``None``: all 24.

    Raises:
        ValueError: ``n < 1``, a bad ``size``, or an empty or out-of-range ``conditions``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1, got {n!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 4:
        raise ValueError(f"`size` must be a multiple of 4 and >= 8, got {size!r}.")
    pool = list(range(NUM_CONDITIONS)) if conditions is None else [int(c) for c in conditions]
    if not pool:
        raise ValueError("`conditions` must not be empty.")
    for c in pool:
        _parts(c)
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.asarray(pool), size=n)
    seeds = rng.integers(0, 2**63 - 1, size=n)
    maps = np.stack([_one_map(int(c), np.random.default_rng(int(s)), size) for c, s in zip(labels, seeds)])
    return torch.from_numpy(maps), torch.as_tensor(labels, dtype=torch.long)


def seam_error(maps: Tensor) -> Tensor:
    """Tileability: how much larger the jump across the seams of a 2 x 2 tiling is than a jump inside.

    Tiling a map 2 x 2 puts its last column next to its first (and last row next to first row).
    With ``J_seam`` the mean ``|x[..., 0] − x[..., −1]|`` and ``|x[..., 0, :] − x[..., −1, :]|``
    and ``J_in`` the mean absolute difference of neighbouring pixels inside the map (both
    directions), the seam error is ``J_seam / J_in − 1``: ~0 for tileable maps (the seam looks like
    any other pixel boundary), large for maps with an edge at the border (``S − 1`` for a ramp).
    Pooled over the batch and channels.

    Args:
        maps: ``(B, C, H, W)`` or ``(C, H, W)``, H and W >= 2.

    Returns:
        A float64 scalar.

    Raises:
        ValueError: another rank, a side below 2, or a constant input.

    Example:
        >>> ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
        >>> round(float(seam_error(ramp)), 3)  # seam jumps (1 and 0) average 1/2, inside ones 1/14
        6.0
    """
    if not isinstance(maps, Tensor) or maps.ndim not in (3, 4) or min(maps.shape[-2:]) < 2:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"`maps` must have shape (B, C, H, W) or (C, H, W) with H, W >= 2, got {shape}.")
    x = maps.double()
    seam = torch.cat(
        [(x[..., 0] - x[..., -1]).abs().flatten(), (x[..., 0, :] - x[..., -1, :]).abs().flatten()]
    )
    inside = torch.cat([x.diff(dim=-1).abs().flatten(), x.diff(dim=-2).abs().flatten()])
    if float(inside.mean()) == 0.0:
        raise ValueError("`maps` are constant: the seam error is undefined.")
    return seam.mean() / inside.mean() - 1.0


class _PairedTextures(Dataset):
    """Annotated item ``i`` with texture ``(i + 7919 epoch) mod n_u``: ``(map, label, texture, texture_label)``.

    Items are indexed by ``i`` or ``(epoch, i)`` (what ``EpochShuffleSampler`` yields).
    """

    def __init__(self, maps: Tensor, labels: Tensor, textures: Tensor, texture_labels: Tensor) -> None:
        self.maps, self.labels, self.textures, self.texture_labels = maps, labels, textures, texture_labels

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, i = item if isinstance(item, tuple) else (0, item)
        j = (i + 7919 * epoch) % len(self.textures)
        return self.maps[i], self.labels[i], self.textures[j], self.texture_labels[j]


class MaterialMapsDataModule(L.LightningDataModule):
    """Annotated material maps of the seen conditions plus unannotated textures of all conditions.

    Training batches are ``(maps (B, 8, S, S), labels (B,), textures (B, 3, S, S), texture_labels (B,))``;
    validation/test batches ``(maps, labels)`` of held-out annotated maps (seen conditions). A
    teacher trained with ``trained_denoiser(class_conditional=True)`` reads the first two items.

    Args:
        size: side length of the maps (multiple of 4).
        num_annotated: annotated training maps (seen conditions only).
        num_unannotated: unannotated textures (albedo only), every condition.
        num_val: validation maps.
        num_test: test maps.
        batch_size: training batch size.
        seed: seed of every split (independent of the training seed).
        num_workers: DataLoader workers.

    Raises:
        ValueError: a count below 1 or a bad size.
    """

    num_classes: int = NUM_CONDITIONS

    def __init__(
        self,
        size: int = 16,
        num_annotated: int = 2048,
        num_unannotated: int = 2048,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_annotated", num_annotated),
            ("num_unannotated", num_unannotated),
            ("num_val", num_val),
            ("num_test", num_test),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be an integer >= 1, got {value!r}; set `data.init_args.{name}`."
                )
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 4:
            raise ValueError(
                f"`size` must be a multiple of 4 and >= 8, got {size!r}; set `data.init_args.size`."
            )
        self.save_hyperparameters()
        self.size, self.batch_size, self.seed, self.num_workers = size, batch_size, seed, num_workers
        self.counts = {"train": num_annotated, "textures": num_unannotated, "val": num_val, "test": num_test}
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    @property
    def seen_conditions(self) -> list[int]:
        """Conditions with annotated maps."""
        return [c for c in range(NUM_CONDITIONS) if not is_novel(c)]

    def splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train", "textures", "val", "test"}`` -> ``(tensors, labels)``; textures are albedo only."""
        if self._splits is None:
            seen = self.seen_conditions
            out = {}
            for k, (name, n) in enumerate(self.counts.items()):
                pool = None if name == "textures" else seen
                maps, labels = material_maps(n, seed=self.seed * 10 + k, size=self.size, conditions=pool)
                out[name] = (maps[:, :3].contiguous() if name == "textures" else maps, labels)
            self._splits = out
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self.splits()

    def train_dataloader(self) -> DataLoader:
        splits = self.splits()
        dataset = _PairedTextures(*splits["train"], *splits["textures"])
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=int(torch.initial_seed()) ^ self.seed),
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        maps, labels = self.splits()[split]
        return DataLoader(
            torch.utils.data.TensorDataset(maps, labels), batch_size=256, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
