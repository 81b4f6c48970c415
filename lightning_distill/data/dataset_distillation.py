"""Datamodules of dataset distillation: class-balanced real batches, and step indices for recovery.

Matching methods (DC, DM, DataDAM, MTT/FTD) compare, class by class, a batch of real images with
the synthetic images of the same class. :class:`ClassBalancedDataModule` wraps an image datamodule
(anything with ``train_images()``, e.g. :class:`~lightning_distill.data.DigitsDataModule`) and
serves training batches of exactly ``per_class`` real images of every class, class-blocked:
``x`` has shape ``(K * per_class, C, H, W)`` and rows ``c * per_class`` to
``(c + 1) * per_class - 1`` are of class ``c`` (the official ``get_images(c, n)`` for every ``c``).
Validation, test and predict loaders are the wrapped datamodule's (real images).

Which images a batch holds is a pure function of ``(seed, epoch, batch index)``, so a resumed run
(with :class:`~lightning_distill.data.ResumableDataLoader`) sees the batches an uninterrupted run
would.

:class:`RecoverDataModule` (SRe2L / CDA): training batches that are only step indices (recovery
inverts a teacher and reads no real data); the wrapped datamodule's real images for validation
and testing.
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import ResumableDataLoader

__all__ = ["ClassBalancedBatches", "ClassBalancedDataModule", "RecoverDataModule"]


class ClassBalancedBatches(Dataset):
    """A dataset whose item ``i`` is a whole class-blocked batch ``(x, y)``.

    Args:
        images: real images ``(N, C, H, W)``.
        labels: labels ``(N,)`` in ``[0, num_classes)``; other values (``-1``) are ignored.
        num_classes: ``K``.
        per_class: images per class in a batch; a class with fewer images is sampled with
            replacement, otherwise without (a random permutation, as the official code).
        steps: number of batches per epoch.
        seed: seed of the draws.

    Raises:
        ValueError: non-positive sizes, or a class without images.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, num_classes: int, per_class: int, steps: int, seed: int = 0
    ) -> None:
        for name, value in (("num_classes", num_classes), ("per_class", per_class), ("steps", steps)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        self.images = images
        self.labels = labels
        self.pools = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
        empty = [c for c, pool in enumerate(self.pools) if pool.numel() == 0]
        if empty:
            raise ValueError(
                f"Classes {empty} have no training image; class-balanced batches need every class."
            )
        self.num_classes, self.per_class, self.steps, self.seed = num_classes, per_class, steps, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch * 10_007 + index) & 0x7FFF_FFFF_FFFF
        )
        picks = []
        for pool in self.pools:
            if pool.numel() >= self.per_class:
                picks.append(pool[torch.randperm(pool.numel(), generator=generator)[: self.per_class]])
            else:
                picks.append(pool[torch.randint(pool.numel(), (self.per_class,), generator=generator)])
        chosen = torch.cat(picks)
        return self.images[chosen], self.labels[chosen]


class _EpochSetter(torch.utils.data.Sampler):
    """Yields ``0 .. steps - 1`` and forwards ``set_epoch`` (Lightning calls it) to the dataset."""

    def __init__(self, dataset: ClassBalancedBatches) -> None:
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        return iter(range(len(self.dataset)))


class ClassBalancedDataModule(L.LightningDataModule):
    """Serves class-blocked batches of ``per_class`` real images per class from another datamodule.

    Args:
        data: the image datamodule (needs ``train_images()``, ``num_classes`` or labels
            ``0..K-1``, and ``val_dataloader``/``test_dataloader`` for evaluation).
        per_class: real images per class in each batch (``batch_real`` of the official code).
        steps_per_epoch: training batches per epoch (the number of distillation iterations per
            epoch).
        seed: seed of the draws (combined with the run's seed, so different runs differ).

    Raises:
        ValueError: ``per_class`` or ``steps_per_epoch`` < 1.

    Example:
        >>> from lightning_distill.data import DigitsDataModule
        >>> dm = ClassBalancedDataModule(DigitsDataModule(), per_class=4, steps_per_epoch=3)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y[:8].tolist()
        ((40, 1, 8, 8), [0, 0, 0, 0, 1, 1, 1, 1])
    """

    def __init__(
        self, data: L.LightningDataModule, per_class: int = 64, steps_per_epoch: int = 100, seed: int = 0
    ) -> None:
        super().__init__()
        if per_class < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"`per_class` and `steps_per_epoch` must be >= 1, got {per_class} and {steps_per_epoch}; "
                "set `data.init_args.per_class` / `data.init_args.steps_per_epoch`."
            )
        if not callable(getattr(data, "train_images", None)):
            raise TypeError(
                f"`data` ({type(data).__name__}) needs a `train_images()` method returning the training images "
                "and labels, like lightning_distill.data.DigitsDataModule."
            )
        self.data = data
        self.per_class = per_class
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed

    @property
    def num_classes(self) -> int:
        """Number of classes: the wrapped datamodule's ``num_classes``, else ``max label + 1``."""
        if hasattr(self.data, "num_classes"):
            return int(self.data.num_classes)
        _, y = self.train_images()
        return int(y.max()) + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the training images."""
        x, _ = self.train_images()
        return tuple(x.shape[1:])  # type: ignore[return-value]

    def setup(self, stage: str | None = None) -> None:
        self.data.setup(stage)

    def train_images(self) -> tuple[Tensor, Tensor]:
        """The wrapped datamodule's labelled training images and labels."""
        self.data.setup("fit")
        x, y = self.data.train_images()
        keep = y >= 0
        return x[keep], y[keep]

    def train_dataloader(self) -> DataLoader:
        x, y = self.train_images()
        run_seed = int(torch.initial_seed()) ^ self.seed
        dataset = ClassBalancedBatches(x, y, self.num_classes, self.per_class, self.steps_per_epoch, run_seed)
        return ResumableDataLoader(dataset, batch_size=None, sampler=_EpochSetter(dataset))

    def val_dataloader(self) -> DataLoader:
        return self.data.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.data.test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.data.predict_dataloader()


# ---------------------------------------------------------------------------- recovery (SRe2L / CDA)
class _Steps(Dataset):
    """Item ``i`` is the tensor ``[i]``: recovery steps need no real data."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Tensor:
        return torch.tensor([index])


class RecoverDataModule(L.LightningDataModule):
    """Training batches that are only step indices; real images for validation and testing.

    SRe2L/CDA recovery never reads real images: it inverts the teacher. This wraps the datamodule
    the teacher was trained on so that ``fit`` runs ``steps_per_epoch`` steps per epoch (set
    ``trainer.max_steps`` to the recovery budget), validation and test use its real splits, and
    ``train_images()`` gives a recipe the data range (to clip the images to) or real images for
    an ``init: real`` ablation.

    Args:
        data: the image datamodule (with ``val_dataloader``/``test_dataloader`` and, for the pixel
            range, ``train_images()``).
        steps_per_epoch: steps per training epoch.

    Raises:
        ValueError: ``steps_per_epoch < 1``.

    Example:
        >>> from lightning_distill.data import DigitsDataModule
        >>> dm = RecoverDataModule(DigitsDataModule(), steps_per_epoch=3)
        >>> [batch.tolist() for batch in dm.train_dataloader()]
        [[0], [1], [2]]
    """

    def __init__(self, data: L.LightningDataModule, steps_per_epoch: int = 100) -> None:
        super().__init__()
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(
                f"`steps_per_epoch` must be an integer >= 1, got {steps_per_epoch!r}; "
                "set `data.init_args.steps_per_epoch`."
            )
        self.data = data
        self.steps_per_epoch = steps_per_epoch

    @property
    def num_classes(self) -> int:
        """The wrapped datamodule's ``num_classes``.

        Raises:
            AttributeError: it has none.
        """
        return int(self.data.num_classes)

    def setup(self, stage: str | None = None) -> None:
        self.data.setup(stage)

    def train_images(self) -> tuple[Tensor, Tensor]:
        """The wrapped datamodule's labelled training images and labels.

        Raises:
            TypeError: the wrapped datamodule has no ``train_images()``.
        """
        train_images = getattr(self.data, "train_images", None)
        if not callable(train_images):
            raise TypeError(f"{type(self.data).__name__} has no `train_images()` method.")
        self.data.setup("fit")
        x, y = train_images()
        keep = y >= 0
        return x[keep], y[keep]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.steps_per_epoch), batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self.data.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.data.test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.data.predict_dataloader()
