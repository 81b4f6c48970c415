"""Getting a trained teacher: from the user's checkpoint, or trained on first use and cached.

:func:`trained_classifier` (alias :func:`trained_teacher`) returns the module it is given,
with trained weights; it serves teachers, and students that start from a supervised checkpoint. Use it as a
``class_path`` in a recipe config so that the config runs on a fresh clone::

    teacher:
      class_path: lightning_distill.models.trained_classifier
      init_args:
        model: {class_path: lightning_distill.models.SmallCNN, init_args: {width: 64}}
        data: {class_path: lightning_distill.data.DigitsDataModule, init_args: {size: 16}}
        epochs: 30

The cache is keyed by everything that decides the weights (architecture, data settings,
training settings, seed), so a changed teacher config trains a new teacher. Point
``checkpoint`` at your own weights to skip training (a raw ``state_dict`` or a Lightning
checkpoint; loaded with ``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_distill.utils.fingerprint import config_hash, file_sha256

__all__ = [
    "default_cache_dir",
    "file_lock",
    "load_weights",
    "reinitialize",
    "trained_classifier",
    "trained_teacher",
]

_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$LIGHTNING_DISTILL_CACHE`` if set, else ``~/.cache/lightning_distill``."""
    env = os.environ.get("LIGHTNING_DISTILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lightning_distill"


def load_weights(model: nn.Module, checkpoint: str | os.PathLike, *, prefix: str | None = None) -> nn.Module:
    """Load weights from a ``state_dict`` file or a Lightning checkpoint into ``model`` (strictly).

    Args:
        model: the module to fill.
        checkpoint: path of a ``.pt``/``.ckpt`` file.
        prefix: key prefix to strip (``"student."`` for a distilled student). ``None`` tries the
            keys as they are, then ``"student."``, ``"model."`` and ``"teacher."``.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: no prefix makes the keys match the model.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Teacher checkpoint not found: `checkpoint`={str(checkpoint)!r}. Give the path of a state_dict "
            "or Lightning checkpoint, or leave `checkpoint` unset to train the teacher from `data`."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    expected = set(model.state_dict())
    prefixes = [prefix] if prefix is not None else ["", "student.", "model.", "teacher."]
    for p in prefixes:
        candidate = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if set(candidate) == expected:
            model.load_state_dict(candidate, strict=True)
            return model
    sample = sorted(state)[:5]
    raise RuntimeError(
        f"The keys of {str(path)!r} (e.g. {sample}) do not match {type(model).__name__} (e.g. "
        f"{sorted(expected)[:5]}) with any of the prefixes {prefixes}; pass `prefix`."
    )


def _data_settings(data: L.LightningDataModule) -> dict[str, str]:
    """The datamodule's constructor arguments, read from its attributes where it keeps them.

    Not from ``data.hparams`` first: under LightningCLI, ``save_hyperparameters`` in a datamodule
    nested in a model's config (a teacher's training data) records the top-level ``data:``
    section's arguments instead of its own, which would key teachers on the wrong settings.
    """
    hparams = dict(getattr(data, "hparams", {}))
    out = {}
    for name, param in inspect.signature(type(data).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in vars(data):
            out[name] = repr(vars(data)[name])
        elif name in hparams:
            out[name] = repr(hparams[name])
    return out


def _cache_key(model: nn.Module, data: L.LightningDataModule, settings: dict[str, Any]) -> str:
    cls = type(data)
    spec = {
        "format": _FORMAT_VERSION,
        "model": repr(model),
        "data": f"{cls.__module__}.{cls.__qualname__}",
        "data_settings": _data_settings(data),
        **settings,
    }
    return config_hash(spec)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folders) for the ``with`` block.

    Used around train-on-first-use caches so that concurrent processes train a model once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reinitialize(model: nn.Module) -> None:
    """Call ``reset_parameters()`` on every submodule that has one (PyTorch's default init, global RNG)."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def cached_training(
    model: nn.Module,
    data: L.LightningDataModule,
    settings: dict[str, Any],
    fit: Callable[[], dict[str, Any]],
    *,
    seed: int,
    stem: str | None = None,
    what: str = "",
    cache_dir: str | None = None,
    retrain: bool = False,
    record_settings: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train ``model`` with ``fit()`` on first use and cache its weights; load them afterwards.

    The cache file is ``<cache>/teachers/<stem>-<key>.pt`` with a JSON record next to it; the
    key covers the model, the datamodule's own settings and ``settings``. Training happens under a
    file lock (one process trains, the others wait and load), from ``reinitialize(model)`` under
    ``seed`` without touching the global random state, and the weights are written atomically.

    Args:
        fit: trains ``model`` in place and returns what to record (e.g. ``{"val_acc": ...}``).
        stem: the file name before the key (default: the model's class name).
        what: how long training is, for the log line (e.g. ``"20 epochs"``).
        record_settings: the settings written to the record (default ``settings``).

    Returns:
        The weights path and the record (``key``, ``seconds``, the settings and ``fit``'s output).
    """
    key = _cache_key(model, data, settings)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    weights = root / "teachers" / f"{stem or type(model).__name__}-{key}.pt"
    record = weights.with_suffix(".json")
    with file_lock(weights.with_suffix(".lock")):
        if weights.is_file() and not retrain:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return weights, json.loads(record.read_text()) if record.is_file() else {}
        start = time.perf_counter()
        rank_zero_info(f"Training {type(model).__name__} ({key}) for {what}; cached at {weights}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reinitialize(model)
            result = fit()
        tmp = weights.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, weights)
        info = {"key": key, **result, "seconds": time.perf_counter() - start}
        info.update(settings if record_settings is None else record_settings)
        record.write_text(json.dumps(info, indent=2))
    return weights, info


def _fit_classifier(
    model: nn.Module,
    data: L.LightningDataModule,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float,
) -> float:
    """Plain supervised training with AdamW + cosine decay; returns validation accuracy."""
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            x, y = batch[0], batch[1]
            keep = y >= 0
            if not keep.any():
                continue
            loss = F.cross_entropy(model(x[keep]), y[keep], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            x, y = batch[0], batch[1]
            correct += int((model(x).argmax(-1) == y).sum())
            seen += y.numel()
    return correct / max(seen, 1)


def trained_classifier(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    checkpoint: str | None = None,
    epochs: int = 30,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Return ``model`` with trained weights: from ``checkpoint``, from the cache, or trained now.

    With ``checkpoint`` the weights are loaded from that file. Otherwise the model is trained
    with cross-entropy on the labelled training images of ``data`` (a plain AdamW loop, weights
    re-initialised from ``seed``) and cached under ``cache_dir`` by a key of the architecture, the
    data settings and these arguments; a later call with the same settings loads the cached
    weights. A file lock makes concurrent processes (DDP ranks) train it once.

    The returned module carries ``distill_source``, a string saying where its weights came from,
    which :class:`~lightning_distill.DistillationModule` records in checkpoints.

    Args:
        model: the teacher architecture (any classifier ``(B, C, H, W) -> (B, K)``).
        data: a datamodule serving ``(x, y)`` batches; required unless ``checkpoint`` is given.
        checkpoint: path of the user's trained weights.
        epochs: training epochs when training.
        lr: peak learning rate (one-cycle schedule).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        seed: seed for the re-initialisation and the data order.
        cache_dir: where cached teachers live (default :func:`default_cache_dir`).
        retrain: ignore a cached teacher and train again.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: neither ``checkpoint`` nor ``data`` is given, or ``epochs`` < 1.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_teacher` needs `checkpoint` (your trained weights) or `data` (to train the teacher "
            "on first use); set `model.init_args.teacher.init_args.checkpoint` or `.data`."
        )
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    settings = {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "seed": seed,
    }

    def fit() -> dict[str, Any]:
        val_acc = _fit_classifier(
            model, data, epochs=epochs, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing
        )
        rank_zero_info(f"Teacher trained: val acc {val_acc:.4f}")
        return {"val_acc": val_acc}

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        what=f"{epochs} epochs",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    acc = info.get("val_acc")
    model.distill_source = f"trained_teacher cache {weights}" + (
        f" (val acc {acc:.4f})" if acc is not None else ""
    )
    return model.eval()


trained_teacher = trained_classifier
"""Alias of :func:`trained_classifier`, for configs that read better with it."""
