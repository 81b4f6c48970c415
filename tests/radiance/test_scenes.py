"""Procedural multi-view scenes: shapes, determinism, geometry consistent with the cameras, the DataModule."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.multiview import MultiViewDataModule
from lightning_distill.radiance.rendering import camera_rays
from lightning_distill.radiance.scenes import BACKGROUND, OBJECT_CLASSES, make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, image_size=(16, 20), num_views=6, num_test=2)


def test_shapes_ranges_and_split(scene):
    assert scene.images.shape == (6, 3, 16, 20) and scene.normals.shape == (6, 3, 16, 20)
    assert scene.depths.shape == scene.masks.shape == scene.labels.shape == (6, 16, 20)
    assert scene.images.min() >= 0 and scene.images.max() <= 1
    assert 0.02 < scene.masks.float().mean() < 0.9
    assert sorted(scene.test_index.tolist() + scene.train_index.tolist()) == list(range(6))
    assert set(scene.labels.unique().tolist()) <= {BACKGROUND, *range(len(OBJECT_CLASSES))}
    # background: white, no depth, no normal, background label
    bg = ~scene.masks
    assert bool((scene.images.permute(0, 2, 3, 1)[bg] == 1).all()) and bool((scene.depths[bg] == 0).all())
    assert bool((scene.labels[bg] == BACKGROUND).all()) and bool((scene.labels[~bg] >= 0).all())
    torch.testing.assert_close(
        scene.normals.permute(0, 2, 3, 1)[~bg].norm(dim=-1), torch.ones(int((~bg).sum()))
    )


def test_deterministic_from_the_seed(scene):
    again = make_scene(seed=3, image_size=(16, 20), num_views=6, num_test=2)
    assert torch.equal(scene.images, again.images) and torch.equal(scene.cameras.c2w, again.cameras.c2w)
    other = make_scene(seed=4, image_size=(16, 20), num_views=6, num_test=2)
    assert not torch.equal(scene.images, other.images)


def test_hits_lie_in_the_box_and_normals_face_the_camera(scene):
    origins, dirs = camera_rays(scene.cameras.K, scene.cameras.c2w, scene.image_size)
    hits = (origins + scene.depths[..., None] * dirs)[scene.masks]
    assert bool((hits.abs() <= 1.0).all())
    normals = scene.normals.permute(0, 2, 3, 1)[scene.masks]
    assert bool(((normals * dirs[scene.masks]).sum(-1) <= 1e-6).all())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="name"):
        make_scene("nowhere")
    with pytest.raises(ValueError, match="num_test"):
        make_scene(num_views=4, num_test=4)
    with pytest.raises(ValueError, match="radius"):
        make_scene(radius=1.0)
    with pytest.raises(ValueError, match="rays_per_batch"):
        MultiViewDataModule(rays_per_batch=0)


def test_datamodule_serves_ray_batches_and_whole_views():
    dm = MultiViewDataModule(
        image_size=8, num_views=5, num_test=1, rays_per_batch=16, steps_per_epoch=3, seed=1
    )
    dm.setup()
    loader = dm.train_dataloader()
    first = list(loader)
    assert len(first) == 3 and all(b[0].shape == (16, 3) for b in first)
    o, d, rgb = dm.train_rays
    assert o.shape == (4 * 64, 3)
    assert bool((first[0][2][:, None, :] == rgb[None]).all(-1).any(-1).all())  # colours of real pixels
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], first[0][0]) or not torch.equal(
        next(iter(loader))[1], first[0][1]
    )
    view = next(iter(dm.val_dataloader()))
    assert view[0].shape == view[2].shape == (1, 8, 8, 3)
