"""A distilled dataset as learnable parameters, saved with the settings needed to evaluate it.

:class:`SyntheticSet` holds ``num_classes * ipc`` images in class blocks (images ``c * ipc`` to
``(c + 1) * ipc - 1`` belong to class ``c``), their hard labels, and optionally learnable soft
labels (logits) and a learnable learning rate (stored as its logarithm, as MTT/FTD learn it). It is
an ``nn.Module``, so a recipe owns it as a submodule: its parameters are what the optimizer
updates, and Lightning checkpoints it.

A distilled set means nothing without the way it is evaluated (which network trains on it, with
which augmentation, learning rate, epochs and labels), so :class:`EvalSpec` travels with it:
:meth:`SyntheticSet.save` writes both into one artifact, :meth:`SyntheticSet.load` reads them back
(``torch.load(..., weights_only=True)``, or safetensors for a ``.safetensors`` path), and
:meth:`SyntheticSet.evaluate` retrains a fresh model with those settings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from lightning_distill.dataset_distillation.eval_spec import EvalSpec
from lightning_distill.dataset_distillation.evaluate import EvalResult, evaluate_spec

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as L

__all__ = ["EvalSpec", "SyntheticSet"]

_FORMAT = "lightning_distill.synthetic_set"
_VERSION = 1


class SyntheticSet(nn.Module):
    """Learnable class-blocked images, labels, optional soft labels and learning rate.

    Args:
        num_classes: number of classes ``K``.
        ipc: images per class.
        image_shape: ``(C, H, W)``.
        init: ``"real"`` (each class block starts from random real images of that class, drawn
            when :meth:`initialize_from` is called, e.g. by a recipe at setup) or ``"noise"``
            (standard Gaussian, drawn now).
        seed: seed of the noise and of the choice of real images.
        learn_soft_labels: add learnable soft labels (logits ``(K * ipc, K)``), initialised to
            ``soft_label_scale`` times the one-hot labels.
        soft_label_scale: the logit of the true class in the initial soft labels.
        learn_lr: add a learnable learning rate, stored as ``log_lr``.
        lr_init: its initial value.
        eval_spec: how the set is evaluated (default :class:`EvalSpec` with a ConvNet for
            ``image_shape`` and ``num_classes``).

    Raises:
        ValueError: non-positive sizes, an unknown ``init``, or ``lr_init <= 0``.

    Example:
        >>> syn = SyntheticSet(num_classes=3, ipc=2, image_shape=(1, 4, 4), init="noise")
        >>> syn.images.shape, syn.labels.tolist()
        (torch.Size([6, 1, 4, 4]), [0, 0, 1, 1, 2, 2])
        >>> syn.class_images(1).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        num_classes: int,
        ipc: int,
        image_shape: tuple[int, int, int],
        *,
        init: Literal["real", "noise"] = "real",
        seed: int = 0,
        learn_soft_labels: bool = False,
        soft_label_scale: float = 5.0,
        learn_lr: bool = False,
        lr_init: float = 0.01,
        eval_spec: EvalSpec | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("ipc", ipc)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        shape = tuple(image_shape)
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"`image_shape` must be three positive integers (C, H, W), got {image_shape!r}.")
        if init not in ("real", "noise"):
            raise ValueError(f"`init` must be 'real' or 'noise', got {init!r}.")
        if not lr_init > 0:
            raise ValueError(f"`lr_init` must be > 0, got {lr_init!r}.")
        if eval_spec is not None and not isinstance(eval_spec, EvalSpec):
            raise TypeError(f"`eval_spec` must be an EvalSpec, got {type(eval_spec).__name__}.")
        self.num_classes, self.ipc, self.image_shape = num_classes, ipc, shape
        self.init, self.seed = init, seed
        generator = torch.Generator().manual_seed(seed)
        self.images = nn.Parameter(torch.randn(num_classes * ipc, *shape, generator=generator))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(ipc))
        soft = torch.nn.functional.one_hot(self.labels, num_classes).float() * soft_label_scale
        self.register_parameter("soft_labels", nn.Parameter(soft) if learn_soft_labels else None)
        self.register_parameter("log_lr", nn.Parameter(torch.tensor(math.log(lr_init))) if learn_lr else None)
        # Saved in checkpoints, so a resumed run does not draw the real images again.
        self.register_buffer("initialized", torch.tensor(init == "noise"))
        if eval_spec is None:
            c, h, w = shape
            eval_spec = EvalSpec(
                architecture=EvalSpec.convnet(in_channels=c, num_classes=num_classes, image_size=[h, w])
            )
        self.eval_spec = eval_spec
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ views
    @property
    def lr(self) -> Tensor | None:
        """The learned learning rate ``exp(log_lr)``, or ``None`` when it is not learned."""
        return None if self.log_lr is None else self.log_lr.exp()

    def class_slice(self, c: int) -> slice:
        """Rows of class ``c``.

        Raises:
            ValueError: ``c`` outside ``[0, num_classes)``.
        """
        if not 0 <= c < self.num_classes:
            raise ValueError(f"Class {c} is outside [0, {self.num_classes}).")
        return slice(c * self.ipc, (c + 1) * self.ipc)

    def class_images(self, c: int) -> Tensor:
        """The ``(ipc, C, H, W)`` images of class ``c`` (a view that keeps the graph)."""
        return self.images[self.class_slice(c)]

    def forward(self) -> tuple[Tensor, Tensor]:
        """``(images (K * ipc, C, H, W), labels (K * ipc,))``."""
        return self.images, self.labels

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ipc={self.ipc}, image_shape={self.image_shape}, init={self.init!r}, "
            f"soft_labels={self.soft_labels is not None}, learn_lr={self.log_lr is not None}"
        )

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def initialize_from(self, images: Tensor, labels: Tensor, *, force: bool = False) -> SyntheticSet:
        """Fill each class block with random real images of that class (``init="real"``).

        Draws without replacement from ``seed`` (with replacement when a class has fewer than
        ``ipc`` images). Does nothing for ``init="noise"``, or when the set is already
        initialised (a loaded artifact, a resumed run) unless ``force``.

        Args:
            images: real images ``(N, C, H, W)``.
            labels: their labels ``(N,)``; labels < 0 (unlabelled) are ignored.
            force: draw again even if already initialised.

        Returns:
            ``self``.

        Raises:
            ValueError: the image shape differs, or a class has no image.
        """
        if self.init == "noise" or (bool(self.initialized) and not force):
            return self
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"Real images must be (N, {', '.join(map(str, self.image_shape))}) like the synthetic set, "
                f"got {tuple(images.shape)}."
            )
        generator = torch.Generator().manual_seed(self.seed)
        for c in range(self.num_classes):
            pool = torch.nonzero(labels == c).flatten()
            if pool.numel() == 0:
                raise ValueError(f"No real image of class {c} to initialise the synthetic set from.")
            if pool.numel() >= self.ipc:
                pick = pool[torch.randperm(pool.numel(), generator=generator)[: self.ipc]]
            else:
                pick = pool[torch.randint(pool.numel(), (self.ipc,), generator=generator)]
            self.images[self.class_slice(c)] = images[pick].to(self.images)
        self.initialized.fill_(True)
        return self

    # ------------------------------------------------------------------ artifact
    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write the set and its :class:`EvalSpec` to one file.

        ``.safetensors`` paths are written with safetensors (the settings go into its metadata
        header); any other path with ``torch.save`` of plain tensors and a JSON string, which
        :meth:`load` reads with ``weights_only=True``.

        Args:
            path: the file to write (parent folders are created).
            metadata: extra JSON-serialisable facts to keep (method, steps, seconds, ...).

        Returns:
            The path written.

        Raises:
            TypeError: ``metadata`` is not JSON-serialisable.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "num_classes": self.num_classes,
            "ipc": self.ipc,
            "image_shape": list(self.image_shape),
            "init": self.init,
            "seed": self.seed,
            "eval_spec": self.eval_spec.to_dict(),
            "metadata": metadata or {},
        }
        try:
            meta_json = json.dumps(meta)
        except TypeError as err:
            raise TypeError(f"`metadata` must be JSON-serialisable: {err}") from None
        tensors = {
            "images": self.images.detach().cpu().contiguous(),
            "labels": self.labels.cpu().contiguous(),
        }
        if self.soft_labels is not None:
            tensors["soft_labels"] = self.soft_labels.detach().cpu().contiguous()
        if self.log_lr is not None:
            tensors["log_lr"] = self.log_lr.detach().cpu().reshape(1)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(path), metadata={"lightning_distill": meta_json})
        else:
            torch.save({"meta": meta_json, "tensors": tensors}, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticSet:
        """Read a set written by :meth:`save` (marked initialised).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a synthetic-set artifact.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No synthetic-set artifact at {str(path)!r}.")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            meta_json = header.get("lightning_distill")
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta_json = payload.get("meta") if isinstance(payload, dict) else None
            tensors = payload.get("tensors", {}) if isinstance(payload, dict) else {}
        meta = json.loads(meta_json) if isinstance(meta_json, str) else {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a synthetic-set artifact written by `SyntheticSet.save`.")
        if meta.get("version", 0) > _VERSION:
            raise ValueError(
                f"{str(path)!r} has format version {meta['version']}; this lightning_distill reads up to {_VERSION}."
            )
        log_lr = tensors.get("log_lr")
        synthetic = cls(
            meta["num_classes"],
            meta["ipc"],
            tuple(meta["image_shape"]),
            init=meta["init"],
            seed=meta["seed"],
            learn_soft_labels="soft_labels" in tensors,
            learn_lr=log_lr is not None,
            lr_init=float(log_lr.exp()) if log_lr is not None else 0.01,
            eval_spec=EvalSpec.from_dict(meta["eval_spec"]),
        )
        with torch.no_grad():
            synthetic.images.copy_(tensors["images"])
            synthetic.labels.copy_(tensors["labels"])
            if synthetic.soft_labels is not None:
                synthetic.soft_labels.copy_(tensors["soft_labels"])
            if synthetic.log_lr is not None:
                synthetic.log_lr.copy_(log_lr.reshape(()))
            synthetic.initialized.fill_(True)
        synthetic.metadata = meta.get("metadata", {})
        return synthetic

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, datamodule: L.LightningDataModule, seeds: tuple[int, ...] = (0, 1, 2), **overrides: Any
    ) -> EvalResult:
        """Train fresh models on the set with its :class:`EvalSpec`; accuracy on the real test split.

        Args:
            datamodule: provides ``test_dataloader()`` (the real test split).
            seeds: one model per seed (initialisation, data order, augmentation).
            **overrides: :class:`EvalSpec` fields to change for this call (e.g. ``epochs=50``).

        Returns:
            The accuracies over seeds (:class:`~lightning_distill.dataset_distillation.EvalResult`).

        Raises:
            ValueError: ``label_type="soft"`` on a set without soft labels, or an unknown override.
        """
        spec = EvalSpec.from_dict({**self.eval_spec.to_dict(), **overrides})
        if spec.label_type == "soft" and self.soft_labels is None:
            raise ValueError(
                "`label_type='soft'` needs soft labels; this set has none (learn_soft_labels=False)."
            )
        if self.lr is not None and "lr" not in overrides:
            spec.lr = float(self.lr.detach())
        soft = self.soft_labels.detach() if spec.label_type == "soft" else None
        return evaluate_spec(
            self.images.detach(), self.labels, datamodule, spec, seeds=seeds, soft_labels=soft
        )
