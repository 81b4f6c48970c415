"""LiMA recipe and the sequence toolkit: poses, propagation to past cameras, cross-view fusion, loss, CLI."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.lidar import SyntheticSequenceDataModule
from lightning_distill.lidar.geometry import project_points
from lightning_distill.lidar.networks import SmallImageBackbone, SparseUNet
from lightning_distill.lidar.sequence import (
    collate_sequence,
    cross_view_mean,
    gather_pixel_features,
    pair_points_with_past_pixels,
    relative_pose,
    transform_points,
)
from lightning_distill.recipes.lima import LiMA
from tests.conftest import quiet_trainer_kwargs

TINY_SEQ = dict(
    history=2,
    num_scenes=2,
    val_scenes=1,
    test_scenes=1,
    beams=8,
    azimuth_steps=192,
    image_size=(32, 64),
    num_cameras=4,
    horizontal_fov_deg=110.0,
    batch_size=2,
    seed=0,
)


@pytest.fixture(scope="module")
def seq_dm() -> SyntheticSequenceDataModule:
    dm = SyntheticSequenceDataModule(**TINY_SEQ)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def batch(seq_dm) -> dict[str, torch.Tensor]:
    return collate_sequence(seq_dm.scenes("train")[:2])


def make_recipe(**kwargs) -> LiMA:
    torch.manual_seed(0)
    kwargs.setdefault("memory_frames", 2)
    return LiMA(SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.3, **kwargs)


def pose(yaw: float, x: float, y: float) -> torch.Tensor:
    T = torch.eye(4)
    T[:2, :2] = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    T[0, 3], T[1, 3] = x, y
    return T


# ------------------------------------------------------------------ geometry
def test_relative_pose_moves_a_point_as_computed_by_hand():
    past, now = pose(math.pi / 2, 1.0, 0.0), pose(0.0, 5.0, 2.0)
    # current (1, 0, 0) is world (6, 2, 0); minus the past origin (5, 2, 0); rotated by -90 deg: (2, -5, 0)
    moved = transform_points(torch.tensor([[1.0, 0.0, 0.0]]), relative_pose(past, now))
    torch.testing.assert_close(moved, torch.tensor([[2.0, -5.0, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(relative_pose(now, now), torch.eye(4))


def test_sequence_windows_hold_the_previous_frames_in_lag_order(seq_dm):
    generated = seq_dm.generator.generate(seq_dm.hparams.seed * 1_000_000, num_frames=3)
    sample = seq_dm.scenes("train")[0]
    torch.testing.assert_close(sample["pose"], generated[2].pose)
    torch.testing.assert_close(sample["past_pose"][0], generated[1].pose)
    torch.testing.assert_close(sample["past_images"][1], generated[0].images)
    assert int(sample["frame"]) == 2 and len(seq_dm.scenes("train")) == TINY_SEQ["num_scenes"]


def test_a_static_point_propagates_to_the_pixel_of_its_direct_projection():
    K = torch.tensor([[50.0, 0.0, 31.5], [0.0, 50.0, 15.5], [0.0, 0.0, 1.0]])
    T_cam = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    now, past = pose(0.1, 4.0, 0.5), pose(0.0, 0.0, 0.0)
    world = torch.tensor([[12.0, 1.0, 0.5], [9.0, -2.0, -1.0]])
    in_now = transform_points(world, torch.linalg.inv(now))
    points = torch.cat([torch.zeros(2, 1), in_now, torch.ones(2, 1)], dim=1)
    pairs = pair_points_with_past_pixels(
        points, now[None], past[None], K[None, None], T_cam[None, None], (32, 64), min_depth=1.0
    )
    uv, _, mask = project_points(transform_points(world, torch.linalg.inv(past)), K, T_cam, (32, 64))
    assert mask.all() and pairs.point.tolist() == [0, 1]
    torch.testing.assert_close(pairs.u, uv[:, 0].round().long())
    torch.testing.assert_close(pairs.v, uv[:, 1].round().long())


def test_propagated_points_land_on_pixels_of_their_own_class_in_past_images(batch):
    # the generator's poses and cameras agree: most current points see their own label in the past image
    pairs = pair_points_with_past_pixels(
        batch["points"], batch["pose"], batch["past_pose"][:, 1], batch["past_K"][:, 1],
        batch["past_T_cam_from_lidar"][:, 1], tuple(batch["images"].shape[-2:]),
    )  # fmt: skip
    assert len(pairs.point) > 100
    agreement = _label_agreement(batch, pairs)
    assert agreement > 0.8, agreement


def _label_agreement(batch, pairs) -> float:
    """Fraction of pairs whose current point label equals the label of its pixel two frames back."""
    from lightning_distill.lidar.scene import StreetSceneGenerator

    gen = StreetSceneGenerator(
        beams=TINY_SEQ["beams"], azimuth_steps=TINY_SEQ["azimuth_steps"], image_size=TINY_SEQ["image_size"],
        num_cameras=TINY_SEQ["num_cameras"], horizontal_fov_deg=TINY_SEQ["horizontal_fov_deg"],
    )  # fmt: skip
    labels = []
    for b in range(batch["images"].shape[0]):
        frames = gen.generate(TINY_SEQ["seed"] * 1_000_000 + int(batch["scene"][b]), num_frames=3)
        torch.testing.assert_close(frames[0].images, batch["past_images"][b, 1])
        labels.append(frames[0].pixel_labels)
    pixel_labels = torch.stack(labels).flatten(0, 1)  # (B*C, H, W) of frame t-2
    seen = pixel_labels[pairs.image, pairs.v, pairs.u]
    return float((seen == batch["labels"][pairs.point]).float().mean())


def test_cross_view_mean_matches_a_loop():
    torch.manual_seed(0)
    features, point = torch.randn(12, 3), torch.tensor([0, 2, 2, 5, 0, 1, 2, 5, 5, 3, 1, 0])
    fused, views = cross_view_mean(features, point, 7)
    for i in range(12):
        same = [j for j in range(12) if point[j] == point[i]]
        torch.testing.assert_close(fused[i], sum(features[j] for j in same) / len(same))
    assert views.tolist() == [3, 2, 3, 1, 0, 3, 0]


# ---------------------------------------------------------------- the recipe
def _reference_loss(recipe: LiMA, batch, point_f, pixel_f, past_f) -> torch.Tensor:
    """LiMA's loss with loops over pairs, frames and superpixels, and InfoNCE written out."""
    pairs = recipe.current_pairs(batch)
    H, W = batch["images"].shape[-2:]
    by_point: dict[int, list[torch.Tensor]] = {}
    for p, i, v, u in zip(*(t.tolist() for t in pairs)):
        by_point.setdefault(p, []).append(pixel_f[i, :, v, u])
    memory: list[dict[int, list[torch.Tensor]]] = []
    for k in range(recipe.memory_frames):
        past = pair_points_with_past_pixels(
            batch["points"], batch["pose"], batch["past_pose"][:, k], batch["past_K"][:, k],
            batch["past_T_cam_from_lidar"][:, k], (H, W),
        )  # fmt: skip
        seen: dict[int, list[torch.Tensor]] = {}
        for p, i, v, u in zip(*(t.tolist() for t in past)):
            seen.setdefault(p, []).append(past_f[k][i, :, v, u])
        memory.append(seen)
    regions: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for p, i, v, u in zip(*(t.tolist() for t in pairs)):
        current = sum(by_point[p]) / len(by_point[p])
        past_means = [sum(m[p]) / len(m[p]) for m in memory if p in m]
        target = current if not past_means else 0.5 * current + 0.5 * sum(past_means) / len(past_means)
        s = int(batch["superpixels"].flatten(0, 1)[i, v, u])
        regions.setdefault((i, s), []).append((point_f[p], target))
    keys = sorted(regions)
    f = torch.stack([sum(a for a, _ in regions[r]) / len(regions[r]) for r in keys])
    g = torch.stack([sum(b for _, b in regions[r]) / len(regions[r]) for r in keys])
    logits = f @ g.T / 0.07
    return -(logits.diagonal() - logits.logsumexp(dim=1)).mean()


def test_training_step_matches_a_loop_reference(batch):
    recipe = make_recipe()
    recipe.log = recipe.log_dict = lambda *a, **k: None
    with torch.no_grad():  # train mode both times: batch norm uses the batch's statistics
        point_f = recipe.point_features(batch["points"])
        pixel_f = recipe.pixel_features(batch["images"])
        past_f = [recipe.pixel_features(batch["past_images"][:, k]) for k in range(2)]
        expected = _reference_loss(recipe, batch, point_f, pixel_f, past_f)
    loss = recipe.training_step(batch, 0)["loss"]
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    assert 0.0 < recipe._stats["multi_view"] < 1.0 and recipe._stats["memory_coverage"] > 0.5


def test_without_both_components_the_target_is_each_pairs_own_pixel(batch):
    recipe = make_recipe(cross_view=False, memory_frames=0)
    pixel_f = torch.randn(8, 5, 32, 64)
    pairs = recipe.current_pairs(batch)
    own = recipe.aggregate_views(pixel_f, pairs, len(batch["points"]))
    torch.testing.assert_close(own, pixel_f[pairs.image, :, pairs.v, pairs.u])


def test_temporal_fusion_by_hand():
    recipe = make_recipe(memory_share=0.25)
    current, memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 4.0], [9.0, 9.0]])
    fused = recipe.temporal_fusion(current, memory, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(fused, torch.tensor([[0.75, 1.0], [0.0, 1.0]]))


def test_per_camera_memory_only_reads_the_same_camera(batch):
    # without cross-view aggregation a pair's memory comes from its own camera's past images only
    recipe = make_recipe(cross_view=False, memory_frames=1)
    pairs = recipe.current_pairs(batch)
    recipe.pixel_features = lambda images: (
        torch.arange(images.shape[0] * images.shape[1], dtype=torch.float32)[:, None, None, None].expand(
            -1, 1, *images.shape[-2:]
        )
        % 4
    )  # feature = camera index
    recipe.hparams.feature_dim = 1
    memory, seen = recipe.propagate_memory(batch, pairs)
    hit = seen > 0
    torch.testing.assert_close(memory[hit, 0], (pairs.image[hit] % 4).float())
    assert 0 < int(hit.sum()) < len(hit)


def test_frozen_image_backbone_is_unchanged_and_memory_has_no_gradient(seq_dm):
    recipe = make_recipe()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=seq_dm)
    for k, v in recipe.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not recipe.teacher.training
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in recipe.teacher.parameters()}
    assert {id(p) for p in recipe.image_head.parameters()} <= optimised
    memory, _ = recipe.propagate_memory(
        collate_sequence(seq_dm.scenes("train")[:2]),
        recipe.current_pairs(collate_sequence(seq_dm.scenes("train")[:2])),
    )
    assert not memory.requires_grad


def test_gradients_reach_student_and_heads_only(batch):
    recipe = make_recipe(level="point", num_matches=64)
    recipe.log = recipe.log_dict = lambda *a, **k: None
    recipe.training_step(batch, 0)["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.image_head.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_bad_arguments_and_missing_history_raise(batch):
    with pytest.raises(ValueError, match="memory_frames"):
        make_recipe(memory_frames=-1)
    with pytest.raises(ValueError, match="memory_share"):
        make_recipe(memory_share=1.5)
    with pytest.raises(ValueError, match="history"):
        SyntheticSequenceDataModule(history=0)
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticSequenceDataModule(history=2, num_frames=2)
    with pytest.raises(ValueError, match="2 past frames"):
        make_recipe(memory_frames=3).propagate_memory(batch, make_recipe().current_pairs(batch))
    with pytest.raises(ValueError, match="pose"):
        relative_pose(torch.eye(4), torch.eye(3))


def test_fast_dev_run_through_the_cli(tmp_path):
    from lightning_distill.cli import main

    tiny = [f"--data.init_args.{k}={v}" for k, v in TINY_SEQ.items() if k not in ("image_size",)]
    main([
        "fit", "--config", "recipes/lima/config.yaml", "--trainer.fast_dev_run=true", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}", "--data.init_args.image_size=[32, 64]",
        "--data.init_args.num_frames=3", "--model.init_args.student.init_args.widths=[4, 8]",
        "--model.init_args.teacher.init_args.widths=[4, 8]", *tiny,
    ])  # fmt: skip


def test_default_optimizer_is_slidrs_official_sgd():
    # LiMA publishes no optimizer; it extends SLidR, whose config/slidr_minkunet.yaml gives SGD lr 0.5,
    # momentum 0.9, dampening 0.1, weight decay 1e-4 (recipes/lima/README.md)
    import inspect

    from lightning_distill.lidar.image_to_lidar import slidr_sgd

    assert inspect.signature(LiMA).parameters["optimizer"].default is slidr_sgd
    defaults = make_recipe().configure_optimizers().defaults
    assert (defaults["lr"], defaults["momentum"], defaults["dampening"], defaults["weight_decay"]) == (
        0.5,
        0.9,
        0.1,
        1e-4,
    )


def test_a_user_subclass_overriding_the_fusion_equation_is_used(batch):
    class CurrentOnly(LiMA):
        def temporal_fusion(self, current, memory, frames_seen):
            return current

    torch.manual_seed(0)
    custom = CurrentOnly(
        SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.3, memory_frames=2
    )
    plain = make_recipe(memory_frames=2)
    custom.load_state_dict(plain.state_dict())
    no_memory = make_recipe(memory_frames=0)
    no_memory.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    got = custom.contrastive_loss(batch)[0]
    torch.manual_seed(1)
    expected = no_memory.contrastive_loss(batch)[0]
    torch.testing.assert_close(got, expected)


# ------------------------------------------------------- cross-view pairing (issue 13)
def _two_view_pairs(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(first, second)`` of the pairs of every point seen by two cameras."""
    order = torch.argsort(pairs.point, stable=True)
    p = pairs.point[order]
    same = p[:-1] == p[1:]
    return order[:-1][same], order[1:][same]


def test_cross_view_pairs_see_the_same_surface_in_both_cameras(batch):
    # the pairs the recipe builds: a point's pixel shows the point's class, and the two pixels of a
    # point seen by two cameras show the same class; pixels paired at random agree far less often
    recipe = make_recipe()
    pairs = recipe.current_pairs(batch)
    pixel = batch["pixel_labels"].flatten(0, 1)[pairs.image, pairs.v, pairs.u]
    point = batch["labels"][pairs.point]
    shuffled = torch.randperm(len(pixel), generator=torch.Generator().manual_seed(0))
    assert (pixel == point).float().mean() > 0.9
    assert (pixel[shuffled] == point).float().mean() < 0.6
    assert int(torch.bincount(pairs.point).max()) == 2  # adjacent cameras overlap, never three
    first, second = _two_view_pairs(pairs)
    assert len(first) > 20  # the 110-degree cameras overlap
    num_cameras = batch["K"].shape[1]
    assert torch.equal(pairs.image[first] // num_cameras, pairs.image[second] // num_cameras)  # one cloud
    assert (pairs.image[first] != pairs.image[second]).all()  # two cameras
    assert (pixel[first] == pixel[second]).float().mean() > 0.9
    assert (pixel[first] == pixel[second][torch.randperm(len(second))]).float().mean() < 0.6
    # and the recipe's unified target of such a point is the mean of exactly those two pixels
    with torch.no_grad():
        pixel_features = recipe.pixel_features(batch["images"])
        unified = recipe.aggregate_views(pixel_features, pairs, len(batch["points"]))
    own = gather_pixel_features(pixel_features, pairs)
    torch.testing.assert_close(unified[first], (own[first] + own[second]) / 2)
    torch.testing.assert_close(unified[second], unified[first])
