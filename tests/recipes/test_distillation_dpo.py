"""Distillation-DPO: pair order, the student's gradient (non-zero, descending), routing per turn, teacher frozen, configs."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.lidar_generation import CompletionDataModule
from lightning_distill.lidar_generation.point_diffusion import PointDenoiser
from lightning_distill.losses.pointset import chamfer_distance
from lightning_distill.recipes.distillation_dpo import DistillationDPO
from tests.conftest import quiet_trainer_kwargs

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "distillation_dpo" / "config.yaml"


def denoiser(seed: int = 0) -> PointDenoiser:
    torch.manual_seed(seed)
    return PointDenoiser(voxel_size=0.5, widths=(8, 16), time_dim=8, hidden=16)


def make_recipe(**kwargs) -> DistillationDPO:
    defaults = dict(
        student=denoiser(1),
        teacher=denoiser(0),
        duplication=2,
        student_steps=1,
        teacher_steps=3,
        eval_voxel_sizes=(1.0,),
        eval_bev_extent=5.0,
        eval_bev_bins=10,
        max_grad_norm=None,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        aux_optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    defaults.update(kwargs)
    return DistillationDPO(**defaults)


def toy_batch(batch_size: int = 3, scan_points: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    target = torch.randn(batch_size, 30, 3, generator=g) * 3
    return {
        "scan": target[:, :scan_points].clone(),
        "target": target,
        "target_mask": torch.ones(batch_size, 30, dtype=torch.bool),
    }


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def tiny_data() -> CompletionDataModule:
    return CompletionDataModule(
        num_train=4,
        num_val=2,
        num_test=2,
        num_frames=2,
        num_scan_points=8,
        batch_size=2,
        beams=8,
        azimuth_steps=128,
    )


def test_student_and_auxiliaries_start_from_the_teacher():
    recipe = make_recipe()
    for model in (recipe.student, recipe.aux_winner, recipe.aux_loser):
        for a, b in zip(model.state_dict().values(), recipe.teacher.state_dict().values()):
            torch.testing.assert_close(a, b)
    assert all(p.requires_grad for p in recipe.aux_loser.parameters())
    assert not any(p.requires_grad for p in recipe.teacher.parameters())


def test_pair_order_follows_chamfer_distance():
    recipe = make_recipe()
    recipe.eval()  # BatchNorm on running statistics, so one sample's output does not depend on the batch
    batch = toy_batch()
    pairs = recipe.draw_pairs(batch)
    target = pairs.gather(batch)
    cd_w = 0.5 * chamfer_distance(pairs.winner, target["target"], squared=False, reduction="none")
    cd_l = 0.5 * chamfer_distance(pairs.loser, target["target"], squared=False, reduction="none")
    assert len(pairs) > 0 and bool((cd_w < cd_l).all())
    # the noises are ε and 1.1 ε, and each completion is the one-step student's output from its noise
    scales = torch.tensor([1.0, 1.1])
    torch.testing.assert_close(
        pairs.winner_noise * scales[pairs.loser_candidate][:, None, None],
        pairs.loser_noise * scales[pairs.winner_candidate][:, None, None],
    )
    with torch.no_grad():
        again = recipe.complete(recipe.student, target["scan"], pairs.winner_noise)
    torch.testing.assert_close(again, pairs.winner)


def _student_loss(recipe: DistillationDPO, batch, pairs):
    scan = pairs.gather(batch)["scan"]
    noise = torch.cat([pairs.winner_noise, pairs.loser_noise])
    x0_w, x0_l = recipe.complete(recipe.student, torch.cat([scan, scan]), noise).chunk(2)
    rng = torch.Generator().manual_seed(11)
    return recipe.student_loss(x0_w, x0_l, scan, rng)


@pytest.mark.parametrize("preference", [True, False])
def test_student_gradient_is_nonzero_reaches_only_the_student_and_descends(preference):
    recipe = make_recipe(preference=preference)
    recipe.eval()  # BatchNorm on running statistics: the same function before and after the step
    perturb(recipe.aux_winner, 1)
    if preference:
        perturb(recipe.aux_loser, 2)
    batch = toy_batch()
    pairs = recipe.draw_pairs(batch)
    (term,) = _student_loss(recipe, batch, pairs).values()
    term.backward()
    grads = [p.grad for p in recipe.student.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    for model in (recipe.teacher, recipe.aux_winner, recipe.aux_loser):
        if model is not None:
            assert all(p.grad is None for p in model.parameters())
    # a small step along −gradient lowers the objective (same pairs, same noise, same t)
    before = float(term.detach())
    with torch.no_grad():
        for p in recipe.student.parameters():
            p.sub_(1e-3 * p.grad / max(float(p.grad.norm()), 1e-12))
    (after,) = _student_loss(recipe, batch, pairs).values()
    assert float(after.detach()) < before


def test_student_gradient_is_zero_while_auxiliaries_equal_the_teacher():
    """Score distillation needs the auxiliaries to have moved: at the start ε_T − ε_aux is 0."""
    recipe = make_recipe()
    recipe.eval()
    batch = toy_batch()
    (term,) = _student_loss(recipe, batch, recipe.draw_pairs(batch)).values()
    term.backward()
    assert max(float(p.grad.abs().max()) for p in recipe.student.parameters()) < 1e-6  # float noise only


def test_auxiliary_loss_reaches_only_its_model():
    recipe = make_recipe()
    batch = toy_batch()
    pairs = recipe.draw_pairs(batch)
    scan = pairs.gather(batch)["scan"]
    rng = torch.Generator().manual_seed(0)
    recipe.aux_loss(recipe.aux_winner, pairs.winner, scan, rng).backward()
    assert all(p.grad is not None for p in recipe.aux_winner.parameters())
    for model in (recipe.student, recipe.teacher, recipe.aux_loser):
        assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("preference", [True, False])
def test_fit_trains_student_and_auxiliaries_and_leaves_the_teacher_unchanged(tmp_path, preference):
    recipe = make_recipe(preference=preference)
    perturb(recipe.aux_winner, 3)
    teacher_before = copy.deepcopy(recipe.teacher.state_dict())
    student_before = copy.deepcopy(recipe.student.state_dict())
    aux_before = copy.deepcopy(recipe.aux_winner.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=4, default_root_dir=tmp_path, limit_val_batches=1))
    trainer.fit(recipe, datamodule=tiny_data())
    for k, v in recipe.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])

    def changed(now, before):
        return any(not torch.equal(v, before[k]) for k, v in now.items() if v.is_floating_point())

    assert changed(recipe.student.state_dict(), student_before)
    assert changed(recipe.aux_winner.state_dict(), aux_before)
    terms = {"aux_winner", "aux_loser", "dpo"} if preference else {"aux_fake", "sd"}
    logged = {k.split("/", 1)[1] for k in trainer.logged_metrics if k.startswith("train/")}
    assert terms | {"loss_aux", "loss_generator"} <= logged
    assert {"val/cd", "val/jsd", "val/iou_1", "val/teacher_cd"} <= set(trainer.logged_metrics)
    assert int(recipe.iteration) == 2  # two turns (optimizer steps) per iteration


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(duplication=0), "duplication"),
        (dict(noise_scales=(1.0, 1.0)), "noise_scales"),
        (dict(student_init="random"), "student_init"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(eval_voxel_sizes=()), "eval_voxel_sizes"),
    ],
)
def test_bad_options_are_rejected_with_the_config_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_recipe(**kwargs)


def test_config_parses():
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    assert config["model"]["class_path"].endswith("DistillationDPO")
