"""Evaluation by retraining: the family's metric.

A distilled set is judged by what a *fresh* model learns from it: train a newly initialised
network on the set alone, then measure its accuracy on the real test split; repeat over seeds and
report mean ± std. :func:`evaluate_synthetic` does this as a small Lightning loop
(:class:`RetrainClassifier` + a ``Trainer`` without logger, progress bar or checkpoints), in two
label modes:

* hard labels: cross-entropy on the set's labels (DC/DM/DataDAM);
* soft labels: ``T^2 KL(softmax(z_soft / T) || softmax(z / T))`` to stored logits (SRe2L/CDA's
  relabelled sets, FTD/MTT's learned labels, "random real + teacher soft labels").

The baselines to evaluate the same way are in
:mod:`~lightning_distill.dataset_distillation.baselines`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.dataset_distillation.augment import SiameseAugment
from lightning_distill.dataset_distillation.eval_spec import EvalSpec
from lightning_distill.dataset_distillation.networks import ConvNet
from lightning_distill.losses import kd_loss
from lightning_distill.utils.quiet import quiet_lightning

__all__ = [
    "EvalResult",
    "RetrainClassifier",
    "evaluate_spec",
    "evaluate_synthetic",
    "fit_fresh_model",
    "quiet_lightning",
    "retrain_model",
    "retrain_trainer",
    "classification_accuracy",
]


@dataclass(frozen=True)
class EvalResult:
    """Test accuracies (fractions in [0, 1]) of models retrained with several seeds.

    Example:
        >>> r = EvalResult((0.9, 0.92, 0.94), (0, 1, 2))
        >>> round(r.mean, 4), round(r.std, 4), str(r)
        (0.92, 0.02, '92.00 ± 2.00')
    """

    accuracies: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


class RetrainClassifier(L.LightningModule):
    """Trains ``model`` on a (small) set with SGD and a step decay; tests accuracy on real data.

    Batches are ``(x, y)`` (hard labels) or ``(x, y, soft_logits)`` (soft labels). Each training
    batch is augmented with ``augment`` (non-siamese: every image gets its own parameters), drawn
    from a generator seeded by ``seed``. The learning rate is divided by 10 after half the epochs
    (``evaluate_synset`` of the official code). Test metrics: ``test/acc``, ``test/ce``.

    Args:
        model: a classifier ``(B, C, H, W) -> (B, K)``.
        epochs: training epochs (for the decay milestone).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        augment: a DSA strategy string, a :class:`SiameseAugment`, or ``None``.
        temperature: temperature of the soft-label loss.
        seed: seed of the augmentation parameters.

    Raises:
        ValueError: ``epochs < 1``, ``lr <= 0`` or ``temperature <= 0``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        epochs: int,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        augment: str | SiameseAugment | None = None,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
        if not lr > 0 or not temperature > 0:
            raise ValueError(f"`lr` and `temperature` must be > 0, got {lr} and {temperature}.")
        self.model = model
        self.epochs, self.lr, self.momentum, self.weight_decay = epochs, lr, momentum, weight_decay
        self.augment = _as_augment(augment, siamese=False)
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if self.augment is not None:
            x = self.augment(x, self.augment.sample(x, self.generator))
        logits = self.model(x)
        if len(batch) > 2:
            return kd_loss(logits, batch[2], temperature=self.temperature)
        return F.cross_entropy(logits, y)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        self.log("test/acc", (logits.argmax(-1) == y).float().mean(), batch_size=y.numel())
        self.log("test/ce", F.cross_entropy(logits, y), batch_size=y.numel())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        milestone = max(1, self.epochs // 2)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def evaluate_synthetic(
    images: Tensor,
    labels: Tensor,
    datamodule: L.LightningDataModule,
    model_fn: Callable[[], nn.Module] | None = None,
    *,
    epochs: int = 300,
    lr: float = 0.01,
    seeds: Sequence[int] = (0, 1, 2),
    soft_labels: Tensor | None = None,
    temperature: float = 1.0,
    augment: str | SiameseAugment | None = "color_crop_cutout_scale_rotate",
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    accelerator: str = "cpu",
) -> EvalResult:
    """Train a fresh model on ``(images, labels)`` per seed; its accuracy on the real test split.

    Args:
        images: the training set ``(N, C, H, W)`` (a distilled set or a baseline subset).
        labels: hard labels ``(N,)``.
        datamodule: supplies ``test_dataloader()`` with real ``(x, y)`` batches.
        model_fn: builds a freshly initialised classifier; called once per seed after seeding
            the global generator. Default: a :class:`ConvNet` (width 128, depth 3, instance norm)
            for the images' shape and ``datamodule.num_classes`` (or ``labels.max() + 1``).
        epochs: training epochs.
        lr: SGD learning rate (divided by 10 after half the epochs).
        seeds: one model per seed (initialisation, data order, augmentation).
        soft_labels: logits ``(N, K)``; given, the loss is KL at ``temperature`` to them instead of
            cross-entropy to ``labels`` (soft-label mode).
        temperature: soft-label temperature.
        augment: DSA strategy (or :class:`SiameseAugment`, or ``None``) applied to every batch.
        batch_size: training batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        accelerator: the Lightning accelerator of the retraining runs.

    Returns:
        The test accuracies per seed.

    Raises:
        ValueError: mismatched shapes, an empty seed list, or bad optimisation settings.

    Example:
        >>> from lightning_distill.data import DigitsDataModule
        >>> dm = DigitsDataModule()
        >>> from lightning_distill.dataset_distillation.baselines import random_real_subset
        >>> x, y = random_real_subset(dm, ipc=1, seed=0)
        >>> result = evaluate_synthetic(x, y, dm, lambda: ConvNet(1, 10, 8, width=8), epochs=2, seeds=(0,))
        >>> 0.0 <= result.mean <= 1.0 and len(result.accuracies) == 1
        True
    """
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    if soft_labels is not None and (soft_labels.ndim != 2 or soft_labels.shape[0] != images.shape[0]):
        raise ValueError(
            f"`soft_labels` must be (N, K) with N={images.shape[0]}, got {tuple(soft_labels.shape)}."
        )
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if model_fn is None:
        num_classes = int(getattr(datamodule, "num_classes", int(labels.max()) + 1))
        c, h, w = images.shape[1:]
        model_fn = lambda: ConvNet(c, num_classes, (h, w))  # noqa: E731
    datamodule.setup("test")
    accuracies = []
    for seed in seeds:
        model = retrain_model(
            images,
            labels,
            model_fn,
            epochs=epochs,
            lr=lr,
            seed=seed,
            soft_labels=soft_labels,
            temperature=temperature,
            augment=augment,
            batch_size=batch_size,
            momentum=momentum,
            weight_decay=weight_decay,
            accelerator=accelerator,
        )
        accuracies.append(classification_accuracy(model, datamodule.test_dataloader()))
    return EvalResult(tuple(accuracies), seeds)


def retrain_model(
    images: Tensor,
    labels: Tensor,
    model_fn: Callable[[], nn.Module],
    *,
    epochs: int,
    lr: float = 0.01,
    seed: int = 0,
    soft_labels: Tensor | None = None,
    temperature: float = 1.0,
    augment: str | SiameseAugment | None = "color_crop_cutout_scale_rotate",
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    accelerator: str = "cpu",
    devices: int | list[int] = 1,
) -> nn.Module:
    """Train one fresh model on ``(images, labels)`` with a Lightning ``Trainer``; return it (eval mode).

    The global random state is seeded with ``seed`` before ``model_fn()`` and restored afterwards;
    the data order and the augmentation come from generators seeded with ``seed``. Safe to call
    from inside another ``Trainer``'s hooks (a recipe's validation): gradients are enabled for
    the run whatever the caller's grad mode. Arguments as in :func:`evaluate_synthetic`.

    Returns:
        The trained model, on the CPU, in eval mode.

    Raises:
        ValueError: mismatched shapes or bad optimisation settings.
    """
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    if soft_labels is not None and (soft_labels.ndim != 2 or soft_labels.shape[0] != images.shape[0]):
        raise ValueError(
            f"`soft_labels` must be (N, K) with N={images.shape[0]}, got {tuple(soft_labels.shape)}."
        )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    tensors = [images.detach().cpu().float().clone(), labels.detach().cpu().long().clone()]
    if soft_labels is not None:
        tensors.append(soft_labels.detach().cpu().float().clone())
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=min(batch_size, tensors[0].shape[0]),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )

    def wrap(model: nn.Module) -> L.LightningModule:
        return RetrainClassifier(
            model,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            augment=augment,
            temperature=temperature,
            seed=seed,
        )

    return fit_fresh_model(
        model_fn, wrap, loader, epochs=epochs, seed=seed, accelerator=accelerator, devices=devices
    )


def fit_fresh_model(
    model_fn: Callable[[], nn.Module],
    wrap: Callable[[nn.Module], L.LightningModule],
    loader: Iterable[Any],
    *,
    epochs: int,
    seed: int = 0,
    accelerator: str = "cpu",
    devices: int | list[int] = 1,
) -> nn.Module:
    """Build a fresh model under ``seed`` and train it for ``epochs`` epochs with a quiet, bare Trainer.

    The loop behind every evaluation by retraining (:func:`retrain_model`,
    :func:`~lightning_distill.dataset_distillation.relabel.retrain_on_relabel_cache`,
    :func:`~lightning_distill.dataset_distillation.online_labels.retrain_with_online_labels`): the global
    random state is seeded with ``seed`` before ``model_fn()`` and restored afterwards, gradients
    are on whatever the caller's grad or inference mode (so it runs inside another Trainer's
    validation), and Lightning's per-Trainer notices are silenced (:func:`quiet_lightning`).

    Args:
        model_fn: builds the fresh model.
        wrap: turns the model into the LightningModule that trains it (its loss and optimizer).
        loader: the training batches.
        epochs: training epochs.
        seed: seed of the global random state while the model is built and trained.
        accelerator: Lightning accelerator.
        devices: Lightning devices.

    Returns:
        The trained model, on the CPU, in eval mode.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = DataLoader(TensorDataset(torch.randn(8, 1, 4, 4), torch.arange(8) % 2), batch_size=4)
        >>> build = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> model = fit_fresh_model(build, lambda m: RetrainClassifier(m, epochs=1), data, epochs=1)
        >>> model.training
        False
    """
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.random.fork_rng(devices=[]),
        quiet_lightning(),
    ):
        torch.manual_seed(seed)
        model = model_fn()
        retrain_trainer(epochs, accelerator, devices).fit(wrap(model), train_dataloaders=loader)
    return model.cpu().eval()


@torch.no_grad()
def classification_accuracy(model: nn.Module, loader: Iterable[Sequence[Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (eval mode, on its own device) over ``(x, y, ...)`` batches.

    Raises:
        ValueError: the loader yields no sample.
    """
    device = next(model.parameters()).device
    correct = seen = 0
    was_training = model.training
    model.eval()
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        correct += int((model(x).argmax(-1) == y).sum())
        seen += y.numel()
    model.train(was_training)
    if seen == 0:
        raise ValueError("The test loader yielded no sample.")
    return correct / seen


def evaluate_spec(
    images: Tensor,
    labels: Tensor,
    datamodule: L.LightningDataModule,
    spec: EvalSpec,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    soft_labels: Tensor | None = None,
    accelerator: str = "cpu",
) -> EvalResult:
    """:func:`evaluate_synthetic` with the settings of an :class:`EvalSpec`.

    Raises:
        ValueError: ``spec.label_type == "soft"`` without ``soft_labels``.
    """
    if spec.label_type == "soft" and soft_labels is None:
        raise ValueError("The EvalSpec asks for soft labels (`label_type='soft'`) but `soft_labels` is None.")
    return evaluate_synthetic(
        images,
        labels,
        datamodule,
        spec.build_model,
        epochs=spec.epochs,
        lr=spec.lr,
        seeds=seeds,
        soft_labels=soft_labels if spec.label_type == "soft" else None,
        temperature=spec.temperature,
        augment=spec.augment,
        batch_size=spec.batch_size,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        accelerator=accelerator,
    )


# ---------------------------------------------------------------------------- helpers
def _as_augment(augment: str | SiameseAugment | None, *, siamese: bool) -> SiameseAugment | None:
    if augment is None or isinstance(augment, SiameseAugment):
        return augment
    if isinstance(augment, str):
        return None if augment.lower() in ("", "none") else SiameseAugment(augment, siamese=siamese)
    raise TypeError(
        f"`augment` must be a strategy string, a SiameseAugment or None, got {type(augment).__name__}."
    )


def retrain_trainer(epochs: int, accelerator: str = "cpu", devices: int | list[int] = 1) -> L.Trainer:
    """The bare Trainer of evaluation by retraining: ``epochs`` epochs, no logger, checkpoint, bar or validation."""
    return L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=max(1, epochs),
    )
