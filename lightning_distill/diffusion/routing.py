"""Routing samples to one of K denoisers by class label: several students (or fake scores) called like one.

Multi-student distillation (MSD, arXiv 2410.23274) gives each of K students a block of the
conditioning set; :class:`RoutedDenoiser` holds the K networks and sends every sample to the owner
of its class, so the group has the diffusers call signature of a single denoiser (for sampling,
export, a shared training loop). :func:`contiguous_partition` and :func:`check_partition` build and
check the blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond, model_output

__all__ = ["RoutedDenoiser", "check_partition", "contiguous_partition", "reassemble"]


def contiguous_partition(num_classes: int, num_students: int) -> list[list[int]]:
    """Classes ``0 .. num_classes - 1`` in ``num_students`` contiguous blocks whose sizes differ by at most one.

    Raises:
        ValueError: fewer classes than students, or a count below 1.

    Example:
        >>> contiguous_partition(10, 4)
        [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    """
    if num_students < 1 or num_classes < num_students:
        raise ValueError(
            f"Cannot split {num_classes} classes among {num_students} students; each student needs at least one "
            "class. Set `model.init_args.num_students` (or `partition`)."
        )
    return [[int(c) for c in block] for block in np.array_split(np.arange(num_classes), num_students)]


class RoutedDenoiser(nn.Module):
    """K denoisers, one per block of class labels, called like one: sample ``i`` goes to the owner of its label.

    Each expert receives the original (global) class labels of its samples, so an expert with the
    teacher's architecture can start from the teacher's weights.

    Args:
        experts: the K denoisers (diffusers call convention).
        partition: K disjoint blocks of class ids that together cover ``0 .. C - 1``.

    Raises:
        ValueError: ``partition`` with another number of blocks than ``experts``, an empty block,
            a class in two blocks, a missing class, or a negative id.

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser
        >>> router = RoutedDenoiser([MLPDenoiser(hidden=8, depth=1, num_classes=4) for _ in range(2)], [[0, 1], [2, 3]])
        >>> router(torch.randn(3, 2), torch.tensor(999), torch.tensor([3, 0, 2])).shape, router.owners(torch.tensor([3, 0]))
        (torch.Size([3, 2]), tensor([1, 0]))
    """

    def __init__(self, experts: Sequence[nn.Module], partition: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.partition = check_partition(partition, len(experts))
        self.experts = nn.ModuleList(experts)
        owner = torch.empty(sum(len(block) for block in self.partition), dtype=torch.long)
        for k, block in enumerate(self.partition):
            owner[list(block)] = k
        self.register_buffer("owner", owner, persistent=False)

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes the partition covers."""
        return self.owner.numel()

    def owners(self, cond: Cond) -> Tensor:
        """The owning expert of each sample ``(B,)`` from integer class labels ``(B,)``; override for other conditions.

        Raises:
            ValueError: no labels, floating or mapping conditions, or labels outside ``[0, C)``.
        """
        if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.dtype == torch.bool:
            raise ValueError(
                "MSD routes samples by integer class labels, got "
                f"{'no condition' if cond is None else type(cond).__name__ + ' ' + str(getattr(cond, 'dtype', ''))}. "
                "Use labelled data (`data.init_args.conditional: true`) or override `RoutedDenoiser.owners`."
            )
        labels = cond.reshape(-1).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"Class labels must be in [0, {self.num_classes}) to be routed (the null label has no owner), got "
                f"{sorted(set(labels.tolist()))[:10]}."
            )
        return self.owner.to(labels.device)[labels]

    def forward(
        self, sample: Tensor, timestep: Tensor | int | float, class_labels: Tensor | None = None
    ) -> Tensor:
        """Each expert's prediction on its own samples, reassembled in batch order ``(B, ...)``."""
        labels = torch.as_tensor(class_labels, device=sample.device) if class_labels is not None else None
        if labels is not None and labels.numel() == 1 and sample.shape[0] > 1:
            labels = labels.reshape(1).expand(sample.shape[0])
        owners = self.owners(labels)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        parts, indices = [], []
        for k, expert in enumerate(self.experts):
            index = (owners == k).nonzero(as_tuple=True)[0]
            if index.numel():
                parts.append(model_output(expert, sample[index], t[index], labels[index]))
                indices.append(index)
        return reassemble(parts, indices)


def check_partition(partition: Sequence[Sequence[int]], num_students: int) -> tuple[tuple[int, ...], ...]:
    """``partition`` as tuples after checking it splits ``0 .. C - 1`` into ``num_students`` non-empty blocks.

    Raises:
        ValueError: naming the problem (count, empty block, overlap, missing or negative class).
    """
    blocks = tuple(tuple(int(c) for c in block) for block in partition)
    key = "set `model.init_args.partition`"
    if len(blocks) != num_students:
        raise ValueError(f"`partition` has {len(blocks)} blocks for {num_students} students; {key}.")
    seen: dict[int, int] = {}
    for k, block in enumerate(blocks):
        if not block:
            raise ValueError(f"`partition[{k}]` is empty: every student must own a class; {key}.")
        for c in block:
            if c < 0:
                raise ValueError(f"`partition[{k}]` holds the negative class {c}; {key}.")
            if c in seen:
                raise ValueError(f"Class {c} is in `partition[{seen[c]}]` and `partition[{k}]`; {key}.")
            seen[c] = k
    missing = sorted(set(range(max(seen) + 1)) - set(seen))
    if missing:
        raise ValueError(
            f"Classes {missing} belong to no student in `partition`={list(map(list, blocks))}; {key}."
        )
    return blocks


def reassemble(parts: list[Tensor], indices: list[Tensor]) -> Tensor:
    """Rows ``parts[j]`` belong at ``indices[j]``: one tensor in batch order (differentiable).

    Example:
        >>> reassemble([torch.tensor([1.0, 3.0]), torch.tensor([2.0])], [torch.tensor([0, 2]), torch.tensor([1])])
        tensor([1., 2., 3.])
    """
    out, order = torch.cat(parts), torch.cat(indices)
    return out.new_empty(out.shape).index_copy(0, order, out)
