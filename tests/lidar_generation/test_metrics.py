"""Completion metrics against hand-worked cases and a brute-force Chamfer distance."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.lidar_generation.metrics import (
    CompletionMetrics,
    bev_jsd,
    completion_metrics,
    voxel_scores,
)


def test_voxel_scores_by_hand():
    # pred occupies voxels {0, 1, 2} along x, target {1, 2, 3, 4} at 1 m: |P∩T| = 2, |P∪T| = 5.
    pred = torch.tensor([[[0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [2.5, 0.5, 0.5], [2.6, 0.5, 0.5]]])
    target = torch.tensor(
        [[[1.2, 0.1, 0.1], [2.2, 0.1, 0.1], [3.2, 0.1, 0.1], [4.2, 0.1, 0.1], [9.0, 9.0, 9.0]]]
    )
    mask = torch.tensor([[True, True, True, True, False]])
    scores = voxel_scores(pred, target, voxel_size=1.0, target_mask=mask)
    torch.testing.assert_close(scores["iou"], torch.tensor([2 / 5]))
    torch.testing.assert_close(scores["precision"], torch.tensor([2 / 3]))
    torch.testing.assert_close(scores["recall"], torch.tensor([2 / 4]))


def test_bev_jsd_by_hand():
    # P = (1, 0), Q = (1/2, 1/2) over two cells: M = (3/4, 1/4);
    # JSD = 1/2 [1 log2(4/3)] + 1/2 [1/2 log2(2/3) + 1/2 log2(2)].
    a = torch.tensor([[[-0.5, -0.5, 0.0], [-0.5, -0.5, 1.0]]])
    b = torch.tensor([[[-0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]]])
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    torch.testing.assert_close(bev_jsd(a, b, extent=1.0, bins=2), torch.tensor([expected]))
    # disjoint histograms: 1; identical: 0
    far = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]])
    torch.testing.assert_close(bev_jsd(a, far, extent=1.0, bins=2), torch.tensor([1.0]))
    torch.testing.assert_close(bev_jsd(a, a, extent=1.0, bins=2), torch.tensor([0.0]))


def test_cd_is_the_papers_halved_mean_euclidean_distance():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 7, 3), torch.randn(2, 9, 3)
    d = torch.cdist(pred.double(), target.double())
    expected = 0.5 * (d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1))
    values = completion_metrics(pred, target, voxel_sizes=(0.5,))
    torch.testing.assert_close(values["cd"], expected.float())
    assert set(values) == {"cd", "jsd", "iou_0.5", "precision_0.5", "recall_0.5"}


def test_metric_accumulates_the_mean_over_batches():
    torch.manual_seed(1)
    pred, target = torch.randn(5, 6, 3), torch.randn(5, 8, 3)
    metric = CompletionMetrics(voxel_sizes=(1.0,), bev_extent=3.0, bev_bins=6)
    metric.update(pred[:2], target[:2])
    metric.update(pred[2:], target[2:])
    whole = completion_metrics(pred, target, voxel_sizes=(1.0,), bev_extent=3.0, bev_bins=6)
    for name, value in metric.compute().items():
        torch.testing.assert_close(value, whole[name].mean())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: voxel_scores(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), voxel_size=1.0), "pred"),
        (lambda: voxel_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), voxel_size=0.0), "voxel_size"),
        (lambda: bev_jsd(torch.zeros(1, 2, 3), torch.zeros(2, 2, 3)), "batch size"),
        (lambda: bev_jsd(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), b_mask=torch.ones(1, 2)), "b_mask"),
        (
            lambda: completion_metrics(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), voxel_sizes=()),
            "voxel_sizes",
        ),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
