"""3D detection average precision: KITTI-style BEV / 3D AP at per-class IoU thresholds and nuScenes-style
centre-distance AP, overall, by difficulty and by distance range, as one torchmetrics ``Metric``.

How a class is scored (per frame, then pooled over frames):

1. **Matching.** Predictions of the class are visited by decreasing score; each takes the unmatched
   ground-truth box of the class it overlaps most (rotated BEV IoU, 3D IoU, or smallest BEV centre
   distance), if that reaches the threshold (IoU >= threshold, distance <= threshold; the official
   KITTI and nuScenes code use strict inequalities, a difference on exact ties only). Matched
   predictions are true positives, the rest false.
2. **Scope.** A result restricted to a difficulty or a distance range counts the ground truth in
   scope; a prediction matched to a box out of scope (or to an ignored box, difficulty ``-1``: KITTI's
   DontCare) is left out, and an unmatched prediction counts as a false positive only if its own
   centre lies in the distance range. Difficulty scopes are cumulative as in KITTI (``moderate``
   counts easy and moderate boxes); the unscoped result counts easy, moderate and hard.
3. **AP.** Precision is made monotone (the best precision at any recall >= r) and averaged over
   recall points: KITTI's R40 (r = 1/40 ... 1) for IoU AP; nuScenes' 101-point grid with recall
   and precision below 0.1 clipped, ``mean(max(p - 0.1, 0)) / 0.9`` over r > 0.1, for distance AP.

A class without ground truth in a scope has AP ``nan`` and is left out of the class mean.

Keys of :meth:`DetectionAP.compute` (``<family>`` is ``ap_bev``, ``ap_3d``, ``ap_bev_loose``,
``ap_3d_loose`` or ``ap_dist``): ``<family>/<class>``, ``<family>/<class>/<scope>`` with scope
``easy``, ``moderate``, ``0-20m``, ``20-40m``, ``40+m``, and ``<family>/mean[/<scope>]``; plus
``ap_dist/<class>/<t>m`` per distance threshold (``ap_dist`` is their mean).

Example:
    >>> boxes = torch.tensor([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    >>> metric = DetectionAP()
    >>> metric.update([{"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}],
    ...               [{"boxes": boxes, "labels": torch.tensor([0])}])
    >>> out = metric.compute()
    >>> float(out["ap_3d/car"]), float(out["ap_dist/car"]), bool(out["ap_3d/pedestrian"].isnan())
    (1.0, 1.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_distill.detection.boxes import bev_iou, check_boxes, iou_3d
from lightning_distill.detection.scenes import CLASSES, DIFFICULTIES

__all__ = ["DetectionAP", "DetectionEvaluation", "average_precision", "greedy_match"]


def greedy_match(similarity: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Match predictions to ground truth greedily by decreasing score.

    Args:
        similarity: ``(P, G)`` larger is better (IoU, or minus the centre distance).
        scores: ``(P,)`` prediction scores.
        threshold: the smallest similarity that makes a match.

    Returns:
        ``(P,)`` int64 index of the matched ground-truth box, ``-1`` when unmatched.
    """
    matched = torch.full((len(scores),), -1, dtype=torch.long)
    if similarity.numel() == 0:
        return matched
    taken = torch.zeros(similarity.shape[1], dtype=torch.bool)
    for p in scores.argsort(descending=True, stable=True).tolist():
        candidates = similarity[p].masked_fill(taken, -math.inf)
        best = int(candidates.argmax())
        if candidates[best] >= threshold:
            matched[p] = best
            taken[best] = True
    return matched


def average_precision(
    scores: Tensor,
    true_positive: Tensor,
    num_ground_truth: int,
    *,
    recall_points: Tensor,
    min_precision: float = 0.0,
) -> Tensor:
    """Interpolated AP: the monotone precision envelope averaged at ``recall_points``.

    Args:
        scores: ``(P,)`` scores of the counted predictions.
        true_positive: ``(P,)`` bool.
        num_ground_truth: ground-truth boxes in scope; 0 gives ``nan``.
        recall_points: ``(R,)`` recalls at which precision is read (0 where a recall is not reached).
        min_precision: precision below it counts as 0 and the rest is rescaled to [0, 1] (nuScenes: 0.1).

    >>> average_precision(torch.tensor([0.9, 0.8]), torch.tensor([True, False]), 2,
    ...                   recall_points=torch.linspace(1 / 40, 1, 40)).item()
    0.5
    """
    if num_ground_truth == 0:
        return torch.tensor(float("nan"))
    if len(scores) == 0:
        return torch.tensor(0.0)
    order = scores.argsort(descending=True, stable=True)
    tp = true_positive[order].double().cumsum(0)
    fp = (~true_positive[order]).double().cumsum(0)
    recall = tp / num_ground_truth
    precision = tp / (tp + fp).clamp_min(1)
    # the best precision at any recall >= r
    envelope = precision.flip(0).cummax(0).values.flip(0)
    reached = recall[None, :] >= recall_points.double()[:, None] - 1e-12  # (R, P)
    first = reached.double().argmax(1)  # the first prediction that reaches each recall point
    at = torch.where(reached.any(1), envelope[first], torch.zeros_like(envelope[first]))
    at = ((at - min_precision).clamp_min(0) / (1 - min_precision)) if min_precision > 0 else at
    return at.mean().float()


class DetectionAP(Metric):
    """KITTI BEV / 3D AP and nuScenes centre-distance AP per class, difficulty and distance range.

    ``update(preds, targets)`` takes one dict per frame: ``preds`` with ``"boxes" (P, 7)``,
    ``"scores" (P,)``, ``"labels" (P,)``; ``targets`` with ``"boxes" (G, 7)``, ``"labels" (G,)`` and
    optionally ``"difficulty" (G,)`` (0 easy, 1 moderate, 2 hard, -1 ignored; absent: all hard).
    States are lists concatenated across processes, so the result is the same under DDP.

    Args:
        classes: class names, in label order.
        iou_thresholds: IoU per class for ``ap_bev`` / ``ap_3d`` (KITTI: car 0.7, pedestrian and cyclist 0.5).
        loose_iou_thresholds: IoU per class for ``ap_bev_loose`` / ``ap_3d_loose`` (KITTI's 0.5 / 0.25).
        distance_thresholds: BEV centre distances (metres) of ``ap_dist`` (nuScenes: 0.5, 1, 2, 4).
        distance_ranges: ``(low, high)`` ranges of BEV distance from the sensor, metres.
        num_recall_points: recall points of the IoU AP (KITTI R40).

    Raises:
        ValueError: threshold lists that do not match ``classes``, or empty threshold lists.
    """

    full_state_update = False
    FAMILIES = ("ap_bev", "ap_3d", "ap_bev_loose", "ap_3d_loose", "ap_dist")

    def __init__(
        self,
        classes: Sequence[str] = CLASSES,
        iou_thresholds: Sequence[float] = (0.7, 0.5, 0.5),
        loose_iou_thresholds: Sequence[float] = (0.5, 0.25, 0.25),
        distance_thresholds: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
        distance_ranges: Sequence[tuple[float, float]] = ((0.0, 20.0), (20.0, 40.0), (40.0, math.inf)),
        num_recall_points: int = 40,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.classes = tuple(classes)
        for name, values in (
            ("iou_thresholds", iou_thresholds),
            ("loose_iou_thresholds", loose_iou_thresholds),
        ):
            if len(values) != len(self.classes) or not all(0 < v <= 1 for v in values):
                raise ValueError(
                    f"`{name}` must hold one IoU in (0, 1] per class {self.classes}, got {tuple(values)}."
                )
        if not distance_thresholds or any(d <= 0 for d in distance_thresholds):
            raise ValueError(
                f"`distance_thresholds` must be positive metres, got {tuple(distance_thresholds)}."
            )
        if not isinstance(num_recall_points, int) or num_recall_points < 1:
            raise ValueError(f"`num_recall_points` must be an int >= 1, got {num_recall_points!r}.")
        self.iou_thresholds = tuple(float(v) for v in iou_thresholds)
        self.loose_iou_thresholds = tuple(float(v) for v in loose_iou_thresholds)
        self.distance_thresholds = tuple(float(d) for d in distance_thresholds)
        self.distance_ranges = tuple((float(lo), float(hi)) for lo, hi in distance_ranges)
        self.num_recall_points = num_recall_points
        for name in ("pred_boxes", "pred_scores", "pred_labels", "pred_frames"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for name in ("gt_boxes", "gt_labels", "gt_difficulty", "gt_frames"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._frames = 0

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """Add frames (``preds[i]`` and ``targets[i]`` describe the same frame).

        Raises:
            ValueError: lists of different lengths, or boxes/scores/labels of mismatched shapes.
        """
        if len(preds) != len(targets):
            raise ValueError(
                f"`preds` and `targets` must describe the same frames, got {len(preds)} and {len(targets)}."
            )
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        for pred, target in zip(preds, targets):
            frame = rank * 2**40 + self._frames  # unique across processes once gathered
            self._frames += 1
            boxes = check_boxes("preds[i]['boxes']", pred["boxes"]).detach().float().cpu()
            scores, labels = pred["scores"].detach().float().cpu(), pred["labels"].detach().long().cpu()
            if scores.shape != (len(boxes),) or labels.shape != (len(boxes),):
                raise ValueError(
                    f"`preds` needs scores and labels ({len(boxes)},) for {len(boxes)} boxes, got "
                    f"{tuple(scores.shape)} and {tuple(labels.shape)}."
                )
            gt = check_boxes("targets[i]['boxes']", target["boxes"]).detach().float().cpu()
            gt_labels = target["labels"].detach().long().cpu()
            difficulty = target.get("difficulty")
            difficulty = torch.full((len(gt),), 2) if difficulty is None else difficulty.detach().long().cpu()
            if gt_labels.shape != (len(gt),) or difficulty.shape != (len(gt),):
                raise ValueError(
                    f"`targets` needs labels (and difficulty) ({len(gt)},) for {len(gt)} boxes, got "
                    f"{tuple(gt_labels.shape)} and {tuple(difficulty.shape)}."
                )
            self.pred_boxes.append(boxes)
            self.pred_scores.append(scores)
            self.pred_labels.append(labels)
            self.pred_frames.append(torch.full((len(boxes),), frame, dtype=torch.long))
            self.gt_boxes.append(gt)
            self.gt_labels.append(gt_labels)
            self.gt_difficulty.append(difficulty)
            self.gt_frames.append(torch.full((len(gt),), frame, dtype=torch.long))

    def reset(self) -> None:
        super().reset()
        self._frames = 0

    def compute(self) -> dict[str, Tensor]:
        """The AP dict described in the module docstring."""
        pb, ps, pl, pf = (_cat(getattr(self, n), s) for n, s in _PRED_STATES)
        gb, gl, gd, gf = (_cat(getattr(self, n), s) for n, s in _GT_STATES)
        scopes = self._scopes()
        out: dict[str, Tensor] = {}
        for c, name in enumerate(self.classes):
            p_keep, g_keep = pl == c, gl == c
            results = self._class_results(
                pb[p_keep], ps[p_keep], pf[p_keep], gb[g_keep], gd[g_keep], gf[g_keep], c
            )
            for (family, scope), ap in results.items():
                out[f"{family}/{name}" + (f"/{scope}" if scope else "")] = ap
        for family in self.FAMILIES:
            for scope in scopes:
                suffix = f"/{scope}" if scope else ""
                values = torch.stack([out[f"{family}/{name}{suffix}"] for name in self.classes])
                known = values[~values.isnan()]
                out[f"{family}/mean{suffix}"] = known.mean() if len(known) else torch.tensor(float("nan"))
        return out

    # ---------------------------------------------------------------- helpers
    def _scopes(self) -> list[str]:
        return ["", *DIFFICULTIES[:2], *(_range_name(lo, hi) for lo, hi in self.distance_ranges)]

    def _class_results(self, pb, ps, pf, gb, gd, gf, c) -> dict[tuple[str, str], Tensor]:
        """AP of one class for every family and scope."""
        matchings: dict[str, list[Tensor]] = {}  # family or distance key -> matched gt per prediction
        kinds = {
            "ap_bev": (bev_iou, self.iou_thresholds[c]),
            "ap_3d": (iou_3d, self.iou_thresholds[c]),
            "ap_bev_loose": (bev_iou, self.loose_iou_thresholds[c]),
            "ap_3d_loose": (iou_3d, self.loose_iou_thresholds[c]),
        }
        for key in [*kinds, *(f"dist_{d}" for d in self.distance_thresholds)]:
            matchings[key] = torch.full((len(pb),), -1, dtype=torch.long)
        gt_index = torch.arange(len(gb))
        for frame in torch.unique(torch.cat([pf, gf])).tolist():
            pi, gi = (pf == frame).nonzero().squeeze(1), (gf == frame).nonzero().squeeze(1)
            if len(pi) == 0 or len(gi) == 0:
                continue
            ious = {bev_iou: bev_iou(pb[pi], gb[gi]), iou_3d: iou_3d(pb[pi], gb[gi])}
            for key, (fn, thr) in kinds.items():
                m = greedy_match(ious[fn], ps[pi], thr)
                matchings[key][pi] = torch.where(m >= 0, gt_index[gi][m.clamp_min(0)], -1)
            negative_distance = -torch.cdist(pb[pi, :2].double(), gb[gi, :2].double())
            for d in self.distance_thresholds:
                m = greedy_match(negative_distance, ps[pi], -d)
                matchings[f"dist_{d}"][pi] = torch.where(m >= 0, gt_index[gi][m.clamp_min(0)], -1)
        r40 = torch.linspace(1 / self.num_recall_points, 1.0, self.num_recall_points)
        nus = torch.linspace(0.0, 1.0, 101)[11:]  # nuScenes: recall above 0.1 only
        pred_range, gt_range = pb[:, :2].norm(dim=1), gb[:, :2].norm(dim=1)
        results: dict[tuple[str, str], Tensor] = {}  # (family, scope or distance threshold) -> AP
        for scope in self._scopes():
            g_in, p_in = self._in_scope(scope, gd, gt_range, pred_range)
            for family in kinds:
                results[(family, scope)] = _scoped_ap(matchings[family], ps, g_in, p_in, r40)
            dist = [
                _scoped_ap(matchings[f"dist_{d}"], ps, g_in, p_in, nus, 0.1) for d in self.distance_thresholds
            ]
            results[("ap_dist", scope)] = torch.stack(dist).mean()
            if scope == "":
                for d, value in zip(self.distance_thresholds, dist):
                    results[("ap_dist", f"{_number(d)}m")] = value
        return results

    def _in_scope(
        self, scope: str, difficulty: Tensor, gt_range: Tensor, pred_range: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Ground truth in scope and predictions that may count as false positives in scope."""
        cared = difficulty >= 0
        if scope == "":
            return cared, torch.ones_like(pred_range, dtype=torch.bool)
        if scope in DIFFICULTIES:
            return cared & (difficulty <= DIFFICULTIES.index(scope)), torch.ones_like(
                pred_range, dtype=torch.bool
            )
        for lo, hi in self.distance_ranges:
            if scope == _range_name(lo, hi):
                return cared & (gt_range >= lo) & (gt_range < hi), (pred_range >= lo) & (pred_range < hi)
        raise ValueError(f"unknown scope {scope!r}")


_PRED_STATES = (("pred_boxes", (0, 7)), ("pred_scores", (0,)), ("pred_labels", None), ("pred_frames", None))
_GT_STATES = (("gt_boxes", (0, 7)), ("gt_labels", None), ("gt_difficulty", None), ("gt_frames", None))


def _cat(state: list[Tensor] | Tensor, empty_shape: tuple[int, ...] | None) -> Tensor:
    """A state as one tensor; ``empty_shape`` None marks an int64 state."""
    if isinstance(state, Tensor):
        return state.cpu()
    if not state:
        return torch.zeros((0,), dtype=torch.long) if empty_shape is None else torch.zeros(empty_shape)
    return dim_zero_cat(state).cpu()


def _scoped_ap(
    matched: Tensor,
    scores: Tensor,
    g_in: Tensor,
    p_in: Tensor,
    recall_points: Tensor,
    min_precision: float = 0.0,
) -> Tensor:
    """AP in one scope: ``matched`` ground truth per prediction, ``g_in`` / ``p_in`` what lies in scope."""
    hit = matched >= 0
    tp = hit.clone()
    tp[hit] = g_in[matched[hit]]  # matched to a box in scope
    counted = tp | (~hit & p_in)  # a false positive counts where its own centre is in scope
    return average_precision(
        scores[counted],
        tp[counted],
        int(g_in.sum()),
        recall_points=recall_points,
        min_precision=min_precision,
    )


def _number(value: float) -> str:
    return f"{value:g}"


def _range_name(low: float, high: float) -> str:
    return f"{_number(low)}+m" if math.isinf(high) else f"{_number(low)}-{_number(high)}m"


class DetectionEvaluation:
    """A recipe's :class:`DetectionAP` per stage and model over an epoch, and what it logs at the epoch's end.

    ``update(stage, preds, targets, model="student")`` adds a batch; ``logs(stage)`` computes and forgets
    the stage's metrics and returns them as ``{"<stage>/<name>": value}`` for the student and
    ``{"<stage>/<model>_<name>": value}`` for another model (the teacher's metrics, once per run): per class
    and the class mean, and by scope (difficulty, distance range) the class mean only. ``reset(stage)``
    forgets a stage unlogged (Lightning's sanity check).

    Example:
        >>> import torch
        >>> evaluation = DetectionEvaluation()
        >>> box = torch.tensor([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
        >>> perfect = [{"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)}]
        >>> evaluation.update("val", perfect, [{"boxes": box, "labels": torch.zeros(1, dtype=torch.long)}])
        >>> float(evaluation.logs("val")["val/ap_bev/car"])
        1.0
        >>> evaluation.logs("val")
        {}
    """

    def __init__(self) -> None:
        self._metrics: dict[tuple[str, str], DetectionAP] = {}

    def update(
        self,
        stage: str,
        preds: list[dict[str, Tensor]],
        targets: list[dict[str, Tensor]],
        model: str = "student",
    ) -> None:
        self._metrics.setdefault((stage, model), DetectionAP()).update(preds, targets)

    def reset(self, stage: str) -> None:
        for key in [k for k in self._metrics if k[0] == stage]:
            del self._metrics[key]

    def logs(self, stage: str) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key in [k for k in self._metrics if k[0] == stage]:
            model = key[1]
            prefix = f"{stage}/" if model == "student" else f"{stage}/{model}_"
            for name, value in self._metrics.pop(key).compute().items():
                if name.count("/") == 1 or "/mean/" in name:
                    out[prefix + name] = torch.as_tensor(value, dtype=torch.float32)
        return out
