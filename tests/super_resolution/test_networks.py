"""IMDN's block against the paper's split sizes and an independent forward; the SR teacher cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.models.super_resolution import (
    IMDN,
    ContrastChannelAttention,
    IMDBlock,
    ResidualSRNet,
    trained_sr_network,
)


def test_imd_block_splits_64_channels_into_16_distilled_and_48_remaining():
    block = IMDBlock(64)
    assert block.split_sizes() == (16, 48)
    assert (block.conv1.in_channels, block.conv1.out_channels) == (64, 64)
    assert (block.conv2.in_channels, block.conv2.out_channels) == (48, 64)
    assert (block.conv3.in_channels, block.conv3.out_channels) == (48, 64)
    assert (block.conv4.in_channels, block.conv4.out_channels) == (48, 16)
    assert (block.fuse.in_channels, block.fuse.out_channels) == (64, 64)
    assert block.attention.squeeze.out_channels == 4  # reduction 16


def test_imd_block_forward_matches_a_direct_computation():
    torch.manual_seed(0)
    block = IMDBlock(8)
    x = torch.randn(2, 8, 6, 6)
    act = lambda t: F.leaky_relu(t, 0.05)  # noqa: E731
    h1 = act(block.conv1(x))
    h2 = act(block.conv2(h1[:, 2:]))
    h3 = act(block.conv3(h2[:, 2:]))
    h4 = block.conv4(h3[:, 2:])
    cat = torch.cat([h1[:, :2], h2[:, :2], h3[:, :2], h4], dim=1)
    stats = cat.std(dim=(-2, -1), unbiased=False, keepdim=True) + cat.mean(dim=(-2, -1), keepdim=True)
    weights = torch.sigmoid(block.attention.excite(torch.relu(block.attention.squeeze(stats))))
    torch.testing.assert_close(block(x), block.fuse(cat * weights) + x)


def test_contrast_attention_uses_std_plus_mean():
    torch.manual_seed(0)
    cca = ContrastChannelAttention(4, reduction=2)
    x = torch.zeros(1, 4, 3, 3)
    x[0, 0, 0, 0] = 9.0  # channel 0: mean 1, population std sqrt(8)
    stats = torch.zeros(1, 4, 1, 1)
    stats[0, 0] = 1.0 + 8**0.5
    expected = x * torch.sigmoid(cca.excite(torch.relu(cca.squeeze(stats))))
    torch.testing.assert_close(cca(x), expected)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_imdn_and_residual_net_upscale_by_their_scale(scale):
    x = torch.rand(1, 3, 5, 6)
    assert IMDN(scale, channels=8, num_blocks=1)(x).shape == (1, 3, 5 * scale, 6 * scale)
    assert ResidualSRNet(scale, channels=8, num_blocks=1)(x).shape == (1, 3, 5 * scale, 6 * scale)


def test_bad_network_arguments_are_rejected():
    with pytest.raises(ValueError, match="`scale`"):
        IMDN(scale=0)
    with pytest.raises(ValueError, match="distillation_rate"):
        IMDBlock(4, distillation_rate=0.1)


def test_trained_sr_network_caches_and_checks_the_scale(tmp_path):
    data = SuperResolutionDataModule(scale=2, hr_size=16, patches_per_image=2, test_size=32, batch_size=8)
    net = trained_sr_network(
        ResidualSRNet(2, channels=4, num_blocks=1), data, steps=3, cache_dir=str(tmp_path)
    )
    again = trained_sr_network(
        ResidualSRNet(2, channels=4, num_blocks=1), data, steps=3, cache_dir=str(tmp_path)
    )
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert "trained_sr_network cache" in again.distill_source and not net.training
    with pytest.raises(ValueError, match="×4"):
        trained_sr_network(ResidualSRNet(4, channels=4, num_blocks=1), data, steps=3, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint"):
        trained_sr_network(ResidualSRNet(2, channels=4, num_blocks=1))
