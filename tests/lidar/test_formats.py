"""Adapters to the OpenPCDet and Pointcept batch layouts."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.lidar.formats import from_openpcdet, from_pointcept, to_openpcdet, to_pointcept


def test_pointcept_round_trip_on_a_real_batch(tiny_datamodule):
    batch = next(iter(tiny_datamodule.train_dataloader()))
    data = to_pointcept(batch, grid_size=0.5)
    counts = torch.bincount(batch["points"][:, 0].long())
    assert data["offset"].tolist() == torch.cumsum(counts, 0).tolist()
    back = from_pointcept(data)
    torch.testing.assert_close(back["points"], batch["points"])
    torch.testing.assert_close(back["labels"], batch["labels"])


def test_grid_coordinates_start_at_zero_in_every_cloud():
    points = torch.tensor([[0, 1.0, 1, 1, 0], [0, 2.2, 1, 1, 0], [1, -5, -5, -5, 0], [1, -4.4, -5, -3.9, 0]])
    grid = to_pointcept({"points": points}, grid_size=0.5)["grid_coord"]
    assert grid.tolist() == [[0, 0, 0], [2, 0, 0], [0, 0, 0], [1, 0, 2]]


def test_openpcdet_layout_is_ours_renamed():
    points = torch.tensor([[0, 1.0, 2, 3, 0.5], [2, 1, 1, 1, 0.1]])
    labels = torch.tensor([3, 4])
    pcdet = to_openpcdet({"points": points, "labels": labels})
    assert pcdet["batch_size"] == 3 and pcdet["points"] is points
    back = from_openpcdet(pcdet)
    assert torch.equal(back["points"], points) and torch.equal(back["labels"], labels)


def test_empty_trailing_clouds_keep_their_offsets():
    points = torch.tensor([[0, 1.0, 2, 3, 0.5]])
    assert to_pointcept({"points": points}, batch_size=3)["offset"].tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "points,match",
    [(torch.zeros(3, 3), "must be \\(N, >=4\\)"), (torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]), "sorted")],
)
def test_bad_points_are_rejected(points, match):
    with pytest.raises(ValueError, match=match):
        to_pointcept({"points": points})


def test_bad_offsets_are_rejected():
    with pytest.raises(ValueError, match="offset"):
        from_pointcept({"coord": torch.zeros(3, 3), "offset": torch.tensor([1, 2])})
