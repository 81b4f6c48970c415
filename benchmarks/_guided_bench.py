"""The guided exact-score mixture bench shared by the consistency benchmarks (``slam.py``, ``boot.py``).

``score`` measures one sampler ``draw(n, generator) -> (samples, labels)`` against the data and the
teacher's guided 50-step sampler of a recipe ``model`` (its ``reference_mixture``, ``teacher``,
``schedule`` and ``guidance``); ``data_sampler`` and ``teacher_sampler`` are the reference rows;
``Row`` collects a table row over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_distill.diffusion import sample
from lightning_distill.diffusion.metrics import (
    default_mode_threshold,
    mode_assignment,
    mode_coverage,
    rbf_mmd2,
    sliced_wasserstein,
)

METRICS = ("swd", "mmd", "mode_coverage", "on_class", "swd_teacher50")
N_SAMPLES = 2000  # samples per model, seed (and w)
_REFERENCE_OFFSET, _TEACHER_OFFSET = 10_000, 20_000
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Row:
    name: str
    nfe: int
    metrics: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    sample_ms: list[float] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.metrics[key].append(value)


def score(draw: Sampler, model: Any, n: int, seed: int) -> dict[str, float]:
    """The bench metrics of ``draw(n, Generator(seed)) -> (samples, labels)``."""
    gmm = model.reference_mixture
    x, labels = draw(n, torch.Generator().manual_seed(seed))
    x, labels = x.detach().float().cpu(), labels.cpu()
    reference = gmm.sample(n, torch.Generator().manual_seed(seed + _REFERENCE_OFFSET), labels=labels)
    noise = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed + _TEACHER_OFFSET))
    null = torch.full((n,), gmm.num_classes)
    teacher50 = sample(model.teacher, model.schedule, noise, 50, labels, null, 1.0 + model.guidance)
    modes = mode_assignment(x, gmm, default_mode_threshold(gmm.dim))
    on_mode = modes < gmm.num_modes
    own = torch.zeros_like(on_mode)
    own[on_mode] = gmm.class_of_mode[modes[on_mode]] == labels[on_mode]
    return {
        "swd": float(sliced_wasserstein(x, reference)),
        "mmd": float(rbf_mmd2(x, reference)),
        "mode_coverage": float(mode_coverage(x, gmm)),
        "on_class": float(own.float().mean()),
        "swd_teacher50": float(sliced_wasserstein(x, teacher50.float())),
    }


def labels_for(model: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random class labels of the model's mixture."""
    return torch.randint(0, model.reference_mixture.num_classes, (n,), generator=gen)


def data_sampler(model: Any) -> Sampler:
    def draw(n: int, gen: torch.Generator):
        labels = labels_for(model, n, gen)
        return model.reference_mixture.sample(n, gen, labels=labels), labels

    return draw


def teacher_sampler(model: Any, steps: int) -> Sampler:
    def draw(n: int, gen: torch.Generator):
        labels = labels_for(model, n, gen)
        noise = torch.randn(n, model.reference_mixture.dim, generator=gen)
        null = torch.full((n,), model.reference_mixture.num_classes)
        return sample(model.teacher, model.schedule, noise, steps, labels, null, 1.0 + model.guidance), labels

    return draw
