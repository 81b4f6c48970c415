"""The four field families: one interface, shapes, gradients, clamping, encodings, paper-scale builds."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.radiance.fields import (
    HashEncoding,
    HashGridField,
    MLPField,
    TensorVMField,
    VoxelGridField,
    frequency_encoding,
    sh_encoding,
)
from lightning_distill.radiance.rendering import render_rays, sample_points

TOY = {
    "mlp": lambda: MLPField(num_freqs=3, depth=3, width=16, skip=0, encoding_dim=8, sigma_hidden=16),
    "voxel": lambda: VoxelGridField(resolution=6),
    "vm": lambda: TensorVMField(resolution=8, sigma_rank=2, color_rank=3),
    "hash": lambda: HashGridField(num_levels=3, log2_table_size=6, base_resolution=2, max_resolution=8),
}


def points(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 2 - 1, torch.nn.functional.normalize(
        torch.randn(n, 3, generator=g), dim=-1
    )


@pytest.mark.parametrize("family", sorted(TOY))
def test_interface_shapes_clamp_and_gradients(family):
    torch.manual_seed(0)
    field = TOY[family]()
    x, d = points()
    pre, rgb, feats = field(x, d)
    assert pre.shape == (32,) and rgb.shape == (32, 3) and feats.shape == (32, field.feature_dim == 16 and 16)
    torch.testing.assert_close(field.density(x), pre)
    torch.testing.assert_close(field.color(x, d), rgb)
    torch.testing.assert_close(field.features(x), feats)
    assert bool(((pre >= -2) & (pre <= 7)).all()) and bool(((rgb > 0) & (rgb < 1)).all())
    torch.testing.assert_close(field.activate_density(torch.tensor(-2.0)), torch.tensor(0.0))
    (pre.sum() + rgb.sum() + feats.sum()).backward()
    assert all(p.grad is not None for p in field.parameters())


def test_the_density_clamp_is_the_official_one():
    field = VoxelGridField(resolution=4)
    with torch.no_grad():
        field.grid[:, 0] = 50.0
        field.grid[:, 1] = -50.0
    x, _ = points(4)
    assert torch.equal(field.density(x), torch.full((4,), 7.0))
    assert torch.equal(field.features(x)[:, 1], torch.full((4,), -50.0))  # only the density channel
    vm = TensorVMField(resolution=4, sigma_rank=1, color_rank=1, density_clip=(-1.0, 1.0))
    assert bool((vm.features(x).abs() <= 1).all())  # TensoRF: every channel, as the official code


def test_voxel_grid_interpolates_trilinearly_at_corners_and_centre():
    field = VoxelGridField(resolution=2, geo_dim=1)
    with torch.no_grad():
        field.grid.zero_()
        field.grid[0, 1, 1, 1, 1] = 8.0  # channel 1 at the corner (+1, +1, +1)
    x = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    torch.testing.assert_close(field.features(x)[:, 1], torch.tensor([8.0, 1.0, 0.0]))


def test_encodings_match_closed_forms():
    x = torch.tensor([[0.5, -1.0, 2.0]])
    enc = frequency_encoding(x, 2)
    torch.testing.assert_close(
        enc, torch.cat([x, torch.sin(x), torch.sin(2 * x), torch.cos(x), torch.cos(2 * x)], -1)
    )
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    sh = sh_encoding(d)
    torch.testing.assert_close(sh[:, 0], torch.full((200,), 0.5 / torch.pi**0.5))
    # orthonormal on the sphere: a fine Monte-Carlo Gram matrix is close to the identity / 4π
    dense = torch.nn.functional.normalize(
        torch.randn(200_000, 3, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    basis = sh_encoding(dense)
    gram = basis.T @ basis / dense.shape[0] * 4 * torch.pi
    torch.testing.assert_close(gram, torch.eye(16), atol=0.03, rtol=0)


def test_hash_encoding_is_dense_when_it_fits_and_hashes_otherwise():
    enc = HashEncoding(
        num_levels=2, features_per_level=1, log2_table_size=6, base_resolution=2, max_resolution=8
    )
    assert enc.resolutions == [2, 8] and (2 + 1) ** 3 <= 64 < (8 + 1) ** 3
    with torch.no_grad():
        enc.tables.zero_()
        enc.tables[0, 2 + 3 * (2 + 3 * 2), 0] = (
            1.0  # dense index of the corner (2, 2, 2): the point (1, 1, 1)
        )
    out = enc(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="log2_table_size"):
        HashEncoding(log2_table_size=40)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="aabb"):
        VoxelGridField(aabb=(1, 1, 1, -1, -1, -1))
    with pytest.raises(ValueError, match="density_clip"):
        MLPField(density_clip=(7, -2))
    with pytest.raises(ValueError, match="resolution"):
        TensorVMField(resolution=1)
    with pytest.raises(ValueError, match="x"):
        TOY["voxel"]().features(torch.zeros(4, 2))


@pytest.mark.parametrize("family", ["mlp", "voxel", "vm", "hash"])
def test_paper_scale_configurations_build_and_render_a_few_rays(family):
    field = {"mlp": MLPField, "voxel": VoxelGridField, "vm": TensorVMField, "hash": HashGridField}[family]()
    origins = torch.tensor([[-3.0, 0.1, 0.2], [0.2, -3.0, 0.1]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = render_rays(field, sample_points(origins, dirs, field.aabb, 4), density=field.activate_density)
    assert out["rgb"].shape == (2, 3) and out["features"].shape == (2, 4, 16)
    assert torch.isfinite(out["rgb"]).all()
