"""DetectionAP on hand-built cases: perfect, shifted, missing, duplicate and mis-ordered detections."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.detection.metrics import (
    DetectionAP,
    DetectionEvaluation,
    average_precision,
    greedy_match,
)

CAR, PED = 0, 1


def _cars(*xs, y=0.0, size=(4.0, 2.0, 1.5)):
    return torch.tensor([[x, y, 0.0, *size, 0.0] for x in xs], dtype=torch.float32).reshape(-1, 7)


def _pred(boxes, scores, label=CAR):
    return {
        "boxes": boxes,
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.full((len(boxes),), label),
    }


def _target(boxes, label=CAR, difficulty=None):
    out = {"boxes": boxes, "labels": torch.full((len(boxes),), label)}
    if difficulty is not None:
        out["difficulty"] = torch.tensor(difficulty)
    return out


def _compute(preds, targets, **kwargs):
    metric = DetectionAP(**kwargs)
    metric.update(preds, targets)
    return {k: float(v) for k, v in metric.compute().items()}


# nuScenes distance AP of a run whose precision is 1 up to recall r and 0 after: the 101-point grid
# above recall 0.1 holds 90 points; those <= r count fully.
def _nuscenes_ap(max_recall):
    grid = [i / 100 for i in range(11, 101)]
    return sum(r <= max_recall + 1e-9 for r in grid) / 90


def test_perfect_detections_score_one_in_every_family():
    gt = _cars(10.0, 25.0, 45.0)
    out = _compute([_pred(gt.clone(), [0.9, 0.8, 0.7])], [_target(gt)])
    for key in (
        "ap_bev/car",
        "ap_3d/car",
        "ap_bev_loose/car",
        "ap_3d_loose/car",
        "ap_dist/car",
        "ap_dist/car/0.5m",
    ):
        assert out[key] == pytest.approx(1.0), key
    for scope in ("0-20m", "20-40m", "40+m"):
        assert out[f"ap_3d/car/{scope}"] == 1.0
    assert math.isnan(out["ap_3d/car/easy"])  # without a difficulty every box is hard
    assert math.isnan(out["ap_3d/pedestrian"]) and out["ap_3d/mean"] == 1.0  # classes without GT are left out


def test_shift_beyond_the_threshold_scores_zero():
    gt = _cars(10.0)
    shifted = _cars(12.0)  # BEV IoU of 4x2 boxes 2 m apart along x: 4 / 12 = 0.33 < 0.5 (loose)
    out = _compute([_pred(shifted, [0.9])], [_target(gt)])
    assert out["ap_3d/car"] == 0.0 and out["ap_bev_loose/car"] == 0.0
    assert out["ap_dist/car/0.5m"] == 0.0 and out["ap_dist/car/1m"] == 0.0
    assert out["ap_dist/car/2m"] == 1.0 and out["ap_dist/car/4m"] == 1.0  # 2 m is within the 2 m threshold
    assert out["ap_dist/car"] == pytest.approx(0.5)
    slight = _compute([_pred(_cars(10.3), [0.9])], [_target(gt)])  # IoU 3.7 * 2 / (16 - 7.4) = 0.86
    assert slight["ap_3d/car"] == 1.0


def test_missing_half_the_objects_bounds_recall_at_one_half():
    gt = _cars(10.0, 20.0, 30.0, 40.0)
    out = _compute([_pred(gt[:2].clone(), [0.9, 0.8])], [_target(gt)])
    assert out["ap_3d/car"] == pytest.approx(20 / 40)  # R40: precision 1 at recall points 1/40 .. 20/40
    assert out["ap_dist/car"] == pytest.approx(_nuscenes_ap(0.5))  # 40 of 90 points


def test_duplicates_lower_precision_by_hand():
    gt = _cars(10.0, 20.0)
    # TP (0.9), duplicate of the first (0.8, a false positive), TP (0.7): precision 1 up to recall 1/2, then 2/3
    preds = _pred(torch.cat([gt[:1], gt[:1] + 0.05, gt[1:]]), [0.9, 0.8, 0.7])
    out = _compute([preds], [_target(gt)])
    assert out["ap_3d/car"] == pytest.approx((20 * 1.0 + 20 * 2 / 3) / 40)
    assert out["ap_dist/car"] == pytest.approx(
        (sum(1 for i in range(11, 51)) * 1.0 + sum(1 for i in range(51, 101)) * (2 / 3 - 0.1) / 0.9) / 90
    )


def test_score_order_matters():
    gt = _cars(10.0)
    boxes = torch.cat([gt, _cars(30.0)])  # a true and a false positive
    good = _compute([_pred(boxes, [0.9, 0.1])], [_target(gt)])
    bad = _compute([_pred(boxes, [0.1, 0.9])], [_target(gt)])
    assert good["ap_3d/car"] == 1.0
    assert bad["ap_3d/car"] == pytest.approx(0.5)  # the only recall reached comes at precision 1/2


def test_ignored_boxes_neither_count_as_missed_nor_make_false_positives():
    gt = _cars(10.0, 30.0)
    out = _compute([_pred(gt.clone(), [0.9, 0.8])], [_target(gt, difficulty=[0, -1])])
    assert out["ap_3d/car"] == 1.0
    missed = _compute([_pred(gt[:1].clone(), [0.9])], [_target(gt, difficulty=[0, -1])])
    assert missed["ap_3d/car"] == 1.0


def test_difficulty_scopes_are_cumulative_and_ranges_split_by_distance():
    gt = _cars(10.0, 30.0, 45.0)
    preds = _pred(gt[:1].clone(), [0.9])  # only the near car is found
    out = _compute([preds], [_target(gt, difficulty=[0, 1, 2])])
    assert out["ap_3d/car/easy"] == 1.0
    assert out["ap_3d/car/moderate"] == pytest.approx(0.5)
    assert out["ap_3d/car"] == pytest.approx(20 / 40 * 2 / 3 * 40 / 40, abs=0.02)  # recall 1/3
    assert out["ap_3d/car/0-20m"] == 1.0 and out["ap_3d/car/20-40m"] == 0.0 and out["ap_3d/car/40+m"] == 0.0


def test_a_far_false_positive_only_hurts_its_own_range():
    gt = _cars(10.0)
    preds = _pred(torch.cat([gt, _cars(30.0)]), [0.5, 0.9])
    out = _compute([preds], [_target(gt)])
    assert out["ap_3d/car/0-20m"] == 1.0
    assert math.isnan(out["ap_3d/car/20-40m"])  # no ground truth there
    assert out["ap_3d/car"] == pytest.approx(0.5)


def test_classes_are_scored_apart_with_their_own_thresholds():
    car, ped = _cars(10.0), _cars(5.0, y=5.0, size=(0.8, 0.6, 1.7))
    pred_ped = ped.clone()
    pred_ped[0, 0] += (
        0.25  # IoU (0.55 * 0.6) / (0.96 - 0.33) = 0.52: passes the pedestrian's 0.5, a car would fail 0.7
    )
    out = _compute(
        [
            {
                "boxes": torch.cat([car, pred_ped]),
                "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([CAR, PED]),
            }
        ],
        [{"boxes": torch.cat([car, ped]), "labels": torch.tensor([CAR, PED])}],
    )
    assert out["ap_3d/car"] == 1.0 and out["ap_3d/pedestrian"] == 1.0 and math.isnan(out["ap_3d/cyclist"])
    wrong_class = _compute([_pred(car.clone(), [0.9], label=PED)], [_target(car)])
    assert wrong_class["ap_3d/car"] == 0.0


def test_frames_are_matched_separately_and_updates_accumulate():
    gt = _cars(10.0)
    metric = DetectionAP()
    metric.update([_pred(gt.clone(), [0.9])], [_target(gt)])
    metric.update([_pred(torch.zeros(0, 7), [])], [_target(gt)])  # a frame with a missed car
    assert float(metric.compute()["ap_3d/car"]) == pytest.approx(0.5)
    metric.reset()
    metric.update([_pred(gt.clone(), [0.9])], [_target(gt)])
    assert float(metric.compute()["ap_3d/car"]) == 1.0


def test_states_are_lists_gathered_by_concatenation_with_frame_ids_unique_per_rank(monkeypatch):
    metric = DetectionAP()
    assert all(metric._reductions[name].__name__ == "dim_zero_cat" for name in metric._defaults)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    metric.update([_pred(_cars(10.0), [0.9])], [_target(_cars(10.0))])
    assert int(metric.gt_frames[0][0]) == 2**40


def test_average_precision_and_greedy_match_by_hand():
    r40 = torch.linspace(1 / 40, 1, 40)
    assert math.isnan(
        average_precision(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0, recall_points=r40)
    )
    assert average_precision(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 3, recall_points=r40) == 0.0
    similarity = torch.tensor([[0.9, 0.6], [0.8, 0.1]])
    # the higher-scored prediction takes ground truth 0 first; the other finds nothing above 0.5
    assert greedy_match(similarity, torch.tensor([0.5, 0.9]), 0.5).tolist() == [1, 0]
    assert greedy_match(similarity, torch.tensor([0.9, 0.5]), 0.5).tolist() == [0, -1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iou_thresholds": (0.7, 0.5)}, "`iou_thresholds`"),
        ({"loose_iou_thresholds": (0.5, 0.0, 0.25)}, "`loose_iou_thresholds`"),
        ({"distance_thresholds": ()}, "`distance_thresholds`"),
        ({"num_recall_points": 0}, "`num_recall_points`"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectionAP(**kwargs)


def test_bad_updates_are_rejected():
    metric = DetectionAP()
    with pytest.raises(ValueError, match="same frames"):
        metric.update([], [_target(_cars(1.0))])
    with pytest.raises(ValueError, match="scores and labels"):
        metric.update([_pred(_cars(1.0, 2.0), [0.9])], [_target(_cars(1.0))])
    with pytest.raises(ValueError, match="must be an \\(M, 7\\)"):
        metric.update([_pred(torch.zeros(1, 5), [0.9])], [_target(_cars(1.0))])


def test_detection_evaluation_logs_each_model_under_its_prefix_once():
    box = torch.tensor([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    label = torch.zeros(1, dtype=torch.long)
    hit = [{"boxes": box, "scores": torch.ones(1), "labels": label}]
    miss = [
        {"boxes": box + torch.tensor([[20.0, 0, 0, 0, 0, 0, 0]]), "scores": torch.ones(1), "labels": label}
    ]
    target = [{"boxes": box, "labels": label}]
    evaluation = DetectionEvaluation()
    evaluation.update("val", hit, target)
    evaluation.update("val", miss, target, model="teacher")
    evaluation.update("test", hit, target)
    logs = evaluation.logs("val")
    assert float(logs["val/ap_bev/car"]) == 1.0 and float(logs["val/teacher_ap_bev/car"]) == 0.0
    assert "val/ap_bev/car/easy" not in logs and "val/ap_bev/mean/easy" in logs  # scopes: class mean only
    assert not any(k.startswith("test/") for k in logs)
    assert evaluation.logs("val") == {}  # computed once, then forgotten
    evaluation.reset("test")
    assert evaluation.logs("test") == {}
