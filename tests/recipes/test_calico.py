"""CALICO: region construction, the three losses against loops, BEV scatter, the frozen teacher, CLI fits."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.lidar.bev import (
    BEVBackbone,
    BEVGrid,
    bev_cell_labels,
    bev_cells,
    gather_from_bev,
    scatter_to_bev,
)
from lightning_distill.lidar.data import collate
from lightning_distill.lidar.networks import SparseUNet
from lightning_distill.lidar.region_contrast import (
    point_region_contrast,
    region_aware_distillation,
    region_aware_point_contrast,
    sample_region_points,
)
from lightning_distill.lidar.regions import RegionPartition, ground_mask
from lightning_distill.recipes.calico import CALICOPRC, CALICORAD, prc_teacher
from tests.conftest import quiet_trainer_kwargs
from tests.lidar.conftest import TINY

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "calico"
TOY_PARTITION = dict(min_area=0.0, min_aspect=0.0)


# ------------------------------------------------------------------ regions
def _box(generator, centre, size, count):
    return torch.rand(count, 3, generator=generator) * torch.tensor(size) + torch.tensor(centre)


def hand_made_scan(generator: torch.Generator) -> tuple[torch.Tensor, dict[str, slice]]:
    """Ground at z = -1.8, two car-sized boxes, a long wall and three stray points."""
    parts = {
        "ground": torch.cat(
            [torch.rand(800, 2, generator=generator) * 40 - 20, torch.full((800, 1), -1.8)], dim=1
        ),
        "car_a": _box(generator, (6.0, 3.0, -1.4), (3.0, 1.6, 1.2), 80),
        "car_b": _box(generator, (-8.0, -5.0, -1.4), (3.0, 1.6, 1.2), 80),
        "wall": _box(generator, (-15.0, 9.0, -1.4), (30.0, 0.4, 3.0), 1500),  # 12 m²: too thin
        "stray": torch.tensor([[15.0, -15.0, 0.0], [-15.0, 15.0, 0.5], [0.0, 18.0, 1.0]]),
    }
    rows, start = {}, 0
    for name, xyz in parts.items():
        rows[name] = slice(start, start + len(xyz))
        start += len(xyz)
    return torch.cat(list(parts.values())), rows


def test_regions_of_a_hand_made_scan_are_the_objects_only():
    g = torch.Generator().manual_seed(0)
    xyz, rows = hand_made_scan(g)
    points = torch.cat([torch.zeros(len(xyz), 1), xyz], dim=1)
    regions = RegionPartition()(points)  # the official filters
    assert (regions[rows["ground"]] == -1).all()
    assert (regions[rows["wall"]] == -1).all()  # long and thin: not an object
    assert (regions[rows["stray"]] == -1).all()  # DBSCAN noise
    car_a, car_b = regions[rows["car_a"]], regions[rows["car_b"]]
    assert (car_a >= 0).float().mean() > 0.95 and (car_b >= 0).float().mean() > 0.95
    assert car_a[car_a >= 0].unique().tolist() == [0] and car_b[car_b >= 0].unique().tolist() == [1]
    # without the aspect filter the wall becomes a region too
    loose = RegionPartition(min_aspect=0.0)(points)
    assert loose[rows["wall"]].unique().numel() == 1 and int(loose[rows["wall"]][0]) >= 0


def test_region_ids_are_unique_across_the_batch():
    g = torch.Generator().manual_seed(1)
    xyz, rows = hand_made_scan(g)
    points = torch.cat([torch.cat([torch.full((len(xyz), 1), b), xyz], dim=1) for b in (0.0, 1.0)])
    regions = RegionPartition()(points)
    first, second = regions[: len(xyz)], regions[len(xyz) :]
    assert set(first[first >= 0].tolist()) == {0, 1} and set(second[second >= 0].tolist()) == {2, 3}


def test_ground_mask_follows_a_sloped_road():
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(2000, 2, generator=g) * 40 - 20
    z = -1.8 + 0.02 * xy[:, 0]  # 2 % slope: 0.8 m over the scan
    pole = torch.cat([torch.full((50, 2), 3.0), torch.linspace(-1.0, 1.5, 50)[:, None]], dim=1)
    xyz = torch.cat([torch.cat([xy, z[:, None]], dim=1), pole]).numpy()
    mask = ground_mask(xyz)
    assert mask[:2000].mean() > 0.99 and not mask[2000:].any()


# ------------------------------------------------------------------ losses
def _features(count: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _log_softmax_row(a, keys, i, tau, allowed=None):
    logits = [float(a[i] @ keys[j]) / tau for j in range(len(keys))]
    allowed = allowed if allowed is not None else range(len(keys))
    norm = math.log(sum(math.exp(logits[j]) for j in allowed))
    return [logits[j] - norm for j in range(len(keys))]


def test_plrc_matches_a_loop():
    a, k, tau = _features(7, 5, 0), _features(7, 5, 1), 0.3
    regions = torch.tensor([0, 0, 1, -1, 1, 1, -1])
    expected = []
    for i in range(7):
        if regions[i] < 0:
            continue
        log_p = _log_softmax_row(a, k, i, tau)
        positives = [j for j in range(7) if regions[j] == regions[i]]
        expected.append(-sum(log_p[j] for j in positives) / len(positives))
    got = point_region_contrast(a, k, regions, temperature=tau, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected))
    torch.testing.assert_close(
        point_region_contrast(a, k, regions, temperature=tau), torch.tensor(expected).mean()
    )


def test_rapc_leaves_same_region_points_out_of_the_negatives():
    a, k, tau = _features(6, 4, 2), _features(6, 4, 3), 0.2
    regions = torch.tensor([0, 0, 0, -1, -1, 2])
    expected = []
    for i in range(6):
        allowed = [j for j in range(6) if j == i or not (regions[j] == regions[i] and regions[i] >= 0)]
        expected.append(-_log_softmax_row(a, k, i, tau, allowed)[i])
    got = region_aware_point_contrast(a, k, regions, temperature=tau, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected))
    # with every point semantic-less it is plain InfoNCE
    plain = F.cross_entropy(a @ k.T / tau, torch.arange(6))
    torch.testing.assert_close(
        region_aware_point_contrast(a, k, torch.full((6,), -1), temperature=tau), plain
    )


def test_rad_weighs_every_region_equally():
    s, t, tau = _features(6, 4, 4), _features(6, 4, 5), 0.5
    groups = torch.tensor([3, 3, 3, 3, 7, 9])  # one big group, two singletons
    terms = [-_log_softmax_row(s, t, i, tau)[i] for i in range(6)]
    expected = (sum(terms[:4]) / 4 + terms[4] + terms[5]) / 3
    torch.testing.assert_close(
        region_aware_distillation(s, t, groups, temperature=tau), torch.tensor(expected)
    )
    torch.testing.assert_close(
        region_aware_distillation(s, t, groups, temperature=tau, reduction="none"), torch.tensor(terms)
    )


def test_losses_reject_bad_input():
    a = _features(4, 3, 0)
    with pytest.raises(ValueError, match="temperature"):
        point_region_contrast(a, a, torch.zeros(4, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="regions"):
        region_aware_point_contrast(a, a, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups"):
        region_aware_distillation(a, a, torch.tensor([0, 1, -1, 2]))


def test_sampling_takes_the_requested_kinds_per_scan():
    regions = torch.tensor([0, 0, -1, -1, -1, 1, 2, -1, 2, 2])
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    index = sample_region_points(
        regions, batch, num_rich=1, num_less=2, generator=torch.Generator().manual_seed(0)
    )
    # scan 1 has a single semantic-less point: it gives what it has
    assert len(index.unique()) == len(index) == 5
    assert batch[index].tolist() == [0, 0, 0, 1, 1]
    assert (regions[index] >= 0).tolist() == [True, False, False, True, False]


# ------------------------------------------------------------------ BEV
def test_scatter_to_bev_matches_a_loop():
    grid = BEVGrid(x_range=(-2.0, 2.0), y_range=(-1.0, 2.0), cell_size=1.0)
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(60, 3, generator=g) * torch.tensor([6.0, 5.0, 1.0]) - torch.tensor([3.0, 2.0, 0.0])
    points = torch.cat([torch.randint(0, 2, (60, 1), generator=g).float(), xyz], dim=1)
    values = torch.randn(60, 3, generator=g)
    cells, inside = bev_cells(points, grid)
    for reduce in ("mean", "max", "sum"):
        got = scatter_to_bev(values[inside], cells[inside], 2, grid, reduce=reduce)
        expected = torch.zeros(2, 3, grid.height, grid.width)
        for b in range(2):
            for row in range(grid.height):
                for col in range(grid.width):
                    x0, y0 = grid.x_range[0] + col, grid.y_range[0] + row
                    hit = [
                        n
                        for n in range(60)
                        if int(points[n, 0]) == b
                        and x0 <= points[n, 1] < x0 + 1
                        and y0 <= points[n, 2] < y0 + 1
                    ]
                    if hit:
                        v = values[hit]
                        expected[b, :, row, col] = {"mean": v.mean(0), "max": v.amax(0), "sum": v.sum(0)}[
                            reduce
                        ]
        torch.testing.assert_close(got, expected)
    bev = scatter_to_bev(values[inside], cells[inside], 2, grid)
    torch.testing.assert_close(
        gather_from_bev(bev, cells[inside][:5]), bev.permute(0, 2, 3, 1).reshape(-1, 3)[cells[inside][:5]]
    )


def test_bev_cell_labels_take_the_majority():
    grid = BEVGrid(x_range=(0.0, 2.0), y_range=(0.0, 1.0), cell_size=1.0)
    points = torch.tensor(
        [[0, 0.1, 0.5, 0], [0, 0.2, 0.5, 0], [0, 0.3, 0.5, 0], [0, 1.5, 0.5, 0], [0, 1.6, 0.5, 0.0]]
    )
    labels = torch.tensor([2, 1, 2, -1, 4])
    cells, majority = bev_cell_labels(points, labels, grid, num_classes=5)
    assert cells.tolist() == [0, 1] and majority.tolist() == [2, 4]


def test_bev_backbone_maps_points_to_the_grid(tiny_datamodule):
    net = BEVBackbone(cell_size=1.6, pillar_channels=4, widths=(4, 8), out_channels=6)
    batch = collate(tiny_datamodule.scenes("train")[:2])
    out = net(batch["points"])
    assert out.shape == (2, 6, *net.grid.shape)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


# ------------------------------------------------------------------ recipes
def make_prc(**kwargs) -> CALICOPRC:
    torch.manual_seed(0)
    return CALICOPRC(
        SparseUNet(1, widths=(4, 8)),
        feature_dim=8,
        num_rich=32,
        num_less=32,
        voxel_size=0.3,
        partition=RegionPartition(**TOY_PARTITION),
        **kwargs,
    )


def make_rad(teacher=None, **kwargs) -> CALICORAD:
    torch.manual_seed(1)
    student = BEVBackbone(cell_size=1.6, pillar_channels=4, widths=(4, 8), out_channels=8)
    teacher = teacher if teacher is not None else SparseUNet(1, widths=(4, 8))
    return CALICORAD(
        student,
        teacher,
        feature_dim=8,
        num_rich=32,
        num_less=32,
        voxel_size=0.3,
        partition=RegionPartition(**TOY_PARTITION),
        **kwargs,
    )


def test_prc_step_is_alpha_plrc_plus_rapc_and_trains_backbone_and_head(tiny_datamodule):
    recipe = make_prc(alpha=0.25, symmetric=False)
    recipe.log = lambda *a, **k: None
    batch = collate(tiny_datamodule.scenes("train")[:2])
    with torch.no_grad():
        terms, z1, z2 = recipe.contrast(batch["points"], 0)
    assert len(z1) > 32  # rich and less points of two scans
    out = recipe.training_step(batch, 0)
    torch.testing.assert_close(out["loss"].detach(), 0.25 * terms["plrc"] + 0.75 * terms["rapc"])
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.head.parameters())


def test_rad_teacher_is_frozen_unchanged_and_outside_the_optimizer(tiny_datamodule):
    recipe = make_rad()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    head_before = recipe.teacher_head.net.weight.detach().clone()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=tiny_datamodule)
    for k, v in recipe.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics included
    assert not recipe.teacher.training
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in recipe.teacher.parameters()}
    assert {id(p) for p in recipe.student.parameters()} <= optimised
    assert not torch.equal(recipe.teacher_head.net.weight, head_before)


def test_rad_gradients_reach_student_and_heads_only(tiny_datamodule):
    recipe = make_rad()
    recipe.log = lambda *a, **k: None
    recipe.training_step(collate(tiny_datamodule.scenes("train")[:2]), 0)["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.student_head.parameters())
    assert all(p.grad is not None for p in recipe.teacher_head.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="alpha"):
        make_prc(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        make_prc(temperature=0.0)
    with pytest.raises(TypeError, match="grid"):
        CALICORAD(SparseUNet(1, widths=(4,)), SparseUNet(1, widths=(4,)))


def test_prc_teacher_loads_a_checkpoint_and_caches_training(tmp_path, tiny_datamodule):
    trained = make_prc().student
    torch.save({f"student.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "prc.pt")
    loaded = prc_teacher(SparseUNet(1, widths=(4, 8)), checkpoint=str(tmp_path / "prc.pt"))
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    kwargs = dict(
        data=tiny_datamodule, epochs=1, voxel_size=0.3, num_rich=16, num_less=16, cache_dir=str(tmp_path)
    )
    first = prc_teacher(SparseUNet(1, widths=(4, 8)), **kwargs)
    (cached,) = (tmp_path / "teachers").glob("calico_prc-*.pt")
    stamp = cached.stat().st_mtime_ns
    second = prc_teacher(SparseUNet(1, widths=(4, 8)), **kwargs)
    assert cached.stat().st_mtime_ns == stamp  # loaded, not retrained
    for k, v in first.state_dict().items():
        assert torch.equal(second.state_dict()[k], v)
    assert "cache" in second.distill_source
    with pytest.raises(ValueError, match="checkpoint"):
        prc_teacher(SparseUNet(1, widths=(4, 8)))


def _tiny(prefix: str) -> list[str]:
    return [f"--{prefix}.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


@pytest.mark.parametrize("stage", ["prc", "rad"])
def test_config_fits_with_fast_dev_run(tmp_path, monkeypatch, stage):
    from lightning_distill.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_DISTILL_CACHE", str(tmp_path / "cache"))
    name = "config.yaml" if stage == "prc" else "rad.yaml"
    args = ["fit", "--config", str(CONFIGS / name), "--trainer.fast_dev_run=true"]
    args += [
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *_tiny("data.init_args"),
    ]
    if stage == "prc":
        args += ["--model.init_args.student.init_args.widths=[4, 8]"]
    else:
        teacher = "--model.init_args.teacher.init_args"
        args += [
            f"{teacher}.epochs=1",
            f"{teacher}.backbone.init_args.widths=[4, 8]",
            *_tiny(f"{teacher[2:]}.data.init_args"),
        ]
    main(args)
    if stage == "rad":
        assert list((tmp_path / "cache" / "teachers").glob("calico_prc-*.pt"))
