"""The label generator HeLlO's projector imitates: the averaged soft labels of "weak teachers".

* :class:`WeakTeacherEnsemble`: ``log mean_m softmax(z_m / T)`` over several teachers;
* :func:`trajectory_checkpoints` / :func:`trajectory_teachers`: the checkpoints saved along one
  teacher's training trajectory (trained on first use, cached), as such an ensemble.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.utils.fingerprint import config_hash

__all__ = ["WeakTeacherEnsemble", "trajectory_checkpoints", "trajectory_teachers"]


class WeakTeacherEnsemble(nn.Module):
    """The average soft label of several teachers: ``log mean_m softmax(z_m / T)``.

    The output is a log-probability vector, so ``softmax(output)`` is the averaged soft label and
    the ensemble can stand wherever teacher logits are expected (with temperature 1).

    Args:
        teachers: the classifiers ``(B, C, H, W) -> (B, K)`` (e.g. checkpoints of one trajectory).
        temperature: softmax temperature of each teacher before averaging.

    Raises:
        ValueError: no teacher or ``temperature <= 0``.

    Example:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> ens = WeakTeacherEnsemble([a, b])
        >>> x = torch.randn(4, 2)
        >>> expected = (a(x).softmax(-1) + b(x).softmax(-1)) / 2
        >>> torch.allclose(ens(x).exp(), expected, atol=1e-6)
        True
    """

    def __init__(self, teachers: Sequence[nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("`teachers` is empty: give at least one teacher.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        self.teachers = nn.ModuleList(teachers)
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack(
            [F.log_softmax(t(x).float() / self.temperature, dim=-1) for t in self.teachers]
        )
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.teachers))


def _trajectory_key(model: nn.Module, data: L.LightningDataModule, settings: dict[str, Any]) -> str:
    cls = type(data)
    spec = {
        "model": repr(model),
        "data": f"{cls.__module__}.{cls.__qualname__}",
        "data_hparams": {k: repr(v) for k, v in sorted(dict(data.hparams).items())},
        **settings,
    }
    return config_hash(spec)


def trajectory_checkpoints(
    model: nn.Module,
    data: L.LightningDataModule,
    save_epochs: Sequence[int],
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> list[dict[str, Tensor]]:
    """Train ``model`` once with SGD on ``data``'s labelled training images; its weights after each save epoch.

    The run lasts ``max(save_epochs)`` epochs at a constant learning rate (a plain trajectory, as
    expert buffers record); the weights are re-initialised from ``seed`` first. The result is
    cached under ``cache_dir/trajectories`` by a key of the architecture, data and settings.

    Args:
        model: the architecture (its weights are overwritten by the last checkpoint).
        data: a datamodule with ``train_images()`` (e.g. :class:`~lightning_distill.data.DigitsDataModule`).
        save_epochs: 1-based epochs after which the weights are kept.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: minibatch size.
        seed: initialisation and data-order seed.
        cache_dir: cache root (default ``$LIGHTNING_DISTILL_CACHE`` or ``~/.cache/lightning_distill``).
        retrain: ignore a cached trajectory.

    Returns:
        One ``state_dict`` per save epoch, in the order given.

    Raises:
        ValueError: empty or non-positive ``save_epochs``.
        TypeError: a datamodule without ``train_images()``.
    """
    from lightning_distill.models.pretrained import default_cache_dir, file_lock, reinitialize

    epochs = [int(e) for e in save_epochs]
    if not epochs or min(epochs) < 1:
        raise ValueError(f"`save_epochs` must be non-empty 1-based epochs, got {list(save_epochs)}.")
    if not callable(getattr(data, "train_images", None)):
        raise TypeError(f"`data` ({type(data).__name__}) needs `train_images()`, like DigitsDataModule.")
    settings = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size}
    settings.update(seed=seed, epochs=max(epochs))
    key = _trajectory_key(model, data, settings)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / "trajectories" / f"{type(model).__name__}-{key}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file() and not retrain:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        else:
            start = time.perf_counter()
            data.setup("fit")
            x, y = data.train_images()
            keep = y >= 0
            x, y = x[keep], y[keep]
            stored = {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                reinitialize(model)
                optimizer = torch.optim.SGD(
                    model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
                )
                generator = torch.Generator().manual_seed(seed)
                model.train()
                for epoch in range(1, max(epochs) + 1):
                    for index in torch.randperm(len(y), generator=generator).split(batch_size):
                        loss = F.cross_entropy(model(x[index]), y[index])
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    stored[str(epoch)] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stored, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
            rank_zero_info(
                f"Trajectory of {max(epochs)} epochs trained in {time.perf_counter() - start:.1f} s: {path}"
            )
    model.load_state_dict(stored[str(max(epochs))])
    return [stored[str(e)] for e in epochs]


def trajectory_teachers(
    model: nn.Module,
    data: L.LightningDataModule,
    save_epochs: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9),
    temperature: float = 1.0,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    cache_dir: str | None = None,
) -> WeakTeacherEnsemble:
    """A :class:`WeakTeacherEnsemble` of the checkpoints of one training trajectory (trained on first use).

    HeLlO's projector imitates the averaged soft labels of "weak teachers" saved along a teacher's
    training (nine ResNet-18 checkpoints in the paper). Arguments as in
    :func:`trajectory_checkpoints`; ``temperature`` is the ensemble's.

    Returns:
        The ensemble, frozen, in eval mode, with ``distill_source`` naming the trajectory.
    """
    states = trajectory_checkpoints(
        model,
        data,
        save_epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        cache_dir=cache_dir,
    )
    teachers = []
    for state in states:
        teacher = copy.deepcopy(model)
        teacher.load_state_dict(state)
        teachers.append(teacher)
    ensemble = WeakTeacherEnsemble(teachers, temperature=temperature).requires_grad_(False).eval()
    ensemble.distill_source = (
        f"trajectory_teachers({type(model).__name__}, epochs {list(save_epochs)}, seed {seed}, lr {lr})"
    )
    return ensemble
