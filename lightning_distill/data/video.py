"""Moving glyphs: small videos with known motion, and a still-image set of another appearance (MCM).

* :func:`moving_glyphs`: ``N`` videos ``(N, 1, F, S, S)`` of one digit glyph (scikit-learn's bundled
  digits, resized to ``glyph_size``) translated by a whole-pixel velocity per frame on a dark
  background, reflecting off the borders. The glyph never leaves the canvas, so its centre of mass
  moves by exactly the velocity between frames; the positions and per-frame displacements are
  returned as ground truth. Conditions: the digit class and the initial direction (one of 8
  compass directions). Everything is a function of ``seed``.
* :func:`glyph_stills`: the "high-quality image" set of MCM's appearance learning: single frames of
  the same glyphs at the same positions but with a striped texture and full contrast, an
  appearance the videos never show.
* :class:`MovingGlyphsDataModule`: serves ``(video, y)`` batches, ``y = (class, direction)``
  ``(B, 2)``, plus a still image per item (``(video, y, still)``) with ``stills=True``.

Pixels are served in ``[-1, 1]`` (background ``-1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader

__all__ = [
    "DIRECTIONS",
    "MovingGlyphs",
    "MovingGlyphsDataModule",
    "glyph_stills",
    "moving_glyphs",
    "simulate_positions",
]

#: The 8 compass directions ``(dy, dx)``; a condition's direction index points into this table.
DIRECTIONS: tuple[tuple[int, int], ...] = (
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
    (1, 0),
    (1, -1),
    (0, -1),
    (-1, -1),
)


@dataclass
class MovingGlyphs:
    """A set of moving-glyph videos and their ground truth.

    Attributes:
        videos: ``(N, 1, F, S, S)`` float32 in ``[-1, 1]``.
        labels: ``(N, 2)`` int64: digit class, direction index into :data:`DIRECTIONS`.
        positions: ``(N, F, 2)`` float32, the glyph's top-left corner ``(row, col)`` in each frame.
        velocities: ``(N, F - 1, 2)`` float32, the displacement from each frame to the next.
        glyphs: ``(N, g, g)`` float32 in ``[0, 1]``, the glyph drawn in each video.
    """

    videos: Tensor
    labels: Tensor
    positions: Tensor
    velocities: Tensor
    glyphs: Tensor


def _glyph_bank(glyph_size: int) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if glyph_size != 8:
        x = F.interpolate(x, size=(glyph_size, glyph_size), mode="bilinear", align_corners=False)
    return x[:, 0].clamp(0, 1), torch.as_tensor(digits.target, dtype=torch.long)


def simulate_positions(start: Tensor, velocity: Tensor, num_frames: int, low: float, high: float) -> Tensor:
    """Positions ``(N, F, 2)`` of points moving by ``velocity`` per frame and reflecting off ``[low, high]``.

    Args:
        start: ``(N, 2)`` positions in frame 0.
        velocity: ``(N, 2)`` displacement per frame (before any bounce).
        num_frames: ``F``.
        low, high: the box each coordinate stays in.

    Example:
        >>> simulate_positions(torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 2.0]]), 4, 0.0, 4.0)[0].tolist()
        [[0.0, 3.0], [1.0, 3.0], [2.0, 1.0], [3.0, 1.0]]
    """
    p, v = start.float().clone(), velocity.float().clone()
    out = [p.clone()]
    for _ in range(num_frames - 1):
        p = p + v
        over, under = p > high, p < low
        p = torch.where(over, 2 * high - p, torch.where(under, 2 * low - p, p))
        v = torch.where(over | under, -v, v)
        out.append(p.clone())
    return torch.stack(out, dim=1)


def _check(size: int, num_frames: int, glyph_size: int, speed: int) -> None:
    for name, value in (
        ("size", size),
        ("num_frames", num_frames),
        ("glyph_size", glyph_size),
        ("speed", speed),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if num_frames < 2:
        raise ValueError(f"`num_frames` must be >= 2 (a video moves), got {num_frames}.")
    if glyph_size >= size:
        raise ValueError(f"`glyph_size` must be < `size` = {size}, got {glyph_size}.")
    if 2 * speed > size - glyph_size:
        raise ValueError(
            f"`speed` must be <= (size - glyph_size) / 2 = {(size - glyph_size) // 2} so one bounce per step "
            f"suffices, got {speed}."
        )


def moving_glyphs(
    num_videos: int,
    *,
    size: int = 32,
    num_frames: int = 8,
    glyph_size: int | None = None,
    speed: int = 1,
    seed: int = 0,
) -> MovingGlyphs:
    """``num_videos`` videos of a digit glyph moving with a known velocity (see the module docstring).

    Args:
        num_videos: ``N``.
        size: frame side ``S``.
        num_frames: ``F``.
        glyph_size: the glyph's side (default ``size // 2``).
        speed: pixels per frame along each moving axis.
        seed: the seed of glyphs, positions and directions.

    Raises:
        ValueError: a size, frame count, glyph size or speed out of range.

    Example:
        >>> data = moving_glyphs(4, size=16, num_frames=4, seed=0)
        >>> tuple(data.videos.shape), tuple(data.labels.shape), tuple(data.velocities.shape)
        ((4, 1, 4, 16, 16), (4, 2), (4, 3, 2))
    """
    glyph_size = size // 2 if glyph_size is None else glyph_size
    _check(size, num_frames, glyph_size, speed)
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise ValueError(f"`num_videos` must be an integer >= 1, got {num_videos!r}.")
    bank, classes = _glyph_bank(glyph_size)
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randint(0, bank.shape[0], (num_videos,), generator=g)
    direction = torch.randint(0, len(DIRECTIONS), (num_videos,), generator=g)
    room = size - glyph_size
    start = torch.randint(0, room + 1, (num_videos, 2), generator=g).float()
    velocity = torch.tensor(DIRECTIONS, dtype=torch.float32)[direction] * speed
    positions = simulate_positions(start, velocity, num_frames, 0.0, float(room))
    glyphs = bank[pick]
    videos = torch.zeros(num_videos, num_frames, size, size)
    pos = positions.long()
    for n in range(num_videos):
        for f in range(num_frames):
            r, c = int(pos[n, f, 0]), int(pos[n, f, 1])
            videos[n, f, r : r + glyph_size, c : c + glyph_size] = glyphs[n]
    labels = torch.stack([classes[pick], direction], dim=1)
    return MovingGlyphs(
        videos=(videos * 2 - 1).unsqueeze(1),
        labels=labels,
        positions=positions,
        velocities=positions[:, 1:] - positions[:, :-1],
        glyphs=glyphs,
    )


def glyph_stills(
    num_images: int, *, size: int = 32, glyph_size: int | None = None, period: float = 3.0, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """The image set of another appearance: striped, full-contrast glyphs ``(N, 1, S, S)`` in ``[-1, 1]``, labels ``(N,)``.

    The glyph's ink is multiplied by diagonal stripes ``0.5 + 0.5 cos(2π (r + c) / period)`` and
    brightened (ink ``> 0.2`` becomes full), so frames of the videos never look like these.

    Example:
        >>> images, labels = glyph_stills(3, size=16, seed=0)
        >>> tuple(images.shape), float(images.min()) >= -1.0
        ((3, 1, 16, 16), True)
    """
    glyph_size = size // 2 if glyph_size is None else glyph_size
    _check(size, 2, glyph_size, 1)
    if not period > 0:
        raise ValueError(f"`period` must be > 0, got {period!r}.")
    bank, classes = _glyph_bank(glyph_size)
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randint(0, bank.shape[0], (num_images,), generator=g)
    room = size - glyph_size
    corner = torch.randint(0, room + 1, (num_images, 2), generator=g)
    rows, cols = torch.meshgrid(torch.arange(glyph_size), torch.arange(glyph_size), indexing="ij")
    stripes = 0.5 + 0.5 * torch.cos(2 * torch.pi * (rows + cols).float() / period)
    images = torch.zeros(num_images, size, size)
    for n in range(num_images):
        ink = (bank[pick[n]] > 0.2).float() * stripes
        r, c = int(corner[n, 0]), int(corner[n, 1])
        images[n, r : r + glyph_size, c : c + glyph_size] = ink
    return (images * 2 - 1).unsqueeze(1), classes[pick]


class MovingGlyphsDataModule(L.LightningDataModule):
    """Moving-glyph videos (train/val/test from seeds ``seed``, ``seed + 1``, ``seed + 2``).

    Batches are ``(video (B, 1, F, S, S), y (B, 2))``; with ``stills=True`` ``(video, y, still (B, 1, S, S))``,
    the still drawn from :func:`glyph_stills` (seed ``seed + 3``), the discriminator's real images in MCM.

    Args:
        num_train, num_val, num_test: videos per split.
        size, num_frames, glyph_size, speed: see :func:`moving_glyphs`.
        stills: also serve a still image per item.
        batch_size: batch size of every loader.
        seed: the seed of the data.

    Example:
        >>> dm = MovingGlyphsDataModule(num_train=8, num_val=4, num_test=4, size=16, num_frames=4, batch_size=4, stills=True)
        >>> dm.setup()
        >>> [tuple(t.shape) for t in next(iter(dm.train_dataloader()))]
        [(4, 1, 4, 16, 16), (4, 2), (4, 1, 16, 16)]
    """

    def __init__(
        self,
        num_train: int = 2048,
        num_val: int = 256,
        num_test: int = 256,
        size: int = 32,
        num_frames: int = 8,
        glyph_size: int | None = None,
        speed: int = 1,
        stills: bool = False,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        glyph = size // 2 if glyph_size is None else glyph_size
        _check(size, num_frames, glyph, speed)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.size, self.num_frames, self.glyph_size, self.speed = size, num_frames, glyph, speed
        self.stills, self.batch_size, self.seed = stills, batch_size, seed
        self.splits: dict[str, MovingGlyphs] = {}
        self.still_images: Tensor | None = None

    def make(self, split: str) -> MovingGlyphs:
        """The videos of ``split`` (``"train"``, ``"val"`` or ``"test"``) with their ground truth."""
        if split not in self.splits:
            index = {"train": 0, "val": 1, "test": 2}[split]
            count = (self.num_train, self.num_val, self.num_test)[index]
            self.splits[split] = moving_glyphs(
                count,
                size=self.size,
                num_frames=self.num_frames,
                glyph_size=self.glyph_size,
                speed=self.speed,
                seed=self.seed + index,
            )
        return self.splits[split]

    def image_set(self, n: int | None = None) -> Tensor:
        """The still images ``(n, 1, S, S)`` (default: as many as training videos)."""
        n = self.num_train if n is None else n
        if self.still_images is None or self.still_images.shape[0] < n:
            self.still_images = glyph_stills(
                n, size=self.size, glyph_size=self.glyph_size, seed=self.seed + 3
            )[0]
        return self.still_images[:n]

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            self.make(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.make(split)
        tensors = [data.videos, data.labels]
        if self.stills:
            tensors.append(self.image_set(data.videos.shape[0]))
        if not shuffle:
            return DataLoader(TensorDataset(*tensors), batch_size=self.batch_size)
        # a resumed run sees the batches of an uninterrupted one (order a function of (seed, epoch))
        sampler = EpochShuffleSampler(len(tensors[0]), seed=self.seed, yield_epoch=False)
        return ResumableDataLoader(TensorDataset(*tensors), batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
