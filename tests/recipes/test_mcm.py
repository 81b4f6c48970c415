"""MCM: the student turn against an independent computation, the mixed start, gradients, teacher, fit, bad args.

Every test runs the real-scale class: a diffusers ``UNet3DConditionModel`` (tiny, random) behind the
label-conditioned wrapper, as teacher and student.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.data.video import MovingGlyphsDataModule, glyph_stills, moving_glyphs
from lightning_distill.diffusion import NoiseSchedule
from lightning_distill.recipes.mcm import MCM
from lightning_distill.video import LabelConditionedVideoUNet, tiny_video_unet
from tests.conftest import quiet_trainer_kwargs

_UNETS: list[LabelConditionedVideoUNet] = []


def _unet() -> LabelConditionedVideoUNet:
    """A fresh copy of one of two random tiny UNet3Ds (built once: diffusers' constructor is slow)."""
    if not _UNETS:
        torch.manual_seed(0)
        _UNETS.extend(LabelConditionedVideoUNet(tiny_video_unet(sample_size=8)) for _ in range(2))
    _UNETS.reverse()
    return copy.deepcopy(_UNETS[0])


def recipe(**kwargs) -> MCM:
    torch.manual_seed(0)
    options = dict(
        student=_unet(),
        teacher=_unet().eval(),
        schedule=NoiseSchedule.ddpm(),
        guidance_min=1.0,
        guidance_max=3.0,
        embedding_dim=16,
        num_solver_steps=10,
        noise_seed=0,
        sample_shape=(1, 3, 8, 8),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    options.update(kwargs)
    torch.manual_seed(0)  # the heads' initialisation, whether or not the UNets were just built
    return MCM(**options)


def batch(n=2):
    data = moving_glyphs(n, size=8, num_frames=3, glyph_size=4, seed=0)
    return data.videos, data.labels, glyph_stills(n, size=8, glyph_size=4, seed=1)[0]


def test_student_turn_matches_an_independent_computation():
    module = recipe(pred_x0_probability=0.0, adversarial=False)
    torch.nn.init.normal_(module.spatial_head.conv_out.weight, std=0.1)
    module.target_head.load_state_dict(module.spatial_head.state_dict())
    x0, y, _ = batch()
    terms, _ = module.student_losses(x0, y, torch.Generator().manual_seed(7))
    # the same draws, in the recipe's order: w, the mixed-start coin, the grid index, the noise
    g = torch.Generator().manual_seed(7)
    w = 1.0 + 2.0 * torch.rand(2, generator=g)
    torch.rand((), generator=g)
    index = torch.randint(0, 10, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    grid = torch.arange(1, 11) * 100 - 1
    t_start, t_end = (
        grid[index],
        torch.where(index >= 1, grid[(index - 1).clamp(min=0)], torch.zeros_like(index)),
    )
    abar = module.schedule.scheduler.alphas_cumprod.float()
    a = lambda t: abar[t].sqrt().view(-1, 1, 1, 1, 1)  # noqa: E731
    s = lambda t: (1 - abar[t]).sqrt().view(-1, 1, 1, 1, 1)  # noqa: E731
    z = a(t_start) * x0 + s(t_start) * noise

    def boundary(x, eps, t):
        scaled = 10.0 * t.float().view(-1, 1, 1, 1, 1)
        c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25).sqrt()
        return c_skip * x + c_out * (x - s(t) * eps) / a(t)

    with torch.no_grad():
        eps_student = module.student(z, t_start, y, guidance=w)
        e_c = module.teacher(z, t_start, y)
        e_u = module.teacher(z, t_start, torch.full_like(y, 10))
        e = e_c + w.view(-1, 1, 1, 1, 1) * (e_c - e_u)
        x0_teacher = (z - s(t_start) * e) / a(t_start)
        x_prev = a(t_end) * x0_teacher + s(t_end) * e
        eps_target = module.target_student(x_prev, t_end, y, guidance=w)
        pred = module.spatial_head(boundary(z, eps_student, t_start))
        target = module.target_head(boundary(x_prev, eps_target, t_end))
        expected = ((pred - target) ** 2 + 0.001**2).sqrt().sub(0.001).mean()
    torch.testing.assert_close(terms["consistency"].detach(), expected, rtol=1e-4, atol=1e-6)


def test_mixed_start_replaces_the_data_by_the_target_networks_one_step_prediction(monkeypatch):
    module = recipe(pred_x0_probability=1.0, adversarial=False)
    seen = {}
    original = module.mixed_start

    def spy(x0, cond, w, generator):
        seen["x0"] = original(x0, cond, w, generator)
        return seen["x0"]

    monkeypatch.setattr(module, "mixed_start", spy)
    x0, y, _ = batch()
    module.student_losses(x0, y, torch.Generator().manual_seed(0))
    assert "x0" in seen and seen["x0"].shape == x0.shape and not torch.equal(seen["x0"], x0)
    with torch.no_grad():  # it is the target network's x̂₀ at the last grid timestep
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        t = torch.full((2,), 999)
        out = module.target_student(noise, t, y, guidance=torch.ones(2))
        x0_hat = module.schedule.to_x0(out, noise, t)
        torch.testing.assert_close(original(x0, y, torch.ones(2), torch.Generator().manual_seed(1)), x0_hat)


def test_gradients_reach_student_and_head_on_its_turn_and_only_the_discriminator_on_its_own():
    module = recipe(pred_x0_probability=0.0)
    torch.nn.init.normal_(module.spatial_head.conv_out.weight, std=0.1)
    x0, y, stills = batch()
    terms, prediction = module.student_losses(x0, y, torch.Generator().manual_seed(0))
    (terms["consistency"] + terms["adversarial"]).backward()
    has_grad = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    assert has_grad(module.student) and has_grad(module.spatial_head)
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.target_student.parameters())
    assert all(p.grad is None for p in module.target_head.parameters())
    for p in module.parameters():
        p.grad = None
    fake = prediction.detach()[:, :, :2].transpose(1, 2).reshape(4, 1, 8, 8)
    losses = module.discriminator_losses(stills, fake)
    (losses["discriminator"] + losses["r1"]).backward()
    assert has_grad(module.discriminator) and float(losses["r1"].detach()) > 0
    assert not has_grad(module.student) and not has_grad(module.spatial_head)


def test_fit_logs_the_declared_terms_keeps_the_teacher_and_moves_the_targets():
    module = recipe()
    teacher_before = copy.deepcopy(module.teacher.state_dict())
    target_before = copy.deepcopy(module.target_student.state_dict())
    x0, y, stills = batch(4)
    loader = DataLoader(TensorDataset(x0, y, stills), batch_size=2)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(module, loader)
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, target_before[k]) for k, v in module.target_student.state_dict().items())
    logged = {k for k in trainer.logged_metrics if k.startswith("train/")}
    assert {"train/consistency", "train/adversarial", "train/discriminator", "train/r1"} <= logged
    assert {"train/loss_student", "train/loss_discriminator"} <= logged
    assert module.sample(2, torch.Generator().manual_seed(0), y[:2], steps=2).shape == (2, 1, 3, 8, 8)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"guidance_min": 3.0, "guidance_max": 1.0}, "guidance_max"),
        ({"pred_x0_probability": 1.5}, "pred_x0_probability"),
        ({"discriminator_frames": 0}, "discriminator_frames"),
        ({"ema_decay": 2.0}, "ema_decay"),
        ({"loss_type": "l1"}, "loss_type"),
    ],
)
def test_bad_arguments_are_rejected_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        recipe(**kwargs)


def test_adversarial_training_without_stills_says_what_to_change():
    module = recipe()
    x0, y, _ = batch()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0))
    with pytest.raises(ValueError, match="stills"):
        trainer.fit(module, DataLoader(TensorDataset(x0, y), batch_size=2))


class _Record(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.values += [float(metrics["train/consistency"]), float(metrics["train/discriminator"])]


def _fit(steps: int, tmp_path: Path, ckpt: str | None = None, record: Callback | None = None) -> None:
    L.seed_everything(0)
    data = MovingGlyphsDataModule(
        num_train=8, num_val=2, num_test=2, size=8, num_frames=3, glyph_size=4, stills=True, batch_size=2
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / f"run{steps}", save_last=True, every_n_train_steps=4)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(
            max_steps=steps, limit_val_batches=0, enable_checkpointing=True, callbacks=[record, checkpoint]
        )
    )
    trainer.fit(recipe(), datamodule=data, ckpt_path=ckpt)


def test_resume_matches_an_uninterrupted_run(tmp_path: Path):
    # max_steps counts optimizer steps: two per iteration (student, discriminator)
    whole, first, second = _Record(), _Record(), _Record()
    _fit(8, tmp_path, record=whole)
    _fit(4, tmp_path, record=first)
    _fit(8, tmp_path, ckpt=str(tmp_path / "run4" / "last.ckpt"), record=second)
    torch.testing.assert_close(torch.tensor(first.values + second.values), torch.tensor(whole.values))
