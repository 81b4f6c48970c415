"""Decoupled DMD: the CA/DM split against DMD2's gradient and against scores, gradient routing, resume, configs."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_distill.cli import main
from lightning_distill.data import DigitsDataModule, GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.gmm import AnalyticTeacher, make_mixture
from lightning_distill.losses import dmd_gradient
from lightning_distill.recipes.decoupled_dmd import (
    DecoupledDMD,
    cfg_augmentation_gradient,
    distribution_matching_gradient,
    fit_to_teacher,
)
from tests.conftest import quiet_trainer_kwargs

REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"k": 4, "radius": 2.0, "std": 0.5}
CLASSES = 4


def make_recipe(prediction_type: str = "v_prediction", **kwargs) -> DecoupledDMD:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm(beta_schedule="scaled_linear", prediction_type=prediction_type)
    teacher = AnalyticTeacher(make_mixture("ring", num_classes=CLASSES, options=OPTIONS), schedule)
    args = dict(
        num_classes=CLASSES,
        guidance_scale=3.0,
        student_init="random",
        student_prediction_type="sample",
        num_generator_steps=4,
        noise_seed=0,
    )
    args.update(kwargs)
    return DecoupledDMD(
        student=MLPDenoiser(2, 32, 1, num_classes=CLASSES),
        teacher=teacher,
        schedule=schedule,
        fake_score=MLPDenoiser(2, 32, 1, num_classes=CLASSES),
        **args,
    )


def draws(n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = 2.5 * torch.randn(n, 2, generator=gen)
    tau = torch.randint(20, 980, (n,), generator=gen)
    noise = torch.randn(n, 2, generator=gen)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    return x0, tau, noise, labels, torch.full((n,), CLASSES)


def by_hand(recipe: DecoupledDMD, x0, tau, noise, labels, null):
    """x_tau and the x0 predictions of teacher (cond, uncond) and fake score, from alpha/sigma by hand (v-prediction)."""
    alpha, sigma = (v[:, None] for v in recipe.schedule.alpha_sigma(tau))
    x_t = alpha * x0 + sigma * noise
    to_x0 = lambda v: alpha * x_t - sigma * v  # noqa: E731
    with torch.no_grad():
        return (
            to_x0(recipe.teacher(x_t, tau, labels)),
            to_x0(recipe.teacher(x_t, tau, null)),
            to_x0(recipe.fake_score.model(x_t, tau, labels)),
            (x_t, alpha, sigma),
        )


@pytest.mark.parametrize("normalise", [True, False])
def test_ca_plus_dm_with_one_tau_and_noise_is_dmd2s_gradient_with_a_cfg_real_score(normalise):
    recipe = make_recipe(normalise=normalise)
    x0, tau, noise, labels, null = draws()
    g_ca = recipe.ca_gradient(x0, tau, noise, labels, null)
    g_dm = recipe.dm_gradient(x0, tau, noise, labels, null)
    real_c, real_u, fake, _ = by_hand(recipe, x0, tau, noise, labels, null)
    real_cfg = real_u + 3.0 * (real_c - real_u)
    expected = dmd_gradient(
        fake, real_cfg, x0, normalise=normalise
    )  # DMD2: (fake - real_cfg) / mean|x0 - real_cfg|
    torch.testing.assert_close(g_ca + g_dm, expected, rtol=1e-5, atol=1e-5)
    assert g_ca.abs().sum() > 0 and g_dm.abs().sum() > 0
    # The same through the two pseudo-target losses and autograd: d(ca + dm)/dx0 = g_DMD / numel.
    x = x0.clone().requires_grad_(True)
    (recipe.ca_term(x, tau, noise, labels, null) + recipe.dm_term(x, tau, noise, labels, null)).backward()
    torch.testing.assert_close(x.grad * x0.numel(), expected, rtol=1e-5, atol=1e-5)


def test_ca_term_is_the_scaled_cfg_direction_of_the_exact_scores():
    recipe = make_recipe(normalise=True)
    x0, tau, noise, labels, null = draws()
    real_c, real_u, _, (x_t, alpha, sigma) = by_hand(recipe, x0, tau, noise, labels, null)
    gmm = recipe.teacher.gmm
    s_c = gmm.noised_score(x_t, alpha[:, 0], sigma[:, 0], labels)
    s_u = gmm.noised_score(x_t, alpha[:, 0], sigma[:, 0], None)
    # Tweedie: x0_hat = (x_t + sigma^2 s) / alpha, so x0_c - x0_u = sigma^2 / alpha (s_c - s_u).
    n = (x0 - (real_u + 3.0 * (real_c - real_u))).abs().mean(1, keepdim=True)
    expected = -(3.0 - 1.0) * sigma**2 / alpha * (s_c - s_u) / n
    torch.testing.assert_close(
        recipe.ca_gradient(x0, tau, noise, labels, null), expected, rtol=1e-4, atol=1e-5
    )
    # Descending along g_CA moves the sample towards the conditional and away from the unconditional prediction.
    assert ((real_c - real_u) * -expected).sum() > 0


def test_dm_term_matches_fake_minus_real_conditional_prediction():
    recipe = make_recipe(normalise=False)
    x0, tau, noise, labels, null = draws()
    real_c, _, fake, (x_t, alpha, sigma) = by_hand(recipe, x0, tau, noise, labels, null)
    posterior = recipe.teacher.gmm.posterior_mean(x_t, alpha[:, 0], sigma[:, 0], labels)  # E[x0 | x_t, c]
    torch.testing.assert_close(real_c, posterior, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        recipe.dm_gradient(x0, tau, noise, labels, null), fake - posterior, rtol=1e-4, atol=1e-5
    )


def test_dm_gradient_vanishes_when_the_fake_score_is_the_real_one_and_ca_when_there_is_no_guidance():
    recipe = make_recipe(guidance_scale=1.0)
    recipe.fake_score.model = copy.deepcopy(recipe.teacher)
    x0, tau, noise, labels, null = draws()
    assert recipe.dm_gradient(x0, tau, noise, labels, null).abs().max() == 0
    assert recipe.ca_gradient(x0, tau, noise, labels, null).abs().max() == 0


def test_pure_gradient_functions_on_hand_values():
    c, u = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(
        cfg_augmentation_gradient(c, u, 4.0, torch.tensor([3.0])), torch.tensor([[-1.0, 1.0]])
    )
    torch.testing.assert_close(
        distribution_matching_gradient(u, c, torch.tensor([0.0])), torch.zeros(1, 2)
    )  # 0/0 -> 0
    with pytest.raises(ValueError, match="same shape"):
        cfg_augmentation_gradient(c, torch.ones(2, 2), 2.0)


def test_constrained_renoising_is_cleaner_than_the_generator_input():
    recipe = make_recipe()
    gen = torch.Generator().manual_seed(0)
    t_gen = torch.full((4000,), 249)
    constrained = recipe.renoising_timesteps(t_gen, "constrained", gen)
    full = recipe.renoising_timesteps(t_gen, "full", gen)
    assert int(constrained.min()) >= 20 and int(constrained.max()) < 249
    assert int(full.min()) >= 20 and 900 < int(full.max()) < 980


@pytest.mark.parametrize("shared", [True, False])
def test_shared_timestep_gives_both_terms_one_tau_and_one_noise(shared, monkeypatch):
    recipe = make_recipe(shared_timestep=shared, ca_schedule="full")
    seen = {}
    for name in ("ca", "dm"):
        monkeypatch.setattr(
            recipe,
            f"{name}_term",
            lambda x0, tau, noise, *a, _n=name: seen.setdefault(_n, (tau, noise)) and x0.sum(),
        )
    x0, _, _, labels, null = draws()
    recipe.generator_terms(x0, torch.full((16,), 999), labels, null, torch.Generator().manual_seed(0))
    same = torch.equal(seen["ca"][0], seen["dm"][0]) and torch.equal(seen["ca"][1], seen["dm"][1])
    assert same is shared


def test_generator_loss_reaches_only_the_student_and_a_zero_weight_term_is_skipped():
    recipe = make_recipe(loss_weights={"dm": 0.0})
    x0, _, _, labels, null = draws()
    gen = torch.Generator().manual_seed(0)
    z, t = recipe.generator_input(torch.randn(16, 2, generator=gen), labels, gen)
    sample = recipe.student(z, t, labels)
    terms = recipe.generator_terms(sample, t, labels, null, gen)
    assert set(terms) == {"ca"}
    terms["ca"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is None for p in recipe.fake_score.parameters())
    recipe.fake_score_loss(sample, labels, gen).backward()
    assert all(p.grad is not None for p in recipe.fake_score.parameters())


def test_fit_to_teacher_makes_a_network_predict_like_the_analytic_teacher():
    recipe = make_recipe()
    gmm, schedule = recipe.teacher.gmm, recipe.schedule
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (256,), generator=gen)
    batches = [(gmm.sample(256, gen, labels), labels)]
    model = MLPDenoiser(2, 32, 1, num_classes=CLASSES)

    def gap() -> float:
        t = torch.randint(0, 1000, (256,), generator=gen)
        x_t = schedule.add_noise(batches[0][0], torch.randn(256, 2, generator=gen), t)
        with torch.no_grad():
            target = schedule.to_x0(recipe.teacher(x_t, t, labels), x_t, t)
            return float((model(x_t, t, labels) - target).square().mean())

    before = gap()
    fit_to_teacher(model, recipe.teacher, schedule, batches, 300, prediction_type="sample", generator=gen)
    assert gap() < 0.2 * before


class Record(Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.rows.append((module.iteration, float(metrics["train/fake"]), float(metrics.get("train/ca", -1))))


def test_resume_reproduces_the_uninterrupted_run_and_does_not_refit(tmp_path):
    def run(max_steps, ckpt_path=None):
        L.seed_everything(3)
        recipe = make_recipe(
            generator_update_every=2, student_init="regress", init_steps=20, max_grad_norm=1.0
        )
        record = Record()
        checkpoint = ModelCheckpoint(
            dirpath=tmp_path / f"run{max_steps}", save_last=True, every_n_train_steps=3
        )
        data = GMMDataModule(
            preset="ring",
            num_classes=CLASSES,
            options=OPTIONS,
            conditional=True,
            num_train=256,
            batch_size=32,
        )
        kwargs = quiet_trainer_kwargs(max_steps=max_steps, limit_val_batches=0, enable_checkpointing=True)
        L.Trainer(callbacks=[record, checkpoint], **kwargs).fit(recipe, datamodule=data, ckpt_path=ckpt_path)
        return record.rows, recipe

    full, full_recipe = run(12)  # 8 iterations: 12 optimizer steps with a generator update every 2nd
    first, _ = run(6)
    resumed, resumed_recipe = run(12, ckpt_path=str(tmp_path / "run6" / "last.ckpt"))
    assert [row[0] for row in full] == list(range(1, 9))
    torch.testing.assert_close(torch.tensor(first + resumed), torch.tensor(full))
    for key, value in full_recipe.student.state_dict().items():
        torch.testing.assert_close(resumed_recipe.student.state_dict()[key], value)


@pytest.mark.parametrize("cross_attention", [False, True])
def test_tiny_diffusers_unets_run_a_generator_and_a_fake_score_step(cross_attention):
    torch.manual_seed(0)

    class TextConditioned(DecoupledDMD):
        """Class labels -> a fixed "prompt embedding" (B, 3, 8); the null label's row is the empty prompt."""

        table = torch.randn(11, 3, 8)

        def conditions(self, labels):
            labels, null = super().conditions(labels)
            return self.table.to(labels.device)[labels], self.table.to(labels.device)[null]

    build = (
        (lambda: tiny_unet(8, 1, block_out_channels=(8, 16), cross_attention_dim=8))
        if cross_attention
        else (lambda: tiny_unet(8, 1, block_out_channels=(8, 16), num_classes=10))
    )
    teacher = build()
    before = copy.deepcopy(teacher.state_dict())
    recipe = (TextConditioned if cross_attention else DecoupledDMD)(
        student=build(),
        teacher=teacher,
        schedule=NoiseSchedule.ddpm(),
        num_classes=10,
        guidance_scale=4.5,
        num_generator_steps=2,
        generator_update_every=1,
        noise_seed=0,
    )
    student_before = copy.deepcopy(recipe.student.state_dict())
    torch.testing.assert_close(student_before, before)  # student_init: teacher
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=DigitsDataModule(size=8, batch_size=4))
    assert {"train/ca", "train/dm", "train/fake"} <= set(trainer.logged_metrics)
    assert any(not torch.equal(v, student_before[k]) for k, v in recipe.student.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in recipe.teacher.state_dict().items())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ca_schedule": "late"}, "ca_schedule"),
        ({"shared_timestep": True}, "shared_timestep"),
        ({"num_classes": None}, "guidance_scale"),
        ({"loss_weights": {"ca": 0.0, "dm": 0.0}}, "loss_weights"),
        ({"student_init": "teacher"}, "student_init: teacher"),
        ({"generator_timesteps": [999, 10]}, "generator_timesteps"),
    ],
)
def test_bad_options_name_their_config_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_recipe(**kwargs)


def test_config_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes/decoupled_dmd/config.yaml"),
            "--trainer.fast_dev_run=true",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.init_args.init_steps=5",
            "--data.init_args.num_val=64",
        ]
    )
