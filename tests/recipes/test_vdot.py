"""VDOT: the generator's terms against an independent computation, the turns and their ratio, gradients, teacher, bad args.

Every test runs the real-scale class: a diffusers ``UNet3DConditionModel`` (tiny, random) behind the
label-conditioned wrapper, as teacher, student and fake score.
"""

from __future__ import annotations

import copy

import lightning.pytorch as L
import ot
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.data.video import moving_glyphs
from lightning_distill.diffusion import NoiseSchedule
from lightning_distill.recipes.vdot import VDOT
from lightning_distill.video import LabelConditionedVideoUNet, tiny_video_unet
from tests.conftest import quiet_trainer_kwargs

_UNETS: list[LabelConditionedVideoUNet] = []


def _unet() -> LabelConditionedVideoUNet:
    """A fresh copy of one random tiny UNet3D (built once: diffusers' constructor is slow)."""
    if not _UNETS:
        torch.manual_seed(0)
        _UNETS.append(LabelConditionedVideoUNet(tiny_video_unet(sample_size=8)))
    return copy.deepcopy(_UNETS[0])


def recipe(**kwargs) -> VDOT:
    teacher = _unet().eval()
    torch.manual_seed(1)
    for p in teacher.parameters():  # a teacher that differs from the student and the fake score below
        p.data.add_(0.05 * torch.randn_like(p))
    options = dict(
        student=_unet(),
        teacher=teacher,
        schedule=NoiseSchedule.ddpm(),
        ot_patch_size=2,
        real_guidance_scale=2.0,
        denoising_timesteps=[999, 499],
        noise_seed=0,
        sample_shape=(1, 3, 8, 8),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    options.update(kwargs)
    torch.manual_seed(0)
    module = VDOT(**options)
    with torch.no_grad():  # a fake score that is not the teacher, so that ∇_DMD ≠ 0
        for p in module.fake_score.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def batch(n=2):
    data = moving_glyphs(n, size=8, num_frames=3, glyph_size=4, seed=0)
    return data.videos, data.labels


def test_generator_terms_match_an_independent_computation():
    module = recipe(ot_max_iter=3000)
    x, y = batch()
    x0 = (0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    terms = module.distribution_terms(x0, y, x, torch.Generator().manual_seed(7))
    # the same draws in the recipe's order: t, then ε
    g = torch.Generator().manual_seed(7)
    t = torch.randint(20, 981, (2,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    abar = module.schedule.scheduler.alphas_cumprod.float()
    a, s = abar[t].sqrt().view(-1, 1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        x_t = a * x0 + s * eps
        e_fake = module.fake_score.eval()(x_t, t, y)
        e_c, e_u = module.teacher(x_t, t, y), module.teacher(x_t, t, torch.full_like(y, 10))
        e_real = e_u + 2.0 * (e_c - e_u)
        fake, real = (x_t - s * e_fake) / a, (x_t - s * e_real) / a
        norm = (x0 - real).abs().flatten(1).mean(1).view(-1, 1, 1, 1, 1)
        g_dmd = (fake - real) / norm
        g_ot = torch.empty_like(x0)
        tok = lambda v: v[0].reshape(3, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(48, 4)  # noqa: E731
        for b in range(2):  # one plan per sample, POT's plain Sinkhorn on 2x2 patch tokens
            xs, xr = tok(fake[b]).double(), tok(real[b]).double()
            cost = torch.cdist(xs, xr).square()
            plan = ot.sinkhorn(
                torch.full((48,), 1 / 48, dtype=torch.float64),
                torch.full((48,), 1 / 48, dtype=torch.float64),
                cost / cost.mean(),
                0.05,
                numItermax=3000,
                stopThr=1e-9,
            )
            grad = (xs - 48 * plan @ xr).float()
            g_ot[b, 0] = grad.reshape(3, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(3, 8, 8)
        g_ot = g_ot / norm
    torch.testing.assert_close(terms["dm"].detach(), 0.5 * g_dmd.square().mean(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(terms["ot"].detach(), 0.5 * g_ot.square().mean(), rtol=1e-3, atol=1e-6)
    (grad_ot,) = torch.autograd.grad(terms["ot"], x0)
    torch.testing.assert_close(grad_ot * x0.numel(), g_ot, rtol=1e-3, atol=2e-3)


def test_ot_against_the_data_moves_the_generated_videos_toward_the_real_tokens():
    module = recipe(ot_target="data", dmd=False)
    x, y = batch()
    x0 = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.SGD([x0], lr=x0.numel() * 0.5)  # half a step toward the pseudo-target
    distance = lambda v: float(torch.cdist(v.flatten(1), x.flatten(1)).diagonal().mean())  # noqa: E731
    before = distance(x0.detach())
    for _ in range(3):
        optimizer.zero_grad()
        module.distribution_terms(x0, y, x, torch.Generator().manual_seed(0))["ot"].backward()
        optimizer.step()
    assert distance(x0.detach()) < 0.5 * before


def test_gradients_reach_the_student_on_its_turns_and_never_the_teacher():
    module = recipe()
    x, y = batch()
    has_grad = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    x_t, t = module.generator_input(x, y, torch.Generator().manual_seed(0))
    x0 = module.generate(x_t, t, y)
    terms = module.distribution_terms(x0, y, x, torch.Generator().manual_seed(0))
    (terms["ot"] + terms["dm"]).backward()
    assert has_grad(module.student)
    assert not has_grad(module.fake_score) and not has_grad(module.critic)
    assert all(p.grad is None for p in module.teacher.parameters())
    module.zero_grad()
    module.generator_gan_loss(module.generate(x_t, t, y), x, y).backward()
    assert has_grad(module.student) and all(p.grad is None for p in module.teacher.parameters())
    module.zero_grad()
    module.fake_score_loss(x0.detach(), y, torch.Generator().manual_seed(0)).backward()
    assert has_grad(module.fake_score) and not has_grad(module.student)
    module.zero_grad()
    module.critic_loss(x, x0, y)[0].backward()
    assert has_grad(module.critic) and not has_grad(module.student) and not has_grad(module.fake_score)


def test_turns_alternate_ot_dmd_and_gan_at_the_critic_ratio_and_the_teacher_stays():
    module = recipe(generator_update_every=3)
    teacher_before = copy.deepcopy(module.teacher.state_dict())
    student_before = copy.deepcopy(module.student.state_dict())
    turns: list[tuple[str, tuple[str, ...]]] = []
    update = module.update

    def spy(optimizer, terms, *, turn, max_grad_norm=None):
        turns.append((turn, tuple(sorted(terms))))
        return update(optimizer, terms, turn=turn, max_grad_norm=max_grad_norm)

    module.update = spy
    x, y = batch(4)
    loader = DataLoader(TensorDataset(x.repeat(2, 1, 1, 1, 1), y.repeat(2, 1)), batch_size=2)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=4, limit_val_batches=0))
    trainer.fit(module, loader)
    generator = [terms for turn, terms in turns if turn == "generator"]
    assert generator == [("dm", "ot"), ("gan",)]  # iterations 0 and 3: OT + DMD, then the GAN
    assert [turn for turn, _ in turns].count("critic") == 4
    assert [turn for turn, _ in turns].count("fake_score") == 4
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items())
    logged = {k for k in trainer.logged_metrics if k.startswith("train/")}
    assert {
        "train/ot",
        "train/dm",
        "train/gan",
        "train/fake",
        "train/critic",
        "train/loss_generator",
    } <= logged
    assert module.generator_updates == 2 and module.checkpoint_state()["generator_updates"] == 2
    assert module.sample(2, torch.Generator().manual_seed(0), y[:2], steps=1).shape == (2, 1, 3, 8, 8)


def test_ablations_keep_only_their_terms():
    x, y = batch()
    x0 = torch.zeros_like(x, requires_grad=True)
    assert set(recipe(ot=False).distribution_terms(x0, y, x)) == {"dm"}
    assert set(recipe(dmd=False).distribution_terms(x0, y, x)) == {"ot"}


def test_sample_timesteps_pick_evenly_from_the_students_steps():
    module = recipe(denoising_timesteps=[999, 749, 499, 249])
    assert module.sample_timesteps(1) == (999,)
    assert module.sample_timesteps(2) == (999, 499)
    assert module.sample_timesteps() == (999, 749, 499, 249)
    with pytest.raises(ValueError, match="steps"):
        module.sample_timesteps(5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"ot": False, "dmd": False}, "ot"),
        ({"ot_target": "pixels"}, "ot_target"),
        ({"ot_patch_size": 0}, "ot_patch_size"),
        ({"ot_epsilon": 0.0}, "ot_epsilon"),
        ({"generator_update_every": 0}, "generator_update_every"),
        ({"student_init": "copy"}, "student_init"),
        ({"min_step_percent": 0.9, "max_step_percent": 0.1}, "min_step_percent"),
    ],
)
def test_bad_arguments_are_rejected_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        recipe(**kwargs)
