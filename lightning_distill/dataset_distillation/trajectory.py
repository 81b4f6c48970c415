"""Trajectory matching: flat parameters, a functional unrolled student, flatness.

Matching Training Trajectories (MTT, Cazenavette et al., arXiv 2203.11932) and Flat Trajectory
Distillation (FTD, Du et al., arXiv 2211.11004) learn a synthetic set such that a few SGD steps on
it move a network the way many steps on the real data did. The parts here:

* :class:`ParamLayout`: a network's parameters as one flat vector ``(P,)`` and back; the unit
  every other part works in (the official ``ReparamModule``'s ``flat_param``).
* :func:`unroll_student`: ``N`` differentiable SGD steps on the synthetic images with
  ``torch.func.functional_call`` over flat parameters, from an expert's epoch ``s``, with a
  learnable learning rate; gradients reach the images and the learning rate, never the buffer.
* :func:`hessian_top_eigenvalue`: the sharpness of a point of a trajectory (largest Hessian
  eigenvalue of the training loss, by power iteration on Hessian-vector products).

The experts (trained on the real data, cached) are in
:mod:`~lightning_distill.dataset_distillation.experts`; the loss
``||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2`` is
:func:`lightning_distill.losses.dataset_distillation.trajectory_matching_loss` (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.dataset_distillation.augment import SiameseAugment
from lightning_distill.losses.dataset_distillation import trajectory_matching_loss

__all__ = [
    "ParamLayout",
    "functional_logits",
    "hessian_top_eigenvalue",
    "trajectory_matching_loss",
    "unroll_student",
]


# ---------------------------------------------------------------------------- flat parameters
@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a network's parameters, to go between the module and a flat ``(P,)`` vector.

    Attributes:
        names: parameter names, in ``named_parameters()`` order.
        shapes: their shapes.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> layout = ParamLayout.of(net)
        >>> flat = layout.flatten(net)
        >>> flat.shape, layout.numel
        (torch.Size([8]), 8)
        >>> torch.equal(layout.unflatten(flat)["weight"], net.weight.detach())
        True
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError(
                f"`names` and `shapes` differ in length: {len(self.names)} and {len(self.shapes)}."
            )
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        """The layout of ``module``'s parameters."""
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def numel(self) -> int:
        """``P``, the length of the flat vector."""
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, source: nn.Module | Mapping[str, Tensor]) -> Tensor:
        """The detached flat vector ``(P,)`` of a module's (or a name -> tensor mapping's) parameters.

        Raises:
            ValueError: a parameter is missing or has another shape.
        """
        tensors = dict(source.named_parameters()) if isinstance(source, nn.Module) else dict(source)
        parts = []
        for name, shape in zip(self.names, self.shapes):
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                raise ValueError(f"Parameter {name!r} must have shape {shape}, got {got}.")
            parts.append(tensors[name].detach().reshape(-1))
        return torch.cat(parts)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` ``(P,)`` shaped like the parameters (they keep ``flat``'s graph).

        Raises:
            ValueError: ``flat`` is not ``(P,)``.
        """
        if flat.ndim != 1 or flat.shape[0] != self.numel:
            raise ValueError(f"`flat` must have shape ({self.numel},), got {tuple(flat.shape)}.")
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].view(shape)
            offset += n
        return out

    @torch.no_grad()
    def load_into(self, module: nn.Module, flat: Tensor) -> nn.Module:
        """Copy ``flat`` into ``module``'s parameters in place; returns ``module``."""
        params = dict(module.named_parameters())
        for name, value in self.unflatten(flat).items():
            params[name].copy_(value)
        return module

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamLayout:
        return cls(tuple(data["names"]), tuple(tuple(s) for s in data["shapes"]))


def functional_logits(network: nn.Module, layout: ParamLayout, flat: Tensor, x: Tensor) -> Tensor:
    """``network(x)`` with the parameters taken from ``flat`` ``(P,)`` (``torch.func.functional_call``)."""
    return torch.func.functional_call(network, layout.unflatten(flat), (x,))


# ---------------------------------------------------------------------------- the unrolled student
def unroll_student(
    network: nn.Module,
    layout: ParamLayout,
    start: Tensor,
    images: Tensor,
    labels: Tensor,
    lr: Tensor | float,
    steps: int,
    *,
    batch_size: int | None = None,
    augment: SiameseAugment | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> Tensor:
    """``steps`` SGD steps ``theta_{k+1} = theta_k - lr * grad CE(f(x_k; theta_k), y_k)`` from ``start``.

    The network's own parameters are never used or changed: every forward pass runs
    ``torch.func.functional_call`` with the current flat parameters. With ``create_graph`` the
    result is differentiable with respect to ``images`` and ``lr`` (backpropagation through the
    whole unrolled training), and not with respect to ``start``, which is detached (an expert's
    checkpoint is a constant). Minibatches ``x_k`` run through a random permutation of the images,
    a new one whenever the previous one is used up (the official ``indices_chunks``); each
    minibatch is augmented with its own per-image parameters when ``augment`` is given.

    Args:
        network: the architecture (its forward with the flat parameters), in the mode it should
            run in (train mode for batch norm statistics).
        layout: ``ParamLayout.of(network)``.
        start: ``theta_0`` ``(P,)``.
        images: synthetic images ``(n, C, H, W)``.
        labels: their class indices ``(n,)``.
        lr: the (learnable) step size, a scalar tensor or a float.
        steps: ``N``, the number of steps.
        batch_size: images per step; ``None`` takes them all (the official ``batch_syn``).
        augment: differentiable augmentation of every minibatch (``siamese=False``).
        generator: source of the permutations and augmentation parameters (CPU).
        create_graph: keep the graph of every step (needed to learn the images and ``lr``).

    Returns:
        ``theta_N`` ``(P,)``.

    Raises:
        ValueError: ``steps < 1``, a bad ``batch_size``, or mismatched images and labels.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> layout = ParamLayout.of(net)
        >>> x = torch.randn(6, 1, 2, 2, requires_grad=True)
        >>> end = unroll_student(net, layout, layout.flatten(net), x, torch.arange(6) % 2, 0.1, steps=3)
        >>> end.shape, end.requires_grad
        (torch.Size([10]), True)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (n, ...) and `labels` (n,), got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    n = images.shape[0]
    if batch_size is None:
        batch_size = n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be None or an integer >= 1, got {batch_size!r}.")
    theta = start.detach().clone().requires_grad_(True)
    chunks: list[Tensor] = []
    with torch.enable_grad():
        for _ in range(steps):
            if not chunks:
                order = torch.randperm(n, generator=generator).to(images.device)
                chunks = list(order.split(batch_size))
            index = chunks.pop(0)
            x, y = images[index], labels[index]
            if augment is not None:
                x = augment(x, augment.sample(x, generator))
            loss = F.cross_entropy(functional_logits(network, layout, theta, x), y)
            (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
            theta = theta - lr * grad
    return theta


# ---------------------------------------------------------------------------- sharpness
def hessian_top_eigenvalue(
    network: nn.Module,
    layout: ParamLayout,
    flat: Tensor,
    images: Tensor,
    labels: Tensor,
    *,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Largest-magnitude eigenvalue of the Hessian of the mean cross-entropy at ``flat`` (power iteration).

    A standard sharpness measure: flat minima (SAM/GSAM experts) have a smaller top eigenvalue.
    Each iteration is one Hessian-vector product (double backward) over the whole of ``images``.

    Args:
        network: the architecture (forward through ``torch.func.functional_call``).
        layout: its parameter layout.
        flat: the point ``(P,)``.
        images: the data ``(N, C, H, W)`` the loss is averaged over.
        labels: ``(N,)``.
        iterations: power-iteration steps.
        generator: source of the random start vector.

    Returns:
        The Rayleigh quotient ``v^T H v`` of the final unit vector (a scalar tensor).

    Raises:
        ValueError: ``iterations < 1``.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> layout = ParamLayout.of(net)
        >>> x, y = torch.randn(8, 1, 2, 2), torch.arange(8) % 3
        >>> float(hessian_top_eigenvalue(net, layout, layout.flatten(net), x, y)) > 0
        True
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an integer >= 1, got {iterations!r}.")
    with torch.enable_grad():
        theta = flat.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(functional_logits(network, layout, theta, images), labels)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        v = torch.randn(theta.shape, generator=generator).to(theta)
        v = v / v.norm()
        value = torch.zeros((), device=theta.device)
        for _ in range(iterations):
            (hv,) = torch.autograd.grad(grad, theta, grad_outputs=v, retain_graph=True)
            value = torch.dot(v, hv)
            norm = hv.norm()
            if float(norm) == 0.0:
                break
            v = hv / norm
    return value.detach()
