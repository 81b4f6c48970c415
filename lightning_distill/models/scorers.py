"""Scorers: non-differentiable judges of generated samples, for preference pairs.

A :class:`Scorer` maps samples ``(B, ...)`` and their conditions to one score per sample ``(B,)``
and says whether higher is better. :class:`~lightning_distill.callbacks.PreferencePairs` ranks a
student's candidates with one (Distillation-DPO: Chamfer distance to the ground truth; Flash-DMD:
a reward model). Plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_distill.losses.pointset import chamfer_distance

__all__ = ["ChamferScorer", "ClassifierScorer", "FunctionScorer", "NegativeChamfer", "Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """A non-differentiable judge of samples.

    A scorer maps ``samples`` of shape ``(B, ...)`` and the matching conditions (the same
    structure the sampler received) to one score per sample, shape ``(B,)``, and says whether
    higher scores are better.
    """

    higher_is_better: bool

    def __call__(self, samples: Tensor, cond: Any) -> Tensor: ...


class ChamferScorer:
    """Chamfer distance from each sample to a reference point set; lower is better.

    Args:
        reference_key: Key of the reference points ``(B, M, D)`` in a mapping condition. ``None``
            means the condition itself is the reference tensor.
        mask_key: Optional key of a boolean ``(B, M)`` mask of real reference points.
        squared: Squared (default) or plain Euclidean nearest-neighbour distances; see
            :func:`~lightning_distill.losses.pointset.chamfer_distance`.

    Example:
        >>> scorer = ChamferScorer(reference_key="points")
        >>> points = torch.zeros(2, 4, 3)
        >>> scorer(points + 1.0, {"points": points})
        tensor([6., 6.])
    """

    higher_is_better: bool = False

    def __init__(
        self, reference_key: str | None = None, *, mask_key: str | None = None, squared: bool = True
    ):
        if reference_key is not None and not isinstance(reference_key, str):
            raise TypeError(f"`reference_key` must be a string or None, got {type(reference_key).__name__}.")
        if mask_key is not None and reference_key is None:
            raise ValueError("`mask_key` needs a mapping condition; set `reference_key` too.")
        self.reference_key = reference_key
        self.mask_key = mask_key
        self.squared = squared

    def __call__(self, samples: Tensor, cond: Any) -> Tensor:
        """Return the Chamfer distance of each sample, shape ``(B,)``."""
        if self.reference_key is None:
            reference, mask = cond, None
        else:
            if not isinstance(cond, Mapping) or self.reference_key not in cond:
                keys = sorted(cond) if isinstance(cond, Mapping) else type(cond).__name__
                raise ValueError(
                    f"`reference_key` {self.reference_key!r} not found in the condition; got {keys}."
                )
            reference = cond[self.reference_key]
            mask = cond[self.mask_key] if self.mask_key is not None else None
        return chamfer_distance(samples, reference, b_mask=mask, squared=self.squared, reduction="none")


class NegativeChamfer(ChamferScorer):
    """The negated Chamfer distance to a reference point set; higher is better.

    Example:
        >>> NegativeChamfer()(torch.ones(1, 2, 3), torch.zeros(1, 2, 3))
        tensor([-6.])
    """

    higher_is_better: bool = True

    def __call__(self, samples: Tensor, cond: Any) -> Tensor:
        """Return minus the Chamfer distance of each sample, shape ``(B,)``."""
        return -super().__call__(samples, cond)


class ClassifierScorer(nn.Module):
    """The probability a frozen classifier gives to a class; higher is better.

    The classifier is frozen (``requires_grad_(False)``) and kept in eval mode whatever
    ``.train()`` is called. Register the scorer as a submodule of your LightningModule so it moves
    to the right device with it.

    Args:
        model: Any module mapping samples ``(B, ...)`` to logits ``(B, C)``.
        target_class: The class to score: an int for one fixed class, a string for the key of a
            ``(B,)`` label tensor in a mapping condition, or ``None`` when the condition itself is
            the ``(B,)`` label tensor.
        temperature: Softmax temperature, > 0.

    Raises:
        TypeError: If ``model`` is not a module or ``target_class`` has the wrong type.
        ValueError: If ``temperature`` is not positive or ``target_class`` is negative.

    Example:
        >>> classifier = nn.Linear(4, 3)
        >>> scorer = ClassifierScorer(classifier, target_class=2)
        >>> scorer(torch.randn(5, 4), None).shape
        torch.Size([5])
    """

    higher_is_better: bool = True

    def __init__(self, model: nn.Module, target_class: int | str | None = None, *, temperature: float = 1.0):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
        if isinstance(target_class, bool) or not isinstance(target_class, int | str | type(None)):
            raise TypeError(f"`target_class` must be an int, a string key or None, got {target_class!r}.")
        if isinstance(target_class, int) and target_class < 0:
            raise ValueError(f"`target_class` must be >= 0, got {target_class}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        self.model = model.eval().requires_grad_(False)
        self.target_class = target_class
        self.temperature = float(temperature)

    def train(self, mode: bool = True) -> ClassifierScorer:
        """Keep the classifier in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, samples: Tensor, cond: Any) -> Tensor:
        """Return the probability of the target class for each sample, shape ``(B,)``."""
        logits = self.model(samples)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != samples.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"the classifier must return logits of shape (B, C) with B={samples.shape[0]}, got {shape}."
            )
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)  # (B, C)
        if isinstance(self.target_class, int):
            target = torch.full((probs.shape[0],), self.target_class, device=probs.device, dtype=torch.long)
        elif isinstance(self.target_class, str):
            if not isinstance(cond, Mapping) or self.target_class not in cond:
                keys = sorted(cond) if isinstance(cond, Mapping) else type(cond).__name__
                raise ValueError(
                    f"`target_class` key {self.target_class!r} not found in the condition; got {keys}."
                )
            target = cond[self.target_class]
        else:
            target = cond
        if not isinstance(target, Tensor) or tuple(target.shape) != (probs.shape[0],):
            shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"target classes must be a tensor of shape ({probs.shape[0]},), got {shape}.")
        target = target.to(device=probs.device, dtype=torch.long)
        if bool(((target < 0) | (target >= probs.shape[1])).any()):
            raise ValueError(f"target classes must lie in [0, {probs.shape[1]}), got {target.tolist()}.")
        return probs.gather(1, target[:, None]).squeeze(1)


class FunctionScorer:
    """Any function ``fn(samples, cond) -> (B,)`` as a scorer.

    Args:
        fn: The scoring function.
        higher_is_better: Whether higher scores are better; there is no default, so a reward and
            a distance cannot be confused.

    Raises:
        TypeError: If ``fn`` is not callable or ``higher_is_better`` is not a bool.

    Example:
        >>> scorer = FunctionScorer(lambda x, cond: x.flatten(1).norm(dim=1), higher_is_better=False)
        >>> scorer(torch.ones(2, 4), None)
        tensor([2., 2.])
    """

    def __init__(self, fn: Callable[[Tensor, Any], Tensor], *, higher_is_better: bool):
        if not callable(fn):
            raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"`higher_is_better` must be a bool, got {higher_is_better!r}.")
        self.fn = fn
        self.higher_is_better = higher_is_better

    def __call__(self, samples: Tensor, cond: Any) -> Tensor:
        """Return ``fn(samples, cond)``."""
        return self.fn(samples, cond)
