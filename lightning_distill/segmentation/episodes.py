"""Few-shot episodes and support sets drawn from labelled canvases.

An *episode* asks: given ``shots`` support images with the binary mask of one class, segment that
class in a query image. :func:`images_with_class` indexes which canvases contain which class;
:func:`sample_episode` draws one episode (query and supports distinct, all containing the class);
:func:`select_support_set` picks the labelled images of a few-shot *task* (``shots`` distinct
images per class). Everything is a function of a ``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["images_with_class", "sample_episode", "select_support_set"]


def images_with_class(masks: Tensor, class_ids: list[int] | tuple[int, ...]) -> dict[int, Tensor]:
    """For each class id, the indices of the masks ``(N, H, W)`` that hold at least one pixel of it.

    Example:
        >>> m = torch.tensor([[[0, 1]], [[2, 2]], [[1, 2]]])
        >>> {k: v.tolist() for k, v in images_with_class(m, [1, 2]).items()}
        {1: [0, 2], 2: [1, 2]}
    """
    flat = masks.flatten(1)
    return {int(c): torch.nonzero((flat == c).any(dim=1)).flatten() for c in class_ids}


def sample_episode(
    index: dict[int, Tensor], shots: int, generator: torch.Generator
) -> tuple[int, int, list[int]]:
    """Draw ``(class_id, query_index, support_indices)``: ``shots + 1`` distinct images holding the class.

    Raises:
        ValueError: no class has ``shots + 1`` images.
    """
    usable = [c for c, where in index.items() if len(where) > shots]
    if not usable:
        raise ValueError(
            f"No class appears in {shots + 1} images, which a {shots}-shot episode needs; render more images "
            "or lower `shots`."
        )
    class_id = usable[int(torch.randint(len(usable), (1,), generator=generator))]
    where = index[class_id]
    chosen = where[torch.randperm(len(where), generator=generator)[: shots + 1]].tolist()
    return class_id, chosen[0], chosen[1:]


def select_support_set(
    masks: Tensor, class_ids: list[int] | tuple[int, ...], shots: int, generator: torch.Generator
) -> Tensor:
    """Indices of a task's labelled images: for each class in turn, ``shots`` images holding it that
    are not chosen yet (an image chosen for one class also shows the others it holds).

    Raises:
        ValueError: a class is in fewer than ``shots`` images not already chosen.

    Example:
        >>> m = torch.tensor([[[1, 0]], [[2, 0]], [[1, 2]], [[2, 2]]])
        >>> len(select_support_set(m, [1, 2], 1, torch.Generator().manual_seed(0)))
        2
    """
    index = images_with_class(masks, class_ids)
    chosen: list[int] = []
    for c in class_ids:
        free = [i for i in index[int(c)].tolist() if i not in chosen]
        if len(free) < shots:
            raise ValueError(
                f"Class id {c} is in only {len(free)} unchosen images; a {shots}-shot support set needs {shots}. "
                "Render more images or lower `shots`."
            )
        order = torch.randperm(len(free), generator=generator)[:shots].tolist()
        chosen.extend(free[i] for i in order)
    return torch.tensor(sorted(chosen), dtype=torch.long)
