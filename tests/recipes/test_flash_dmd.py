"""Flash-DMD: the timestep-aware split, the reward term and its gradient, stages, routing, resume, configs."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks import MixtureMetrics
from lightning_distill.cli import main as cli_main
from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.gmm import AnalyticTeacher, make_mixture
from lightning_distill.losses.distribution_matching import gan_generator_loss, pseudo_target_loss
from lightning_distill.recipes.flash_dmd import FlashDMD, RegionReward
from tests.conftest import quiet_trainer_kwargs

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "flash_dmd" / "config.yaml"


def mlp(dim: int = 2, **kwargs) -> MLPDenoiser:
    return MLPDenoiser(dim=dim, hidden=16, depth=2, time_embedding_dim=8, **kwargs)


class LinearReward(nn.Module):
    """A reward with parameters, to check they stay frozen: r(x) = w · flatten(x) + b."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).squeeze(1)


def make_recipe(**kwargs) -> FlashDMD:
    torch.manual_seed(0)
    defaults = dict(
        student=mlp(),
        teacher=AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()),
        fake_score=mlp(),
        reward_model=RegionReward([4.0, 0.0], 2.0),
        student_init="random",
        student_prediction_type="sample",
        denoising_timesteps=[999, 499],
        real_guidance_scale=1.0,
        generator_update_every=2,
        noise_seed=0,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )
    defaults.update(kwargs)
    return FlashDMD(**defaults)


def tiny_gmm_data() -> GMMDataModule:
    return GMMDataModule("ring", num_train=64, num_val=64, num_test=64, batch_size=16)


# --------------------------------------------------------------------------- the reward term
def test_region_reward_is_the_gaussian_bump_of_its_formula():
    reward = RegionReward(center=[1.0, -2.0], scale=0.5)
    x = torch.tensor([[1.0, -2.0], [1.5, -2.0], [0.0, 0.0]])
    expected = torch.tensor(
        [1.0, torch.exp(torch.tensor(-0.5)).item(), torch.exp(torch.tensor(-10.0)).item()]
    )
    torch.testing.assert_close(reward(x), expected)


def test_reward_loss_gradient_on_x0_is_minus_the_reward_gradient_over_batch_size():
    """d(−mean r)/dx_i = −∇r(x_i) / B = −r(x_i) (c − x_i) / (s² B) for the Gaussian bump, by hand."""
    recipe = make_recipe(reward_model=RegionReward([4.0, 0.0], 2.0))
    x0 = torch.tensor([[3.0, 1.0], [0.0, 0.0], [4.0, 0.5]], requires_grad=True)
    loss = recipe.reward_loss(x0)
    loss.backward()
    center, s2 = torch.tensor([4.0, 0.0]), 4.0
    r = torch.exp(-((x0.detach() - center) ** 2).sum(1) / (2 * s2))
    torch.testing.assert_close(loss.detach(), -r.mean())
    torch.testing.assert_close(x0.grad, -(r[:, None] * (center - x0.detach()) / s2) / 3)


def test_reward_model_with_a_wrong_output_shape_is_refused():
    recipe = make_recipe(reward_model=nn.Linear(2, 1))  # returns (B, 1), not (B,)
    with pytest.raises(ValueError, match=r"one value per sample \(4,\)"):
        recipe.reward(torch.randn(4, 2))


# --------------------------------------------------------------------------- the timestep-aware split
def test_high_noise_samples_get_only_dm_and_low_noise_samples_only_gan():
    recipe = make_recipe(timestep_split=500)
    x0 = torch.randn(4, 2, requires_grad=True)
    t = torch.tensor([999, 999, 499, 249])
    terms = recipe.distillation_terms(x0, t, None, None, torch.Generator().manual_seed(7))
    (terms["dm"] + terms["gen_cls"]).backward()

    # Independent: the same draws in the same order (DM timesteps and noise, then the GAN's), by hand.
    gen = torch.Generator().manual_seed(7)
    g = recipe.distribution_matching_gradient(x0, None, None, gen)
    logits = recipe.discriminator_logits(x0.detach().requires_grad_(True), None, gen)
    dm = 0.5 * (g[:2] ** 2).mean(1).sum() / 4  # ½‖x − sg(x − g)‖² per sample = ½ mean g²
    gan = F.softplus(-logits[2:]).sum() / 4
    torch.testing.assert_close(terms["dm"], dm)
    torch.testing.assert_close(terms["gen_cls"], gan.detach())
    torch.testing.assert_close(x0.grad[:2], g[:2] / (4 * 2))  # DM rows: g / (B x D), no GAN gradient
    x_gan = x0.detach().clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(7)
    recipe.distribution_matching_gradient(x_gan, None, None, gen)  # consume the DM draws
    (F.softplus(-recipe.discriminator_logits(x_gan, None, gen))[2:].sum() / 4).backward()
    torch.testing.assert_close(x0.grad[2:], x_gan.grad[2:])  # GAN rows: the GAN gradient only


def test_without_a_split_both_terms_equal_dmd2s_losses_on_every_sample():
    recipe = make_recipe(timestep_split=None)
    x0 = torch.randn(4, 2)
    terms = recipe.distillation_terms(
        x0, torch.tensor([999, 499, 499, 999]), None, None, torch.Generator().manual_seed(3)
    )
    gen = torch.Generator().manual_seed(3)
    dm = pseudo_target_loss(x0, recipe.distribution_matching_gradient(x0, None, None, gen))  # DMD2's L_DM
    torch.testing.assert_close(terms["dm"], dm)
    torch.testing.assert_close(
        terms["gen_cls"], gan_generator_loss(recipe.discriminator_logits(x0, None, gen))
    )


def test_dm_term_has_no_gradient_when_the_fake_score_equals_the_teacher():
    teacher = mlp().requires_grad_(False)
    recipe = make_recipe(teacher=teacher, fake_score=copy.deepcopy(teacher), gan=False, timestep_split=None)
    x0 = torch.randn(8, 2, requires_grad=True)
    recipe.distillation_terms(x0, torch.full((8,), 999), None, None, torch.Generator().manual_seed(0))[
        "dm"
    ].backward()
    assert x0.grad.abs().max() == 0


def test_generator_terms_follow_the_stages_and_the_regulariser_switch():
    x0, t = torch.randn(4, 2), torch.tensor([999, 999, 999, 999])
    recipe = make_recipe(reward_start_iteration=3)
    assert set(recipe.generator_terms(x0, t, None, None)) == {"dm"}  # Stage 1: distillation only
    recipe.iteration = 3
    assert set(recipe.generator_terms(x0, t, None, None)) == {"dm", "reward"}  # Stage 2: joint
    recipe.distillation_regulariser = False
    assert set(recipe.generator_terms(x0, t, None, None)) == {"reward"}  # the ablation: reward alone
    assert set(make_recipe(reward_model=None).generator_terms(x0, t, None, None)) == {"dm"}


# --------------------------------------------------------------------------- training with a Trainer
class GradientSpy(Callback):
    """Which parameter groups hold gradients when each optimizer steps (grads cleared every batch)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, bool]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.zero_grad(set_to_none=True)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        def has(module):
            return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

        groups = {
            "student": pl_module.student,
            "fake_score": pl_module.fake_score,
            "head": pl_module.gan_head,
        }
        self.steps.append((trainer.optimizers.index(optimizer), {name: has(m) for name, m in groups.items()}))
        assert all(p.grad is None for p in pl_module.teacher.parameters())
        assert all(p.grad is None for p in pl_module.reward_model.parameters())


def test_gradients_reach_only_their_networks_and_teacher_and_reward_stay_unchanged():
    recipe = make_recipe(
        teacher=mlp().requires_grad_(False), reward_model=LinearReward(), reward_start_iteration=2
    )
    frozen = copy.deepcopy(
        {"teacher": recipe.teacher.state_dict(), "reward": recipe.reward_model.state_dict()}
    )
    spy = GradientSpy()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=4, callbacks=[spy]))
    trainer.fit(recipe, datamodule=tiny_gmm_data())
    assert [index for index, _ in spy.steps] == [0, 1, 1, 0, 1, 1]  # generator at iterations 0 and 2
    assert all(g == {"student": True, "fake_score": False, "head": False} for i, g in spy.steps if i == 0)
    fake_steps = [g for i, g in spy.steps if i == 1]
    assert all(g["fake_score"] and g["head"] for g in fake_steps)
    assert not fake_steps[1]["student"] and not fake_steps[3]["student"]  # iterations 1, 3: no generator turn
    torch.testing.assert_close(recipe.teacher.state_dict(), frozen["teacher"])
    torch.testing.assert_close(recipe.reward_model.state_dict(), frozen["reward"])
    assert not recipe.reward_model.training and "diag/mean_reward" in trainer.logged_metrics


class RecordLosses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(trainer.callback_metrics["train/fake"]))
        if "train/reward" in trainer.callback_metrics and pl_module.iteration - 1 == 6:
            self.values.append(float(trainer.callback_metrics["train/reward"]))


def test_resume_across_the_stage_boundary_equals_the_uninterrupted_run(tmp_path):
    def run(epochs, ckpt_path=None):
        L.seed_everything(3)
        recipe = make_recipe(reward_start_iteration=5, noise_seed=None)
        record = RecordLosses()
        checkpoint = ModelCheckpoint(dirpath=tmp_path / f"run{epochs}", save_last=True)
        kwargs = quiet_trainer_kwargs(
            max_epochs=epochs, limit_train_batches=4, limit_val_batches=0, enable_checkpointing=True
        )
        trainer = L.Trainer(**kwargs, callbacks=[record, checkpoint], log_every_n_steps=1)
        trainer.fit(recipe, datamodule=tiny_gmm_data(), ckpt_path=ckpt_path)
        return recipe, record

    full, full_record = run(2)
    _, first = run(1)
    resumed, second = run(2, ckpt_path=str(tmp_path / "run1" / "last.ckpt"))
    assert resumed.iteration == full.iteration == 8 and len(full_record.values) == 9  # reward logged at 6
    torch.testing.assert_close(torch.tensor(first.values + second.values), torch.tensor(full_record.values))
    for name in ("student", "fake_score", "gan_head"):
        torch.testing.assert_close(getattr(resumed, name).state_dict(), getattr(full, name).state_dict())


def test_unet2d_models_run_the_split_and_the_reward_through_the_same_code_path():
    torch.manual_seed(0)
    teacher = tiny_unet(sample_size=8, in_channels=1, block_out_channels=(8, 16))
    recipe = FlashDMD(
        student=tiny_unet(sample_size=8, in_channels=1, block_out_channels=(8, 16)),
        teacher=teacher,
        reward_model=LinearReward(64),
        denoising_timesteps=[999, 499],
        real_guidance_scale=1.0,
        generator_update_every=1,
        noise_seed=0,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )
    torch.testing.assert_close(recipe.student.state_dict(), teacher.state_dict())  # student_init="teacher"
    before = copy.deepcopy(recipe.student.state_dict())
    seen: list[set[str]] = []
    terms_of = recipe.distillation_terms

    def spy(*args, **kwargs):
        terms = terms_of(*args, **kwargs)
        seen.append(set(terms))
        return terms

    recipe.distillation_terms = spy
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=4))
    trainer.fit(recipe, train_dataloaders=DataLoader(TensorDataset(torch.randn(8, 1, 8, 8)), batch_size=2))
    metrics = trainer.logged_metrics
    assert torch.isfinite(metrics["train/reward"]) and torch.isfinite(metrics["train/fake"])
    assert {"dm"} in seen and {"gen_cls"} in seen  # t = 999: DM only; t = 499: GAN only
    assert any(not torch.equal(v, before[k]) for k, v in recipe.student.state_dict().items())
    assert recipe.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)


def test_validation_logs_the_reward_next_to_the_sample_metrics():
    recipe = make_recipe(eval_teacher_steps=5)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(max_epochs=1, limit_train_batches=2, callbacks=[MixtureMetrics()])
    )
    trainer.fit(recipe, datamodule=tiny_gmm_data())
    metrics = trainer.callback_metrics
    assert {"val/reward", "val/swd", "val/mode_coverage", "val/teacher_swd", "val/swd_floor"} <= set(metrics)
    samples = recipe.sample(64, torch.Generator().manual_seed(recipe.noise_seed))
    torch.testing.assert_close(metrics["val/reward"], recipe.reward(samples).mean())


# --------------------------------------------------------------------------- arguments and the config
@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"timestep_split": 0}, "model.init_args.timestep_split"),
        ({"timestep_split": 500, "gan": False}, "model.init_args.timestep_split"),
        ({"loss_weights": {"reward": -1.0}}, "model.init_args.loss_weights"),
        ({"reward_start_iteration": -1}, "model.init_args.reward_start_iteration"),
        ({"generator_update_every": 0}, "model.init_args.generator_update_every"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_recipe(**kwargs)


def test_region_reward_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        RegionReward([0.0, 0.0], scale=0.0)
    with pytest.raises(ValueError, match="2-D center"):
        RegionReward([0.0, 0.0])(torch.zeros(3, 4))


def test_config_runs_with_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(
        ["fit", "--config", str(CONFIG), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    )
