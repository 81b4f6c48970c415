"""InfoNCE and the superpixel-pooled InfoNCE against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.lidar.losses import info_nce, superpixel_info_nce, superpixel_pool


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
