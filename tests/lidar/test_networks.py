"""Sparse UNet, image backbone and heads: shapes, eval mode on CPU, gradients."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.lidar.geometry import to_sparse_tensor, voxelize
from lightning_distill.lidar.networks import (
    ImageHead,
    PointHead,
    SmallImageBackbone,
    SparseUNet,
    sparse_point_features,
)


def _points(n=400, batch=2):
    g = torch.Generator().manual_seed(0)
    return torch.cat(
        [
            torch.randint(0, batch, (n, 1), generator=g).float(),
            torch.rand(n, 3, generator=g) * 6,
            torch.rand(n, 1, generator=g),
        ],
        dim=1,
    )


def test_sparse_unet_keeps_the_input_voxels_and_trains():
    torch.manual_seed(0)
    net = SparseUNet(in_channels=1, widths=(4, 8, 16))
    vox = voxelize(_points(), 0.5)
    out = net(to_sparse_tensor(vox))
    assert torch.equal(out.indices, vox.coords) and out.features.shape == (len(vox.coords), 4)
    out.features.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()  # bias=False: spconv's CPU path refuses a bias in eval mode
    with torch.no_grad():
        assert net(to_sparse_tensor(vox)).features.isfinite().all()


def test_per_point_features_follow_the_voxel_map():
    torch.manual_seed(0)
    net = SparseUNet(in_channels=1, widths=(4, 8)).eval()
    points = _points()
    with torch.no_grad():
        per_point = sparse_point_features(net, points, voxel_size=0.5, input_features="intensity")
        vox = voxelize(points, 0.5, features=points[:, 4:5])
        per_voxel = net(to_sparse_tensor(vox)).features
    torch.testing.assert_close(per_point, per_voxel[vox.inverse])
    with pytest.raises(ValueError, match="in_channels"):
        net(to_sparse_tensor(voxelize(points, 0.5, features=points[:, 1:3])))


def test_image_backbone_and_head_shapes():
    backbone = SmallImageBackbone(widths=(4, 8))
    features = backbone(torch.rand(2, 3, 32, 64))
    assert features.shape == (2, backbone.out_channels, 8, 16) and backbone.stride == 4
    assert ImageHead(8, 5)(features, (32, 64)).shape == (2, 5, 32, 64)
    assert PointHead(8, 3, hidden=16)(torch.randn(7, 8)).shape == (7, 3)
    with pytest.raises(ValueError, match="widths"):
        SparseUNet(widths=())
