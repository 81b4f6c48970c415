"""Moving glyphs: the ground-truth motion is exact, bounces reflect, data is a function of the seed."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.video import (
    DIRECTIONS,
    MovingGlyphsDataModule,
    glyph_stills,
    moving_glyphs,
    simulate_positions,
)
from lightning_distill.video.metrics import center_of_mass


def test_center_of_mass_moves_by_exactly_the_ground_truth_velocity():
    data = moving_glyphs(32, size=16, num_frames=8, seed=3)
    com = center_of_mass(data.videos)
    torch.testing.assert_close(com[:, 1:] - com[:, :-1], data.velocities, atol=1e-4, rtol=0)
    # the centre of mass is the glyph's own centre of mass shifted by the top-left corner
    torch.testing.assert_close(com - com[:, :1], data.positions - data.positions[:, :1], atol=1e-4, rtol=0)


def test_bounces_reflect_the_velocity_and_keep_the_glyph_inside():
    data = moving_glyphs(64, size=16, num_frames=16, speed=2, seed=1)
    room = 16 - 8
    assert bool((data.positions >= 0).all() and (data.positions <= room).all())
    v = data.velocities
    start = torch.tensor(DIRECTIONS, dtype=torch.float32)[data.labels[:, 1]] * 2
    # every per-axis displacement keeps its size or reflects at a wall; a flip happens only at a wall
    flips = (torch.sign(v[:, 1:]) != torch.sign(v[:, :-1])) & (v[:, :-1] != 0)
    at_wall = (data.positions[:, 1:-1] <= 1) | (data.positions[:, 1:-1] >= room - 1)
    assert bool(flips.any()), "no bounce in 64 videos of 16 frames"
    assert bool((~flips | at_wall).all())
    torch.testing.assert_close(v[:, 0].abs() <= start.abs(), torch.ones_like(v[:, 0], dtype=torch.bool))


def test_simulate_positions_reflects_off_both_walls_by_hand():
    path = simulate_positions(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 3.0]]), 4, 0.0, 4.0)[0]
    assert path.tolist() == [[1.0, 0.0], [0.0, 3.0], [1.0, 2.0], [2.0, 1.0]]


def test_data_is_a_function_of_the_seed_and_conditions_are_class_and_direction():
    a, b, c = (
        moving_glyphs(8, size=16, seed=5),
        moving_glyphs(8, size=16, seed=5),
        moving_glyphs(8, size=16, seed=6),
    )
    assert torch.equal(a.videos, b.videos) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.videos, c.videos)
    assert a.labels.shape == (8, 2) and bool((a.labels[:, 0] < 10).all() and (a.labels[:, 1] < 8).all())
    assert float(a.videos.min()) == -1.0 and float(a.videos.max()) <= 1.0


def test_stills_have_another_appearance_than_the_video_frames():
    stills, labels = glyph_stills(64, size=16, seed=0)
    frames = moving_glyphs(64, size=16, seed=0).videos[:, :, 0]
    ink = lambda x: ((x + 1) / 2)[((x + 1) / 2) > 0.1]  # noqa: E731
    # the stills' ink is striped (many mid values and many full ones); the videos' soft strokes are not
    assert stills.shape == (64, 1, 16, 16) and labels.shape == (64,)
    assert (
        abs(float(ink(stills).std()) - float(ink(frames).std())) > 0.05
        or abs(float(ink(stills).mean()) - float(ink(frames).mean())) > 0.05
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": 16, "glyph_size": 16}, "glyph_size"),
        ({"size": 16, "num_frames": 1}, "num_frames"),
        ({"size": 16, "speed": 5}, "speed"),
    ],
)
def test_bad_video_settings_are_rejected_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        moving_glyphs(2, **kwargs)
    with pytest.raises(ValueError, match=name):
        MovingGlyphsDataModule(**kwargs)


def test_datamodule_serves_videos_labels_and_stills():
    dm = MovingGlyphsDataModule(
        num_train=8, num_val=4, num_test=4, size=16, num_frames=3, batch_size=4, stills=True
    )
    dm.setup()
    video, y, still = next(iter(dm.train_dataloader()))
    assert video.shape == (4, 1, 3, 16, 16) and y.shape == (4, 2) and still.shape == (4, 1, 16, 16)
    assert len(next(iter(dm.val_dataloader()))) == 3
