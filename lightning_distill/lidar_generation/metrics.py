"""Completion metrics: Chamfer distance, BEV-histogram Jensen-Shannon divergence, voxel IoU / precision / recall.

What LiDiff and Distillation-DPO (arXiv 2504.11447) report for completed scenes, here on batched,
optionally padded point sets ``(B, N, 3)`` with boolean masks ``(B, N)`` (``True`` = real point):

* :func:`~lightning_distill.losses.pointset.chamfer_distance` with plain Euclidean distances, halved
  (the mean nearest-neighbour distance both ways, averaged: the papers' CD);
* :func:`bev_jsd`: the Jensen-Shannon divergence (base 2, in [0, 1]) between the bird's-eye-view
  histograms of the two clouds on a square grid (LiDiff's histogram metric, ``bev=True``);
* :func:`voxel_scores`: IoU, precision and recall of the sets of occupied voxels at a resolution
  (the papers' completion IoU at 0.5, 0.2 and 0.1 m).

:class:`CompletionMetrics` accumulates the per-sample values over batches (a torchmetrics
``Metric``, so they average correctly across processes).

Example:
    >>> a = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    >>> voxel_scores(a, a + torch.tensor([0.0, 0.0, 2.0]), voxel_size=1.0)["iou"]
    tensor([0.])
    >>> bev_jsd(a, a + torch.tensor([0.0, 0.0, 2.0]), extent=2.0, bins=4)   # same BEV cells
    tensor([0.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_distill.losses.pointset import chamfer_distance

__all__ = ["CompletionMetrics", "bev_jsd", "completion_metrics", "voxel_scores"]


def _check(
    a: Tensor, b: Tensor, a_mask: Tensor | None, b_mask: Tensor | None, names: tuple[str, str] = ("a", "b")
) -> tuple[Tensor, Tensor]:
    for name, x in zip(names, (a, b)):
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"`{name}` must be a (B, N, 3) tensor, got {getattr(x, 'shape', type(x))}.")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same batch size, got {a.shape[0]} and {b.shape[0]}."
        )
    masks = []
    for name, x, m in ((f"{names[0]}_mask", a, a_mask), (f"{names[1]}_mask", b, b_mask)):
        if m is None:
            m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        elif m.dtype != torch.bool or m.shape != x.shape[:2]:
            raise ValueError(
                f"`{name}` must be a boolean {tuple(x.shape[:2])} mask, got {m.dtype} {tuple(m.shape)}."
            )
        masks.append(m)
    return masks[0], masks[1]


def _bev_histogram(points: Tensor, extent: float, bins: int) -> Tensor:
    """Normalised ``(bins * bins,)`` histogram of ``(N, 3)`` points over ``[-extent, extent)²``."""
    cells = torch.floor((points[:, :2] + extent) / (2 * extent) * bins).long()
    inside = ((cells >= 0) & (cells < bins)).all(dim=1)
    cells = cells[inside]
    hist = torch.bincount(cells[:, 0] * bins + cells[:, 1], minlength=bins * bins).double()
    return hist / hist.sum().clamp_min(1.0)


def bev_jsd(
    a: Tensor,
    b: Tensor,
    *,
    a_mask: Tensor | None = None,
    b_mask: Tensor | None = None,
    extent: float = 50.0,
    bins: int = 100,
) -> Tensor:
    r"""Jensen-Shannon divergence between the BEV occupancy histograms of two clouds, per sample.

    .. math:: \mathrm{JSD}(P, Q) = \tfrac12 \mathrm{KL}(P \| M) + \tfrac12 \mathrm{KL}(Q \| M),
              \quad M = \tfrac12 (P + Q)

    with ``P``, ``Q`` the normalised point counts on a ``bins x bins`` grid over
    ``[-extent, extent)²`` (points outside are ignored), logarithms base 2 (so 0 <= JSD <= 1).

    Args:
        a, b: ``(B, N, 3)`` and ``(B, M, 3)`` points.
        a_mask, b_mask: optional boolean masks of the real points.
        extent: half-width of the grid, metres (LiDiff: 50).
        bins: cells per side (LiDiff: 100).

    Returns:
        ``(B,)`` float32.

    Raises:
        ValueError: bad shapes or masks, ``extent`` <= 0 or ``bins`` < 1.
    """
    a_mask, b_mask = _check(a, b, a_mask, b_mask)
    if not extent > 0 or bins < 1:
        raise ValueError(f"`extent` must be > 0 and `bins` >= 1, got {extent} and {bins}.")
    out = []
    for i in range(a.shape[0]):
        p = _bev_histogram(a[i][a_mask[i]].detach(), extent, bins)
        q = _bev_histogram(b[i][b_mask[i]].detach(), extent, bins)
        m = 0.5 * (p + q)
        out.append(0.5 * _kl2(p, m) + 0.5 * _kl2(q, m))
    return torch.stack(out).float()


def _kl2(p: Tensor, m: Tensor) -> Tensor:
    """``KL(p ‖ m)`` in bits for histograms with ``m > 0`` wherever ``p > 0`` (``0 log 0 = 0``)."""
    keep = p > 0
    return (p[keep] * torch.log2(p[keep] / m[keep])).sum()


def _voxel_keys(points: Tensor, voxel_size: float) -> Tensor:
    cells = torch.floor(points.double() / voxel_size).long()
    return torch.unique(cells, dim=0)


def voxel_scores(
    pred: Tensor,
    target: Tensor,
    *,
    voxel_size: float,
    pred_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """IoU, precision and recall of the occupied voxels of ``pred`` against ``target``, per sample.

    A voxel (edge ``voxel_size``, boundaries at its multiples) is occupied when a point falls in
    it. ``iou = |P ∩ T| / |P ∪ T|``, ``precision = |P ∩ T| / |P|``, ``recall = |P ∩ T| / |T|``
    (0 when the denominator is empty).

    Args:
        pred: ``(B, N, 3)`` completed points.
        target: ``(B, M, 3)`` ground-truth points.
        voxel_size: voxel edge, metres.
        pred_mask, target_mask: optional boolean masks of the real points.

    Returns:
        ``{"iou", "precision", "recall"}``, each ``(B,)`` float32.

    Raises:
        ValueError: bad shapes or masks, or ``voxel_size`` <= 0.
    """
    pred_mask, target_mask = _check(pred, target, pred_mask, target_mask, ("pred", "target"))
    if not voxel_size > 0:
        raise ValueError(f"`voxel_size` must be > 0, got {voxel_size}.")
    scores: dict[str, list[Tensor]] = {"iou": [], "precision": [], "recall": []}
    for i in range(pred.shape[0]):
        p = _voxel_keys(pred[i][pred_mask[i]].detach(), voxel_size)
        t = _voxel_keys(target[i][target_mask[i]].detach(), voxel_size)
        both = torch.cat([p, t])
        union = len(torch.unique(both, dim=0)) if len(both) else 0
        inter = len(p) + len(t) - union
        scores["iou"].append(torch.tensor(inter / union if union else 0.0))
        scores["precision"].append(torch.tensor(inter / len(p) if len(p) else 0.0))
        scores["recall"].append(torch.tensor(inter / len(t) if len(t) else 0.0))
    return {k: torch.stack(v).float() for k, v in scores.items()}


def completion_metrics(
    pred: Tensor,
    target: Tensor,
    *,
    target_mask: Tensor | None = None,
    voxel_sizes: Sequence[float] = (0.5, 0.2, 0.1),
    bev_extent: float = 50.0,
    bev_bins: int = 100,
) -> dict[str, Tensor]:
    """Every completion metric per sample: ``cd``, ``jsd``, and ``iou_<r>``, ``precision_<r>``, ``recall_<r>``.

    ``cd`` is the papers' Chamfer distance, ``0.5 * chamfer_distance(pred, target, squared=False)``
    (mean Euclidean nearest-neighbour distance both ways, averaged); ``<r>`` is the voxel size as
    written by ``f"{r:g}"``.

    Returns:
        A dict of ``(B,)`` float32 tensors.

    Raises:
        ValueError: bad shapes or masks, or an empty ``voxel_sizes``.
    """
    if not voxel_sizes:
        raise ValueError("`voxel_sizes` must name at least one voxel size.")
    _check(pred, target, None, target_mask, ("pred", "target"))
    out = {
        "cd": 0.5
        * chamfer_distance(
            pred.detach().float(), target.float(), b_mask=target_mask, squared=False, reduction="none"
        ),
        "jsd": bev_jsd(pred, target, b_mask=target_mask, extent=bev_extent, bins=bev_bins),
    }
    for r in voxel_sizes:
        for name, value in voxel_scores(pred, target, voxel_size=r, target_mask=target_mask).items():
            out[f"{name}_{r:g}"] = value
    return out


class CompletionMetrics(Metric):
    """The averages of :func:`completion_metrics` over every sample seen (a torchmetrics ``Metric``).

    Args:
        voxel_sizes: resolutions of the voxel IoU / precision / recall (paper: 0.5, 0.2, 0.1 m).
        bev_extent: half-width of the BEV histogram grid, metres.
        bev_bins: BEV cells per side.

    Example:
        >>> metric = CompletionMetrics(voxel_sizes=(1.0,), bev_extent=2.0, bev_bins=4)
        >>> pts = torch.zeros(2, 5, 3)
        >>> metric.update(pts, pts)
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'cd': 0.0, 'jsd': 0.0, 'iou_1': 1.0, 'precision_1': 1.0, 'recall_1': 1.0}
    """

    full_state_update = False

    def __init__(
        self,
        voxel_sizes: Sequence[float] = (0.5, 0.2, 0.1),
        bev_extent: float = 50.0,
        bev_bins: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.voxel_sizes = tuple(float(r) for r in voxel_sizes)
        self.bev_extent = float(bev_extent)
        self.bev_bins = int(bev_bins)
        self.names = ["cd", "jsd"] + [
            f"{k}_{r:g}" for r in self.voxel_sizes for k in ("iou", "precision", "recall")
        ]
        self.add_state(
            "sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, target_mask: Tensor | None = None) -> None:
        values = completion_metrics(
            pred,
            target,
            target_mask=target_mask,
            voxel_sizes=self.voxel_sizes,
            bev_extent=self.bev_extent,
            bev_bins=self.bev_bins,
        )
        self.sums += torch.stack([values[n].double().sum() for n in self.names]).to(self.sums.device)
        self.count += pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        mean = self.sums / self.count.clamp_min(1.0)
        return {n: mean[k].float() for k, n in enumerate(self.names)}
