"""Reading and checking checkpoints of recipes, and a student saved on its own.

* :func:`read_checkpoint` loads a Lightning checkpoint with ``weights_only=True`` and turns every way
  a file can be unreadable (missing, empty, truncated, random bytes, unsafe objects) into a
  :class:`CheckpointError` that names the path and what is wrong.
* :func:`recipe_class_path` / :func:`check_recipe_class`: which recipe wrote a checkpoint, checked
  against the recipe a config builds before anything is built.
* :func:`build_from_config` builds an object from a ``class_path``/``init_args`` config (what the
  ``lightning-distill`` command records in checkpoints, so a recipe loads without its config).
* :func:`save_student_files` / :func:`load_exported_student`: a student alone, as
  ``model.safetensors`` (or ``model.pt``, a ``state_dict``) plus ``student.json`` naming its class
  and how to build it.

Nothing here imports Lightning; ``jsonargparse`` and ``safetensors`` are imported where used.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CKPT_KEY",
    "CheckpointError",
    "architecture_config",
    "build_from_config",
    "check_recipe_class",
    "class_path_of",
    "is_from",
    "load_exported_student",
    "read_checkpoint",
    "rebuild_from_checkpoint",
    "recipe_class_path",
    "save_student_files",
]

#: Key of the distillation metadata in a checkpoint (teacher sources, recipe class, build config).
CKPT_KEY = "lightning_distill"
STUDENT_FORMAT = "lightning_distill/student"
STUDENT_META = "student.json"
_STUDENT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, of another recipe, or missing what is needed."""


def class_path_of(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s class (or of ``obj`` if it is a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(
    path: str | Path, *, map_location: Any = "cpu", metadata_only: bool = False
) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``), or say clearly why not.

    With ``metadata_only`` a distributed (sharded) checkpoint folder is accepted too (written by
    ``ModelParallelStrategy``/``FSDPStrategy``: one file of tensors per rank and ``meta.pt``): what is
    returned is its ``meta.pt``, everything but the weights and optimizer states.

    Raises:
        CheckpointError: the file is missing, a folder, empty, truncated, not a PyTorch file,
            holds objects that cannot be loaded safely, or is not a Lightning checkpoint. The
            message names the path.
    """
    file = Path(path).expanduser()
    where = f"Checkpoint {str(path)!r}"
    if not file.exists():
        near = sorted(p.name for p in file.parent.glob("*.ckpt")) if file.parent.is_dir() else []
        hint = f" Checkpoints in that folder: {near[:8]}." if near else ""
        raise CheckpointError(f"{where} does not exist.{hint} Check `--ckpt_path`.")
    if file.is_dir() and metadata_only and (file / "meta.pt").is_file():
        return read_checkpoint(file / "meta.pt", map_location=map_location, metadata_only=True)
    if file.is_dir():
        inside = sorted(p.name for p in file.glob("*.ckpt"))
        raise CheckpointError(f"{where} is a folder, not a file; give one of the files in it: {inside[:8]}.")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{where} is empty (0 bytes): the process that wrote it was probably stopped while saving. "
            "Use another checkpoint of the run (e.g. `last.ckpt` or an `epoch=...` file next to it)."
        )
    with file.open("rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"
    if not is_zip and not head.startswith(b"\x80"):
        raise CheckpointError(
            f"{where} ({size} bytes) is not a PyTorch checkpoint: it is neither a zip archive nor a pickle "
            f"(it starts with {head!r}). Check that the path points at a `.ckpt` written by Lightning."
        )
    if is_zip and not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"{where} is truncated ({size} bytes; its zip directory is missing): the copy or the save was "
            "cut short. Copy it again, or use another checkpoint of the run."
        )
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own text suggests turning the safety off; say what the file holds instead.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                f"{where} holds a Python object of type {found.group(1)} that cannot be loaded safely (loading it "
                "would run code from the file). Save plain values in hyper-parameters and checkpoints (numbers, "
                "strings, lists, dicts, tensors), or load the weights from a `state_dict` file."
            ) from None
        raise CheckpointError(
            f"{where} ({size} bytes) is corrupted: its contents are not a valid PyTorch checkpoint. "
            "Use another checkpoint of the run."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        reason = type(err).__name__ + (f": {str(err).splitlines()[0][:200]}" if str(err).strip() else "")
        raise CheckpointError(
            f"{where} ({size} bytes) is truncated or corrupted and cannot be read ({reason}). "
            "Use another checkpoint of the run."
        ) from None
    if not isinstance(checkpoint, dict) or not (
        metadata_only or isinstance(checkpoint.get("state_dict"), Mapping)
    ):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{where} is not a Lightning checkpoint (no `state_dict`; found {keys}). A bare `state_dict` "
            "is loaded into a model with `load_state_dict`, not with `--ckpt_path`."
        )
    return checkpoint


def recipe_class_path(checkpoint: Mapping[str, Any]) -> str | None:
    """The class that wrote ``checkpoint``: recorded by :class:`~lightning_distill.DistillationModule`,
    else LightningCLI's ``hyper_parameters._class_path``; ``None`` when neither says."""
    meta = checkpoint.get(CKPT_KEY)
    if isinstance(meta, Mapping) and isinstance(meta.get("recipe"), str):
        return meta["recipe"]
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, Mapping) and isinstance(hparams.get("_class_path"), str):
        return hparams["_class_path"]
    return None


def _import_class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if isinstance(obj, type) else None


def check_recipe_class(
    checkpoint: Mapping[str, Any],
    path: str | Path,
    expected: str,
    *,
    how: Mapping[str, str] | None = None,
    asked: str = "the config builds",
) -> None:
    """Stop when ``checkpoint`` was written by another recipe than ``expected`` (a class path).

    A subclass of the checkpoint's recipe (or the other way round) is accepted: its weights fit.
    ``how`` maps class names to a way of getting their config (``"--recipe meal_v2"``), for the message.

    Raises:
        CheckpointError: naming both classes and the path.
    """
    found = recipe_class_path(checkpoint)
    if found is None or found == expected:
        return
    found_cls, expected_cls = _import_class(found), _import_class(expected)
    if found_cls is not None and expected_cls is not None:
        if issubclass(expected_cls, found_cls) or issubclass(found_cls, expected_cls):
            return
    elif found.rpartition(".")[2] == expected.rpartition(".")[2]:
        return  # the same class under a moved module
    name = found.rpartition(".")[2]
    recipe = f"`{how[name]}`" if how and name in how else f"the recipe config of {name}"
    raise CheckpointError(
        f"Checkpoint {str(path)!r} was written by {found}, but {asked} {expected}. Give the config "
        f"of the run that wrote it (the `config.yaml` saved in its log folder, or {recipe}), or a checkpoint "
        f"of {expected.rpartition('.')[2]}."
    )


def build_from_config(config: Mapping[str, Any], base: type = nn.Module) -> Any:
    """Build an object from a ``{"class_path": ..., "init_args": {...}}`` config, nested configs included,
    as LightningCLI does (``jsonargparse``).

    Raises:
        CheckpointError: the config does not build an instance of ``base``.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    try:
        init = parser.instantiate_classes(parser.parse_object({"obj": dict(config)}))
    except Exception as err:  # jsonargparse wraps the builder's own error; keep it as the cause
        raise CheckpointError(
            f"Could not build {config.get('class_path')!r} from its recorded config: {str(err).splitlines()[0]}"
        ) from err
    return init.obj


def rebuild_from_checkpoint(
    cls: type,
    path: str | Path,
    *,
    map_location: Any = "cpu",
    strict: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Build ``cls`` (a recipe, or a base of it) from the ``model_config`` a checkpoint records, then load its weights.

    Teachers are rebuilt from their own arguments (e.g. the teacher cache), as the CLI builds them;
    ``overrides`` replace recorded ``init_args``. The module's ``on_load_checkpoint`` runs first
    (it fills in teachers left out of the checkpoint).

    Raises:
        CheckpointError: an unreadable file, a checkpoint of another recipe than ``cls``, or one
            that records no ``model_config`` (not written by ``lightning-distill``).
    """
    checkpoint = read_checkpoint(path, map_location=map_location)
    check_recipe_class(checkpoint, path, class_path_of(cls), asked="it is loaded as")
    config = (checkpoint.get(CKPT_KEY) or {}).get("model_config")
    if not config:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not record how the student and teachers of "
            f"{recipe_class_path(checkpoint) or cls.__name__} were built (it was not written by "
            f"`lightning-distill`); pass them: `{cls.__name__}.load_from_checkpoint(path, student=..., teacher=...)`."
        )
    config = copy.deepcopy(dict(config))
    config["init_args"] = {**(config.get("init_args") or {}), **(overrides or {})}
    module = build_from_config(config, base=cls)
    module.build_config = config
    module.on_load_checkpoint(checkpoint)
    _attach_ema_targets(module, checkpoint)
    module.load_state_dict(
        checkpoint["state_dict"], strict=module.strict_loading if strict is None else strict
    )
    return module


def _attach_ema_targets(module: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Attach the EMA copies an ``EMATeacher`` made during fit, as frozen copies of their source, so they load.

    The callback's state key records ``source`` and ``target`` (``EMATeacher{'source': ..., 'target': ...}``);
    a target the rebuilt module lacks but the checkpoint's weights hold is made here.
    """
    state = checkpoint.get("state_dict") or {}
    for key in checkpoint.get("callbacks") or {}:
        if not str(key).startswith("EMATeacher{"):
            continue
        try:
            spec = ast.literal_eval(str(key)[len("EMATeacher") :])
            source, target = spec["source"], spec["target"]
            made = copy.deepcopy(module.get_submodule(source))
        except (ValueError, SyntaxError, KeyError, TypeError, AttributeError):
            continue
        if hasattr(module, target) or not any(k.startswith(f"{target}.") for k in state):
            continue
        if hasattr(module, "register_frozen"):
            module.register_frozen(target, made)
        else:
            setattr(module, target, made.requires_grad_(False).eval())


def architecture_config(config: Mapping[str, Any], student_class: str | None) -> Mapping[str, Any]:
    """The config that builds a student's architecture: ``config`` itself, or, when ``config`` is a builder
    that fills a given model with weights (``trained_classifier``), its argument of class ``student_class``."""

    def same(path: Any) -> bool:
        cls = _import_class(path) if isinstance(path, str) else None
        return cls is not None and class_path_of(cls) == student_class

    if not student_class or same(config.get("class_path")):
        return config
    for value in (config.get("init_args") or {}).values():
        if isinstance(value, Mapping) and same(value.get("class_path")):
            return value
    return config


def is_from(obj: Any, package: str) -> bool:
    """Whether ``obj``'s class (or a base) comes from ``package`` (``"diffusers"``, ``"transformers"``); ``obj``
    may be a module, a class or a class path."""
    cls = _import_class(obj) if isinstance(obj, str) else obj if isinstance(obj, type) else type(obj)
    return cls is not None and any(c.__module__.split(".")[0] == package for c in cls.__mro__)


def save_student_files(
    student: nn.Module, out: str | Path, build: Mapping[str, Any] | None, **meta: Any
) -> Path:
    """Write ``student`` alone into folder ``out``: ``model.safetensors`` (``model.pt``, a ``state_dict``,
    when ``safetensors`` is not installed) and ``student.json`` with its class, ``build`` (the
    ``class_path``/``init_args`` config that builds it) and ``meta``. :func:`load_exported_student` reads it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from safetensors.torch import save_model
    except ImportError:
        save_model = None
    if save_model is not None:
        weights = "model.safetensors"
        save_model(student, str(out / weights), metadata={"format": STUDENT_FORMAT})
    else:
        weights = "model.pt"
        torch.save(student.state_dict(), out / weights)
    info = {
        "format": STUDENT_FORMAT,
        "version": _STUDENT_VERSION,
        "class": class_path_of(student),
        "build": dict(build) if build is not None else None,
        "weights": weights,
        **meta,
    }
    (out / STUDENT_META).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return out


def load_exported_student(path: str | Path, *, map_location: Any = "cpu") -> nn.Module:
    """Build the student described by ``<path>/student.json`` and load its weights; in eval mode.

    Raises:
        FileNotFoundError: ``student.json`` or the weights file is missing.
        CheckpointError: the folder was not written by :func:`save_student_files`, or it records no build config.
    """
    folder = Path(path)
    meta_file = folder / STUDENT_META
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"No {STUDENT_META} in {str(folder)!r}: not a folder written by `lightning-distill export`."
        )
    info = json.loads(meta_file.read_text())
    if info.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{meta_file} has format {info.get('format')!r}; expected {STUDENT_FORMAT!r}.")
    if not info.get("build"):
        raise CheckpointError(
            f"{meta_file} records no build config for {info.get('class')}; build it yourself and load "
            f"{folder / info['weights']} into it."
        )
    student = build_from_config(info["build"])
    weights = folder / info["weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"Missing {weights}, named by {meta_file}.")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_model

        load_model(student, str(weights), strict=True, device=str(map_location))
    else:
        student.load_state_dict(
            torch.load(weights, map_location=map_location, weights_only=True), strict=True
        )
    return student.eval()
