import pytest
import torch
import torch.nn.functional as F

from lightning_distill.diffusion.denoisers import tiny_unet
from lightning_distill.diffusion.guidance import model_output
from lightning_distill.super_resolution import LRConditionedUNet, upsample_to


def test_conditioning_is_the_concatenated_bicubic_upsample():
    torch.manual_seed(0)
    model = LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(8, 16))
    x, lr, t = torch.randn(2, 3, 16, 16), torch.rand(2, 3, 8, 8), torch.tensor([3, 700])
    up = F.interpolate(lr, size=(16, 16), mode="bicubic", align_corners=False)
    expected = model.unet(torch.cat([x, up], dim=1), t).sample
    torch.testing.assert_close(model_output(model, x, t, lr), expected)


def test_the_prediction_depends_on_the_lr_image():
    torch.manual_seed(0)
    model = LRConditionedUNet.tiny(sample_size=16, image_channels=1, block_out_channels=(8, 16))
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([10])
    a = model_output(model, x, t, torch.zeros(1, 1, 8, 8))
    b = model_output(model, x, t, torch.ones(1, 1, 8, 8))
    assert not torch.allclose(a, b)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="input channels"):
        LRConditionedUNet(
            tiny_unet(sample_size=8, in_channels=3, block_out_channels=(8, 16)), image_channels=3
        )
    model = LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="`lr`"):
        model(torch.randn(2, 3, 8, 8), 1, torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="`sample`"):
        model(torch.randn(2, 1, 8, 8), 1, torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="upsample_mode"):
        LRConditionedUNet.tiny(sample_size=8, block_out_channels=(8, 16), upsample_mode="area")


def test_upsample_to_keeps_same_size_input():
    lr = torch.rand(1, 3, 4, 4)
    assert upsample_to(lr, 4) is lr
    assert upsample_to(lr, (8, 8)).shape == (1, 3, 8, 8)
