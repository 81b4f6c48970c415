"""Schedules: hand-computed values of every kind, and build_schedule from config dicts."""

import math

import pytest

from lightning_distill.utils.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PiecewiseSchedule,
    StageSchedule,
    StepSchedule,
    build_schedule,
)


# ---------------------------------------------------------------------- pure schedules
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"kind": "constant", "value": 0.3}, {0: 0.3, 7: 0.3, 10**6: 0.3}),
        ({"kind": "linear", "start": 0.0, "end": 1.0, "steps": 100}, {0: 0.0, 25: 0.25, 100: 1.0, 150: 1.0}),
        (
            {"kind": "linear", "start": 2.0, "end": 0.0, "steps": 4, "begin": 10},
            {0: 2.0, 10: 2.0, 11: 1.5, 14: 0.0},
        ),
        (
            {"kind": "cosine", "start": 1.0, "end": 0.08, "steps": 8},
            {t: 0.08 + 0.92 * 0.5 * (1 + math.cos(math.pi * min(t, 8) / 8)) for t in (0, 1, 2, 4, 6, 8, 9)},
        ),
        ({"kind": "exponential", "start": 2.0, "gamma": 0.5}, {0: 2.0, 1: 1.0, 3: 0.25}),
        ({"kind": "exponential", "start": 2.0, "gamma": 0.5, "begin": 2}, {0: 2.0, 2: 2.0, 4: 0.5}),
        (
            {"kind": "step", "start": 1.0, "milestones": [3, 6], "gamma": 0.1},
            {0: 1.0, 2: 1.0, 3: 0.1, 5: 0.1, 6: 0.01},
        ),
        (
            {"kind": "piecewise", "points": [[0, 0.0], [10, 1.0], [30, 0.0]]},
            {0: 0.0, 5: 0.5, 10: 1.0, 20: 0.5, 30: 0.0, 99: 0.0},
        ),
        ({"kind": "piecewise", "points": [[5, 4.0], [15, 6.0]]}, {0: 4.0, 5: 4.0, 10: 5.0, 20: 6.0}),
        (
            {"kind": "piecewise", "points": [[0, [0, 10]], [10, [10, 10]]]},
            {0: (0.0, 10.0), 5: (5.0, 10.0), 20: (10.0, 10.0)},
        ),
        (
            {"kind": "piecewise", "points": [[0, 0.0], [10, 1.0]], "interpolation": "constant"},
            {0: 0.0, 9: 0.0, 10: 1.0, 50: 1.0},
        ),
        (
            {"kind": "stages", "boundaries": [2, 5], "values": [0, 1, 2]},
            {0: 0, 1: 0, 2: 1, 4: 1, 5: 2, 100: 2},
        ),
        (
            {"kind": "linear", "start": [0, 1000], "end": [500, 1000], "steps": 10},
            {0: (0.0, 1000.0), 4: (200.0, 1000.0), 10: (500.0, 1000.0)},
        ),
        ({"kind": "stages", "boundaries": [3], "values": [[0, 10], [10, 20]]}, {0: (0, 10), 3: (10, 20)}),
    ],
)
def test_every_schedule_kind_gives_the_hand_computed_values(spec, expected):
    schedule = build_schedule(spec)
    for t, value in expected.items():
        got = schedule.value_at(t)
        if isinstance(value, float):
            assert got == pytest.approx(value, abs=1e-12), t
        else:
            assert got == value, t


def test_linear_kinds_return_floats_everywhere_and_constant_kinds_return_values_as_given():
    linear = build_schedule({"kind": "piecewise", "points": [[0, [0, 1]], [10, [2, 3]]]})
    assert all(type(v) is float for t in (0, 5, 99) for v in linear.value_at(t))
    constant = build_schedule({"kind": "piecewise", "points": [[0, 1], [10, 2]], "interpolation": "constant"})
    assert type(constant.value_at(0)) is int and type(constant.value_at(99)) is int


def test_build_schedule_returns_the_class_for_each_kind():
    kinds = {
        "constant": ({"value": 1}, ConstantSchedule),
        "linear": ({"start": 0, "end": 1, "steps": 2}, LinearSchedule),
        "cosine": ({"start": 0, "end": 1, "steps": 2}, CosineSchedule),
        "exponential": ({"start": 1, "gamma": 0.5}, ExponentialSchedule),
        "step": ({"start": 1, "milestones": [1], "gamma": 0.5}, StepSchedule),
        "piecewise": ({"points": [[0, 1]]}, PiecewiseSchedule),
        "stages": ({"boundaries": [1], "values": [0, 1]}, StageSchedule),
    }
    for kind, (arguments, cls) in kinds.items():
        assert type(build_schedule({"kind": kind, **arguments})) is cls
    schedule = LinearSchedule(0.0, 1.0, 5)
    assert build_schedule(schedule) is schedule
