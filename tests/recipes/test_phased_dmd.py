"""Phased DMD: the subinterval forward process and target, the two losses, phases, resume, real UNets."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks import MixtureMetrics
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.recipes.phased_dmd import (
    PhasedDMD,
    PhasedGenerator,
    subinterval_coefficients,
    subinterval_noise,
    subinterval_target,
)
from tests.conftest import quiet_trainer_kwargs

SCHEDULES = {
    "vp": lambda: NoiseSchedule.ddpm(beta_schedule="linear"),
    "flow": lambda: NoiseSchedule.flow(),
}
CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "phased_dmd" / "config.yaml"


def mlp(seed: int = 0, dim: int = 2) -> MLPDenoiser:
    torch.manual_seed(seed)
    return MLPDenoiser(dim=dim, hidden=16, depth=1)


def make_recipe(schedule_kind: str = "vp", **kwargs) -> PhasedDMD:
    schedule = SCHEDULES[schedule_kind]()
    args = dict(student=mlp(1), teacher=mlp(2), schedule=schedule, noise_seed=0)
    args.update(kwargs)
    return PhasedDMD(**args)


def alpha_sigma(schedule: NoiseSchedule, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    value = torch.tensor(int(t)) if schedule.kind == "vp" else torch.tensor(float(t))
    return schedule.alpha_sigma(value)


# ----------------------------------------------------------------------------- the subinterval math
@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_subinterval_forward_process_has_the_full_process_marginal(kind):
    # Monte Carlo: x0 ~ N(mu, v), x_s by the full process, x_t from x_s by the restarted process;
    # x_t must have the full process's moments at t, including its covariance with x0.
    schedule = SCHEDULES[kind]()
    gen = torch.Generator().manual_seed(0)
    n, mu, std = 400_000, 1.5, 0.7
    a_s, s_s = alpha_sigma(schedule, 300)
    a_t, s_t = alpha_sigma(schedule, 800)
    x0 = mu + std * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x_s = a_s * x0 + s_s * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x_t = subinterval_noise(x_s, torch.randn(n, 1, generator=gen), a_s, s_s, a_t, s_t).double()
    variance = float(a_t**2 * std**2 + s_t**2)
    tol = 5 * (variance / n) ** 0.5
    assert abs(float(x_t.mean()) - float(a_t) * mu) < tol
    assert abs(float(x_t.var()) - variance) < 5 * variance * (2 / n) ** 0.5
    covariance = float(((x_t - x_t.mean()) * (x0 - x0.mean())).mean())
    assert abs(covariance - float(a_t) * std**2) < tol


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction", "flow"])
def test_unbiased_target_optimum_is_the_analytic_conditional_expectation(prediction):
    # x0 ~ N(mu, v) is jointly Gaussian with x_t, so the optimum of the regression on the targets
    # is affine in x_t: fit it by least squares and compare with the exact denoiser of the full
    # process (AnalyticTeacher of a one-mode mixture) at t. The biased target misses it.
    schedule = SCHEDULES["flow" if prediction == "flow" else "vp"]()
    gen = torch.Generator().manual_seed(1)
    n, mu, std = 200_000, 0.8, 0.6
    s_value, t_value = (150, 350) if schedule.kind == "vp" else (400, 700)  # both with signal left
    a_s, s_s = alpha_sigma(schedule, s_value)
    a_t, s_t = alpha_sigma(schedule, t_value)
    x0 = mu + std * torch.randn(n, 1, generator=gen)
    x_s = a_s * x0 + s_s * torch.randn(n, 1, generator=gen)
    noise = torch.randn(n, 1, generator=gen)
    x_t = subinterval_noise(x_s, noise, a_s, s_s, a_t, s_t)
    t = torch.full((n,), t_value) if schedule.kind == "vp" else torch.full((n,), float(t_value))
    design = torch.cat([x_t, torch.ones_like(x_t)], dim=1).double()

    def fitted(target: torch.Tensor) -> torch.Tensor:  # (slope, intercept) of E[target | x_t]
        return torch.linalg.lstsq(design, target.double()).solution.reshape(2)

    unbiased = fitted(schedule.target(*subinterval_target(x_s, noise, a_s, s_s, a_t, s_t), t, prediction))
    biased = fitted(schedule.target(x_s, noise, t, prediction))
    teacher = AnalyticTeacher(GaussianMixture([[mu]], stds=std), schedule, prediction_type=prediction)
    at = teacher(torch.tensor([[0.0], [1.0]]), t[:2]).double().reshape(2)
    exact = torch.stack([at[1] - at[0], at[0]])
    torch.testing.assert_close(unbiased, exact, atol=0.02, rtol=0.01)
    assert (biased - exact).abs().max() > 0.05


def test_subinterval_target_is_the_papers_flow_formula_and_plain_denoising_at_clean_data():
    schedule = NoiseSchedule.flow()
    x_s, noise = torch.randn(6, 3), torch.randn(6, 3)
    t = torch.tensor([600.0, 700.0, 800.0, 900.0, 950.0, 990.0])
    a_s, s_s = alpha_sigma(schedule, 450.0)
    a_t, s_t = schedule.alpha_sigma(t)
    sigma_ts = (s_t**2 - (a_t / a_s) ** 2 * s_s**2).sqrt()[:, None]
    a_t, s_t = a_t[:, None], s_t[:, None]
    # Eq. 13 of the paper, written out: -x_s / a_s + (a_s^2 s_t + a_t s_s^2) / (a_s^2 s_{t|s}) eps.
    paper = -x_s / a_s + (a_s**2 * s_t + a_t * s_s**2) / (a_s**2 * sigma_ts) * noise
    ours = schedule.target(*subinterval_target(x_s, noise, a_s, s_s, a_t[:, 0], s_t[:, 0]), t)
    torch.testing.assert_close(ours, paper)
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    x0_target, eps_target = subinterval_target(x_s, noise, one, zero, a_t[:, 0], s_t[:, 0])
    torch.testing.assert_close(x0_target, x_s)
    torch.testing.assert_close(eps_target, noise)
    alpha_ts, sigma = subinterval_coefficients(one, zero, a_t[:, 0], s_t[:, 0])
    torch.testing.assert_close((alpha_ts, sigma), (a_t[:, 0], s_t[:, 0]))


# ----------------------------------------------------------------------------- the two losses
def test_fake_score_loss_matches_an_independent_computation():
    recipe = make_recipe("vp", phase_boundaries=(1.0, 0.5, 0.0), fake_loss_clamp=4.0)
    x_s = torch.randn(64, 2)
    loss = recipe.fake_score_loss(x_s, 0, None, torch.Generator().manual_seed(3))
    # Replay the draws: t ~ (500, 980] (phase 0 ends at s = 500, t up to 0.98 T), then eps.
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(501, 981, (64,), generator=gen)
    eps = torch.randn(64, 2, generator=gen)
    abar = recipe.schedule.alphas_cumprod
    abar_s, abar_t = abar[500], abar[t][:, None]
    var_ts = (1 - abar_t) - abar_t / abar_s * (1 - abar_s)  # sigma_t^2 - alpha_{t|s}^2 sigma_s^2
    x_t = (abar_t / abar_s).sqrt() * x_s + var_ts.sqrt() * eps
    target = ((1 - abar_t) / var_ts).sqrt() * eps  # epsilon-prediction: (sigma_t / sigma_{t|s}) eps
    weight = torch.maximum(var_ts / (1 - abar_t), torch.tensor(1 / 4.0))
    with torch.no_grad():
        pred = recipe.fake_score(x_t, t)
    expected = (weight * ((pred - target) ** 2).mean(dim=1, keepdim=True)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("normalise", [False, True])
def test_generator_gradient_is_the_kl_gradient_at_the_phase_end(normalise):
    recipe = make_recipe("flow", phase_boundaries=(1.0, 0.6, 0.0), normalise_gradient=normalise)
    x_s = torch.randn(32, 2, requires_grad=True)
    recipe.distribution_matching_loss(x_s, 0, None, torch.Generator().manual_seed(5)).backward()
    gen = torch.Generator().manual_seed(5)
    t = 600 + (980 - 600) * (1 - torch.rand(32, generator=gen))
    eps = torch.randn(32, 2, generator=gen)
    a_s, s_s = 0.4, 0.6  # flow at s = 600: sigma = 0.6, alpha = 0.4
    a_t, s_t = (1 - t / 1000)[:, None], (t / 1000)[:, None]
    a_ts = a_t / a_s
    s_ts = (s_t**2 - a_ts**2 * s_s**2).sqrt()
    x_t = a_ts * x_s.detach() + s_ts * eps
    with torch.no_grad():  # flow: eps_hat = x_t + (1 - sigma) v_hat
        eps_real = x_t + a_t * recipe.teacher(x_t, t)
        eps_fake = x_t + a_t * recipe.fake_score(x_t, t)
    if normalise:
        x_real = (x_t - s_ts**2 / s_t * eps_real) / a_ts  # E[x_s | x_t] under each score
        x_fake = (x_t - s_ts**2 / s_t * eps_fake) / a_ts
        g = (x_fake - x_real) / (x_s.detach() - x_real).abs().mean(dim=1, keepdim=True)
    else:
        g = a_ts / s_t * (eps_real - eps_fake)
    torch.testing.assert_close(x_s.grad * x_s.numel(), g, rtol=1e-4, atol=1e-5)


def test_dm_gradient_vanishes_when_the_fake_score_equals_the_teacher():
    recipe = make_recipe("vp", fake_score=None)  # a trainable copy of the teacher
    x_s = torch.randn(16, 2, requires_grad=True)
    for phase in (0, 1):
        x_s.grad = None
        recipe.distribution_matching_loss(x_s, phase, None, torch.Generator().manual_seed(phase)).backward()
        assert torch.count_nonzero(x_s.grad) == 0


def test_gradients_reach_only_the_active_expert_or_the_fake_score():
    recipe = make_recipe("flow", fake_score=mlp(3), fake_reset="initial", expert_init="student")
    experts, fake = recipe.student.experts, recipe.fake_score
    noise = torch.randn(8, 2)
    x_s = recipe.student.generate(noise, last=1, grad=True)
    recipe.distribution_matching_loss(x_s, 1, None, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in experts[1].parameters())
    untouched = [*experts[0].parameters(), *fake.parameters(), *recipe.teacher.parameters()]
    assert all(p.grad is None for p in untouched)
    experts.zero_grad(set_to_none=True)
    x_s = recipe.student.generate(noise, last=1, grad=False)
    recipe.fake_score_loss(x_s, 1, None, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None for p in fake.parameters())
    assert all(p.grad is None for p in [*experts.parameters(), *recipe.teacher.parameters()])


def test_phased_generator_steps_by_ddim_and_routes_calls_by_phase():
    schedule = NoiseSchedule.flow()
    experts = [mlp(4), mlp(5)]
    generator = PhasedGenerator(experts, schedule, [1000.0, 500.0])
    x = torch.randn(5, 2)
    with torch.no_grad():
        v0 = experts[0](x, torch.full((5,), 1000.0))
        x_half = (
            0.5 * (x - v0) + 0.5 * x
        )  # alpha x0_hat + sigma eps_hat at sigma = 0.5 (eps_hat = x at sigma 1)
        x_out = x_half - 0.5 * experts[1](x_half, torch.full((5,), 500.0))
        torch.testing.assert_close(generator.generate(x), x_out)
        t = torch.tensor([1000.0, 700.0, 500.0, 100.0, 501.0])
        routed = generator(x, t)
        expected = torch.stack(
            [experts[0 if ti > 500 else 1](x[i : i + 1], ti[None])[0] for i, ti in enumerate(t)]
        )
        torch.testing.assert_close(routed, expected)


# ----------------------------------------------------------------------------- phases and resume
class Recorder(PhasedDMD):
    """Records the loss terms per iteration and the state right after every stage change."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.terms: list[tuple[int, str, float]] = []
        self.stage_calls: list[dict] = []

    def update(self, optimizer, terms, **kwargs):
        self.terms += [(self.iteration, k, float(v.detach())) for k, v in terms.items()]
        return super().update(optimizer, terms, **kwargs)

    def on_stage_change(self, name, old, new):
        state = self.trainer.optimizers[1].state
        self.stage_calls.append({"call": (name, old, new, self.iteration), "fake_state_before": len(state)})
        super().on_stage_change(name, old, new)
        teacher = self.teacher.state_dict()
        self.stage_calls[-1]["fake_is_teacher"] = all(
            torch.equal(v, teacher[k]) for k, v in self.fake_score.model.state_dict().items()
        )
        self.stage_calls[-1]["fake_state_after"] = len(state)
        e0, e1 = (e.state_dict() for e in self.student.experts)
        self.stage_calls[-1]["expert_copied"] = all(torch.equal(v, e1[k]) for k, v in e0.items())


def make_recorder() -> Recorder:
    return Recorder(
        student=mlp(1), teacher=mlp(2), schedule=NoiseSchedule.flow(), fake_score=None,
        phase_steps=[6], fake_updates_per_generator=2, expert_init="previous",
        generator_lr=1e-2, fake_lr=1e-2, noise_seed=7,
    )  # fmt: skip


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(64, 2)), batch_size=16)


def test_stage_change_fires_once_and_resets_the_fake_score_from_the_teacher():
    recipe = make_recorder()
    L.Trainer(**quiet_trainer_kwargs(max_steps=12, limit_val_batches=0)).fit(recipe, loader())
    (call,) = recipe.stage_calls
    assert call["call"] == ("phase", 0, 1, 6)  # before iteration 6 = global step 6
    assert call["fake_state_before"] > 0 and call["fake_state_after"] == 0
    assert call["fake_is_teacher"] and call["expert_copied"]
    # Iterations 2, 5, 8, 11 update the generator (2 fake updates per generator update).
    assert [i for i, name, _ in recipe.terms if name == "dm"] == [2, 5, 8, 11]
    assert recipe.phase == 1 and recipe.iteration == 12


@pytest.mark.parametrize("stop", [4, 6, 8])
def test_resume_across_a_phase_boundary_is_exact(tmp_path, stop):
    full = make_recorder()
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    kwargs = quiet_trainer_kwargs(max_steps=12, limit_val_batches=0, default_root_dir=tmp_path)
    L.Trainer(**{**kwargs, "enable_checkpointing": True, "callbacks": [saver]}).fit(full, loader())
    resumed = make_recorder()
    L.Trainer(**{**kwargs, "default_root_dir": tmp_path / "b"}).fit(
        resumed, loader(), ckpt_path=tmp_path / f"step={stop}.ckpt"
    )
    assert resumed.terms == [row for row in full.terms if row[0] >= stop]
    # The checkpoint "step=6" is taken before iteration 6 starts, so the phase changes after resuming.
    assert [c["call"] for c in resumed.stage_calls] == ([("phase", 0, 1, 6)] if stop <= 6 else [])
    for (key, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------- real models and config
def test_tiny_unet_teacher_student_and_fake_score_train_through_the_same_code_path():
    torch.manual_seed(0)
    teacher = tiny_unet(sample_size=8, in_channels=1, block_out_channels=(8, 16), norm_num_groups=4)
    recipe = PhasedDMD(
        student=copy.deepcopy(teacher), teacher=teacher, schedule=NoiseSchedule.ddpm(), fake_score=None,
        phase_steps=[2], fake_updates_per_generator=1, generator_lr=1e-3, fake_lr=1e-3,
    )  # fmt: skip
    before = copy.deepcopy(teacher.state_dict())
    images = DataLoader(TensorDataset(torch.zeros(8, 1, 8, 8)), batch_size=2)
    L.Trainer(**quiet_trainer_kwargs(max_steps=4, limit_val_batches=0)).fit(recipe, images)
    assert {"train/dm", "train/fake"} <= set(recipe.trainer.logged_metrics)
    assert all(torch.isfinite(v) for v in recipe.trainer.logged_metrics.values())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert recipe.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)


def test_config_fast_dev_run(tmp_path, monkeypatch):
    from lightning_distill.cli import main

    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "--config", str(CONFIG), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"phase_boundaries": (1.0, 0.5)}, "phase_boundaries"),
        ({"phase_steps": [10, 20]}, "phase_steps"),
        ({"subinterval_target": "exact"}, "subinterval_target"),
        ({"teacher": AnalyticTeacher(GaussianMixture.ring(), NoiseSchedule.ddpm())}, "fake_score"),
        ({"expert_init": "teacher", "student": MLPDenoiser(dim=2, hidden=8, depth=1)}, "expert_init"),
        ({"phase_boundaries": (1.0, 0.99, 0.0)}, "timestep_limits"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        make_recipe("vp", **kwargs)


def test_classifier_free_guidance_applies_to_the_real_score_only():
    torch.manual_seed(0)
    teacher = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3)
    recipe = make_recipe(
        "vp", teacher=teacher, student=MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3),
        conditional=True, guidance_scale=3.0, null_label=3,
    )  # fmt: skip
    x_t, t, y = torch.randn(4, 2), torch.tensor([100, 200, 300, 400]), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        cond, uncond = teacher(x_t, t, y), teacher(x_t, t, torch.full((4,), 3))
        torch.testing.assert_close(recipe._real_output(x_t, t, y), uncond + 3.0 * (cond - uncond))
    x, labels = recipe.split_batch((torch.zeros(4, 2), y))
    assert labels is y


def test_validation_logs_student_teacher_and_floor_metrics_on_the_bench():
    from lightning_distill.data import GMMDataModule

    schedule = NoiseSchedule.flow()
    recipe = make_recipe(
        "flow", teacher=AnalyticTeacher(GaussianMixture.ring(), schedule), schedule=schedule,
        fake_score=mlp(3), expert_init="student", fake_reset="initial",
    )  # fmt: skip
    data = GMMDataModule("ring", num_train=64, num_val=128, batch_size=64)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, callbacks=[MixtureMetrics()]))
    trainer.fit(recipe, datamodule=data)
    logged = trainer.logged_metrics
    names = ("swd", "mmd", "mode_coverage", "mode_tv")
    assert {f"val/{k}" for k in names} | {f"val/teacher_{k}" for k in names} | {
        f"val/{k}_floor" for k in names
    } <= set(logged)
    # The untrained 2-step student is far from the ring; the 50-step exact teacher is close to it.
    assert logged["val/teacher_swd"] < 0.5 * logged["val/swd"]
