"""The free functions under the diffusion base: seeds, what a denoiser tells, teacher checks, fitting to a teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule
from lightning_distill.diffusion.gmm import AnalyticTeacher, make_mixture
from lightning_distill.diffusion.plumbing import (
    check_teacher_prediction_type,
    check_teacher_schedule,
    derive_seed,
    fit_to_teacher,
    known_unconditional,
    model_null_label,
    model_sample_shape,
)


@pytest.mark.parametrize("words", [1, 2])
def test_derive_seed_is_the_seedsequence_state(words):
    state = np.random.SeedSequence([7, 3, 0]).generate_state(2, dtype=np.uint32)
    expected = int(state[0]) if words == 1 else (int(state[0]) << 31) + (int(state[1]) >> 1)
    assert derive_seed([7, 3, 0], words) == expected
    assert derive_seed([7, 4, 0], words) != expected


def test_derive_seed_rejects_other_word_counts():
    with pytest.raises(ValueError, match="words"):
        derive_seed([1], words=3)


def test_model_facts_of_the_known_denoisers():
    teacher = AnalyticTeacher(make_mixture("ring", num_classes=8), NoiseSchedule.ddpm())
    assert model_sample_shape(teacher) == (2,) and model_null_label(teacher) == 8
    assert model_sample_shape(MLPDenoiser(dim=6, hidden=8, depth=1)) == (6,)
    assert model_null_label(MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=3)) == 3
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8,),
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=4,
        num_class_embeds=11,
    )
    assert model_sample_shape(unet) == (1, 8, 8) and model_null_label(unet) == 10
    assert (
        model_sample_shape(torch.nn.Linear(2, 2)) is None and model_null_label(torch.nn.Linear(2, 2)) is None
    )
    assert known_unconditional(MLPDenoiser(dim=2, hidden=8, depth=1))
    assert not known_unconditional(MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=3))
    assert not known_unconditional(torch.nn.Linear(2, 2))  # unknown: not known to be unconditional


def test_teacher_checks_compare_the_schedule_and_the_prediction_type():
    teacher = AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm())
    with pytest.raises(ValueError, match="teacher's schedule differs"):
        check_teacher_schedule(teacher, NoiseSchedule.ddpm(beta_schedule="linear"))
    check_teacher_schedule(teacher, NoiseSchedule.ddpm())
    check_teacher_schedule(torch.nn.Linear(2, 2), NoiseSchedule.flow())  # no schedule of its own
    with pytest.raises(ValueError, match="schedule"):
        check_teacher_prediction_type(teacher, NoiseSchedule.ddpm(prediction_type="v_prediction"))
    check_teacher_prediction_type(teacher, NoiseSchedule.ddpm())


def test_fit_to_teacher_regresses_a_network_onto_the_analytic_teacher():
    schedule = NoiseSchedule.ddpm()
    teacher = AnalyticTeacher(make_mixture("ring"), schedule)
    x0 = teacher.gmm.sample(256, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    model = MLPDenoiser(dim=2, hidden=32, depth=1)
    gen = torch.Generator().manual_seed(1)
    first = fit_to_teacher(model, teacher, schedule, [(x0, None)], 1, generator=gen)
    last = fit_to_teacher(model, teacher, schedule, [(x0, None)], 150, generator=gen)
    assert last < 0.5 * first
