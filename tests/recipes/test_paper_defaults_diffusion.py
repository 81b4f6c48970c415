"""The diffusion recipes' defaults that claim to be the paper's are the official code's values.

Sources (public repositories, at the commits named):

* DMD2, tianweiy/DMD2 at 8d8fa55 (``main/train_sd.py`` last changed in 3f3a60e):
  - ``main/train_sd.py`` lines 191-202: both optimizers are ``AdamW(lr, betas=(0.9, 0.999),
    weight_decay=0.01)``, ``lr`` = ``--generator_lr`` / ``--guidance_lr``;
  - ``main/train_sd.py`` lines 634-635: ``--min_step_percent 0.02``, ``--max_step_percent 0.98``;
  - ``experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_diffusion1000_gan1e-3_noode_resume_fixdata.sh``
    (the SD1.5 run with the GAN term, whose settings are the recipe's defaults): lines 9-10
    ``--generator_lr 5e-7 --guidance_lr 5e-7``, line 19 ``--real_guidance_scale 1.75``, line 21
    ``--max_grad_norm 10.0``, line 30 ``--dfake_gen_update_ratio 10``, lines 34-35
    ``--gen_cls_loss_weight 1e-3 --guidance_cls_loss_weight 1e-2``, lines 36-37 ``--diffusion_gan
    --diffusion_gan_max_timestep 1000``; ``main/train_sd.py`` line 664 ``--dm_loss_weight`` default 1.0.
* SwiftBrush, VinAIResearch/SwiftBrush at 686c231:
  - ``train_swiftbrush.py`` lines 584-598: ``torch.optim.Adam`` for the student and the LoRA with
    ``betas=(adam_beta1, adam_beta2)``, ``weight_decay=adam_weight_decay``, ``eps=adam_epsilon``,
    whose defaults (lines 251-254) are 0.9, 0.999, 0.0, 1e-8; line 255 ``--max_grad_norm`` 1.0;
    line 451 LoRA ``target_modules=["to_q", "to_v"]``; line 757 timesteps ``[0.02, 0.981] * T``;
    line 814 null prompt with probability 0.1;
  - ``README.md`` lines 98-102 (the training command): ``--guidance_scale 4.5``,
    ``--learning_rate 1.e-06``, ``--learning_rate_lora 1.e-03``, ``--lora_rank 64 --lora_alpha 108``.
* Phased DMD, Flash-DMD, Decoupled DMD and MSD publish no optimizer (no official code, or none
  that states it): they keep torch's ``AdamW``, and their READMEs say so.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, optimizers
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture
from lightning_distill.recipes.decoupled_dmd import DecoupledDMD
from lightning_distill.recipes.dmd2 import DMD2
from lightning_distill.recipes.flash_dmd import FlashDMD
from lightning_distill.recipes.msd import MSD
from lightning_distill.recipes.phased_dmd import PhasedDMD
from lightning_distill.recipes.swiftbrush import SwiftBrush


def default(cls: type, name: str):
    return inspect.signature(cls).parameters[name].default


def mlp(**kwargs) -> MLPDenoiser:
    return MLPDenoiser(dim=2, hidden=8, depth=1, time_embedding_dim=8, **kwargs)


def adam_settings(optimizer: torch.optim.Optimizer) -> tuple:
    group = optimizer.param_groups[0]
    return type(optimizer), group["lr"], tuple(group["betas"]), group["weight_decay"], group["eps"]


def test_dmd2_default_optimizer_is_the_official_adamw_for_both_networks():
    assert default(DMD2, "optimizer") is optimizers.dmd2_adamw
    assert default(DMD2, "fake_score_optimizer") is None  # the same: --generator_lr = --guidance_lr
    recipe = DMD2(
        student=mlp(),
        teacher=AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()),
        fake_score=mlp(),
        student_init="random",
        student_prediction_type="sample",
        real_guidance_scale=1.0,
    )
    for optimizer in recipe.configure_optimizers():
        assert adam_settings(optimizer) == (torch.optim.AdamW, 5e-7, (0.9, 0.999), 0.01, 1e-8)


def test_dmd2_hyper_parameter_defaults_are_the_sd15_gan_run():
    assert default(DMD2, "real_guidance_scale") == 1.75
    assert default(DMD2, "generator_update_every") == 10
    assert default(DMD2, "max_grad_norm") == 10.0
    assert (default(DMD2, "min_step_percent"), default(DMD2, "max_step_percent")) == (0.02, 0.98)
    assert default(DMD2, "gan") is True
    assert default(DMD2, "gan_max_timestep") is None  # None = T = 1000, diffused GAN inputs
    assert DMD2.default_loss_weights == {"dm": 1.0, "gen_cls": 1e-3, "guidance_cls": 1e-2}


def test_swiftbrush_default_optimizers_are_the_official_adams():
    assert default(SwiftBrush, "optimizer") is optimizers.swiftbrush_student_adam
    assert default(SwiftBrush, "fake_score_optimizer") is optimizers.swiftbrush_lora_adam
    torch.manual_seed(0)
    recipe = SwiftBrush(
        student=mlp(num_classes=4),
        teacher=AnalyticTeacher(GaussianMixture.ring(k=8, num_classes=4), NoiseSchedule.ddpm()),
        fake_score_mode="residual",
        fake_score=mlp(num_classes=4),
        student_init="random",
        null_condition=4,
    )
    student, lora = recipe.configure_optimizers()
    assert adam_settings(student) == (torch.optim.Adam, 1e-6, (0.9, 0.999), 0.0, 1e-8)
    assert adam_settings(lora) == (torch.optim.Adam, 1e-3, (0.9, 0.999), 0.0, 1e-8)


def test_swiftbrush_hyper_parameter_defaults_are_the_official_command():
    assert default(SwiftBrush, "guidance_scale") == 4.5
    assert (default(SwiftBrush, "lora_rank"), default(SwiftBrush, "lora_alpha")) == (64, 108.0)
    assert tuple(default(SwiftBrush, "lora_target_modules")) == ("to_q", "to_v")
    # [0.02, 0.981] * 1000
    assert (default(SwiftBrush, "min_step"), default(SwiftBrush, "max_step")) == (20, 981)
    assert default(SwiftBrush, "condition_dropout") == 0.1
    assert default(SwiftBrush, "max_grad_norm") == 1.0


@pytest.mark.parametrize(
    ("cls", "second"),
    [
        (FlashDMD, "fake_score_optimizer"),
        (MSD, "fake_score_optimizer"),
        (DecoupledDMD, "fake_score_optimizer"),
        (PhasedDMD, None),
    ],
)
def test_recipes_without_a_published_optimizer_keep_torch_adamw(cls, second):
    assert default(cls, "optimizer") is torch.optim.AdamW
    if second is not None:
        assert default(cls, second) is None  # the same optimizer for the fake score


def test_print_config_names_the_default_optimizer(tmp_path, capsys):
    from lightning_distill.cli import main

    config = tmp_path / "dmd2.yaml"
    config.write_text(
        "model:\n  class_path: lightning_distill.recipes.dmd2.DMD2\n  init_args:\n"
        "    student: {class_path: lightning_distill.diffusion.MLPDenoiser, init_args: {dim: 2, hidden: 8, depth: 1}}\n"
        "    teacher:\n      class_path: lightning_distill.diffusion.gmm.AnalyticTeacher\n"
        "      init_args: {gmm: {class_path: lightning_distill.diffusion.gmm.make_mixture, init_args: {preset: ring}}}\n"
        "data: {class_path: lightning_distill.data.GMMDataModule}\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    assert "optimizer: lightning_distill.diffusion.dmd2_adamw" in capsys.readouterr().out
