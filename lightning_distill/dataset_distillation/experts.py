"""Expert trajectories of MTT / FTD: networks trained on the real data, every epoch recorded.

* :class:`ExpertSpec`, :func:`train_expert`, :func:`expert_trajectories`: experts trained on the
  real data with SGD, SAM or GSAM (flat trajectories, FTD), recording the flat parameters
  (:class:`~lightning_distill.dataset_distillation.trajectory.ParamLayout`) after every epoch;
* :class:`ExpertTrajectories` holds them ``(E, T + 1, P)``, samples segments, and is saved to /
  loaded from disk (cached by a key of everything that decides it).

SAM and GSAM come from the ``pytorch-optimizer`` package (``pytorch_optimizer.SAM`` /
``pytorch_optimizer.GSAM``, imported when an expert uses them).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.dataset_distillation.augment import SiameseAugment
from lightning_distill.dataset_distillation.networks import ConvNet, ConvNetSpec, reset_parameters
from lightning_distill.dataset_distillation.trajectory import ParamLayout
from lightning_distill.models.pretrained import file_lock
from lightning_distill.utils.fingerprint import config_hash, fingerprint

__all__ = ["ExpertSpec", "ExpertStep", "ExpertTrajectories", "expert_trajectories", "train_expert"]

_FORMAT = "lightning_distill.expert_trajectories"
_VERSION = 1
_OPTIMIZERS = ("sgd", "sam", "gsam")


@dataclass(frozen=True)
class ExpertSpec:
    """How the experts are trained on the real data (``buffer.py`` / ``buffer_FTD.py`` of the official code).

    Attributes:
        num_experts: how many experts (independent initialisations).
        epochs: epochs per expert; the trajectory keeps ``epochs + 1`` checkpoints (the start too).
        optimizer: ``"sgd"`` (MTT), ``"sam"`` (SAM, Foret et al.) or ``"gsam"`` (GSAM, Zhuang et
            al.; FTD's ``buffer_FTD.py``). The base optimizer is always SGD.
        lr: SGD learning rate (``lr_teacher``).
        momentum: SGD momentum (``mom``).
        weight_decay: SGD weight decay (``l2``).
        batch_size: real images per step (``batch_train``).
        augment: DSA strategy applied to every real batch, per image (``None``/``"none"``: off).
        rho: SAM/GSAM perturbation radius (FTD's run script: ``rho_max = rho_min = 0.01``).
        alpha: GSAM's weight of the surrogate-gap (orthogonal) gradient component.
        adaptive: ASAM-style perturbation ``rho T_w^2 g / ||T_w g||`` with ``T_w = |w|`` (the FTD
            code's default).
        seed: experts ``k`` start from weights drawn from ``(seed, k)``.
    """

    num_experts: int = 100
    epochs: int = 50
    optimizer: Literal["sgd", "sam", "gsam"] = "gsam"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    augment: str | None = "color_crop_cutout_flip_scale_rotate"
    rho: float = 0.01
    alpha: float = 0.4
    adaptive: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_experts", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {_OPTIMIZERS}, got {self.optimizer!r}.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}.")
        for name in ("momentum", "weight_decay", "rho"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {self.alpha!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpertSpec:
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ValueError: an unknown key.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ExpertSpec keys {unknown}; the keys are {sorted(known)}.")
        return cls(**data)


class _ConstantRho:
    """The ``rho_scheduler`` GSAM asks for, for a constant radius (``rho_max == rho_min``)."""

    def __init__(self, rho: float) -> None:
        self.rho = rho

    def step(self) -> float:
        return self.rho


class ExpertStep:
    """One optimizer step of an expert on a batch: SGD, SAM or GSAM (``pytorch_optimizer``).

    Args:
        model: the expert network (its parameters are updated in place).
        spec: the optimizer settings.

    Raises:
        ImportError: SAM/GSAM without the ``pytorch-optimizer`` package.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> step = ExpertStep(net, ExpertSpec(optimizer="sgd", lr=0.1))
        >>> loss = step(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, model: nn.Module, spec: ExpertSpec) -> None:
        self.model, self.spec = model, spec
        params = [p for p in model.parameters() if p.requires_grad]
        sgd = {"lr": spec.lr, "momentum": spec.momentum, "weight_decay": spec.weight_decay}
        if spec.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, **sgd)
            return
        try:
            from pytorch_optimizer import GSAM, SAM
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"`optimizer='{spec.optimizer}'` experts need the pytorch-optimizer package: "
                "`pip install pytorch-optimizer`."
            ) from err
        if spec.optimizer == "sam":
            self.optimizer = SAM(params, torch.optim.SGD, rho=spec.rho, adaptive=spec.adaptive, **sgd)
        else:
            base = torch.optim.SGD(params, **sgd)
            self.optimizer = GSAM(
                params, base, model, _ConstantRho(spec.rho), alpha=spec.alpha, adaptive=spec.adaptive
            )

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Update the model on ``(x, y)``; return the cross-entropy at the unperturbed weights."""
        if self.spec.optimizer == "gsam":
            self.optimizer.set_closure(F.cross_entropy, x, y)
            _, loss = self.optimizer.step()
            return loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        if self.spec.optimizer == "sgd":
            self.optimizer.step()
            return loss.detach()

        def closure() -> Tensor:  # the gradient at the perturbed weights (SAM's second pass)
            self.optimizer.zero_grad(set_to_none=True)
            with _frozen_batch_norm_stats(self.model):
                second = F.cross_entropy(self.model(x), y)
            second.backward()
            return second

        self.optimizer.step(closure)
        return loss.detach()


@contextlib.contextmanager
def _frozen_batch_norm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics are not updated by the perturbed (second) forward pass."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved.append((module, module.momentum))
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum


def train_expert(
    network: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: ExpertSpec,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Train ``network`` in place on ``(images, labels)``; its flat parameters after every epoch.

    Each epoch shuffles the images (from ``generator``), and each batch is augmented with
    per-image DSA parameters when ``spec.augment`` is set, then stepped with SGD, SAM or GSAM.

    Args:
        network: the expert, already initialised (train mode is set here).
        images: real training images ``(N, C, H, W)`` (on the network's device).
        labels: class indices ``(N,)``.
        spec: the training settings (``num_experts`` and ``seed`` are not used here).
        generator: CPU generator of the data order and augmentation.

    Returns:
        The trajectory ``(spec.epochs + 1, P)``: row 0 the initial weights, row ``e`` after epoch ``e``.

    Raises:
        ValueError: mismatched images and labels.
    """
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    layout = ParamLayout.of(network)
    augment = None
    if spec.augment and spec.augment.lower() != "none":
        augment = SiameseAugment(spec.augment, siamese=False)
    step = ExpertStep(network, spec)
    network.train()
    checkpoints = [layout.flatten(network).cpu()]
    for _ in range(spec.epochs):
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for index in order.split(spec.batch_size):
            x, y = images[index], labels[index]
            if augment is not None:
                x = augment(x, augment.sample(x, generator))
            step(x, y)
        checkpoints.append(layout.flatten(network).cpu())
    return torch.stack(checkpoints)


class ExpertTrajectories:
    """A buffer of expert trajectories: flat parameters ``(E, T + 1, P)`` and what made them.

    Args:
        params: ``params[k, e]`` is expert ``k``'s flat parameters after epoch ``e`` (``e = 0``:
            the initialisation).
        layout: the parameter layout of the architecture.
        network: the architecture, as a :class:`ConvNetSpec` dict.
        spec: the training settings (:class:`ExpertSpec` dict), or ``None`` for a user's buffer.
        metadata: anything JSON-serialisable (e.g. training seconds, test accuracies).

    Raises:
        ValueError: ``params`` is not ``(E, T + 1, P)`` with ``P = layout.numel`` and ``T >= 1``.

    Example:
        >>> buffer = ExpertTrajectories(torch.arange(12.0).reshape(1, 3, 4), ParamLayout(("w",), ((4,),)))
        >>> start, target = buffer.segment(0, start_epoch=1, expert_epochs=1)
        >>> start.tolist(), target.tolist(), buffer.num_epochs
        ([4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0], 2)
    """

    def __init__(
        self,
        params: Tensor,
        layout: ParamLayout,
        network: Mapping[str, Any] | None = None,
        spec: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if params.ndim != 3 or params.shape[2] != layout.numel or params.shape[1] < 2:
            raise ValueError(
                f"`params` must be (experts, epochs + 1 >= 2, {layout.numel}), got {tuple(params.shape)}."
            )
        self.params = params.detach()
        self.layout = layout
        self.network = dict(network or {})
        self.spec = dict(spec) if spec is not None else None
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def num_experts(self) -> int:
        return self.params.shape[0]

    @property
    def num_epochs(self) -> int:
        """``T``: the epochs each trajectory spans (it has ``T + 1`` checkpoints)."""
        return self.params.shape[1] - 1

    def to(self, device: torch.device | str) -> ExpertTrajectories:
        """Move the parameters to ``device`` (in place); returns ``self``."""
        self.params = self.params.to(device)
        return self

    def check_window(self, max_start_epoch: int, expert_epochs: int) -> None:
        """Raise if start epochs ``[0, max_start_epoch)`` plus ``expert_epochs`` do not fit the trajectories.

        Raises:
            ValueError: naming the numbers and what to change.
        """
        if max_start_epoch < 1 or expert_epochs < 1:
            raise ValueError(
                f"`max_start_epoch` and `expert_epochs` must be >= 1, got {max_start_epoch} and {expert_epochs}."
            )
        if max_start_epoch - 1 + expert_epochs > self.num_epochs:
            raise ValueError(
                f"Start epochs up to {max_start_epoch - 1} plus `expert_epochs`={expert_epochs} need trajectories "
                f"of at least {max_start_epoch - 1 + expert_epochs} epochs, but the experts span {self.num_epochs}; "
                "lower `max_start_epoch`/`expert_epochs` or train the experts longer (`experts.epochs`)."
            )

    def segment(self, expert: int, start_epoch: int, expert_epochs: int) -> tuple[Tensor, Tensor]:
        """``(theta*_s, theta*_{s+M})`` of expert ``expert``, ``s = start_epoch``, ``M = expert_epochs``.

        Raises:
            ValueError: indices outside the buffer.
        """
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"`expert` must be in [0, {self.num_experts}), got {expert}.")
        if start_epoch < 0 or expert_epochs < 1 or start_epoch + expert_epochs > self.num_epochs:
            raise ValueError(
                f"Epochs {start_epoch}..{start_epoch + expert_epochs} are outside the trajectory (0..{self.num_epochs})."
            )
        return self.params[expert, start_epoch], self.params[expert, start_epoch + expert_epochs]

    def sample(
        self, generator: torch.Generator | None, *, max_start_epoch: int, expert_epochs: int
    ) -> tuple[Tensor, Tensor, int, int]:
        """A random expert and start epoch ``s`` uniform in ``[0, max_start_epoch)``.

        Returns:
            ``(theta*_s, theta*_{s+M}, expert, s)``.

        Raises:
            ValueError: the window does not fit (see :meth:`check_window`).
        """
        self.check_window(max_start_epoch, expert_epochs)
        expert = int(torch.randint(self.num_experts, (1,), generator=generator))
        start = int(torch.randint(max_start_epoch, (1,), generator=generator))
        return (*self.segment(expert, start, expert_epochs), expert, start)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the buffer (loadable with ``torch.load(..., weights_only=True)``); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "params": self.params.detach().cpu().contiguous(),
            "layout": json.dumps(self.layout.to_dict()),
            "network": json.dumps(self.network),
            "spec": json.dumps(self.spec),
            "metadata": json.dumps(self.metadata),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ExpertTrajectories:
        """Read a buffer written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not an expert-trajectory buffer.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Expert buffer not found: {str(path)!r}; give the path of a buffer saved with "
                "ExpertTrajectories.save, or leave `expert_path` unset to train the experts."
            )
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not an expert-trajectory buffer (format {_FORMAT!r}).")
        return cls(
            payload["params"],
            ParamLayout.from_dict(json.loads(payload["layout"])),
            json.loads(payload["network"]),
            json.loads(payload["spec"]),
            json.loads(payload["metadata"]),
        )


def expert_trajectories(
    network: ConvNetSpec,
    images: Tensor,
    labels: Tensor,
    spec: ExpertSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    device: torch.device | str = "cpu",
) -> ExpertTrajectories:
    """The expert buffer for ``(network, data, spec)``: from the cache, or trained now and cached.

    Expert ``k`` is a :class:`ConvNet` of ``network`` with PyTorch's default initialisation drawn
    from ``(spec.seed, k)``, trained by :func:`train_expert`. The cache file
    ``<cache_dir>/experts/<key>.pt`` is keyed by the architecture, the settings and a hash of the
    data, so a changed config trains new experts; a file lock makes concurrent processes (DDP
    ranks) train once.

    Args:
        network: the expert (and student) architecture.
        images: the real training images ``(N, C, H, W)``.
        labels: their labels ``(N,)``.
        spec: how the experts are trained.
        cache_dir: the cache root (default :func:`lightning_distill.models.pretrained.default_cache_dir`).
        retrain: train again even if cached.
        device: where to train.

    Returns:
        The buffer, on the CPU.

    Raises:
        TypeError: ``network`` is not a :class:`ConvNetSpec` or ``spec`` not an :class:`ExpertSpec`.
    """
    if not isinstance(network, ConvNetSpec):
        raise TypeError(f"`network` must be a ConvNetSpec, got {type(network).__name__}.")
    if not isinstance(spec, ExpertSpec):
        raise TypeError(f"`spec` must be an ExpertSpec, got {type(spec).__name__}.")
    from lightning_distill.models.pretrained import default_cache_dir

    key_data = {
        "format": _VERSION,
        "network": network.to_dict(),
        "spec": spec.to_dict(),
        "data": fingerprint((images.float(), labels.long()), length=16),
    }
    key = config_hash(key_data)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / "experts" / f"{spec.optimizer}-{key}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file() and not retrain:
            return ExpertTrajectories.load(path)
        start = time.perf_counter()
        x, y = images.to(device).float(), labels.to(device).long()
        trajectories = []
        for k in range(spec.num_experts):
            generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + k)
            expert = reset_parameters(ConvNet.from_spec(network), generator).to(device)
            trajectories.append(train_expert(expert, x, y, spec, generator))
        metadata = {"key": key, "seconds": time.perf_counter() - start, "data": key_data["data"]}
        buffer = ExpertTrajectories(
            torch.stack(trajectories),
            ParamLayout.of(ConvNet.from_spec(network)),
            network.to_dict(),
            spec.to_dict(),
            metadata,
        )
        buffer.save(path)
        return buffer
