"""CALICO's toolkit parts: region construction, per-scan sampling, BEV scatter and the BEV backbone."""

from __future__ import annotations

import torch

from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.bev import (
    BEVBackbone,
    BEVGrid,
    bev_cell_labels,
    bev_cells,
    gather_from_bev,
    scatter_to_bev,
)
from lightning_distill.lidar.region_contrast import sample_region_points
from lightning_distill.lidar.regions import RegionPartition, ground_mask

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
