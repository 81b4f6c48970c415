import pytest
import torch
from torch.testing import assert_close

from lightning_distill.losses.pointset import chamfer_distance


def _brute_force(a, b, a_mask=None, b_mask=None, squared=True):
    """Per-sample Chamfer distance with Python loops, in float64."""
    out = []
    for i in range(a.shape[0]):
        pa = [p for j, p in enumerate(a[i].double()) if a_mask is None or a_mask[i, j]]
        pb = [p for j, p in enumerate(b[i].double()) if b_mask is None or b_mask[i, j]]

        def dist(x, y):
            d = float(((x - y) ** 2).sum())
            return d if squared else d**0.5

        a_to_b = sum(min(dist(x, y) for y in pb) for x in pa) / len(pa)
        b_to_a = sum(min(dist(x, y) for x in pa) for y in pb) / len(pb)
        out.append(a_to_b + b_to_a)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("squared", [True, False])
def test_chamfer_matches_brute_force_loop(squared):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, 3, generator=gen), torch.randn(3, 5, 3, generator=gen)
    expected = _brute_force(a, b, squared=squared)
    got = chamfer_distance(a, b, squared=squared, reduction="none")
    assert got.shape == (3,)
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert_close(chamfer_distance(a, b, squared=squared).double(), expected.mean(), rtol=1e-5, atol=1e-6)
    assert_close(
        chamfer_distance(a, b, squared=squared, reduction="sum").double(),
        expected.sum(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_chamfer_hand_computed_value():
    a = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [5.0, 0.0]]])
    # a->b: (1 + 0) / 2 = 0.5; b->a: (1 + 0 + 9) / 3 = 10/3.
    assert_close(chamfer_distance(a, b), torch.tensor(0.5 + 10.0 / 3.0))


def test_chamfer_is_symmetric_and_zero_for_identical_sets():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 6, 3, generator=gen), torch.randn(2, 9, 3, generator=gen)
    assert_close(chamfer_distance(a, b, reduction="none"), chamfer_distance(b, a, reduction="none"))
    shuffled = a[:, torch.randperm(6, generator=gen)]
    assert_close(chamfer_distance(a, shuffled, reduction="none"), torch.zeros(2), rtol=0, atol=0)


def test_chamfer_is_exact_far_from_the_origin():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(1, 50, 3, generator=gen) + 1000.0
    b = a + 1e-2
    # Every nearest neighbour is the shifted copy at squared distance 3e-4 (up to float32 rounding of a + 1e-2).
    expected = _brute_force(a, b)
    assert_close(chamfer_distance(a, b).double(), expected[0], rtol=1e-3, atol=0)


def test_chamfer_mask_equals_dropping_the_padded_points():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 6, 3, generator=gen), torch.randn(2, 8, 3, generator=gen)
    a_mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    b_mask = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
    b_padded = b.clone()
    b_padded[1, 3:] = 1e-3  # garbage near the real points must not count
    got = chamfer_distance(a, b_padded, a_mask=a_mask, b_mask=b_mask, reduction="none")
    expected = torch.stack(
        [
            chamfer_distance(a[:1, :4], b[:1], reduction="none")[0],
            chamfer_distance(a[1:], b[1:, :3], reduction="none")[0],
        ]
    )
    assert_close(got, expected)
    assert_close(got.double(), _brute_force(a, b_padded, a_mask, b_mask), rtol=1e-5, atol=1e-6)


def test_chamfer_gradient_is_finite_and_matches_autograd_of_the_loop():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    b_same = torch.cat([b, a.detach()[:, :1]], dim=1)  # a zero distance: the gradient must stay finite
    chamfer_distance(a, b_same).backward()
    grad = a.grad.clone()
    assert torch.isfinite(grad).all()

    a2 = a.detach().clone().requires_grad_(True)
    d = ((a2[:, :, None] - b_same[:, None]) ** 2).sum(-1)
    (d.min(2).values.mean(1) + d.min(1).values.mean(1)).mean().backward()
    assert_close(grad, a2.grad)


@pytest.mark.parametrize(
    "a_shape, b_shape, match",
    [
        ((2, 3), (2, 3), "shapes"),
        ((2, 4, 3), (3, 4, 3), "shapes"),
        ((2, 4, 3), (2, 4, 2), "shapes"),
        ((1, 0, 3), (1, 2, 3), "empty"),
    ],
)
def test_chamfer_rejects_bad_shapes(a_shape, b_shape, match):
    with pytest.raises(ValueError, match=match):
        chamfer_distance(torch.zeros(a_shape), torch.zeros(b_shape))


def test_chamfer_rejects_bad_masks_and_reduction():
    a, b = torch.zeros(2, 3, 3), torch.zeros(2, 4, 3)
    with pytest.raises(TypeError, match="a_mask"):
        chamfer_distance(a, b, a_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="b_mask.*shape"):
        chamfer_distance(a, b, b_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"no real point in samples \[1\]"):
        chamfer_distance(a, b, a_mask=torch.tensor([[True, True, True], [False, False, False]]))
    with pytest.raises(ValueError, match="reduction"):
        chamfer_distance(a, b, reduction="max")
