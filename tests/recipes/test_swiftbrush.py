"""SwiftBrush: losses against independent formulas, gradient routing, UNet2DConditionModel path, resume, config."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_distill.callbacks import MixtureMetrics
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture
from lightning_distill.recipes.swiftbrush import ConditionDataModule, ResidualScore, SwiftBrush
from tests.conftest import quiet_trainer_kwargs

K = 4  # classes of the bench mixture; label K is the null label


def bench_recipe(**kwargs) -> SwiftBrush:
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()  # Stable Diffusion's scaled_linear betas
    options = dict(
        student=MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=K),
        teacher=AnalyticTeacher(GaussianMixture.ring(k=8, num_classes=K), NoiseSchedule.ddpm()),
        schedule=schedule,
        fake_score_mode="residual",
        fake_score=MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=K),
        student_init="random",
        null_condition=K,
        noise_seed=0,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    options.update(kwargs)
    return SwiftBrush(**options)


def unet_recipe(**kwargs) -> SwiftBrush:
    torch.manual_seed(0)
    teacher = tiny_unet(
        sample_size=8, in_channels=4, block_out_channels=(8, 16), cross_attention_dim=16, norm_num_groups=4
    )
    student = tiny_unet(
        sample_size=8, in_channels=4, block_out_channels=(8, 16), cross_attention_dim=16, norm_num_groups=4
    )
    return SwiftBrush(student=student, teacher=teacher, lora_rank=4, lora_alpha=6.0, noise_seed=0, **kwargs)


def test_one_step_sample_uses_the_schedules_terminal_alpha():
    recipe = bench_recipe()
    abar_T = float(recipe.schedule.scheduler.alphas_cumprod[999])
    assert abs(abar_T - 0.0047) < 1e-4  # the constant the official code hard-codes for SD
    z, eps_hat, y = torch.randn(5, 2), torch.randn(5, 2), torch.arange(5) % K

    class Constant(torch.nn.Module):
        def forward(self, x, t, c):
            assert int(t[0]) == 999 and torch.equal(c, y)
            return eps_hat

    recipe.student = Constant()
    expected = (z - (1 - abar_T) ** 0.5 * eps_hat) / abar_T**0.5
    torch.testing.assert_close(recipe.generate(z, y), expected)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_a_student_predicting_another_type_is_converted_through_the_schedule(prediction_type):
    recipe = bench_recipe(student_prediction_type=prediction_type)
    abar_T = float(recipe.schedule.scheduler.alphas_cumprod[999])
    z, out, y = torch.randn(5, 2), torch.randn(5, 2), torch.arange(5) % K

    class Constant(torch.nn.Module):
        def forward(self, x, t, c):
            return out

    recipe.student = Constant()
    alpha, sigma = abar_T**0.5, (1 - abar_T) ** 0.5
    expected = out if prediction_type == "sample" else alpha * z - sigma * out  # x0 = alpha z - sigma v
    torch.testing.assert_close(recipe.generate(z, y), expected)
    assert recipe.student_prediction_type == prediction_type
    assert bench_recipe().student_prediction_type is None  # the paper's: the schedule's (eps)


def test_vsd_loss_matches_an_independent_computation():
    recipe = bench_recipe(guidance_scale=3.0)
    with torch.no_grad():
        recipe.fake_score.model.gate.fill_(0.5)  # make the fake differ from the teacher
    x0 = torch.randn(6, 2, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    state = recipe._rng().get_state()
    loss = recipe.vsd_loss(x0, y)
    loss.backward()

    gen = torch.Generator().manual_seed(0)
    gen.set_state(state)
    t = torch.randint(20, 981, (6,), generator=gen)
    noise = torch.randn(6, 2, generator=gen)
    abar = recipe.schedule.scheduler.alphas_cumprod[t].float()[:, None]
    x_t = abar.sqrt() * x0.detach() + (1 - abar).sqrt() * noise
    null = torch.full((6,), K)

    def guided(model):
        uncond, cond = model(x_t, t, null), model(x_t, t, y)
        return uncond + 3.0 * (cond - uncond)

    with torch.no_grad():
        fake = guided(
            lambda x, s, c: recipe.teacher(x, s, c) + 0.5 * recipe.fake_score.model.correction(x, s, c)
        )
        g = (1 - abar) * (guided(recipe.teacher) - fake)
    torch.testing.assert_close(loss, 0.5 * g.pow(2).mean())
    torch.testing.assert_close(x0.grad, g / x0.numel())


def test_vsd_gradient_vanishes_when_the_fake_score_is_the_teacher():
    recipe = bench_recipe()  # residual fake score: the gate starts at 0
    x0 = torch.randn(8, 2, requires_grad=True)
    recipe.vsd_loss(x0, torch.arange(8) % K).backward()
    assert float(x0.grad.abs().max()) == 0.0


def test_without_the_weight_the_gradient_is_larger_by_one_over_sigma_squared():
    x0, y = torch.randn(6, 2), torch.arange(6) % K
    losses = {}
    for weighting in ("sigma_squared", "none"):
        recipe = bench_recipe(vsd_weighting=weighting)
        with torch.no_grad():
            recipe.fake_score.model.gate.fill_(1.0)
        losses[weighting] = recipe.vsd_loss(x0, y)
    assert losses["none"] > losses["sigma_squared"] > 0


def test_fake_score_loss_is_alpha_squared_weighted_eps_mse_with_null_conditions():
    recipe = bench_recipe(condition_dropout=1.0)  # every condition dropped
    x0 = torch.randn(5, 2)
    state = recipe._rng().get_state()
    loss = recipe.fake_score_loss(x0, torch.arange(5) % K)

    gen = torch.Generator().manual_seed(0)
    gen.set_state(state)
    t = torch.randint(0, 1000, (5,), generator=gen)
    noise = torch.randn(5, 2, generator=gen)
    abar = recipe.schedule.scheduler.alphas_cumprod[t].float()
    x_t = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * noise
    pred = recipe.fake_score(x_t, t, torch.full((5,), K))
    expected = (abar * (pred - noise).pow(2).mean(dim=1)).mean()
    torch.testing.assert_close(loss, expected)


def test_fake_score_moves_from_the_teacher_towards_the_score_of_the_student_samples():
    recipe = bench_recipe(condition_dropout=0.0)
    optimizer = torch.optim.Adam(recipe.fake_score.trainable_parameters(), lr=3e-3)
    student_mixture = GaussianMixture.ring(
        k=8, radius=2.5, std=0.3, num_classes=K
    )  # what the "student" samples
    student_score = AnalyticTeacher(student_mixture, recipe.schedule)
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(512) % K
    x_t = recipe.schedule.add_noise(
        student_mixture.sample(512, gen, labels=y), torch.randn(512, 2, generator=gen), 400
    )

    def error() -> float:
        with torch.no_grad():
            return float(
                (recipe.fake_score(x_t, torch.tensor(400), y) - student_score(x_t, 400, y)).pow(2).mean()
            )

    before = error()  # the fake score starts as the teacher: the score of the data, not of the samples
    for _ in range(100):
        labels = torch.randint(0, K, (128,))
        loss = recipe.fake_score_loss(student_mixture.sample(128, labels=labels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.5 * before


def test_gradients_reach_the_student_then_the_fake_score_and_never_the_teacher():
    recipe = unet_recipe()
    cond = torch.randn(2, 3, 16)
    recipe.null_cond = torch.zeros(1, 3, 16)
    x0 = recipe.generate(torch.randn(2, 4, 8, 8), cond)
    recipe.vsd_loss(x0, cond).backward()
    assert all(p.grad is not None for p in recipe.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in recipe.fake_score.parameters())
    recipe.student.zero_grad(set_to_none=True)
    recipe.fake_score_loss(x0.detach(), cond).backward()
    lora = recipe.fake_score.trainable_parameters()
    assert lora and all("lora_" in n for n, p in recipe.fake_score.named_parameters() if p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for p in recipe.student.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_lora_fake_score_starts_equal_to_the_teacher_so_the_vsd_gradient_is_zero():
    recipe = unet_recipe(guidance_scale=4.5)
    recipe.null_cond = torch.zeros(1, 3, 16)
    x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
    recipe.vsd_loss(x0, torch.randn(2, 3, 16)).backward()
    torch.testing.assert_close(x0.grad, torch.zeros_like(x0))


def test_unet2dcondition_models_train_one_step_and_the_teacher_is_untouched():
    recipe = unet_recipe(optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    teacher = copy.deepcopy(recipe.teacher.state_dict())
    student = copy.deepcopy(recipe.student.state_dict())
    torch.testing.assert_close(student, teacher)  # student_init="teacher"
    lora = [p.detach().clone() for p in recipe.fake_score.trainable_parameters()]
    data = ConditionDataModule(embedding_shape=(3, 16), num_train=4, num_val=2, batch_size=2)
    # 2 iterations: the first student update is zero (the LoRA fake score starts equal to the teacher)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=4, limit_val_batches=0))
    trainer.fit(recipe, datamodule=data)
    assert all(torch.equal(v, teacher[k]) for k, v in recipe.teacher.state_dict().items())
    assert any(not torch.equal(v, student[k]) for k, v in recipe.student.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(lora, recipe.fake_score.trainable_parameters()))
    assert {"train/vsd", "train/fake_score"} <= set(trainer.logged_metrics)
    assert recipe.sample(3, torch.Generator().manual_seed(0)).shape == (3, 4, 8, 8)


class _Losses(Callback):
    def __init__(self) -> None:
        self.values: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.values.append((float(metrics["train/vsd"]), float(metrics["train/fake_score"])))


def _fit(recipe, iterations, tmp_path, ckpt=None, record=None):
    """Fit ``iterations`` iterations (2 optimizer steps each), checkpointing after iteration 3."""
    L.seed_everything(0)
    data = ConditionDataModule(num_classes=K, num_train=40, num_val=8, batch_size=8)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / f"run{iterations}", save_last=True, every_n_train_steps=6)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(
            max_steps=2 * iterations,
            limit_val_batches=0,
            enable_checkpointing=True,
            callbacks=[record, checkpoint],
        )
    )
    torch.randn(100)  # the global random state is not where the recipe's noise comes from
    trainer.fit(recipe, datamodule=data, ckpt_path=ckpt)


def test_resume_with_two_optimizers_matches_an_uninterrupted_run(tmp_path: Path):
    whole, first, second = _Losses(), _Losses(), _Losses()
    _fit(bench_recipe(), 8, tmp_path, record=whole)  # 8 iterations = 16 optimizer steps, across 2 epochs
    _fit(bench_recipe(), 3, tmp_path, record=first)
    _fit(bench_recipe(), 8, tmp_path, ckpt=str(tmp_path / "run3" / "last.ckpt"), record=second)
    assert len(whole.values) == 8 and (len(first.values), len(second.values)) == (3, 5)
    torch.testing.assert_close(torch.tensor(first.values + second.values), torch.tensor(whole.values))


def test_checkpoints_leave_out_the_lora_base_and_restore_it(tmp_path: Path):
    recipe = unet_recipe()
    checkpoint = {"state_dict": recipe.state_dict()}
    recipe.on_save_checkpoint(checkpoint)
    saved = checkpoint["state_dict"]
    assert any("lora_" in k for k in saved) and not any(
        k.startswith("fake_score.") and "lora_" not in k for k in saved
    )
    restored = unet_recipe()
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])


def test_validation_logs_bench_metrics_floor_and_teacher_once():
    recipe = bench_recipe(eval_steps=4)
    data = ConditionDataModule(num_classes=K, num_train=16, num_val=64, batch_size=16)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(max_steps=2, limit_val_batches=2, callbacks=[MixtureMetrics()])
    )
    trainer.fit(recipe, datamodule=data)
    metrics = trainer.logged_metrics
    for name in ("swd", "mmd", "mode_coverage", "swd_floor", "teacher_swd", "teacher_mode_coverage"):
        assert f"val/{name}" in metrics
    assert float(metrics["val/swd_floor"]) < float(metrics["val/teacher_swd"]) + 1.0


def test_condition_datamodule_serves_conditions_only(tmp_path: Path):
    labels = ConditionDataModule(num_classes=3, num_train=12, batch_size=4)
    labels.setup()
    batch = next(iter(labels.train_dataloader()))
    assert batch.shape == (4,) and batch.dtype == torch.long and int(batch.max()) < 3
    torch.save(
        {"prompt_embeds": torch.randn(6, 2, 5), "null_embeds": torch.zeros(1, 2, 5)}, tmp_path / "e.pt"
    )
    stored = ConditionDataModule(embeddings_path=str(tmp_path / "e.pt"), num_val=2, batch_size=4)
    stored.setup()
    assert next(iter(stored.train_dataloader())).shape == (4, 2, 5)
    assert stored.null_condition.shape == (1, 2, 5) and len(stored.val_dataloader().dataset) == 2
    with pytest.raises(ValueError, match="exactly one of"):
        ConditionDataModule(num_classes=3, embedding_shape=(2, 5))


def test_image_batches_are_refused_and_bad_arguments_name_the_config_key():
    recipe = bench_recipe()
    with pytest.raises(ValueError, match="image-free"):
        recipe.training_step((torch.randn(4, 2), torch.zeros(4, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="model.init_args.student_init"):
        bench_recipe(student_init="teacher")
    with pytest.raises(ValueError, match="fake_score_mode: residual"):
        bench_recipe(fake_score_mode="lora", fake_score=None)
    with pytest.raises(ValueError, match="model.init_args.fake_score"):
        bench_recipe(fake_score=None)
    with pytest.raises(ValueError, match="min_step"):
        bench_recipe(min_step=500, max_step=400)
    with pytest.raises(ValueError, match="vsd_weighting"):
        bench_recipe(vsd_weighting="snr")
    with pytest.raises(ValueError, match="teacher's schedule"):
        bench_recipe(schedule=NoiseSchedule.ddpm(beta_schedule="linear"))
    with pytest.raises(ValueError, match="model.init_args.student_prediction_type"):
        bench_recipe(student_prediction_type="x0")
    with pytest.raises(
        ValueError, match="copies a teacher that predicts 'epsilon' into a student read as 'sample'"
    ):
        unet_recipe(student_prediction_type="sample")


def test_residual_score_trains_only_its_correction_and_gate():
    base = MLPDenoiser(dim=2, hidden=8, depth=1)
    score = ResidualScore(base.requires_grad_(False), MLPDenoiser(dim=2, hidden=8, depth=1))
    assert "base" not in dict(score.named_modules())
    score(torch.randn(4, 2), torch.tensor(3)).sum().backward()
    assert score.gate.grad is not None and all(p.grad is None for p in base.parameters())


def test_config_runs_with_fast_dev_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning_distill.cli import main

    config = Path(__file__).resolve().parents[2] / "recipes" / "swiftbrush" / "config.yaml"
    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    )
