"""Correspondence toolkit: exact warps, PCK on hand cases, matching, teacher extractors, the pairs datamodule."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.data.correspondence import (
    WarpedPairsDataModule,
    map_points,
    random_homographies,
    sample_keypoints,
    warp_images,
)
from lightning_distill.diffusion import ddpm_schedule, tiny_unet
from lightning_distill.models.vit import mae_vit, vit_backbone
from lightning_distill.representation.correspondence import (
    PCK,
    FeatureCache,
    UNetFeatures,
    ViTFeatures,
    ensemble_features,
    match_points,
    pck,
)


def test_a_translation_moves_a_pixel_exactly():
    image = torch.zeros(1, 1, 12, 12)
    image[0, 0, 3, 5] = 1.0  # (x, y) = (5, 3)
    shift = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]]])
    warped = warp_images(image, shift)
    point = map_points(shift, torch.tensor([[[5.0, 3.0]]]))
    torch.testing.assert_close(point, torch.tensor([[[7.0, 7.0]]]))
    assert warped[0, 0, 7, 7] == pytest.approx(1.0) and warped.sum() == pytest.approx(1.0)


def test_a_point_mapped_by_a_random_homography_lands_on_the_same_content():
    size = 32
    ys, xs = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        p = torch.rand(1, 1, 2, generator=g) * 12 + 10  # well inside
        blob = torch.exp(-((xs - p[0, 0, 0]) ** 2 + (ys - p[0, 0, 1]) ** 2) / 2.0)[None, None]
        h = random_homographies(1, size, 0.15, g)
        warped = warp_images(blob, h)[0, 0]
        q = map_points(h, p)[0, 0]
        peak = warped.flatten().argmax()
        found = torch.stack([peak % size, peak // size]).float()
        assert (found - q).norm() <= 1.0  # the brightest pixel is the one H p falls in (±1 px of rounding)
        # and sampling the warped image at H p gives back the source value at p (~1)
        value = warped[int(q[1].round()), int(q[0].round())]
        assert value > 0.6


def test_keypoints_lie_on_structure():
    image = torch.zeros(2, 1, 16, 16)
    image[:, :, 4:12, 4:12] = 1.0
    points = sample_keypoints(image, 8, torch.Generator().manual_seed(0))
    assert points.shape == (2, 8, 2)
    assert ((points >= 1) & (points <= 14)).all()  # near the square's edges, not the flat corners


def test_pck_hand_cases():
    truth = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.6], [1.7, 0.0], [9.0, 9.0]]])
    # alpha * max(H, W) = 0.1 * 16 = 1.6: hits, hit (on the border), miss, miss
    assert float(pck(pred, truth, None, (16, 8))) == pytest.approx(0.5)
    valid = torch.tensor([[True, True, False, False]])
    assert float(pck(pred, truth, valid, (16, 8))) == pytest.approx(1.0)
    metric = PCK(alpha=0.1)
    metric.update(pred, truth, valid, (16, 8))  # 2 of 2
    metric.update(pred, truth, None, (16, 8))  # 2 of 4
    assert float(metric.compute()) == pytest.approx(4 / 6)


def test_pck_rejects_bad_input():
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="alpha"):
        PCK(alpha=0.0)
    with pytest.raises(ValueError, match=r"\(B, K, 2\)"):
        pck(x, torch.zeros(1, 3, 2), None, (8, 8))
    with pytest.raises(ValueError, match="no valid keypoint"):
        pck(x, x, torch.zeros(1, 2, dtype=torch.bool), (8, 8))


def test_matching_with_position_features_is_exact_under_a_translation():
    h = w = 8
    ys, xs = torch.meshgrid(torch.arange(h * 1.0), torch.arange(w * 1.0), indexing="ij")
    # one-hot position codes: each pixel its own feature
    source = torch.eye(h * w).reshape(1, h * w, h, w)
    target = torch.roll(source, shifts=(1, 2), dims=(2, 3))  # content moved by (x + 2, y + 1)
    points = torch.tensor([[[1.0, 1.0], [3.0, 4.0]]])
    predicted = match_points(source, target, points, (h, w))
    torch.testing.assert_close(predicted, torch.tensor([[[3.0, 2.0], [5.0, 5.0]]]))


def test_unet_features_are_deterministic_and_leave_no_hook():
    unet = tiny_unet(sample_size=16, block_out_channels=(8, 16)).eval()
    extractor = UNetFeatures(unet, ddpm_schedule(), timesteps=(50, 100), up_block=0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a, b = extractor(x), extractor(x)
    assert a.shape == (2, 16, 16, 16)
    torch.testing.assert_close(a, b)
    assert not unet.up_blocks[0]._forward_hooks
    with pytest.raises(ValueError, match="up_block"):
        UNetFeatures(unet, ddpm_schedule(), up_block=5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: mae_vit(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            num_layers=2,
            num_heads=2,
            decoder_hidden_size=8,
            decoder_heads=2,
        ),
        lambda: vit_backbone(image_size=16, patch_size=4, hidden_size=16, num_layers=2, num_heads=2),
    ],
)
def test_vit_features_are_a_patch_grid(build):
    model = build().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        last, first = ViTFeatures(model)(x), ViTFeatures(model, layer=1)(x)
    assert last.shape == first.shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="layer"):
        ViTFeatures(model, layer=3)


def test_ensemble_normalises_each_member_and_concatenates_on_one_grid():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8)
    out = ensemble_features([a, b])
    assert out.shape == (2, 8, 8, 8)
    torch.testing.assert_close(out[:, 3:].norm(dim=1), torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="at least one"):
        ensemble_features([])


def test_feature_cache_computes_each_index_once():
    cache, calls = FeatureCache(), []

    def compute(rows):
        calls.append(int(rows.sum()))
        return torch.arange(int(rows.sum()) * 2.0).reshape(-1, 2)

    first = cache.get(torch.tensor([3, 7]), compute)
    second = cache.get(torch.tensor([7, 3, 9]), compute)
    assert calls == [2, 1] and len(cache) == 3
    torch.testing.assert_close(second[:2], first.flip(0))


def test_pairs_datamodule_is_fixed_and_consistent():
    def build():
        dm = WarpedPairsDataModule(
            DigitsDataModule(size=16), num_train_pairs=10, num_val_pairs=4, num_test_pairs=4, seed=3
        )
        dm.setup()
        return dm

    a, b = build().pairs("train").tensors, build().pairs("train").tensors
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    source, target, p, q, valid, index = a
    assert source.shape == target.shape == (10, 1, 16, 16) and index.tolist() == list(range(10))
    assert valid.float().mean() > 0.5
    with pytest.raises(ValueError, match="strength"):
        WarpedPairsDataModule(DigitsDataModule(size=16), strength=0.7)
    with pytest.raises(TypeError, match="images"):
        WarpedPairsDataModule(torch.nn.Linear(2, 2))
