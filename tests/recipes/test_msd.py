"""MSD: routing, per-student losses against independent computations, gradient isolation, TSM, resume, configs."""

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

from lightning_distill.cli import main as cli_main
from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, tiny_unet
from lightning_distill.diffusion.fake_score import Reparameterised
from lightning_distill.diffusion.gmm import AnalyticTeacher, make_mixture
from lightning_distill.recipes.msd import MSD, RoutedDenoiser, check_partition, contiguous_partition
from tests.conftest import quiet_trainer_kwargs

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "msd"
PARTITION = [[0, 1], [2, 3], [4, 5]]


def mlp(**kwargs) -> MLPDenoiser:
    return MLPDenoiser(dim=2, hidden=16, depth=2, time_embedding_dim=8, num_classes=6, **kwargs)


def teacher() -> AnalyticTeacher:
    return AnalyticTeacher(make_mixture("ring", num_classes=6, options={"k": 12}), NoiseSchedule.ddpm())


def make_recipe(**kwargs) -> MSD:
    torch.manual_seed(0)
    defaults = dict(
        student=[mlp() for _ in PARTITION],
        teacher=teacher(),
        partition=PARTITION,
        fake_score=mlp(),
        student_init="random",
        student_prediction_type="sample",
        real_guidance_scale=1.0,
        generator_update_every=2,
        noise_seed=0,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )
    defaults.update(kwargs)
    return MSD(**defaults)


def owners_of(labels: torch.Tensor) -> list[int]:
    return [next(k for k, block in enumerate(PARTITION) if int(c) in block) for c in labels]


def tiny_data(labels=None) -> GMMDataModule | DataLoader:
    if labels is None:
        return GMMDataModule(
            "ring", num_classes=6, options={"k": 12}, conditional=True, num_train=64, num_val=64, num_test=64,
            batch_size=16,
        )  # fmt: skip
    y = torch.tensor(labels).repeat(32)[:32]
    return DataLoader(TensorDataset(torch.randn(32, 2), y), batch_size=16)


# --------------------------------------------------------------------------- partitions and routing
def test_contiguous_partition_covers_every_class_once():
    assert contiguous_partition(8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert contiguous_partition(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="num_students"):
        contiguous_partition(3, 4)


@pytest.mark.parametrize(
    "partition, count, message",
    [
        ([[0, 1], [1, 2]], 2, "Class 1 is in `partition\\[0\\]` and `partition\\[1\\]`"),
        ([[0, 1], [3]], 2, "Classes \\[2\\] belong to no student"),
        ([[0, 1], [2, 3]], 3, "2 blocks for 3 students"),
        ([[0, 1], []], 2, "`partition\\[1\\]` is empty"),
        ([[0, -1], [1]], 2, "negative class -1"),
    ],
)
def test_bad_partitions_are_rejected_with_the_config_key(partition, count, message):
    with pytest.raises(ValueError, match=message):
        check_partition(partition, count)
    with pytest.raises(ValueError, match="model\\.init_args\\.partition"):
        make_recipe(student=[mlp() for _ in range(count)], partition=partition)


def test_router_sends_each_sample_to_its_owner_only():
    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.seen = inner, []

        def forward(self, x, t, y):
            self.seen.append(y.clone())
            return self.inner(x, t, y)

    torch.manual_seed(0)
    experts = [Recording(mlp()) for _ in PARTITION]
    router = RoutedDenoiser(experts, PARTITION)
    x, t, y = torch.randn(40, 2), torch.randint(0, 1000, (40,)), torch.randint(0, 6, (40,))
    out = router(x, t, y)
    for k, expert in enumerate(experts):
        assert set(torch.cat(expert.seen).tolist()) <= set(PARTITION[k])
        assert len(expert.seen) == 1
    expected = torch.stack([experts[k].inner(x[i : i + 1], t[i : i + 1], y[i : i + 1])[0] for i, k in
                            enumerate(owners_of(y))])  # fmt: skip
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="null label"):
        router(x[:2], t[:2], torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="integer class labels"):
        router(x[:2], t[:2], None)


# --------------------------------------------------------------------------- losses and gradient isolation
def test_dm_loss_is_the_sum_of_per_student_means_and_each_student_gets_only_its_samples():
    recipe = make_recipe(gan=False)
    x_t, t = torch.randn(12, 2), torch.full((12,), 999)
    y = torch.tensor([0, 1, 0, 2, 3, 2, 2, 0, 1, 1, 0, 2])  # student 2 (classes 4, 5) has no sample
    x0 = recipe.generate(x_t, t, y)
    loss = recipe.distribution_matching_loss(x0, y, None, torch.Generator().manual_seed(4))
    grads = torch.autograd.grad(
        loss, [p for s in recipe.router.experts for p in s.parameters()], allow_unused=True
    )

    # Independent: each student alone on its own samples, with the same g, and the mean over its samples.
    g = recipe.distribution_matching_gradient(x0.detach(), y, None, torch.Generator().manual_seed(4))
    owners = torch.tensor(owners_of(y))
    expected_loss, n = 0.0, 0
    for k, student in enumerate(recipe.router.experts):
        index = (owners == k).nonzero(as_tuple=True)[0]
        params = list(student.parameters())
        if index.numel() == 0:
            assert all(grad is None for grad in grads[n : n + len(params)])
        else:
            x0_k = student(x_t[index], t[index], y[index])  # the student predicts x0
            loss_k = 0.5 * ((x0_k - (x0_k - g[index]).detach()) ** 2).mean()
            expected_loss += loss_k.detach()
            for grad, ref in zip(grads[n : n + len(params)], torch.autograd.grad(loss_k, params)):
                torch.testing.assert_close(grad, ref)
        n += len(params)
    torch.testing.assert_close(loss.detach(), expected_loss)


def test_dm_gradient_is_zero_when_each_fake_score_equals_the_teacher():
    recipe = make_recipe(
        teacher=mlp().requires_grad_(False), fake_score=None, gan=False
    )  # copies of the teacher
    y = torch.tensor([0, 2, 4, 5])
    x0 = recipe.generate(torch.randn(4, 2), torch.full((4,), 999), y)
    loss = recipe.distribution_matching_loss(x0, y, None, torch.Generator().manual_seed(0))
    loss.backward()  # zero up to round-off: the teacher sees the whole batch, each copy only its own samples
    assert loss.item() < 1e-12
    assert all(p.grad is not None and p.grad.abs().max() < 1e-6 for p in recipe.student.parameters())
    assert (
        recipe.distribution_matching_gradient(x0, y, None, torch.Generator().manual_seed(0)).abs().max()
        < 1e-5
    )


def test_fake_score_loss_is_each_fake_scores_own_epsilon_mse():
    recipe = make_recipe(gan=False)
    x0, y = torch.randn(9, 2, requires_grad=True), torch.tensor([0, 0, 0, 0, 0, 0, 2, 4, 5])
    loss = recipe.fake_score_loss(x0, y, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    t, noise = torch.randint(0, 1000, (9,), generator=gen), torch.randn(9, 2, generator=gen)
    abar = recipe.schedule.alphas_cumprod[t][:, None]
    x_t = abar.sqrt() * x0.detach() + (1 - abar).sqrt() * noise
    owners, expected = torch.tensor(owners_of(y)), 0.0
    for k, fake in enumerate(recipe.fake_score.model.experts):
        index = owners == k
        expected += (
            (fake(x_t[index], t[index], y[index]) - noise[index]) ** 2
        ).mean()  # student 0's 6 samples weigh 1
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert x0.grad is None


def test_shared_fake_score_takes_the_batch_mean():
    recipe = make_recipe(fake_score_sharing="shared", gan=False)
    assert isinstance(recipe.fake_score.model, MLPDenoiser)
    x0, y = torch.randn(5, 2), torch.tensor([0, 0, 0, 2, 5])
    loss = recipe.fake_score_loss(x0, y, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    t, noise = torch.randint(0, 1000, (5,), generator=gen), torch.randn(5, 2, generator=gen)
    x_t = recipe.schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(loss, ((recipe.fake_score(x_t, t, y) - noise) ** 2).mean())


def test_each_sample_is_judged_by_its_own_students_fake_score_and_head():
    recipe = make_recipe(gan_max_timestep=0)  # clean inputs at t = 0
    real, fake, y = torch.randn(6, 2), torch.randn(6, 2), torch.tensor([0, 3, 5, 1, 1, 2])
    loss, real_logits, fake_logits = recipe.guidance_cls_loss(
        real, fake, y, y, torch.Generator().manual_seed(0)
    )
    # Independent: read each expert's last block by hand and apply that student's head.
    logits, x, yy = [], torch.cat([real, fake]), torch.cat([y, y])
    for i, k in enumerate(owners_of(yy)):
        expert, captured = recipe.fake_score.model.experts[k], {}
        handle = expert.blocks[-1].register_forward_hook(lambda m, a, out, box=captured: box.update(h=out))
        expert(x[i : i + 1], torch.zeros(1, dtype=torch.long), yy[i : i + 1])
        handle.remove()
        logits.append(recipe.gan_head[k](captured["h"])[0])
    logits = torch.stack(logits)
    torch.testing.assert_close(torch.cat([real_logits, fake_logits]), logits)
    per_sample = F.softplus(-logits[:6]) + F.softplus(logits[6:])
    owners = torch.tensor(owners_of(y))
    torch.testing.assert_close(loss, sum(per_sample[owners == k].mean() for k in range(3)))


def test_teacher_score_matching_regresses_the_teachers_x0_per_student():
    recipe = make_recipe(tsm_steps=5, gan=False)
    real, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 4, 4, 5])
    loss = recipe.teacher_score_matching_loss(real, y, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    t, noise = torch.randint(0, 1000, (6,), generator=gen), torch.randn(6, 2, generator=gen)
    abar = recipe.schedule.alphas_cumprod[t][:, None].double()
    x_t = (abar.sqrt() * real.double() + (1 - abar).sqrt() * noise.double()).float()
    with (
        torch.no_grad()
    ):  # the student predicts x0: the target is the teacher's x0 = (x_t - sigma eps) / alpha
        x0_teacher = (
            (x_t.double() - (1 - abar).sqrt() * recipe.teacher(x_t, t, y).double()) / abar.sqrt()
        ).float()
    owners = torch.tensor(owners_of(y))
    expected = sum(((recipe.router.experts[k](x_t[owners == k], t[owners == k], y[owners == k]) - x0_teacher[owners == k]) ** 2)
                   .mean() for k in range(3))  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_a_copied_x0_student_is_read_as_eps_by_its_fake_score():
    recipe = make_recipe(tsm_steps=5, gan=False)  # students predict x0, the schedule (fake scores) eps
    recipe.end_teacher_score_matching()
    assert all(isinstance(f, Reparameterised) for f in recipe.fake_score.model.experts)
    x_t, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 3, 4, 5])
    for t in (1, 100, 500, 900, 999):
        tt = torch.full((6,), t)
        expected = recipe.schedule.to_eps(recipe.student(x_t, tt, y), x_t, tt, "sample")
        torch.testing.assert_close(recipe.fake_score(x_t, tt, y), expected)
    # the same type on both sides: nothing to convert, plain copies
    same = make_recipe(tsm_steps=5, gan=False, student_prediction_type="epsilon")
    same.end_teacher_score_matching()
    assert not any(isinstance(f, Reparameterised) for f in same.fake_score.model.experts)
    torch.testing.assert_close(same.fake_score(x_t, tt, y), same.student(x_t, tt, y))


def test_after_tsm_each_fake_score_predicts_the_teachers_eps():
    """Issue 25: after TSM of x0 students, the fake scores must predict eps close to the teacher's at every t."""
    torch.manual_seed(0)
    gmm = make_mixture("ring", num_classes=6, options={"k": 12, "std": 0.15})
    schedule = NoiseSchedule.ddpm(beta_schedule="scaled_linear")
    net = functools.partial(MLPDenoiser, dim=2, hidden=32, depth=2, time_embedding_dim=16, num_classes=6)
    recipe = make_recipe(student=net(), num_students=3, fake_score=net(), teacher=AnalyticTeacher(gmm, schedule),
                         tsm_steps=200, gan=False)  # fmt: skip
    optimizer = torch.optim.AdamW(recipe.student.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        y = torch.randint(0, 6, (256,), generator=gen)
        loss = recipe.teacher_score_matching_loss(gmm.sample(256, gen, labels=y).float(), y, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recipe.end_teacher_score_matching()
    y = torch.randint(0, 6, (2000,), generator=gen)
    x0 = gmm.sample(2000, gen, labels=y).float()
    with torch.no_grad():
        for t, tolerance in ((100, 0.9), (500, 0.6), (900, 0.15)):
            tt = torch.full((2000,), t)
            x_t = schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), tt)
            eps_teacher = recipe.teacher(x_t, tt, y)
            error = (recipe.fake_score(x_t, tt, y) - eps_teacher).pow(2).mean().sqrt()
            misread = (
                (recipe.student(x_t, tt, y) - eps_teacher).pow(2).mean().sqrt()
            )  # x0 read as eps (the bug)
            assert error < tolerance and error < misread / 2, (t, float(error), float(misread))


def test_a_copy_that_cannot_be_converted_is_refused():
    flow_teacher = AnalyticTeacher(
        make_mixture("ring", num_classes=6, options={"k": 12}), NoiseSchedule.flow()
    )
    with pytest.raises(ValueError, match="'sample' cannot be read as 'flow'.*t = 0"):
        make_recipe(teacher=flow_teacher, tsm_steps=5, gan=False)
    make_recipe(teacher=flow_teacher, tsm_steps=5, gan=False, tsm_init_fake_score=False)  # nothing copied


# --------------------------------------------------------------------------- training with a Trainer
class GradientSpy(Callback):
    """Which networks hold gradients at each optimizer step (grads cleared every batch)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, bool]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.zero_grad(set_to_none=True)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        def has(module):
            return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

        groups = {f"student{k}": s for k, s in enumerate(pl_module.router.experts)}
        groups.update({f"fake{k}": f for k, f in enumerate(pl_module.fake_score.model.experts)})
        groups.update({f"head{k}": h for k, h in enumerate(pl_module.gan_head)})
        self.steps.append((trainer.optimizers.index(optimizer), {name: has(m) for name, m in groups.items()}))
        assert all(p.grad is None for p in pl_module.teacher.parameters())


def test_a_batch_of_one_partition_trains_only_that_students_networks():
    recipe = make_recipe(teacher=mlp().requires_grad_(False))
    before = copy.deepcopy(recipe.state_dict())
    spy = GradientSpy()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=2, callbacks=[spy]))
    trainer.fit(recipe, train_dataloaders=tiny_data(labels=[2, 3]))  # classes of student 1 only
    assert [index for index, _ in spy.steps] == [0, 1, 1]
    for _, groups in spy.steps:
        assert {name for name, on in groups.items() if on} <= {"student1", "fake1", "head1"}
    assert spy.steps[0][1]["student1"] and spy.steps[1][1]["fake1"] and spy.steps[1][1]["head1"]
    after = recipe.state_dict()
    changed = {key.split(".")[0] + "." + ".".join(key.split(".")[1:4]) for key in after
               if not torch.equal(after[key], before[key])}  # fmt: skip
    assert all(".1." in key or key.endswith(".1") for key in changed), changed
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("teachers."))


def test_tsm_stage_trains_students_then_fake_scores_start_from_them():
    recipe = make_recipe(tsm_steps=2)
    fakes_before = copy.deepcopy(recipe.fake_score.state_dict())
    states = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            states.append((pl_module.iteration, copy.deepcopy(pl_module.student.state_dict()),
                           copy.deepcopy(pl_module.fake_score.state_dict())))  # fmt: skip

    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=3, callbacks=[Spy()]))
    trainer.fit(recipe, datamodule=tiny_data())
    assert [s[0] for s in states] == [1, 2, 3]
    torch.testing.assert_close(states[1][2], fakes_before)  # TSM leaves the fake scores alone
    assert "train/tsm" in trainer.logged_metrics and "train/dm" in trainer.logged_metrics
    # Iteration 2 starts distribution matching from fake scores copied from the TSM students (then one fake step).
    copied = {
        f"model.experts.{k.split('.')[1]}.model.{k.split('.', 2)[2]}": v for k, v in states[1][1].items()
    }
    assert any(not torch.equal(v, fakes_before[k]) for k, v in copied.items())
    recipe.end_teacher_score_matching()
    torch.testing.assert_close(  # x0 students sit in their eps fake scores behind a conversion (`.model`)
        recipe.fake_score.state_dict(),
        {
            f"model.experts.{k.split('.')[1]}.model.{k.split('.', 2)[2]}": v
            for k, v in recipe.student.state_dict().items()
        },
    )


def test_unet2d_class_conditional_students_from_the_teacher_run_training_and_sampling():
    torch.manual_seed(0)
    unet = functools.partial(
        tiny_unet, sample_size=8, in_channels=1, block_out_channels=(8, 16), num_classes=4
    )
    teacher_net = unet()
    recipe = MSD(
        student=unet(), teacher=teacher_net, num_students=2, real_guidance_scale=2.0, generator_update_every=1,
        noise_seed=0, optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )  # fmt: skip
    assert recipe.router.partition == ((0, 1), (2, 3))
    for expert in (*recipe.router.experts, *recipe.fake_score.model.experts):
        torch.testing.assert_close(expert.state_dict(), teacher_net.state_dict())  # student_init="teacher"
    data = TensorDataset(torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 1, 2]))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=2))
    trainer.fit(recipe, train_dataloaders=DataLoader(data, batch_size=2))
    assert all(
        torch.isfinite(trainer.logged_metrics[f"train/{k}"])
        for k in ("dm", "gen_cls", "fake", "guidance_cls")
    )
    assert recipe.sample(3, torch.Generator().manual_seed(0), torch.tensor([0, 2, 3])).shape == (3, 1, 8, 8)


class RecordLosses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        name = "train/tsm" if pl_module.iteration <= pl_module.tsm_steps else "train/fake"
        self.values.append(float(trainer.callback_metrics[name]))


def test_resume_across_the_tsm_boundary_equals_the_uninterrupted_run(tmp_path):
    def run(epochs, ckpt_path=None):
        L.seed_everything(3)
        recipe = make_recipe(tsm_steps=3, generator_update_every=3, noise_seed=None)
        record = RecordLosses()
        checkpoint = ModelCheckpoint(dirpath=tmp_path / f"run{epochs}", save_last=True)
        trainer = L.Trainer(**quiet_trainer_kwargs(
            max_epochs=epochs, limit_train_batches=4, limit_val_batches=0, enable_checkpointing=True,
            callbacks=[record, checkpoint], log_every_n_steps=1,
        ))  # fmt: skip
        trainer.fit(recipe, datamodule=tiny_data(), ckpt_path=ckpt_path)
        return recipe, record

    full, full_record = run(2)
    _, first = run(1)
    resumed, second = run(2, ckpt_path=str(tmp_path / "run1" / "last.ckpt"))
    assert resumed.iteration == full.iteration == 8
    torch.testing.assert_close(torch.tensor(first.values + second.values), torch.tensor(full_record.values))
    for name in ("student", "fake_score", "gan_head"):
        torch.testing.assert_close(getattr(resumed, name).state_dict(), getattr(full, name).state_dict())


# --------------------------------------------------------------------------- sampling, arguments and configs
def test_sample_routes_each_label_and_draws_labels_by_class_weight():
    recipe = make_recipe()
    y = torch.tensor([5, 0, 3, 3])
    out = recipe.sample(4, torch.Generator().manual_seed(1), y)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([recipe.router.experts[k](noise[i : i + 1], torch.tensor([999]), y[i : i + 1])[0]
                            for i, k in enumerate(owners_of(y))])  # fmt: skip
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(recipe.class_weights(), torch.full((6,), 1 / 6, dtype=torch.float64))
    gen = torch.Generator().manual_seed(2)
    labels = torch.multinomial(recipe.class_weights(), 4, replacement=True, generator=gen)
    torch.testing.assert_close(
        recipe.sample(4, torch.Generator().manual_seed(2)), recipe.sample(4, gen, labels)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fake_score": [mlp(), mlp()]}, "list of 3 nn.Modules"),
        ({"fake_score_sharing": "pooled"}, "model.init_args.fake_score_sharing"),
        ({"tsm_steps": -1}, "model.init_args.tsm_steps"),
        (
            {"tsm_steps": 5, "fake_score": MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=6)},
            "tsm_init_fake_score: false",
        ),
        ({"student_init": "teacher"}, "model.init_args.student_init: random"),
        ({"generator_update_every": 0}, "model.init_args.generator_update_every"),
        ({"num_students": 2}, "model.init_args.num_students"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        make_recipe(**kwargs)


@pytest.mark.parametrize("config", ["config.yaml", "single.yaml"])
def test_configs_run_with_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", str(RECIPE_DIR / config), "--trainer.fast_dev_run=true",
              "--trainer.enable_progress_bar=false"])  # fmt: skip
