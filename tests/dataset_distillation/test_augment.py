"""Differentiable siamese augmentation: shared parameters, DSA semantics per op, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.dataset_distillation import AugmentParams, SiameseAugment

STRATEGY = "color_crop_cutout_flip_scale_rotate"


def params(op: str, value) -> AugmentParams:
    return AugmentParams((op,), {op: torch.as_tensor(value, dtype=torch.float32)})


def test_same_parameters_transform_real_and_synthetic_alike():
    aug = SiameseAugment(STRATEGY, mode="all")
    gen = torch.Generator().manual_seed(0)
    real, syn = torch.randn(6, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    p = aug.sample(real, torch.Generator().manual_seed(1))
    assert p.size == 1
    joint = aug(torch.cat([real, syn]), p)
    torch.testing.assert_close(joint, torch.cat([aug(real, p), aug(syn, p)]))
    # Every image gets the same transformation: an image alone is transformed as inside the batch.
    torch.testing.assert_close(aug(syn[1:], p), aug(syn, p)[1:])


def test_sampling_is_a_function_of_the_generator():
    aug = SiameseAugment(STRATEGY)
    a = aug.sample(4, torch.Generator().manual_seed(3))
    b = aug.sample(4, torch.Generator().manual_seed(3))
    assert a.ops == b.ops and all(torch.equal(a.values[k], b.values[k]) for k in a.values)
    ops = {aug.sample(4, torch.Generator().manual_seed(s)).ops for s in range(40)}
    assert len(ops) == 6  # single mode: one op per call, every op reachable
    assert ("brightness", "saturation", "contrast") in ops


def test_non_siamese_draws_per_image_parameters():
    aug = SiameseAugment("rotate", siamese=False)
    p = aug.sample(torch.zeros(5, 1, 8, 8), torch.Generator().manual_seed(0))
    assert p.size == 5 and len(set(p.values["rotate"].tolist())) == 5
    with pytest.raises(ValueError, match="batch of 5"):
        aug(torch.zeros(3, 1, 8, 8), p)


def test_color_ops_follow_dsa_formulas():
    aug = SiameseAugment("color")
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(aug(x, params("brightness", [0.3])), x + 0.3)
    mean_c = x.mean(1, keepdim=True)
    torch.testing.assert_close(aug(x, params("saturation", [1.5])), (x - mean_c) * 1.5 + mean_c)
    mean_all = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(aug(x, params("contrast", [0.7])), (x - mean_all) * 0.7 + mean_all)
    # Draws: brightness (u - 0.5) * 1, saturation 2u, contrast u + 0.5 with the same u sequence.
    p = SiameseAugment("color", mode="all").sample(2, torch.Generator().manual_seed(0))
    u = torch.rand(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.values["brightness"], (u[:1] - 0.5))
    torch.testing.assert_close(p.values["saturation"], u[1:2] * 2.0)
    torch.testing.assert_close(p.values["contrast"], u[2:3] + 0.5)


@pytest.mark.parametrize("fractions,shift", [((0.0, 0.95), (-2, 2)), ((0.5, 0.3), (0, -1))])
def test_crop_translates_with_zero_fill(fractions, shift):
    aug = SiameseAugment("crop")  # 16 px: shifts in [-2, 2]
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(1, 2, 16, 16) + 1
    out = aug(x, AugmentParams(("crop",), {"crop": torch.tensor([fractions])}))
    expected = torch.zeros_like(x)
    dh, dw = shift
    for i in range(16):
        for j in range(16):
            if 0 <= i + dh < 16 and 0 <= j + dw < 16:
                expected[0, :, i, j] = x[0, :, i + dh, j + dw]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("fractions,top_left", [((0.0, 0.0), (-2, -2)), ((0.5, 0.99), (2, 6))])
def test_cutout_zeroes_a_half_size_square(fractions, top_left):
    aug = SiameseAugment("cutout")  # 8 px: a 4 x 4 square, centre in [0, 8]
    x = torch.ones(1, 1, 8, 8)
    out = aug(x, AugmentParams(("cutout",), {"cutout": torch.tensor([fractions])}))
    expected = torch.ones(1, 1, 8, 8)
    top, left = top_left
    expected[0, 0, max(top, 0) : top + 4, max(left, 0) : left + 4] = 0
    torch.testing.assert_close(out, expected)


def test_flip_scale_rotate_match_their_affine_definitions():
    aug = SiameseAugment("flip_scale_rotate")
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(aug(x, params("flip", [1.0])), x.flip(3))
    torch.testing.assert_close(aug(x, params("flip", [0.0])), x)
    theta = torch.tensor([[[1.1, 0.0, 0.0], [0.0, 0.9, 0.0]]]).expand(2, 2, 3)
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    torch.testing.assert_close(
        aug(x, AugmentParams(("scale",), {"scale": torch.tensor([[1.1, 0.9]])})), expected
    )
    a = 0.2
    theta = torch.tensor([[[math.cos(a), math.sin(-a), 0.0], [math.sin(a), math.cos(a), 0.0]]]).expand(
        2, 2, 3
    )
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    torch.testing.assert_close(aug(x, params("rotate", [a])), expected)
    torch.testing.assert_close(aug(x, AugmentParams(("scale",), {"scale": torch.tensor([[1.0, 1.0]])})), x)


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_every_op_is_differentiable_in_the_images(op):
    aug = SiameseAugment(op, mode="all")
    p = aug.sample(2, torch.Generator().manual_seed(5))
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: aug(t, p), (x,))


def test_none_strategy_is_identity_and_bad_arguments_raise():
    aug = SiameseAugment("none")
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(aug(x, aug.sample(x)), x)
    with pytest.raises(ValueError, match="unknown ops"):
        SiameseAugment("color_blur")
    with pytest.raises(ValueError, match="mode"):
        SiameseAugment("color", mode="many")
    with pytest.raises(ValueError, match="images"):
        aug(torch.zeros(4, 4), aug.sample(1))
