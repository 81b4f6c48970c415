"""Rays, ray-box clipping, stratified sampling and compositing against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.radiance.rendering import (
    camera_rays,
    composite,
    random_rays,
    ray_aabb,
    render_rays,
    sample_points,
    stratified_samples,
    volume_weights,
)
from lightning_distill.radiance.scenes import look_at

BOX = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


def test_ray_aabb_matches_hand_computed_entries_and_exits():
    origins = torch.tensor(
        [[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 0.5, 0.5], [-3.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    )
    dirs = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
        dim=-1,
    )
    near, far, hit = ray_aabb(origins, dirs, BOX)
    torch.testing.assert_close(near[:3], torch.tensor([2.0, 0.0, 2.0]))  # inside: starts at the origin
    torch.testing.assert_close(far[:3], torch.tensor([4.0, 1.0, 4.0]))
    assert hit.tolist() == [True, True, True, False, False]
    assert torch.equal(near[3:], far[3:])  # a miss has an empty segment
    diagonal = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 1.0]]), dim=-1)
    near, far, _ = ray_aabb(torch.tensor([[-2.0, -2.0, -2.0]]), diagonal, BOX)
    torch.testing.assert_close(far - near, torch.tensor([2 * math.sqrt(3)]))


def test_constant_density_gives_the_closed_form_transmittance_and_opacity():
    near, far, sigma, n = torch.tensor([1.0, 0.5]), torch.tensor([3.0, 4.0]), 0.7, 16
    t, deltas, left = stratified_samples(
        near, far, n, perturb=True, generator=torch.Generator().manual_seed(0)
    )
    assert bool(((t >= left) & (t <= left + deltas)).all())
    weights, transmittance = volume_weights(torch.full_like(t, sigma), deltas)
    torch.testing.assert_close(transmittance, torch.exp(-sigma * (left - near[:, None])))
    torch.testing.assert_close(weights.sum(-1), 1 - torch.exp(-sigma * (far - near)))
    out = composite(weights, torch.full((*t.shape, 3), 0.2), t, background=1.0)
    opacity = 1 - torch.exp(-sigma * (far - near))
    torch.testing.assert_close(out["rgb"], (0.2 * opacity + (1 - opacity))[:, None].expand(-1, 3))
    torch.testing.assert_close(out["opacity"], opacity)


def test_an_opaque_wall_gives_its_colour_and_depth():
    t, deltas, _ = stratified_samples(torch.zeros(1), torch.full((1,), 4.0), 8)
    sigma = torch.zeros_like(t)
    sigma[0, 5] = 1e4  # the sixth bin's centre: t = 2.75
    out = composite(volume_weights(sigma, deltas)[0], torch.rand(1, 8, 3), t)
    torch.testing.assert_close(out["depth"], torch.tensor([2.75]))
    torch.testing.assert_close(out["opacity"], torch.tensor([1.0]))


def test_camera_rays_go_through_pixel_centres_and_the_principal_point_looks_at_the_target():
    c2w = look_at(torch.tensor([[0.0, -3.0, 0.0]]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    K = torch.tensor([[[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]]])
    origins, dirs = camera_rays(K, c2w, 4)
    assert origins.shape == dirs.shape == (1, 4, 4, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(1, 4, 4))
    centre = dirs[0, 1:3, 1:3].mean(dim=(0, 1))
    torch.testing.assert_close(torch.nn.functional.normalize(centre, dim=0), torch.tensor([0.0, 1.0, 0.0]))
    assert dirs[0, 0, 0, 2] > 0 and dirs[0, 0, 3, 0] > 0  # image up is world up, image right is +x
    with pytest.raises(ValueError, match="K"):
        camera_rays(K[0], c2w, 4)


def test_render_rays_composites_the_field_and_keeps_per_sample_outputs():
    class Constant(torch.nn.Module):
        def forward(self, x, d):
            n = x.shape[0]
            return torch.zeros(n), torch.full((n, 3), 0.5), torch.zeros(n, 4)

    origins = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 5.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    samples = sample_points(origins, dirs, BOX, 8)
    assert bool((samples["x"][0, :, 0] > -1).all() and (samples["x"][0, :, 0] < 1).all())
    out = render_rays(Constant(), samples, density=lambda p: torch.ones_like(p))
    torch.testing.assert_close(out["opacity"], torch.tensor([1 - math.exp(-2.0), 0.0]))
    assert out["features"].shape == (2, 8, 4) and out["colors"].shape == (2, 8, 3)
    torch.testing.assert_close(out["rgb"][1], torch.ones(3))  # a miss shows the background


def test_random_rays_keep_the_radius_and_hit_the_box():
    origins = torch.tensor([[3.0, 0.0, 0.0]]).repeat(64, 1)
    eye, dirs = random_rays(origins, BOX, torch.Generator().manual_seed(0))
    torch.testing.assert_close(eye.norm(dim=-1), torch.full((64,), 3.0))
    assert bool(ray_aabb(eye, dirs, BOX)[2].all())
