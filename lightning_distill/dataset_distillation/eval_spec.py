"""How a distilled set is evaluated: :class:`EvalSpec`, the settings that travel with a set.

Its own file so that :mod:`~lightning_distill.dataset_distillation.evaluate` (which reads it) and
:mod:`~lightning_distill.dataset_distillation.synthetic` (which saves it with the set and calls the
evaluation) both import it without importing each other in a circle.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from torch import nn

__all__ = ["EvalSpec"]

_CONVNET = "lightning_distill.dataset_distillation.networks.ConvNet"


@dataclass
class EvalSpec:
    """How a distilled set is evaluated: train a fresh model on it, test on real data.

    The defaults are those of DC/DSA/DM/DataDAM's ``evaluate_synset``: a ConvNet-3 trained with SGD
    (lr 0.01, momentum 0.9, weight decay 5e-4, batch 256), the learning rate divided by 10 halfway,
    and DSA augmentation of every training batch (per-image parameters). The official scripts train
    for 1000 (DM) or 1800 (DataDAM) epochs; toy configs use fewer.

    Attributes:
        architecture: ``{"class_path": ..., "init_args": {...}}`` of the model to train; the class
            must map ``(B, C, H, W)`` images to ``(B, K)`` logits. Default: :class:`ConvNet`.
        augment: a DSA strategy string (see :class:`~lightning_distill.dataset_distillation.SiameseAugment`) or
            ``None`` for no augmentation.
        lr: learning rate (a set with a learned learning rate is evaluated with that one instead).
        epochs: training epochs.
        batch_size: training batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        label_type: ``"hard"`` (cross-entropy on the labels) or ``"soft"`` (KL at ``temperature``
            to the set's soft labels).
        temperature: softmax temperature of the soft-label loss.
    """

    architecture: dict[str, Any] = field(default_factory=lambda: {"class_path": _CONVNET, "init_args": {}})
    augment: str | None = "color_crop_cutout_scale_rotate"
    lr: float = 0.01
    epochs: int = 1000
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_type: Literal["hard", "soft"] = "hard"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, dict) or not isinstance(
            self.architecture.get("class_path"), str
        ):
            raise ValueError(
                f"`architecture` must be a dict with a 'class_path' (and optional 'init_args'), got "
                f"{self.architecture!r}."
            )
        unknown = sorted(set(self.architecture) - {"class_path", "init_args"})
        if unknown:
            raise ValueError(
                f"`architecture` has unknown keys {unknown}; allowed: 'class_path', 'init_args'."
            )
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.label_type not in ("hard", "soft"):
            raise ValueError(f"`label_type` must be 'hard' or 'soft', got {self.label_type!r}.")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(
                f"`momentum` and `weight_decay` must be >= 0, got {self.momentum!r} and {self.weight_decay!r}."
            )

    @classmethod
    def convnet(cls, **convnet_args: Any) -> dict[str, Any]:
        """An ``architecture`` dict for :class:`~lightning_distill.dataset_distillation.ConvNet` with these arguments."""
        return {"class_path": _CONVNET, "init_args": dict(convnet_args)}

    def build_model(self) -> nn.Module:
        """A freshly initialised model of ``architecture`` (from the global random state).

        Raises:
            ImportError: the class path cannot be imported.
            TypeError: the class path does not name an ``nn.Module`` class.
        """
        module_name, _, cls_name = self.architecture["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(
                f"`architecture.class_path` {self.architecture['class_path']!r} is not an nn.Module class."
            )
        return cls(**self.architecture.get("init_args", {}))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> EvalSpec:
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ValueError: an unknown key.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"Unknown EvalSpec keys {unknown}; the keys are {sorted(known)}.")
        return cls(**spec)
