"""Named taps on intermediate features of the student and the teacher(s).

Size: one callback, a few lines over the guide: its path resolution and the error messages that
list the nearest valid paths belong with it (the built-in transforms are in
:mod:`lightning_distill.utils.features`).

``FeatureHooks`` registers forward hooks on submodules named by dotted paths and keeps the last
value each one produced (its output, its input, or a transform of either), so that a recipe can
read ``hooks["s4"]`` after running its models. It is a Lightning callback (hooks registered in
``setup``, cleared at every batch start, removed in ``teardown``) and a context manager for use
outside Lightning. It plays the role of MMRazor's recorders and torchdistill's ``io_dict``.

Paths are relative to the module the hooks are attached to (the LightningModule inside a
``Trainer``). ``teacher.`` is an alias for ``teachers.0.`` when the module keeps its teachers in
an ``nn.ModuleList`` called ``teachers`` (as ``DistillationModule`` does) and has no submodule
called ``teacher``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_distill.utils.features import bn_stats, spatial_attention

__all__ = ["FeatureHooks", "TapSpec", "bn_stats", "spatial_attention"]

TapKind = Literal["output", "input"]
Multiple = Literal["last", "list"]
_KINDS = ("output", "input")
_MULTIPLE = ("last", "list")
_SPEC_KEYS = ("path", "kind", "transform", "detach", "multiple", "clone")
_TEACHER_ROOTS = ("teacher", "teachers")
_COMPILED_CHILD = "_orig_mod"  # where ``torch.compile`` keeps the original module


_TRANSFORMS: dict[str, Callable[[Tensor], Any] | None] = {
    "identity": None,
    "bn_stats": bn_stats,
    "attention": spatial_attention,
}


@dataclass(frozen=True)
class TapSpec:
    """One tap, as parsed from the ``taps`` argument of :class:`FeatureHooks`.

    Attributes:
        name: the key the value is read back with (``hooks[name]``).
        path: dotted module path relative to the attached module (``"student.layer4"``).
        kind: ``"output"`` taps what the module returns, ``"input"`` its first positional input.
        transform: a built-in name (``"identity"``, ``"bn_stats"``, ``"attention"``) or a callable
            applied to the tapped tensor when the hook fires.
        detach: ``True``/``False`` forces detaching; ``None`` detaches taps under ``teacher``/
            ``teachers`` or inside the root's ``frozen_modules()``, and keeps the graph of others.
        multiple: when the module runs several times in one step, ``"last"`` keeps the last value
            and ``"list"`` keeps all of them in call order.
        clone: copy the value when the hook fires, for modules whose output is later modified in
            place (a BatchNorm followed by ``ReLU(inplace=True)``).
    """

    name: str
    path: str
    kind: TapKind = "output"
    transform: str | Callable[[Any], Any] = "identity"
    detach: bool | None = None
    multiple: Multiple = "last"
    clone: bool = False


@dataclass
class _Record:
    value: Any
    version: int | None  # the tensor's version counter when captured, to detect in-place edits


class FeatureHooks(L.Callback):
    """Named taps on module outputs or inputs, cleared at every batch and removable.

    In a ``Trainer`` the taps are resolved on the LightningModule in ``setup`` (before any DDP
    wrapping, and the hooks fire inside the wrapped forward), cleared at the start of every
    train/validation/test/predict batch and at the end of each of those loops, and removed in
    ``teardown``. Outside Lightning, ``attach(module)`` and a ``with`` block do the same.

    Which taps are detached: by default, taps whose path starts with ``teacher`` or ``teachers``
    (after the alias) and taps on modules inside ``root.frozen_modules()`` when the root defines
    it (``DistillationModule.register_frozen`` modules such as an EMA copy); no others. The rule
    is by path and registration, not by "has no trainable parameters", because parameter-free
    student modules (``nn.ReLU``) must keep their graph. Taps on a frozen network that the loss
    differentiates through to its input (SRe2L/CDA BatchNorm statistics, DataDAM attention on
    synthetic images) need ``"detach": False``.

    Reading a tap whose module has not run since the last clear raises ``KeyError``; reading a
    tensor that was modified in place after it was captured raises ``RuntimeError`` (set
    ``"clone": True`` on that tap).

    Args:
        taps: tap name -> module path, or tap name -> a dict with keys ``path`` (required),
            ``kind`` (``"output"`` or ``"input"``), ``transform`` (``"identity"``, ``"bn_stats"``,
            ``"attention"`` or, from Python, a callable), ``detach`` (bool), ``multiple``
            (``"last"`` or ``"list"``) and ``clone`` (bool). See :class:`TapSpec`.
        multiple: default for taps that do not set ``multiple``.

    Raises:
        TypeError: if ``taps`` or one of its entries has the wrong type.
        ValueError: if a tap has an unknown key, kind, transform or ``multiple`` value, or no path.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with FeatureHooks({"hidden": "1", "logits_in": {"path": "2", "kind": "input"}}).attach(model) as hooks:
        ...     out = model(torch.randn(3, 4))
        ...     hooks["hidden"].shape, torch.equal(hooks["hidden"], hooks["logits_in"])
        (torch.Size([3, 8]), True)
    """

    def __init__(
        self,
        taps: dict[str, str | dict[str, Any]],
        *,
        multiple: Literal["last", "list"] = "last",
    ) -> None:
        if multiple not in _MULTIPLE:
            raise ValueError(f"`multiple` must be one of {_MULTIPLE}, got {multiple!r}.")
        self._specs: dict[str, TapSpec] = _parse_taps(taps, multiple)
        self._store: dict[str, _Record | list[_Record]] = {}
        self._handles: list[RemovableHandle] = []
        self._paths: dict[str, str] = {}  # tap name -> resolved path
        self._root_name: str | None = None

    # ------------------------------------------------------------------ public API
    @property
    def taps(self) -> tuple[TapSpec, ...]:
        """The parsed taps, in declaration order."""
        return tuple(self._specs.values())

    @property
    def names(self) -> tuple[str, ...]:
        """The tap names, in declaration order."""
        return tuple(self._specs)

    @property
    def is_attached(self) -> bool:
        """Whether hooks are currently registered."""
        return self._root_name is not None

    @property
    def features(self) -> dict[str, Any]:
        """A new dict of the taps that fired since the last clear (name -> value)."""
        return {name: self[name] for name in self._specs if name in self._store}

    def attach(self, module: nn.Module) -> FeatureHooks:
        """Resolves every path on ``module`` and registers the hooks (removing earlier ones).

        ``DistributedDataParallel``/``DataParallel`` wrappers and ``torch.compile`` wrappers are
        looked through, so the paths are the ones of the unwrapped module.

        Args:
            module: the root that the tap paths are relative to.

        Returns:
            ``self``, so that ``with FeatureHooks(...).attach(model) as hooks:`` works.

        Raises:
            TypeError: if ``module`` is not an ``nn.Module``.
            ValueError: if a path does not name a submodule; the message lists the closest
                valid paths.
        """
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be a torch.nn.Module, got {_describe(module)}.")
        root = _unwrap(module)
        resolved = {name: _resolve(root, spec) for name, spec in self._specs.items()}
        frozen = _frozen_module_ids(root)
        self.remove()
        for name, (path, target) in resolved.items():
            spec = self._specs[name]
            detach = (
                spec.detach if spec.detach is not None else _is_teacher_path(path) or id(target) in frozen
            )
            record = self._recorder(spec, detach)
            if spec.kind == "output":
                handle = target.register_forward_hook(_output_hook(record))
            else:
                handle = target.register_forward_pre_hook(_input_hook(record, name, path))
            self._handles.append(handle)
            self._paths[name] = path
        self._root_name = type(root).__name__
        return self

    def remove(self) -> None:
        """Removes every registered hook and forgets the stored values. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._paths.clear()
        self._store.clear()
        self._root_name = None

    def clear(self) -> None:
        """Forgets the stored values (the hooks stay registered)."""
        self._store.clear()

    def __getitem__(self, name: str) -> Any:
        if name not in self._specs:
            raise KeyError(f"No tap named {name!r}; the taps are {list(self._specs)}.")
        if name not in self._store:
            if not self.is_attached:
                raise KeyError(
                    f"Tap {name!r} has no value: the hooks are not attached. Call `attach(module)` or "
                    "add the FeatureHooks to the Trainer's callbacks (or the module's `configure_callbacks`)."
                )
            raise KeyError(
                f"Tap {name!r} has no value: module {self._paths[name]!r} did not run since the taps were "
                "last cleared (at the start of this batch). Run the model that owns it in this step "
                "before reading the tap."
            )
        entry = self._store[name]
        if isinstance(entry, list):
            return [self._checked(name, record) for record in entry]
        return self._checked(name, entry)

    def __contains__(self, name: object) -> bool:
        """Whether tap ``name`` fired since the last clear."""
        return name in self._store

    def __enter__(self) -> FeatureHooks:
        if not self.is_attached:
            raise RuntimeError(
                "Call `attach(module)` before entering: `with FeatureHooks(...).attach(model):`."
            )
        self.clear()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        taps = ", ".join(f"{spec.name}={spec.path!r}" for spec in self._specs.values())
        return f"{type(self).__name__}({taps})"

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.attach(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.remove()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.clear()

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.clear()

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.clear()

    def on_predict_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clear()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clear()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clear()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clear()

    # ------------------------------------------------------------------ internals
    def _recorder(self, spec: TapSpec, detach: bool) -> Callable[[Any], None]:
        transform = _TRANSFORMS[spec.transform] if isinstance(spec.transform, str) else spec.transform
        store = self._store
        name = spec.name

        def record(value: Any) -> None:
            if transform is not None:
                value = transform(value)
            if detach:
                value = _map_tensors(value, Tensor.detach)
            if spec.clone:
                value = _map_tensors(value, Tensor.clone)
            entry = _Record(value, _version_of(value))
            if spec.multiple == "last":
                store[name] = entry
            else:
                store.setdefault(name, []).append(entry)  # type: ignore[union-attr]

        return record

    def _checked(self, name: str, record: _Record) -> Any:
        if record.version is not None and _version_of(record.value) != record.version:
            raise RuntimeError(
                f"Tap {name!r} (module {self._paths.get(name, '?')!r}) was modified in place after it was "
                "captured (e.g. by a following `ReLU(inplace=True)` or `+=`), so it no longer holds the "
                f"module's value. Set `clone: True` for tap {name!r}, or tap a later module."
            )
        return record.value


# ---------------------------------------------------------------------- helpers
def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


def _parse_taps(taps: object, default_multiple: str) -> dict[str, TapSpec]:
    if not isinstance(taps, Mapping) or not taps:
        raise TypeError(
            f"`taps` must be a non-empty dict of tap name -> module path (or -> dict with a 'path'), got {taps!r}."
        )
    specs: dict[str, TapSpec] = {}
    for name, entry in taps.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"`taps` keys must be non-empty strings, got {name!r}.")
        where = f"`taps[{name!r}]`"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"{where} must be a module path or a dict with a 'path', got {type(entry).__name__}."
            )
        unknown = [key for key in entry if key not in _SPEC_KEYS]
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {list(_SPEC_KEYS)}.")
        path = entry.get("path")
        if (
            not isinstance(path, str)
            or not path
            or path.startswith(".")
            or path.endswith(".")
            or ".." in path
        ):
            raise ValueError(
                f"{where}['path'] must be a dotted module path such as 'student.layer4', got {path!r}."
            )
        kind = entry.get("kind", "output")
        if kind not in _KINDS:
            raise ValueError(f"{where}['kind'] must be one of {_KINDS}, got {kind!r}.")
        transform = entry.get("transform", "identity")
        if isinstance(transform, str):
            if transform not in _TRANSFORMS:
                raise ValueError(
                    f"{where}['transform'] must be one of {list(_TRANSFORMS)} or a callable, got {transform!r}."
                )
        elif not callable(transform):
            raise TypeError(
                f"{where}['transform'] must be a name or a callable, got {type(transform).__name__}."
            )
        detach = entry.get("detach")
        if detach is not None and not isinstance(detach, bool):
            raise TypeError(f"{where}['detach'] must be true, false or null, got {detach!r}.")
        multiple = entry.get("multiple", default_multiple)
        if multiple not in _MULTIPLE:
            raise ValueError(f"{where}['multiple'] must be one of {_MULTIPLE}, got {multiple!r}.")
        clone = entry.get("clone", False)
        if not isinstance(clone, bool):
            raise TypeError(f"{where}['clone'] must be true or false, got {clone!r}.")
        specs[name] = TapSpec(name, path, kind, transform, detach, multiple, clone)
    return specs


def _unwrap(module: nn.Module) -> nn.Module:
    """Looks through DDP/DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
            continue
        inner = getattr(module, _COMPILED_CHILD, None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        return module


def _canonical_parts(root: nn.Module, path: str) -> list[str]:
    """Splits ``path``, rewriting a leading ``teacher`` to ``teachers.0`` where that alias applies."""
    parts = path.split(".")
    children = dict(root.named_children())
    if (
        parts[0] == "teacher"
        and "teacher" not in children
        and isinstance(children.get("teachers"), nn.ModuleList)
    ):
        parts = ["teachers", "0", *parts[1:]]
    return parts


def _resolve(root: nn.Module, spec: TapSpec) -> tuple[str, nn.Module]:
    """Returns the canonical path and the submodule a tap names, or raises ``ValueError``."""
    parts = _canonical_parts(root, spec.path)
    module = root
    for part in parts:
        children = dict(module.named_children())
        if part not in children and _COMPILED_CHILD in children:
            module = children[_COMPILED_CHILD]
            children = dict(module.named_children())
        if part not in children:
            raise ValueError(_not_found_message(root, spec))
        module = children[part]
    return ".".join(parts), module


def _valid_paths(root: nn.Module) -> list[str]:
    names = []
    children = dict(root.named_children())
    alias = "teacher" not in children and isinstance(children.get("teachers"), nn.ModuleList)
    for name, _ in root.named_modules():
        if not name:
            continue
        name = ".".join(part for part in name.split(".") if part != _COMPILED_CHILD)
        names.append(name)
        if alias and (name == "teachers.0" or name.startswith("teachers.0.")):
            names.append("teacher" + name[len("teachers.0") :])
    return list(dict.fromkeys(names))


def _not_found_message(root: nn.Module, spec: TapSpec) -> str:
    valid = _valid_paths(root)
    close = difflib.get_close_matches(spec.path, valid, n=5, cutoff=0.5)
    if close:
        hint = f"Closest valid paths: {close}."
    else:
        hint = f"Top-level submodules: {[name for name, _ in root.named_children()]}."
    return (
        f"Tap {spec.name!r}: path {spec.path!r} does not name a submodule of {type(root).__name__}. {hint} "
        "Fix the path in `taps` (in a config: the callback's `init_args.taps`)."
    )


def _is_teacher_path(path: str) -> bool:
    return path.split(".")[0] in _TEACHER_ROOTS


def _frozen_module_ids(root: nn.Module) -> set[int]:
    """Ids of every module inside ``root.frozen_modules()`` (``DistillationModule``), if it has one."""
    frozen_modules = getattr(root, "frozen_modules", None)
    if not callable(frozen_modules):
        return set()
    return {id(module) for frozen in frozen_modules() for module in frozen.modules()}


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple
        return type(value)(*(_map_tensors(item, fn) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(item, fn) for item in value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, fn) for key, item in value.items()}
    return value


def _version_of(value: Any) -> int | None:
    if isinstance(value, Tensor) and not value.is_inference():
        return value._version
    return None


def _output_hook(record: Callable[[Any], None]) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        record(output)

    return hook


def _input_hook(record: Callable[[Any], None], name: str, path: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args:
            raise RuntimeError(
                f"Tap {name!r} (kind 'input') on module {path!r}: the module was called without positional "
                "arguments, so there is no first input to record. Use kind 'output', or tap another module."
            )
        record(args[0])

    return hook
