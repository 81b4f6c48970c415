"""HexPlane: projection and query shapes, a constant volume round-trips, the rollout inverts, the VAEs and the DiT run."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.lidar_generation.dit import PlaneDiT, tiny_plane_dit
from lightning_distill.lidar_generation.hexplane import (
    PLANES,
    HexPlaneVAE,
    VolumeVAE,
    expand_planes,
    project_to_planes,
    rollout_mask,
    rollout_planes,
    unroll_planes,
)

SIZE = (3, 6, 5, 4)  # (T, X, Y, Z), all different so that a swapped axis shows


def test_projection_gives_six_planes_over_their_axes():
    planes = project_to_planes(torch.randn(2, 7, *SIZE))
    expected = {"xy": (6, 5), "xz": (6, 4), "yz": (5, 4), "tx": (3, 6), "ty": (3, 5), "tz": (3, 4)}
    assert {k: tuple(v.shape) for k, v in planes.items()} == {k: (2, 7, *s) for k, s in expected.items()}
    volume = torch.randn(1, 1, *SIZE)
    torch.testing.assert_close(project_to_planes(volume)["tz"][0, 0, 1, 2], volume[0, 0, 1, :, :, 2].mean())


def test_constant_volume_round_trips_through_projection_and_query():
    volume = torch.full((2, 3, *SIZE), 2.5)
    features = expand_planes(project_to_planes(volume), SIZE)
    for f in features:
        torch.testing.assert_close(f.expand_as(volume), volume)
    # queried at twice the resolution (the decoder's upsampling) it is still the constant
    bigger = (3, 12, 10, 8)
    for f in expand_planes(project_to_planes(volume), bigger):
        torch.testing.assert_close(f.expand(2, 3, *bigger), torch.full((2, 3, *bigger), 2.5))


def test_rollout_then_unroll_is_the_identity_and_the_mask_marks_the_planes():
    planes = project_to_planes(torch.randn(2, 3, *SIZE))
    image = rollout_planes(planes, multiple=4)
    t, x, y, z = SIZE
    assert image.shape == (2, 3, 16, 12)  # (6 + 4 + 3 -> 16, 5 + 4 + 3 -> 12)
    back = unroll_planes(image, SIZE)
    for name in PLANES:
        torch.testing.assert_close(back[name], planes[name])
    mask = rollout_mask(SIZE, multiple=4)
    assert mask.shape == (16, 12)
    assert int(mask.sum()) == x * y + x * z + y * z + t * (x + y + z)
    torch.testing.assert_close(image * (1 - mask), torch.zeros_like(image))  # padding is zero


def test_rollout_rejects_planes_that_disagree():
    planes = project_to_planes(torch.randn(1, 2, *SIZE))
    planes["xz"] = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="xz"):
        rollout_planes(planes)
    with pytest.raises(ValueError, match="missing"):
        rollout_planes({"xy": planes["xy"]})
    with pytest.raises(ValueError, match="image"):
        unroll_planes(torch.randn(1, 2, 4, 4), SIZE)


@pytest.mark.parametrize("cls", [HexPlaneVAE, VolumeVAE])
def test_vaes_encode_and_decode_to_class_logits_of_every_voxel(cls):
    torch.manual_seed(0)
    vae = cls(num_classes=5, grid_size=(8, 8, 4), num_frames=2, latent_channels=3, width=4)
    occupancy = torch.randint(0, 5, (2, 2, 8, 8, 4))
    logits, mean, logvar = vae(occupancy, torch.Generator().manual_seed(0))
    assert logits.shape == (2, 5, 2, 8, 8, 4) and mean.shape == logvar.shape
    assert mean[0].numel() >= vae.latent_shape[0]
    torch.testing.assert_close(vae.decode_latent(vae.encode_latent(occupancy)), vae.decode(mean))
    with pytest.raises(ValueError, match="occupancy"):
        vae.encode(occupancy[:, :1])
    with pytest.raises(ValueError, match="class ids"):
        vae.encode(occupancy + 5)


def test_hexplane_latent_is_the_padded_rollout_and_its_compression_counts_plane_cells():
    vae = HexPlaneVAE(num_classes=7, grid_size=(16, 16, 8), num_frames=4, latent_channels=4, multiple=2)
    mean, _ = vae.encode(torch.zeros(1, 4, 16, 16, 8, dtype=torch.long))
    assert mean.shape == (1, 4, 16, 16) and vae.latent_mask().shape == (16, 16)
    # planes over (4, 8, 8, 4): 64 + 32 + 32 + 4 * 20 = 208 cells of 4 channels for 4 * 2048 voxels
    assert vae.compression_ratio == pytest.approx(4 * 2048 / (4 * 208))
    with pytest.raises(ValueError, match="grid_size"):
        HexPlaneVAE(grid_size=(15, 16, 8))


def test_plane_dit_is_a_diffusers_dit_called_like_a_denoiser_without_label_dropout():
    from diffusers import DiTTransformer2DModel

    model = tiny_plane_dit(in_channels=2, sample_size=8, width=16, num_heads=2, num_layers=1)
    assert isinstance(model.transformer, DiTTransformer2DModel)
    model.train()
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([1, 500, 999])
    torch.manual_seed(0)
    a = model(x, t)
    torch.manual_seed(1)  # diffusers' label dropout would draw from the global generator here
    torch.testing.assert_close(model(x, t), a)
    assert model(x, torch.tensor(10)).shape == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="DiTTransformer2DModel"):
        PlaneDiT(torch.nn.Linear(2, 2))
