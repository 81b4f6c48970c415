"""Procedural material maps: tileable by construction, deterministic, labelled; the seam error; the datamodule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_distill.data.materials import (
    NUM_CONDITIONS,
    MaterialMapsDataModule,
    condition_name,
    is_novel,
    material_maps,
    seam_error,
)


def test_maps_are_tileable_by_construction_and_a_cropped_map_is_not():
    maps, _ = material_maps(256, seed=0, size=16)
    assert abs(float(seam_error(maps))) < 0.05
    big, _ = material_maps(64, seed=1, size=32)
    assert float(seam_error(big[..., :20, :20])) > 0.3  # a crop of a periodic map is not periodic


def test_seam_error_against_an_independent_computation():
    x = torch.tensor([[[[0.0, 1.0, 3.0], [1.0, 1.0, 1.0]]]])  # (1, 1, 2, 3)
    # seam jumps: columns |0-3|, |1-1| ; rows |0-1|, |1-1|, |3-1| -> (3 + 0 + 1 + 0 + 2) / 5
    # inside: along W |1|, |2|, |0|, |0| ; along H |1|, |0|, |2| -> 6 / 7
    expected = (6 / 5) / (6 / 7) - 1
    assert float(seam_error(x)) == pytest.approx(expected)
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
    assert float(seam_error(ramp)) == pytest.approx(6.0)


def test_maps_are_deterministic_in_range_and_keep_their_layout():
    a, la = material_maps(16, seed=3)
    b, lb = material_maps(16, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (16, 8, 16, 16) and a.min() >= -1 and a.max() <= 1
    normal = a[:, 3:6]
    assert torch.allclose(normal.norm(dim=1), torch.ones(16, 16, 16), atol=1e-5)  # unit normals
    assert not torch.equal(a, material_maps(16, seed=4)[0])


def test_conditions_have_text_labels_and_a_quarter_are_novel():
    assert condition_name(0) == "bricks, red, fine"
    assert condition_name(NUM_CONDITIONS - 1) == "stone, brown, coarse"
    assert sum(is_novel(c) for c in range(NUM_CONDITIONS)) == 6
    _, labels = material_maps(64, seed=0, conditions=[5, 7])
    assert set(labels.tolist()) <= {5, 7}


def test_datamodule_serves_annotated_maps_of_seen_conditions_and_textures_of_all():
    dm = MaterialMapsDataModule(num_annotated=64, num_unannotated=96, num_val=8, num_test=8, batch_size=16)
    dm.setup("fit")
    maps, labels, textures, texture_labels = next(iter(dm.train_dataloader()))
    assert maps.shape == (16, 8, 16, 16) and textures.shape == (16, 3, 16, 16)
    assert not any(is_novel(c) for c in dm.splits()["train"][1].tolist())
    assert any(is_novel(c) for c in dm.splits()["textures"][1].tolist())
    # a texture is the albedo of a map of its condition: the same generator, channels 0-2
    assert np.isclose(float(dm.splits()["textures"][0].abs().max()), 1.0, atol=0.2)
    assert len(next(iter(dm.val_dataloader()))) == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"size": 10}, "size"), ({"num_annotated": 0}, "num_annotated"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_datamodule_arguments_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MaterialMapsDataModule(**kwargs)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="condition"):
        condition_name(24)
    with pytest.raises(ValueError, match="maps"):
        seam_error(torch.zeros(4))
    with pytest.raises(ValueError, match="constant"):
        seam_error(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="n"):
        material_maps(0)
