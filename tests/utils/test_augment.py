"""RandomResizedCropFlip: torchvision's crop sampling in pure torch, replayable from parameters."""

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lightning_distill.utils.augment import RandomResizedCropFlip


def test_random_resized_crop_flip_matches_crop_interpolate_flip():
    aug = RandomResizedCropFlip((5, 7), scale=(0.2, 1.0))
    images = torch.rand(16, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    params = aug.sample_params(16, 9, 11, generator=torch.Generator().manual_seed(1))
    got = aug.apply(images, params)
    for image, (top, left, h, w, flip), out in zip(images, params.long().tolist(), got):
        crop = image[None, :, top : top + h, left : left + w]
        expected = F.interpolate(crop, size=(5, 7), mode="bilinear", align_corners=False)[0]
        if flip:
            expected = expected.flip(-1)
        assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert params[:, 4].min() == 0 and params[:, 4].max() == 1  # both flips occur in 16 draws


def test_random_resized_crop_params_respect_scale_ratio_and_fall_back_to_centre():
    aug = RandomResizedCropFlip(4, scale=(0.3, 0.6), ratio=(0.5, 2.0))
    params = aug.params_for(torch.arange(200), seed=0, slot=0, height=20, width=30)
    top, left, h, w, flip = params.unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= 20) & (left + w <= 30)).all()
    area = h * w / 600
    assert area.min() > 0.25 and area.max() < 0.65  # rounding widens the range slightly
    assert ((w / h) > 0.45).all() and ((w / h) < 2.2).all()
    assert 0.35 < flip.mean() < 0.65
    # An impossible request (a 1:3 crop of the whole square) falls back to the centre crop.
    tall = RandomResizedCropFlip(4, scale=(1.0, 1.0), ratio=(3.0, 3.0), flip_p=0.0)
    assert tall.params_for([0], seed=0, slot=0, height=9, width=9).tolist() == [[3.0, 0.0, 3.0, 9.0, 0.0]]
