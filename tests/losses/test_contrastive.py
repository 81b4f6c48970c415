"""Contrastive losses against independent computations: InfoNCE, SLidR's superpixel InfoNCE, CALICO's PLRC,
RAPC and RAD."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.lidar.image_to_lidar import superpixel_pool
from lightning_distill.losses.contrastive import (
    info_nce,
    point_region_contrast,
    region_aware_distillation,
    region_aware_point_contrast,
    superpixel_info_nce,
)


def _reference_info_nce(q, k, tau):
    total = 0.0
    for i in range(len(q)):
        scores = [float(q[i].double() @ k[j].double()) / tau for j in range(len(k))]
        top = max(scores)
        total += -(scores[i] - top - math.log(sum(math.exp(s - top) for s in scores)))
    return total / len(q)


def test_info_nce_matches_a_log_sum_exp_loop():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    k = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    expected = torch.tensor(_reference_info_nce(q, k, 0.07), dtype=torch.float32)
    torch.testing.assert_close(info_nce(q, k, temperature=0.07), expected)
    assert info_nce(q, k, reduction="none").shape == (6,)


def test_info_nce_hand_value_for_two_orthogonal_pairs():
    e = torch.eye(2)
    # logits [[1/t, 0], [0, 1/t]]: loss = log(1 + exp(-1/t))
    torch.testing.assert_close(info_nce(e, e, temperature=0.5), torch.tensor(math.log(1 + math.exp(-2.0))))


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.eye(2), torch.eye(2), temperature=0.0)
    with pytest.raises(ValueError, match="queries"):
        info_nce(torch.eye(2), torch.eye(3))


def test_superpixel_pooling_and_loss_match_a_python_loop():
    g = torch.Generator().manual_seed(2)
    images, dim, height, width = 2, 3, 4, 5
    pixel_features = torch.randn(images, dim, height, width, generator=g)
    superpixels = torch.randint(0, 3, (images, height, width), generator=g)
    point_features = torch.randn(10, dim, generator=g)
    pair_point = torch.tensor([0, 1, 2, 3, 4, 5, 6, 9])
    pair_image = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    pair_v = torch.randint(0, height, (8,), generator=g)
    pair_u = torch.randint(0, width, (8,), generator=g)

    f, q = superpixel_pool(
        point_features, pixel_features, superpixels, pair_point, pair_image, pair_v, pair_u
    )
    # reference: visit (image, superpixel) in order, keep those with a paired point
    ref_f, ref_q = [], []
    for i in range(images):
        for s in range(int(superpixels.max()) + 1):
            pts = [
                point_features[int(p)]
                for p, im, v, u in zip(pair_point, pair_image, pair_v, pair_u)
                if int(im) == i and int(superpixels[i, v, u]) == s
            ]
            if not pts:
                continue
            pix = [
                pixel_features[i, :, v, u]
                for v in range(height)
                for u in range(width)
                if int(superpixels[i, v, u]) == s
            ]
            ref_f.append(torch.stack(pts).mean(0))
            ref_q.append(torch.stack(pix).mean(0))
    torch.testing.assert_close(f, torch.stack(ref_f))
    torch.testing.assert_close(q, torch.stack(ref_q))
    loss = superpixel_info_nce(
        point_features, pixel_features, superpixels, pair_point, pair_image, pair_v, pair_u, temperature=0.07
    )
    expected = torch.tensor(
        _reference_info_nce(torch.stack(ref_f), torch.stack(ref_q), 0.07), dtype=torch.float32
    )
    torch.testing.assert_close(loss, expected)


def test_superpixel_loss_needs_pairs():
    with pytest.raises(ValueError, match="calibration"):
        empty = torch.zeros(0, dtype=torch.long)
        superpixel_info_nce(
            torch.zeros(3, 2),
            torch.zeros(1, 2, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.long),
            empty,
            empty,
            empty,
            empty,
        )


# ------------------------------------------------------------------ CALICO
def _features(count: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _log_softmax_row(a, keys, i, tau, allowed=None):
    logits = [float(a[i] @ keys[j]) / tau for j in range(len(keys))]
    allowed = allowed if allowed is not None else range(len(keys))
    norm = math.log(sum(math.exp(logits[j]) for j in allowed))
    return [logits[j] - norm for j in range(len(keys))]


def test_plrc_matches_a_loop():
    a, k, tau = _features(7, 5, 0), _features(7, 5, 1), 0.3
    regions = torch.tensor([0, 0, 1, -1, 1, 1, -1])
    expected = []
    for i in range(7):
        if regions[i] < 0:
            continue
        log_p = _log_softmax_row(a, k, i, tau)
        positives = [j for j in range(7) if regions[j] == regions[i]]
        expected.append(-sum(log_p[j] for j in positives) / len(positives))
    got = point_region_contrast(a, k, regions, temperature=tau, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected))
    torch.testing.assert_close(
        point_region_contrast(a, k, regions, temperature=tau), torch.tensor(expected).mean()
    )


def test_rapc_leaves_same_region_points_out_of_the_negatives():
    a, k, tau = _features(6, 4, 2), _features(6, 4, 3), 0.2
    regions = torch.tensor([0, 0, 0, -1, -1, 2])
    expected = []
    for i in range(6):
        allowed = [j for j in range(6) if j == i or not (regions[j] == regions[i] and regions[i] >= 0)]
        expected.append(-_log_softmax_row(a, k, i, tau, allowed)[i])
    got = region_aware_point_contrast(a, k, regions, temperature=tau, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected))
    # with every point semantic-less it is plain InfoNCE
    plain = F.cross_entropy(a @ k.T / tau, torch.arange(6))
    torch.testing.assert_close(
        region_aware_point_contrast(a, k, torch.full((6,), -1), temperature=tau), plain
    )


def test_rad_weighs_every_region_equally():
    s, t, tau = _features(6, 4, 4), _features(6, 4, 5), 0.5
    groups = torch.tensor([3, 3, 3, 3, 7, 9])  # one big group, two singletons
    terms = [-_log_softmax_row(s, t, i, tau)[i] for i in range(6)]
    expected = (sum(terms[:4]) / 4 + terms[4] + terms[5]) / 3
    torch.testing.assert_close(
        region_aware_distillation(s, t, groups, temperature=tau), torch.tensor(expected)
    )
    torch.testing.assert_close(
        region_aware_distillation(s, t, groups, temperature=tau, reduction="none"), torch.tensor(terms)
    )


def test_losses_reject_bad_input():
    a = _features(4, 3, 0)
    with pytest.raises(ValueError, match="temperature"):
        point_region_contrast(a, a, torch.zeros(4, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="regions"):
        region_aware_point_contrast(a, a, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups"):
        region_aware_distillation(a, a, torch.tensor([0, 1, -1, 2]))
