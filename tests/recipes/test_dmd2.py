"""DMD2: each loss against an independent computation, gradient routing, the fake score's target, resume, configs."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks import MixtureMetrics
from lightning_distill.cli import main as cli_main
from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, few_step_sample, tiny_unet
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture
from lightning_distill.recipes.dmd2 import DMD2
from tests.conftest import quiet_trainer_kwargs

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "dmd2" / "config.yaml"


def mlp(dim: int = 2, **kwargs) -> MLPDenoiser:
    return MLPDenoiser(dim=dim, hidden=16, depth=2, time_embedding_dim=8, **kwargs)


def make_recipe(**kwargs) -> DMD2:
    torch.manual_seed(0)
    defaults = dict(
        student=mlp(),
        teacher=AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()),
        fake_score=mlp(),
        student_init="random",
        student_prediction_type="sample",
        real_guidance_scale=1.0,
        generator_update_every=2,
        noise_seed=0,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )
    defaults.update(kwargs)
    return DMD2(**defaults)


def tiny_gmm_data(**kwargs) -> GMMDataModule:
    return GMMDataModule("ring", num_train=64, num_val=64, num_test=64, batch_size=16, **kwargs)


# --------------------------------------------------------------------------- the generator's gradient
def test_generator_gradient_on_x0_is_g_over_its_element_count():
    """Autograd through L_DM gives g / x0.numel() with g built by hand (CFG on the real score only)."""
    torch.manual_seed(0)
    schedule = NoiseSchedule.ddpm()
    teacher, fake = mlp(num_classes=3).requires_grad_(False), mlp(num_classes=3)
    recipe = make_recipe(
        teacher=teacher, fake_score=fake, real_guidance_scale=2.5, gan=False, schedule=schedule
    )
    x0 = torch.randn(4, 2, requires_grad=True)
    y, null = torch.tensor([0, 1, 2, 0]), torch.full((4,), 3)
    recipe.distribution_matching_loss(x0, y, null, torch.Generator().manual_seed(7)).backward()

    # Independent: the same draws (timesteps, then noise), the DDPM formulas, then autograd of ½‖x − sg(x − g)‖².
    gen = torch.Generator().manual_seed(7)
    t = torch.randint(20, 981, (4,), generator=gen)
    noise = torch.randn(4, 2, generator=gen)
    abar = schedule.alphas_cumprod[t][:, None].double()
    x_t = (abar.sqrt() * x0.detach().double() + (1 - abar).sqrt() * noise.double()).float()
    with torch.no_grad():
        eps_fake = fake(x_t, t, y).double()
        eps_real = teacher(x_t, t, null) + 2.5 * (teacher(x_t, t, y) - teacher(x_t, t, null))
    x0_fake = (x_t.double() - (1 - abar).sqrt() * eps_fake) / abar.sqrt()
    x0_real = (x_t.double() - (1 - abar).sqrt() * eps_real.double()) / abar.sqrt()
    g = (x0_fake - x0_real) / (x0.detach().double() - x0_real).abs().mean(dim=1, keepdim=True)
    reference = x0.detach().clone().requires_grad_(True)
    (0.5 * ((reference - (reference - g.float()).detach()) ** 2).mean()).backward()

    factor = x0.numel()  # the element-count factor of the "mean" reduction: 4 samples x 2 dims
    torch.testing.assert_close(x0.grad, reference.grad)
    torch.testing.assert_close(x0.grad * factor, g.float(), rtol=1e-4, atol=1e-5)
    assert g.abs().sum() > 0


def test_normaliser_off_gives_the_raw_difference_of_x0_predictions():
    torch.manual_seed(0)
    recipe = make_recipe(teacher=mlp().requires_grad_(False), normalise_dmd_gradient=False, gan=False)
    x0 = torch.randn(3, 2)
    g = recipe.distribution_matching_gradient(x0, None, None, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    t, noise = torch.randint(20, 981, (3,), generator=gen), torch.randn(3, 2, generator=gen)
    x_t = recipe.schedule.add_noise(x0, noise, t)
    with torch.no_grad():
        diff = recipe.schedule.to_x0(recipe.fake_score(x_t, t), x_t, t) - recipe.schedule.to_x0(
            recipe.teacher(x_t, t), x_t, t
        )
    torch.testing.assert_close(g, diff)


def test_dm_gradient_is_zero_when_the_fake_score_equals_the_teacher():
    torch.manual_seed(0)
    teacher = mlp()
    recipe = make_recipe(student=mlp(), teacher=teacher, fake_score=None, gan=False)  # a copy of the teacher
    x0 = recipe.generate(torch.randn(8, 2), torch.full((8,), 999))
    loss = recipe.distribution_matching_loss(x0, None, None, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and p.grad.abs().max() == 0 for p in recipe.student.parameters())


# --------------------------------------------------------------------------- the fake score and the GAN
def test_fake_score_loss_is_the_epsilon_mse_on_detached_samples():
    recipe = make_recipe()
    x0 = torch.randn(5, 2, requires_grad=True)
    loss = recipe.fake_score_loss(x0, None, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    t, noise = torch.randint(0, 1000, (5,), generator=gen), torch.randn(5, 2, generator=gen)
    abar = recipe.schedule.alphas_cumprod[t][:, None]
    expected = ((recipe.fake_score(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t) - noise) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert x0.grad is None
    assert all(p.grad is not None for p in recipe.fake_score.parameters())


def test_fake_score_learns_the_score_of_the_student_samples():
    """Trained alone on fixed 1-D "student" samples, the fake score's ε approaches the exact ε of their distribution."""
    schedule = NoiseSchedule.ddpm()
    student_samples = GaussianMixture([[1.5]], stds=0.5).sample(4096, torch.Generator().manual_seed(0))
    exact = AnalyticTeacher(
        GaussianMixture([[float(student_samples.mean())]], stds=float(student_samples.std())), schedule
    )
    teacher = AnalyticTeacher(
        make_mixture("line_1d"), schedule
    )  # the data the student should match, not its own
    recipe = make_recipe(
        student=mlp(1), teacher=teacher, fake_score=MLPDenoiser(dim=1, hidden=32, depth=2), gan=False
    )

    def eps_errors(model: torch.nn.Module) -> torch.Tensor:
        gen, errors = torch.Generator().manual_seed(5), []
        for t in (50, 200, 400, 700):
            x0 = exact.gmm.sample(1024, gen)
            x_t = recipe.schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
            with torch.no_grad():
                errors.append(
                    (model(x_t, torch.full((1024,), t)) - exact(x_t, torch.full((1024,), t)))
                    .square()
                    .mean()
                    .sqrt()
                )
        return torch.stack(errors)

    before = eps_errors(recipe.fake_score)
    opt = torch.optim.AdamW(recipe.fake_score.trainable_parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        batch = student_samples[torch.randint(0, 4096, (256,), generator=gen)]
        opt.zero_grad()
        recipe.fake_score_loss(batch, None, gen).backward()
        opt.step()
        sched.step()
    after, teacher_error = eps_errors(recipe.fake_score), eps_errors(teacher)
    assert (after < 0.25 * before).all(), (before, after)
    assert (after < 0.3 * teacher_error).all(), (
        after,
        teacher_error,
    )  # it tracks the student, not the teacher
    assert after.max() < 0.1


def test_gan_losses_are_softplus_of_the_head_on_hooked_fake_score_features():
    recipe = make_recipe(gan_max_timestep=500)
    real, fake = torch.randn(3, 2), torch.randn(4, 2, requires_grad=True)
    loss, real_logits, fake_logits = recipe.guidance_cls_loss(
        real, fake, None, None, torch.Generator().manual_seed(2)
    )
    # Independent: noise both at t ~ U[0, 500), run the fake score, read its last block by hand, apply the head.
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([real, fake.detach()])
    t, noise = torch.randint(0, 500, (7,), generator=gen), torch.randn(7, 2, generator=gen)
    captured = {}
    handle = recipe.fake_score.model.blocks[-1].register_forward_hook(
        lambda m, a, out: captured.update(h=out)
    )
    recipe.fake_score(recipe.schedule.add_noise(x, noise, t), t)
    handle.remove()
    logits = recipe.gan_head(captured["h"])
    torch.testing.assert_close(torch.cat([real_logits, fake_logits]), logits)
    torch.testing.assert_close(loss, F.softplus(-logits[:3]).mean() + F.softplus(logits[3:]).mean())
    loss.backward()
    assert fake.grad is None and all(p.grad is not None for p in recipe.gan_head.parameters())

    x0 = torch.randn(4, 2, requires_grad=True)
    gen_loss = recipe.generator_gan_loss(x0, None, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    t, noise = torch.randint(0, 500, (4,), generator=gen), torch.randn(4, 2, generator=gen)
    handle = recipe.fake_score.model.blocks[-1].register_forward_hook(
        lambda m, a, out: captured.update(h=out)
    )
    recipe.fake_score(recipe.schedule.add_noise(x0.detach(), noise, t), t)
    handle.remove()
    torch.testing.assert_close(gen_loss, F.softplus(-recipe.gan_head(captured["h"])).mean())
    gen_loss.backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0  # the GAN gradient reaches the generator's samples


class RecordTimesteps(torch.nn.Module):
    """A denoiser that records the timesteps it is called with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seen = inner, []  # `model`: feature_path looks through it

    def forward(self, x, t, cond=None):
        self.seen.append(torch.as_tensor(t).reshape(-1).clone())
        return self.model(x, t, cond)


def test_timestep_ranges_of_the_three_losses():
    teacher = RecordTimesteps(AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()))
    recipe = make_recipe(
        teacher=teacher, fake_score=RecordTimesteps(mlp()), gan_max_timestep=300, gan_channels=16
    )
    gen, x0 = torch.Generator().manual_seed(0), torch.randn(4000, 2)
    recipe.distribution_matching_gradient(x0, None, None, gen)
    dm = torch.cat(teacher.seen)
    assert (int(dm.min()), int(dm.max())) == (20, 980)  # U[0.02 T, 0.98 T], both ends included
    recipe.fake_score.model.seen.clear()
    recipe.fake_score_loss(x0, None, gen)
    fake = torch.cat(recipe.fake_score.model.seen)
    assert (int(fake.min()), int(fake.max())) == (0, 999)
    recipe.fake_score.model.seen.clear()
    recipe.discriminator_logits(x0, None, gen)
    gan = torch.cat(recipe.fake_score.model.seen)
    assert (int(gan.min()), int(gan.max())) == (0, 299)


# --------------------------------------------------------------------------- few-step generation
def test_backward_simulation_input_is_the_inference_chain_at_step_k():
    recipe = make_recipe(denoising_timesteps=[999, 749, 499, 249])
    inputs = []
    handle = recipe.student.register_forward_pre_hook(
        lambda m, args: inputs.append((args[0].clone(), args[1].clone()))
    )
    samples = recipe.sample(6, torch.Generator().manual_seed(11))
    handle.remove()
    # `sample` is the inference path: few_step_sample from noise drawn first from the same generator.
    gen = torch.Generator().manual_seed(11)
    expected = few_step_sample(
        recipe.student,
        recipe.schedule,
        torch.randn(6, 2, generator=gen),
        recipe.denoising_timesteps,
        generator=gen,
        prediction_type="sample",
    )
    torch.testing.assert_close(samples, expected)
    seen = set()
    for iteration in range(40):
        recipe.iteration = iteration
        k = int(torch.randint(4, (1,), generator=recipe._shared_generator()).item())
        x_t, t = recipe.generator_input(torch.zeros(6, 2), None, torch.Generator().manual_seed(11))
        torch.testing.assert_close(x_t, inputs[k][0])
        assert t.tolist() == [recipe.denoising_timesteps[k]] * 6
        seen.add(k)
    assert seen == {0, 1, 2, 3}


def test_without_backward_simulation_the_input_is_noised_real_data_and_pure_noise_at_t_max():
    recipe = make_recipe(denoising_timesteps=[999, 500], backward_simulation=False)
    real = torch.full((200, 2), 3.0)
    x_t, t = recipe.generator_input(real, None, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(200, 2, generator=gen)
    index = torch.randint(2, (200,), generator=gen)
    assert t.tolist() == torch.tensor([999, 500])[index].tolist()
    torch.testing.assert_close(x_t[t == 999], noise[t == 999])
    torch.testing.assert_close(x_t[t == 500], recipe.schedule.add_noise(real, noise, 500)[t == 500])


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
        index = trainer.optimizers.index(optimizer)
        self.steps.append((index, {name: has(m) for name, m in groups.items()}))
        assert all(p.grad is None for p in pl_module.teacher.parameters())


def test_generator_every_ratio_iterations_and_gradients_reach_only_their_networks():
    recipe = make_recipe(teacher=mlp().requires_grad_(False), generator_update_every=3)
    teacher_state = copy.deepcopy(recipe.teacher.state_dict())
    spy = GradientSpy()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=4, callbacks=[spy]))
    trainer.fit(recipe, datamodule=tiny_gmm_data())
    assert [index for index, _ in spy.steps] == [0, 1, 1, 1, 0, 1]  # generator at iterations 0 and 3
    generator_steps = [groups for index, groups in spy.steps if index == 0]
    fake_steps = [groups for index, groups in spy.steps if index == 1]
    assert all(g == {"student": True, "fake_score": False, "head": False} for g in generator_steps)
    assert fake_steps[1] == {
        "student": False,
        "fake_score": True,
        "head": True,
    }  # iteration 1: no generator turn
    assert all(g["fake_score"] and g["head"] for g in fake_steps)
    assert recipe.iteration == 4
    assert all(torch.equal(v, teacher_state[k]) for k, v in recipe.teacher.state_dict().items())
    assert {"train/dm", "train/gen_cls", "train/fake", "train/guidance_cls"} <= set(trainer.logged_metrics)


def test_unet2d_condition_models_run_one_step_and_four_step_training():
    torch.manual_seed(0)
    teacher = tiny_unet(sample_size=8, in_channels=4, block_out_channels=(8, 16), cross_attention_dim=8)
    student = tiny_unet(sample_size=8, in_channels=4, block_out_channels=(8, 16), cross_attention_dim=8)
    data = TensorDataset(torch.randn(4, 4, 8, 8), torch.randn(4, 3, 8))  # (latents, text embeddings)
    for steps in (None, [999, 499]):
        recipe = DMD2(
            student=copy.deepcopy(student),
            teacher=teacher,
            denoising_timesteps=steps,
            real_guidance_scale=4.0,
            generator_update_every=2,
            noise_seed=0,
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        )
        torch.testing.assert_close(
            recipe.student.state_dict(), teacher.state_dict()
        )  # student_init="teacher"
        before = copy.deepcopy(recipe.student.state_dict())
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=2))
        trainer.fit(recipe, train_dataloaders=DataLoader(data, batch_size=2))
        metrics = trainer.logged_metrics
        assert all(torch.isfinite(metrics[f"train/{k}"]) for k in ("dm", "gen_cls", "fake", "guidance_cls"))
        assert any(not torch.equal(v, before[k]) for k, v in recipe.student.state_dict().items())
        assert recipe.sample(2, torch.Generator().manual_seed(0), torch.randn(2, 3, 8)).shape == (2, 4, 8, 8)


class RecordLosses(Callback):
    def __init__(self) -> None:
        self.fake: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.fake.append(float(trainer.callback_metrics["train/fake"]))


def test_resume_with_two_optimizers_equals_the_uninterrupted_run(tmp_path):
    def run(epochs, ckpt_path=None):
        L.seed_everything(3)
        recipe = make_recipe(generator_update_every=3, noise_seed=None)  # the seed comes from seed_everything
        record = RecordLosses()
        checkpoint = ModelCheckpoint(dirpath=tmp_path / f"run{epochs}", save_last=True)
        trainer = L.Trainer(
            **quiet_trainer_kwargs(
                max_epochs=epochs,
                limit_train_batches=4,
                limit_val_batches=0,
                enable_checkpointing=True,
                callbacks=[record, checkpoint],
                log_every_n_steps=1,
            )
        )
        trainer.fit(recipe, datamodule=tiny_gmm_data(), ckpt_path=ckpt_path)
        return recipe, record

    full, full_record = run(2)
    _, first = run(1)
    resumed, second = run(2, ckpt_path=str(tmp_path / "run1" / "last.ckpt"))
    assert resumed.iteration == full.iteration == 8
    torch.testing.assert_close(torch.tensor(first.fake + second.fake), torch.tensor(full_record.fake))
    for name in ("student", "fake_score", "gan_head"):
        torch.testing.assert_close(getattr(resumed, name).state_dict(), getattr(full, name).state_dict())


def test_validation_logs_sample_metrics_with_the_floor_and_the_teacher_once():
    recipe = make_recipe(eval_teacher_steps=5)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(max_epochs=2, limit_train_batches=2, callbacks=[MixtureMetrics()])
    )
    seen = []

    class Spy(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            seen.append(set(trainer.callback_metrics))

    trainer.callbacks.append(Spy())
    trainer.fit(recipe, datamodule=tiny_gmm_data())
    metrics = trainer.callback_metrics
    for name in ("swd", "mmd", "mode_coverage", "mode_tv"):
        assert (
            f"val/{name}" in metrics and f"val/{name}_floor" in metrics and f"val/teacher_{name}" in metrics
        )
    assert 0.0 <= float(metrics["val/mode_coverage"]) <= 1.0


# --------------------------------------------------------------------------- arguments and the config
@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"generator_update_every": 0}, "model.init_args.generator_update_every"),
        ({"min_step_percent": 0.9, "max_step_percent": 0.5}, "model.init_args.min_step_percent"),
        ({"loss_weights": {"gen_cls": -1.0}}, "model.init_args.loss_weights"),
        ({"denoising_timesteps": [249, 999]}, "model.init_args.denoising_timesteps"),
        ({"student_init": "teacher"}, "model.init_args.student_init: random"),
        ({"fake_score": None}, "model.init_args.fake_score"),
        ({"schedule": NoiseSchedule.ddpm(prediction_type="v_prediction")}, "model.init_args.schedule"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_recipe(**kwargs)


def test_cfg_without_labels_asks_for_scale_one():
    teacher = AnalyticTeacher(make_mixture("ring", num_classes=8), NoiseSchedule.ddpm())
    recipe = make_recipe(teacher=teacher, real_guidance_scale=1.75)
    with pytest.raises(ValueError, match="real_guidance_scale: 1.0"):
        recipe.null_condition(None)
    assert recipe.null_condition(torch.tensor([1, 2])).tolist() == [8, 8]  # the analytic teacher's null class


def test_config_runs_with_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(
        ["fit", "--config", str(CONFIG), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    )


def test_a_subclass_overriding_one_equation_method_is_what_trains():
    class MyDMD2(DMD2):
        calls = 0

        def distribution_matching_loss(self, x0, cond, null_cond, generator=None):
            MyDMD2.calls += 1
            return 0.5 * x0.square().mean()  # pull the samples to the origin instead

    recipe = make_recipe(gan=False)
    mine = MyDMD2(**{**dict(
        student=mlp(), teacher=AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()), fake_score=mlp(),
        student_init="random", student_prediction_type="sample", real_guidance_scale=1.0, generator_update_every=2,
        noise_seed=0, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    ), "gan": False})  # fmt: skip
    mine.load_state_dict(recipe.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=3))
    trainer.fit(mine, datamodule=tiny_gmm_data())
    assert MyDMD2.calls == 2  # generator turns at iterations 0 and 2
    assert (
        torch.isfinite(trainer.logged_metrics["train/dm"])
        and "train/loss_generator" in trainer.logged_metrics
    )
