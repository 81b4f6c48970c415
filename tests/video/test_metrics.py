"""Video metrics, MCM's heads and the video denoiser against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_distill.data.video import moving_glyphs
from lightning_distill.video import (
    FrameDiscriminator,
    LabelConditionedVideoUNet,
    SpatialHead,
    frame_fcd,
    motion_error,
    sample_frames,
    temporal_consistency,
    tiny_video_unet,
    video_grid,
)
from lightning_distill.video.metrics import ink_histogram_distance


def test_motion_error_is_small_on_the_data_and_equals_the_speed_for_a_still_video():
    data = moving_glyphs(32, size=16, num_frames=6, seed=0)
    assert float(motion_error(data.videos, data.labels).mean()) < 0.3
    still = data.videos[:, :, :1].expand_as(data.videos)
    err = motion_error(still, data.labels)
    # a still video misses the whole displacement, |v| = 1 (axis) or sqrt(2) (diagonal), up to the
    # approximate walls of the expected path (a glyph's ink is not centred in its square)
    diagonal = (data.labels[:, 1] % 2 == 1).float()
    full = 1 + diagonal * (2**0.5 - 1)
    assert abs(float(err.mean()) - float(full.mean())) < 0.15


def test_temporal_consistency_by_hand():
    video = torch.zeros(1, 1, 3, 1, 2)
    video[0, 0, 0, 0] = torch.tensor([1.0, 0.0])
    video[0, 0, 1, 0] = torch.tensor([1.0, 0.0])
    video[0, 0, 2, 0] = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(temporal_consistency(video), torch.tensor([0.5]))  # (1 + 0) / 2


def test_frame_fcd_is_zero_for_the_same_frames_and_grows_with_a_shift():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    x = torch.randn(64, 1, 2, 8, 8)
    assert abs(float(frame_fcd(x, x, net))) < 1e-6
    assert float(frame_fcd(x, x + 1.0, net)) > 0.01


def test_ink_histogram_distance_sees_appearance_only():
    a = torch.full((4, 1, 4, 4), -1.0)
    a[:, :, :2] = 1.0
    b = a.flip(-1)  # same grey levels elsewhere: same appearance
    assert float(ink_histogram_distance(a, b)) == 0.0
    assert float(ink_histogram_distance(a, a * 0.2)) > 1.0


def test_spatial_head_starts_as_identity_and_acts_per_frame():
    head = SpatialHead(channels=1, hidden=8, norm_groups=4)
    nn.init.normal_(head.conv_out.weight)
    x = torch.randn(2, 1, 3, 8, 8)
    out = head(x)
    # frame 1 of the output depends on frame 1 of the input only
    y = x.clone()
    y[:, :, 0] += 1
    torch.testing.assert_close(head(y)[:, :, 1:], out[:, :, 1:])
    with pytest.raises(ValueError, match="videos"):
        head(torch.randn(2, 1, 8, 8))


def test_frame_discriminator_and_tsn_frame_sampling():
    frames = sample_frames(torch.arange(8.0).reshape(1, 1, 8, 1, 1), 2, torch.Generator().manual_seed(0))
    assert frames.shape == (2, 1, 1, 1) and float(frames[0]) < 4 <= float(frames[1])
    assert FrameDiscriminator(channels=1, width=4)(torch.randn(3, 1, 8, 8)).shape == (3,)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frames(torch.zeros(1, 1, 2, 4, 4), 3)


def test_video_unet_null_labels_and_bad_labels():
    model = LabelConditionedVideoUNet(tiny_video_unet(sample_size=8))
    x, t = torch.randn(2, 1, 2, 8, 8), torch.tensor([3, 900])
    null = torch.full((2, 2), model.null_label)
    torch.testing.assert_close(model(x, t, null), model(x, t, None))
    with pytest.raises(ValueError, match="labels"):
        model(x, t, torch.tensor([[11, 0], [0, 0]]))
    with pytest.raises(TypeError, match="UNet3DConditionModel"):
        LabelConditionedVideoUNet(nn.Linear(2, 2))
    assert video_grid(torch.zeros(2, 1, 2, 4, 4)).shape[0] == 2


def test_frame_discriminator_on_frozen_features_trains_only_its_head():
    features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    disc = FrameDiscriminator(width=8, features=features, feature_dim=4)
    disc(torch.randn(3, 1, 8, 8)).sum().backward()
    assert all(p.grad is None for p in features.parameters())
    assert all(p.grad is not None for p in disc.head.parameters())
    with pytest.raises(ValueError, match="feature_dim"):
        FrameDiscriminator(features=features)
