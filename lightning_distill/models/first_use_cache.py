"""The train-on-first-use cache: a key, a file lock, deterministic training, checked weights.

:func:`cached_training` is what every teacher trained on first use goes through
(:func:`~lightning_distill.models.pretrained.trained_classifier`, the diffusion
``trained_denoiser``, CALICO's stage-1 teacher): it keys the result by everything that decides
the weights, trains under a file lock so concurrent runs train once, re-initialises from the seed
on :data:`TRAINING_THREADS` thread(s) in a forked random state, never writes non-finite weights,
and moves an unreadable or mismatched file aside and retrains. :func:`load_weights` loads a
user's own checkpoint instead.
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
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_distill.utils.fingerprint import config_hash

__all__ = [
    "TRAINING_THREADS",
    "cached_training",
    "default_cache_dir",
    "file_lock",
    "load_weights",
    "loss_summary",
    "reinitialize",
]


_FORMAT_VERSION = 1


TRAINING_THREADS = 1


"""CPU threads used while a teacher is trained on first use.

Float sums depend on how a reduction is split across threads, and over many steps the difference
grows into different teachers (0.952 vs 0.970 test accuracy for ``beyond_ssl``'s teacher trained
with 1 and 2 threads). One thread is what the test suite uses, so teachers it cached stay valid.
"""


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, random bytes, pickled objects: all mean "not usable weights"
        raise RuntimeError(
            f"Cannot read the checkpoint {str(path)!r}: {_load_failure(err)}. Point `checkpoint` at a "
            "`state_dict` or Lightning checkpoint written by `torch.save` (copy it again if it was cut short)."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RuntimeError(
            f"The checkpoint {str(path)!r} holds a {type(state).__name__}, not a `state_dict` (a dict of tensors)."
        )
    expected = set(model.state_dict())
    prefixes = [prefix] if prefix is not None else ["", "student.", "model.", "teacher."]
    for p in prefixes:
        candidate = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if set(candidate) == expected:
            try:
                model.load_state_dict(candidate, strict=True)
            except RuntimeError as err:
                raise RuntimeError(
                    f"The checkpoint {str(path)!r} does not fit {type(model).__name__}: {err}"
                ) from None
            return model
    sample = sorted(state)[:5]
    raise RuntimeError(
        f"The keys of {str(path)!r} (e.g. {sample}) do not match {type(model).__name__} (e.g. "
        f"{sorted(expected)[:5]}) with any of the prefixes {prefixes}; pass `prefix`."
    )


def _load_failure(err: BaseException) -> str:
    """A one-line reason why ``torch.load`` failed, without torch's advice to load unsafely."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "weights_only" in str(err) or "Unsupported global" in str(err):
        return "it holds Python objects other than tensors (loading stops there, for safety)"
    if isinstance(err, EOFError) or "central directory" in text or "truncated" in text.lower():
        return f"the file is truncated ({type(err).__name__}: {text or 'unexpected end of file'})"
    return f"it is not a PyTorch file ({type(err).__name__}: {text})"


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
    check: Callable[[dict[str, Any]], str | None] | None = None,
    on_check_failure: Literal["warn", "error"] = "warn",
) -> tuple[Path, dict[str, Any]]:
    """Train ``model`` with ``fit()`` on first use and cache its weights; load them afterwards.

    The cache file is ``<cache>/teachers/<stem>-<key>.pt`` with a JSON record next to it; the
    key covers the model, the datamodule's own settings and ``settings``. Training happens under a
    file lock (one process trains, the others wait and load), from ``reinitialize(model)`` under
    ``seed`` in a forked random state (the global one is left as it was) on
    :data:`TRAINING_THREADS` CPU threads, so the same key gives the same weights in every process;
    the weights are written atomically and only when every value is finite.

    A cached file that cannot be read, does not fit ``model`` or holds non-finite values is moved
    aside to ``<name>.corrupt-<time>`` (with its record), a warning names both files, and the model
    is trained again.

    Args:
        fit: trains ``model`` in place and returns what to record (e.g. ``{"val_acc": ...}``); a
            ``FloatingPointError`` it raises (a non-finite loss) is re-raised with the cache file and
            the configuration.
        stem: the file name before the key (default: the model's class name).
        what: how long training is, for the log line (e.g. ``"20 epochs"``).
        record_settings: the settings written to the record (default ``settings``).
        check: judges ``fit``'s output; returns what is wrong (e.g. "accuracy near chance") or ``None``.
        on_check_failure: ``"warn"`` caches the weights with the problem in the record (``"warning"``)
            and warns now and on every later load; ``"error"`` raises and caches nothing.

    Returns:
        The weights path and the record (``key``, ``seconds``, the settings and ``fit``'s output).

    Raises:
        FloatingPointError: training produced non-finite weights or a non-finite loss (nothing cached).
        RuntimeError: ``check`` found a problem and ``on_check_failure="error"`` (nothing cached), or
            an unusable cached file could not be moved aside.
    """
    if on_check_failure not in ("warn", "error"):
        raise ValueError(f"`on_check_failure` must be 'warn' or 'error', got {on_check_failure!r}.")
    key = _cache_key(model, data, settings)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    weights = root / "teachers" / f"{stem or type(model).__name__}-{key}.pt"
    record = weights.with_suffix(".json")
    config = _describe_config(model, data, settings)
    with file_lock(weights.with_suffix(".lock")):
        if weights.is_file() and not retrain:
            problem = _load_cached(model, weights)
            if problem is None:
                info = _read_record(record)
                if info.get("warning"):
                    rank_zero_warn(
                        f"The cached teacher {weights} was flagged when it was trained: {info['warning']}"
                    )
                return weights, info
            _move_aside(weights, record, problem)
        start = time.perf_counter()
        rank_zero_info(f"Training {type(model).__name__} ({key}) for {what}; cached at {weights}")
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.set_num_threads(TRAINING_THREADS)
            try:
                reinitialize(model)
                result = fit()
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"Training the teacher for {weights} stopped: {err}. Nothing was cached. Configuration: "
                    f"{config}. Check the training data for NaN/inf values, or lower the learning rate."
                ) from None
            finally:
                torch.set_num_threads(threads)
        bad = _non_finite_entries(model.state_dict())
        if bad:
            raise FloatingPointError(
                f"Refusing to cache {weights}: training left non-finite values in {_name_list(bad)}. Nothing "
                f"was cached. Configuration: {config}. Check the training data for NaN/inf values, or lower "
                "the learning rate."
            )
        info = {"key": key, **result, "seconds": time.perf_counter() - start}
        info.update(settings if record_settings is None else record_settings)
        problem = check(result) if check is not None else None
        if problem:
            if on_check_failure == "error":
                raise RuntimeError(
                    f"Refusing to cache {weights}: {problem}. Nothing was cached. Configuration: {config}."
                )
            info["warning"] = problem
            rank_zero_warn(
                f"The teacher cached at {weights} looks broken: {problem}. Configuration: {config}. Every "
                "run that loads it repeats this warning; delete the file (or pass `retrain=True`) once "
                "the cause is fixed."
            )
        _atomic_write(weights, lambda tmp: torch.save(model.state_dict(), tmp))
        _atomic_write(record, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    return weights, info


def _describe_config(model: nn.Module, data: L.LightningDataModule, settings: dict[str, Any]) -> str:
    data_args = ", ".join(f"{k}={v}" for k, v in _data_settings(data).items())
    train_args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    return f"{type(model).__name__} trained on {type(data).__name__}({data_args}) with {train_args}"


def _non_finite_entries(state: dict[str, Any]) -> list[str]:
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def _name_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _load_cached(model: nn.Module, path: Path) -> str | None:
    """Load ``path`` into ``model`` if it fits; otherwise leave ``model`` untouched and say why not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read means the file cannot serve as these weights
        return _load_failure(err)
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state_dict"
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        return (
            f"it does not fit {type(model).__name__} (missing {_name_list(missing, 3) or 'nothing'}, "
            f"unexpected {_name_list(unexpected, 3) or 'nothing'})"
        )
    wrong = [
        f"`{k}` {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape
    ]
    if wrong:
        return f"it does not fit {type(model).__name__} (shapes {', '.join(wrong[:3])})"
    bad = _non_finite_entries(state)
    if bad:
        return f"it holds non-finite values in {_name_list(bad)}"
    model.load_state_dict(state, strict=True)
    return None


def _move_aside(weights: Path, record: Path, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = weights.with_name(f"{weights.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside, n = weights.with_name(f"{weights.name}.corrupt-{stamp}-{n}"), n + 1
    try:
        os.replace(weights, aside)
        if record.is_file():
            os.replace(record, aside.with_name(aside.name.replace(weights.name, record.name, 1)))
    except OSError as err:
        raise RuntimeError(
            f"The cached teacher {weights} cannot be used ({problem}) and could not be moved aside ({err}); "
            "delete it and run again to retrain it."
        ) from None
    rank_zero_warn(
        f"The cached teacher {weights} cannot be used: {problem}. Moved it to {aside} and training it again; "
        "delete the moved file once you no longer need it."
    )


def _read_record(record: Path) -> dict[str, Any]:
    if not record.is_file():
        return {}
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError) as err:
        rank_zero_warn(
            f"Ignoring the unreadable teacher record {record} ({err}); the cached weights are fine."
        )
        return {}


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def loss_summary(losses: list[float], what: str) -> dict[str, float]:
    """The mean loss of the first and last ``min(50, len / 10)`` steps of a fit, logged as ``"<what>: a -> b"``.

    What a ``fit`` passed to :func:`cached_training` returns, so that the cache records how training went.

    Example:
        >>> loss_summary([4.0, 3.0, 2.0, 1.0], "toy")
        {'first_loss': 4.0, 'last_loss': 1.0}
    """
    window = max(1, min(50, len(losses) // 10))
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    rank_zero_info(f"{what}: {first:.4f} -> {last:.4f}")
    return {"first_loss": first, "last_loss": last}
