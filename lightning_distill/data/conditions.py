"""Conditions without images: the training data of image-free distillation (SwiftBrush).

Image-free recipes see only what the generator is conditioned on (class labels, or prompt
embeddings precomputed by a text encoder); :class:`ConditionDataModule` serves those, resumable
(seeded epoch order) like the image datamodules.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_distill.data.images import EpochShuffleSampler, ResumableDataLoader

__all__ = ["ConditionDataModule"]


class _Conditions(Dataset):
    """Conditions ``(N, ...)``; items by ``index`` or ``(epoch, index)`` (EpochShuffleSampler)."""

    def __init__(self, conditions: Tensor) -> None:
        self.conditions = conditions

    def __len__(self) -> int:
        return self.conditions.shape[0]

    def __getitem__(self, item: int | tuple[int, int]) -> Tensor:
        return self.conditions[item[1] if isinstance(item, tuple) else item]


class ConditionDataModule(L.LightningDataModule):
    """Conditions only, no images: class labels or prompt embeddings for image-free distillation.

    Give exactly one source: ``num_classes`` (labels uniform in ``[0, num_classes)``; the null
    label is ``num_classes``), ``embedding_shape`` (random Gaussian stand-ins for text-encoder
    outputs ``(L, D)``, for tests; null = zeros) or ``embeddings_path`` (a dict saved with ``torch.save``:
    ``{"prompt_embeds": (N, L, D), "null_embeds": (1, L, D)}``, precomputed as the official
    ``prepare.py`` does). Batches are condition tensors ``(B,)`` or ``(B, L, D)``.

    Args:
        num_classes: number of classes of label conditions.
        embedding_shape: shape ``(L, D)`` of random embeddings.
        embeddings_path: file of precomputed embeddings (train on all, validate on the first ``num_val``).
        num_train: conditions per training epoch (labels, random embeddings).
        num_val: validation conditions (the samples the metrics are computed on).
        num_test: test conditions.
        batch_size: batch size of every loader.
        seed: seed of the conditions and of the training order.

    Raises:
        ValueError: no source or several, sizes < 1.

    Example:
        >>> dm = ConditionDataModule(num_classes=8, num_train=64, batch_size=16)
        >>> dm.setup()
        >>> next(iter(dm.train_dataloader())).shape, dm.null_condition.tolist()
        (torch.Size([16]), [8])
    """

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_shape: Sequence[int] | None = None,
        embeddings_path: str | None = None,
        num_train: int = 10000,
        num_val: int = 2000,
        num_test: int = 2000,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if sum(x is not None for x in (num_classes, embedding_shape, embeddings_path)) != 1:
            raise ValueError(
                "Give exactly one of `num_classes`, `embedding_shape` and `embeddings_path` "
                f"(got {num_classes!r}, {embedding_shape!r}, {embeddings_path!r}); set `data.init_args`."
            )
        for name, value in (
            ("num_train", num_train),
            ("num_val", num_val),
            ("num_test", num_test),
            ("batch_size", batch_size),
            ("num_classes", num_classes or 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be an integer >= 1, got {value!r}; set `data.init_args.{name}`."
                )
        self.num_classes = num_classes
        self.embedding_shape = tuple(embedding_shape) if embedding_shape is not None else None
        self.embeddings_path = embeddings_path
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size = batch_size
        self.seed = seed
        self._splits: dict[str, Tensor] | None = None
        self._null: Tensor | None = None

    @property
    def null_condition(self) -> Tensor:
        """The unconditional condition, batch 1: ``tensor([num_classes])`` or the null embedding ``(1, L, D)``."""
        self._prepare()
        return self._null  # type: ignore[return-value]

    def draw_conditions(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` conditions drawn like the training ones (on the generator's device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        if self.num_classes is not None:
            return torch.randint(0, self.num_classes, (n,), generator=generator, device=device)
        bank = self._prepare()["train"]
        index = torch.randint(0, bank.shape[0], (n,), generator=generator, device=device)
        return bank.to(device)[index]

    def _prepare(self) -> dict[str, Tensor]:
        if self._splits is None:
            gen = torch.Generator().manual_seed(self.seed)
            if self.num_classes is not None:
                self._splits = {
                    k: torch.randint(0, self.num_classes, (n,), generator=gen) for k, n in self.sizes.items()
                }
                self._null = torch.tensor([self.num_classes])
            elif self.embedding_shape is not None:
                self._splits = {
                    k: torch.randn(n, *self.embedding_shape, generator=gen) for k, n in self.sizes.items()
                }
                self._null = torch.zeros(1, *self.embedding_shape)
            else:
                stored = torch.load(self.embeddings_path, map_location="cpu", weights_only=True)
                bank, self._null = stored["prompt_embeds"].float(), stored["null_embeds"].float()[:1]
                self._splits = {
                    "train": bank,
                    "val": bank[: self.sizes["val"]],
                    "test": bank[: self.sizes["test"]],
                }
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def train_dataloader(self) -> DataLoader:
        dataset = _Conditions(self._prepare()["train"])
        return ResumableDataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=EpochShuffleSampler(len(dataset), seed=int(torch.initial_seed()) ^ self.seed),
            drop_last=len(dataset) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Conditions(self._prepare()["val"]), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Conditions(self._prepare()["test"]), batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
