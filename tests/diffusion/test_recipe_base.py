"""DiffusionDistillationModule: the seeded generators, the checkpointed counter, the validation loss, the errors.

The toy-bench metrics are callbacks now: tests/callbacks/test_evaluation.py.
"""

from __future__ import annotations

import functools

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, NoiseSchedule, one_step_generate
from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture
from lightning_distill.diffusion.metrics import (
    mode_assignment,
    sample_metrics,
)
from lightning_distill.diffusion.plumbing import derive_seed
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule
from lightning_distill.diffusion.sampling import randn_like
from tests.conftest import quiet_trainer_kwargs


class Toy(DiffusionDistillationModule):
    """A one-step recipe whose only update is the fake score's denoising loss; records every draw."""

    loss_terms = ("fake",)
    checkpoint_key = "toy"

    def __init__(self, **kwargs) -> None:
        torch.manual_seed(0)
        defaults = dict(
            student=MLPDenoiser(dim=2, hidden=8, depth=1),
            teacher=AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm()),
            optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        )
        super().__init__(**{**defaults, **kwargs})
        self.fake_score = self.build_fake_score(MLPDenoiser(dim=2, hidden=8, depth=1))
        self.draws: list[float] = []

    def sample(self, n, generator, cond=None):
        noise = self.initial_noise(n, generator)
        return one_step_generate(self.student, self.schedule, noise, self.schedule.max_timestep, cond)

    def training_step(self, batch, batch_idx):
        _, opt_fake = self.optimizers()
        x, cond = self.split_batch(batch)
        self.record_sample_shape(x)
        gen = self.iteration_generator()
        noise = randn_like(x, gen)
        t = self.timesteps_like(x, 0, self.schedule.num_train_timesteps, gen)
        loss = self.fake_score.denoising_loss(x, t, noise)
        self.update(opt_fake, {"fake": loss}, turn="fake_score")
        self.draws.append(float(noise[0, 0]))
        self.iteration += 1
        return {"fake": loss.detach()}


def gmm_data(**kwargs) -> GMMDataModule:
    return GMMDataModule("ring", num_train=48, num_val=96, num_test=32, batch_size=16, **kwargs)


# --------------------------------------------------------------------------- randomness
def test_iteration_generators_depend_only_on_seed_iteration_rank_and_stream():
    module = Toy(noise_seed=5)

    def first(gen: torch.Generator) -> torch.Tensor:
        return torch.randn(4, generator=gen)

    reference = first(torch.Generator().manual_seed(derive_seed([5, 3, 0])))
    module.iteration = 3
    torch.testing.assert_close(first(module.iteration_generator()), reference)
    torch.testing.assert_close(first(module.iteration_generator(3)), reference)
    assert not torch.equal(first(module.iteration_generator(4)), reference)
    other_stream = first(torch.Generator().manual_seed(derive_seed([5, 3, 0, 7])))
    torch.testing.assert_close(first(module.iteration_generator(stream=(7,))), other_stream)

    class OneWord(Toy):
        seed_words = 1

    one = OneWord(noise_seed=5)
    assert one.iteration_seed(3) == int(np.random.SeedSequence([5, 3, 0]).generate_state(1)[0])


def test_noise_seed_defaults_to_the_global_seed_at_construction():
    L.seed_everything(123)
    module = Toy(noise_seed=None)  # Toy calls torch.manual_seed(0) before the base reads the seed
    assert module.noise_seed == 0
    assert Toy(noise_seed=2**64 - 1).noise_seed == (2**64 - 1) % 2**63


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_state_round_trips_and_reads_older_entries():
    module = Toy(noise_seed=11)
    module.iteration, module.sample_shape = 7, (2,)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["toy"] == {"iteration": 7, "noise_seed": 11, "sample_shape": (2,)}
    restored = Toy(noise_seed=0)
    restored.on_load_checkpoint(checkpoint)
    assert (restored.iteration, restored.noise_seed, restored.sample_shape) == (7, 11, (2,))
    older = Toy(noise_seed=3)
    older.load_checkpoint_state({"iteration": 2})  # an entry without seed or shape keeps the module's
    assert (older.iteration, older.noise_seed, older.sample_shape) == (2, 3, None)


class Draws(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["fake"]))


def test_resume_continues_the_counter_and_the_noise_exactly(tmp_path):
    def fit(epochs: int, ckpt_path=None):
        module, record = Toy(noise_seed=9), Draws()
        saver = ModelCheckpoint(dirpath=tmp_path / f"run{epochs}", save_last=True)
        kwargs = quiet_trainer_kwargs(
            max_epochs=epochs, limit_val_batches=0, enable_checkpointing=True, callbacks=[record, saver]
        )
        L.Trainer(**kwargs).fit(module, datamodule=gmm_data(), ckpt_path=ckpt_path)
        return module, record

    full, full_record = fit(2)  # 3 iterations per epoch
    _, first = fit(1)
    resumed, second = fit(2, ckpt_path=str(tmp_path / "run1" / "last.ckpt"))
    assert full.iteration == resumed.iteration == 6
    assert resumed.draws == full.draws[3:]
    torch.testing.assert_close(torch.tensor(first.losses + second.losses), torch.tensor(full_record.losses))


# --------------------------------------------------------------------------- validation without callbacks
def test_validation_logs_the_fake_score_loss_on_the_batch_and_no_bench_metrics():
    module = Toy(noise_seed=4)
    data = gmm_data()
    metrics = L.Trainer(**quiet_trainer_kwargs()).validate(module, datamodule=data, verbose=False)[0]
    assert set(metrics) == {"val/fake_score_loss"}  # the bench metrics are callbacks now
    expected, sizes = [], []
    for batch_idx, (x, _) in enumerate(data.val_dataloader()):
        gen = torch.Generator().manual_seed(4 + batch_idx)
        x0 = x.float()
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        alpha, sigma = module.schedule.alpha_sigma(t)
        x_t = alpha[:, None] * x0 + sigma[:, None] * noise
        with torch.no_grad():
            expected.append((module.fake_score(x_t, t) - noise).square().mean())
        sizes.append(x0.shape[0])
    mean = sum(e * n for e, n in zip(expected, sizes)) / sum(sizes)
    torch.testing.assert_close(torch.tensor(metrics["val/fake_score_loss"]), mean.float())


def test_validation_of_image_free_batches_scores_the_students_samples():
    module = Toy(noise_seed=2)

    def split_batch(batch):  # conditions only, as SwiftBrush reads its prompts
        return None, batch[1]

    module.split_batch = split_batch
    module.fake_score = module.build_fake_score(MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=3))
    module.sample = lambda n, generator, cond=None: torch.zeros(n, 2) + cond[:, None].float()
    losses = module.validation_losses((torch.zeros(3, 2), torch.tensor([0, 1, 2])), batch_idx=0)
    assert set(losses) == {"fake_score_loss_generated"} and losses["fake_score_loss_generated"].ndim == 0
    assert Toy().validation_losses(torch.zeros(2, 2), 0).keys() == {"fake_score_loss"}


def test_an_unconditional_fake_score_is_scored_without_the_batch_labels():
    module, x = Toy(), torch.randn(4, 2)  # Toy's fake score is an MLPDenoiser without num_classes
    labelled = module.validation_losses((x, torch.tensor([0, 1, 0, 1])), 0)
    torch.testing.assert_close(labelled, module.validation_losses(x, 0))


def test_validation_without_a_fake_score_logs_nothing():
    module = Toy()
    del module.fake_score
    assert module.validation_losses(torch.zeros(2, 2), 0) == {}


def test_sample_metrics_on_class_counts_samples_on_a_mode_of_their_label():
    gmm = GaussianMixture.ring(k=4, radius=4.0, std=0.25, num_classes=4)
    x = torch.cat([gmm.means.float(), torch.zeros(1, 2)])  # one point per mode, then one off-mode point
    labels = torch.tensor([0, 1, 0, 3, 2])
    metrics = sample_metrics(x, x, labels, gmm)
    modes = mode_assignment(x, gmm)
    by_hand = sum(int(m < 4 and int(gmm.class_of_mode[m]) == int(y)) for m, y in zip(modes, labels)) / 5
    torch.testing.assert_close(metrics["on_class"], torch.tensor(by_hand))
    assert "on_class" not in sample_metrics(x, x, None, gmm)


def test_predict_draws_one_seeded_sample_per_batch_row():
    module = Toy(noise_seed=3)
    out = module.predict_step((torch.zeros(5, 2), torch.zeros(5, dtype=torch.long) - 1), batch_idx=2)
    torch.testing.assert_close(out, module.sample(5, torch.Generator().manual_seed(5)))


def test_label_prior_is_the_mixtures_class_mass_and_labels_follow_it():
    gmm = GaussianMixture.ring(k=8, num_classes=4)
    module = Toy(teacher=AnalyticTeacher(gmm, NoiseSchedule.ddpm()))
    prior = module.label_prior(4)
    expected = torch.zeros(4, dtype=torch.float64).index_add_(0, gmm.class_of_mode, gmm.weights.double())
    torch.testing.assert_close(prior, expected)
    torch.testing.assert_close(module.label_prior(3), torch.full((3,), 1 / 3, dtype=torch.float64))
    labels = module.draw_labels(4000, torch.Generator().manual_seed(0), 4)
    assert labels.shape == (4000,) and set(labels.tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- batches, conditions, models
def test_split_batch_reads_tensors_tuples_and_mappings():
    module, x = Toy(), torch.randn(3, 2)
    assert module.split_batch(x) == (x, None)
    y = torch.tensor([0, 2, 1])
    assert module.split_batch((x, y))[1] is y
    assert module.split_batch((x, torch.full((3,), -1)))[1] is None  # unlabelled
    assert module.split_batch({"x": x, "cond": y})[1] is y
    with pytest.raises(ValueError, match="mixes unlabelled"):
        module.split_batch((x, torch.tensor([0, -1, 1])))
    with pytest.raises(ValueError, match="override `Toy.split_batch`"):
        module.split_batch("not a batch")


def test_null_condition_uses_the_null_label_the_teacher_or_zeros():
    labelled = Toy(teacher=AnalyticTeacher(make_mixture("ring", num_classes=8), NoiseSchedule.ddpm()))
    assert labelled.null_condition(torch.tensor([1, 2])).tolist() == [8, 8]
    assert Toy(null_label=5).null_condition(torch.tensor([1])).tolist() == [5]
    torch.testing.assert_close(Toy().null_condition(torch.ones(2, 3, 4)), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="model.init_args.null_label"):
        Toy().null_condition(torch.tensor([1]))


def test_sample_shape_comes_from_the_batch_or_the_models():
    module = Toy()
    assert module.resolve_sample_shape() == (2,)  # the analytic teacher's mixture
    module.record_sample_shape(torch.zeros(4, 3, 5))
    module.record_sample_shape(torch.zeros(4, 7))  # known shapes are kept
    assert module.resolve_sample_shape() == (3, 5)

    class Opaque(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return x

    unknown = Toy(student=Opaque(), teacher=Opaque())
    with pytest.raises(ValueError, match="model.init_args.sample_shape"):
        unknown.resolve_sample_shape()


def test_fake_score_and_teacher_initialisation_errors_name_the_config_key():
    module = Toy()
    with pytest.raises(ValueError, match="model.init_args.fake_score"):
        module.build_fake_score(None)  # the analytic teacher has no weights to copy
    with pytest.raises(ValueError, match="model.init_args.student_init: random"):
        module.init_from_teacher(module.student)
    mlp = Toy(teacher=MLPDenoiser(dim=2, hidden=8, depth=1))
    copy = mlp.build_fake_score(None)
    assert all(p.requires_grad for p in copy.parameters())
    assert all(not p.requires_grad for p in mlp.teacher.parameters())
    mlp.init_from_teacher(mlp.student)
    torch.testing.assert_close(mlp.student.state_dict(), mlp.teacher.state_dict())


def test_schedule_errors():
    with pytest.raises(TypeError, match="model.init_args.schedule"):
        Toy(schedule="ddpm")
    teacher = AnalyticTeacher(make_mixture("ring"), NoiseSchedule.ddpm())
    with pytest.raises(ValueError, match="model.init_args.schedule"):
        Toy(teacher=teacher, schedule=NoiseSchedule.ddpm(prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="eval_teacher_steps"):
        Toy(eval_teacher_steps=0)
    with pytest.raises(NotImplementedError, match="sample"):
        DiffusionDistillationModule.sample(Toy(), 2, torch.Generator())
