import pytest
import torch

from lightning_distill.representation import (
    block_masks,
    disjoint_masks,
    num_visible,
    random_masks,
    visible_tokens,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.6, 0.75])
def test_random_masks_keep_the_mae_number_of_patches(ratio):
    mask = random_masks(5, 49, ratio, generator=_gen())
    assert mask.shape == (5, 49)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert ((1 - mask).sum(1) == int(49 * (1 - ratio))).all()


def test_random_masks_differ_per_image_and_follow_the_generator():
    a, b = random_masks(4, 16, 0.75, generator=_gen(1)), random_masks(4, 16, 0.75, generator=_gen(1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[1], a[2])


def test_block_masks_mask_whole_two_by_two_groups():
    mask = block_masks(3, 64, 0.6, generator=_gen())
    grid = mask.view(3, 4, 2, 4, 2)
    # every 2x2 group is constant
    assert (grid.amax(dim=(2, 4)) == grid.amin(dim=(2, 4))).all()
    assert ((1 - mask).sum(1) == 4 * int(16 * 0.4)).all()


@pytest.mark.parametrize("kind", ["random", "block"])
@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.75])
def test_disjoint_masks_have_disjoint_visible_sets_of_equal_size(kind, ratio):
    first, second = disjoint_masks(6, 64, ratio, kind=kind, generator=_gen())
    vis1, vis2 = 1 - first, 1 - second
    assert (vis1 * vis2).sum() == 0
    torch.testing.assert_close(vis1.sum(1), vis2.sum(1))
    units = 64 if kind == "random" else 16
    per_unit = 1 if kind == "random" else 4
    assert (vis1.sum(1) == per_unit * num_visible(units, ratio)).all()


def test_disjoint_masks_refuse_ratios_below_one_half():
    with pytest.raises(ValueError, match="mask_ratio"):
        disjoint_masks(2, 16, 0.4)


def test_bad_arguments_are_rejected_with_their_names():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masks(2, 16, 1.0)
    with pytest.raises(ValueError, match="block"):
        block_masks(2, 36, 0.5, block=4)
    with pytest.raises(ValueError, match="square"):
        block_masks(2, 20, 0.5)
    with pytest.raises(ValueError, match="kind"):
        disjoint_masks(2, 16, 0.75, kind="grid")


def test_visible_tokens_keeps_visible_rows_in_patch_order():
    tokens = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    assert visible_tokens(tokens, mask).squeeze(-1).tolist() == [[1.0, 3.0], [4.0, 5.0]]
    with pytest.raises(ValueError, match="same number"):
        visible_tokens(tokens, torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
