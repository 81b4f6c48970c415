import numpy as np
import pytest
import torch
from skimage.feature import hog

from lightning_distill.representation import HOGFeatures, hog_dim, hog_targets


def test_hog_targets_regroup_skimage_cells_by_patch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 2, 8, 8, generator=g)
    out = hog_targets(images, patch_size=4, orientations=6, cells_per_patch=2)
    assert out.shape == (2, 4, hog_dim(2, orientations=6, cells_per_patch=2))
    for b in range(2):
        cells = [
            hog(
                images[b, c].numpy(),
                orientations=6,
                pixels_per_cell=(2, 2),
                cells_per_block=(1, 1),
                block_norm="L2",
                feature_vector=False,
            )[:, :, 0, 0]
            for c in range(2)
        ]
        for pr in range(2):
            for pc in range(2):
                expected = np.concatenate(
                    [cells[c][2 * pr + i, 2 * pc + j] for c in range(2) for i in range(2) for j in range(2)]
                )
                np.testing.assert_allclose(out[b, pr * 2 + pc].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_hog_features_module_flattens_and_has_no_parameters():
    module = HOGFeatures(patch_size=4)
    assert list(module.parameters()) == []
    assert module(torch.rand(3, 1, 16, 16)).shape == (3, 16 * 36)


def test_hog_targets_reject_bad_sizes():
    with pytest.raises(ValueError, match="patch_size"):
        hog_targets(torch.rand(1, 1, 10, 10), patch_size=4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        hog_targets(torch.rand(10, 10), patch_size=2)
