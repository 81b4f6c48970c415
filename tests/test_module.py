"""The DistillationModule contract: frozen teachers, named loss terms, checkpoints, errors."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_distill import DistillationModule
from lightning_distill.data import DigitsDataModule
from lightning_distill.losses import kd_loss
from lightning_distill.models import SmallCNN
from tests.conftest import quiet_trainer_kwargs


class TinyKD(DistillationModule):
    loss_terms = ("kd", "ce")

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self.student(x)
        with torch.no_grad():
            t_logits = self.teacher(x)
        return self.log_losses({"kd": kd_loss(logits, t_logits), "ce": F.cross_entropy(logits, y)})


def make_module(**kwargs) -> TinyKD:
    torch.manual_seed(0)
    teacher = SmallCNN(width=8, depth=1)
    student = SmallCNN(width=4, depth=1)
    return TinyKD(student=student, teacher=teacher, **kwargs)


class RecordLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_teacher_is_frozen_and_stays_in_eval_mode():
    module = make_module()
    module.train()
    assert module.student.training
    assert not module.teacher.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert {id(p) for p in module.trainable_parameters()} == {id(p) for p in module.student.parameters()}


def test_teacher_unchanged_and_outside_optimizer_after_fit():
    module = make_module()
    before = copy.deepcopy(module.teacher.state_dict())
    seen = {}

    class Inspect(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["teacher_training"] = pl_module.teacher.training
            seen["opt_ids"] = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}

    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=4, callbacks=[Inspect()]))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # bit-identical, BN running stats included
    assert seen["teacher_training"] is False
    assert not seen["opt_ids"] & {id(p) for p in module.teacher.parameters()}


def test_log_losses_weighs_and_sums_terms():
    module = make_module(loss_weights={"ce": 0.25})
    terms = {"kd": torch.tensor(2.0, requires_grad=True), "ce": torch.tensor(4.0, requires_grad=True)}
    out = module.log_losses(terms)
    torch.testing.assert_close(out["loss"], torch.tensor(2.0 * 1.0 + 4.0 * 0.25))
    out["loss"].backward()
    torch.testing.assert_close(terms["ce"].grad, torch.tensor(0.25))


def test_unknown_loss_weight_is_rejected_with_the_known_terms():
    with pytest.raises(ValueError, match=r"unknown term 'kld'.*\['kd', 'ce'\]"):
        make_module(loss_weights={"kld": 1.0})
    with pytest.raises(ValueError, match="must be a number >= 0"):
        make_module(loss_weights={"kd": -1.0})


def test_undeclared_term_in_training_step_is_rejected():
    module = make_module()
    with pytest.raises(ValueError, match="not declared"):
        module.log_losses({"mse": torch.tensor(1.0)})


def test_teacher_and_teachers_together_are_rejected():
    with pytest.raises(ValueError, match="either `teacher` or `teachers`"):
        TinyKD(student=nn.Linear(2, 2), teacher=nn.Linear(2, 2), teachers=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="needs a teacher"):
        TinyKD(student=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="`student` must be an nn.Module"):
        TinyKD(student="resnet", teacher=nn.Linear(2, 2))


def test_optimizer_holding_teacher_parameters_is_refused():
    class Leaky(TinyKD):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    module = Leaky(student=SmallCNN(width=4, depth=1), teacher=SmallCNN(width=4, depth=1))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1))
    with pytest.raises(RuntimeError, match="frozen module"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))


def test_checkpoint_leaves_teacher_out_and_records_its_source(tmp_path):
    module = make_module()
    module.teachers[0].distill_source = "unit-test teacher"
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, default_root_dir=tmp_path))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert not any(k.startswith("teachers.") for k in ckpt["state_dict"])
    assert any(k.startswith("student.") for k in ckpt["state_dict"])
    meta = ckpt["lightning_distill"]
    assert meta["teacher_sources"] == ["unit-test teacher"]
    assert meta["teachers_saved"] is False and len(meta["teacher_fingerprints"]) == 1

    # Loadable (weights_only) with a teacher given again; the student weights come back.
    fresh = make_module()
    fresh.teachers[0].load_state_dict(module.teacher.state_dict())
    loaded = TinyKD.load_from_checkpoint(
        path, student=SmallCNN(width=4, depth=1), teacher=fresh.teacher, weights_only=True
    )
    for key, value in module.student.state_dict().items():
        torch.testing.assert_close(loaded.student.state_dict()[key], value)


def test_loading_with_a_different_teacher_warns(tmp_path):
    module = make_module()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="teachers differ"):
        TinyKD.load_from_checkpoint(
            path, student=SmallCNN(width=4, depth=1), teacher=SmallCNN(width=8, depth=1)
        )


def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    def run(max_steps, ckpt_path=None, record=None):
        L.seed_everything(7)
        module = make_module()
        callbacks = [record] if record else []
        checkpoint = ModelCheckpoint(
            dirpath=tmp_path / f"run{max_steps}", save_last=True, every_n_train_steps=3
        )
        trainer = L.Trainer(
            **quiet_trainer_kwargs(
                max_steps=max_steps, enable_checkpointing=True, callbacks=[*callbacks, checkpoint]
            )
        )
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, shift=1), ckpt_path=ckpt_path)

    full = RecordLosses()
    run(6, record=full)
    first = RecordLosses()
    run(3, record=first)
    resumed = RecordLosses()
    run(6, ckpt_path=str(tmp_path / "run3" / "last.ckpt"), record=resumed)
    assert len(full.losses) == 6 and len(resumed.losses) == 3
    torch.testing.assert_close(torch.tensor(first.losses + resumed.losses), torch.tensor(full.losses))


def test_validation_logs_student_and_teacher_metrics_once():
    module = make_module()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2, limit_train_batches=2))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    metrics = trainer.logged_metrics
    assert {"val/acc", "val/ce", "train/kd", "train/ce", "train/loss"} <= set(metrics)
    assert "val/teacher_acc" in metrics
    assert module._teacher_metrics_pending["val"] is False


class TwoTimeScale(DistillationModule):
    """A critic updated every step and a generator every `ratio` steps (manual optimization)."""

    loss_terms = ("critic", "gen")

    def __init__(self, ratio: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.ratio = ratio
        self.critic = nn.Linear(10, 1)
        self.updates = {"critic": 0, "gen": 0}
        self.iteration = 0

    def training_step(self, batch, batch_idx):
        opt_gen, opt_critic = self.optimizers()
        x = batch[0]
        fake = self.student(x)
        critic_loss = self.critic(fake.detach()).mean() - self.critic(self.teacher(x)).mean()
        self.update(opt_critic, {"critic": critic_loss}, turn="discriminator", max_grad_norm=1.0)
        self.updates["critic"] += 1
        if self.is_update_step(self.iteration, self.ratio):
            self.update(opt_gen, {"gen": -self.critic(fake).mean()}, turn="generator")
            self.updates["gen"] += 1
        self.iteration += 1

    def configure_optimizers(self):
        critic = set(map(id, self.critic.parameters()))
        gen = [p for p in self.trainable_parameters() if id(p) not in critic]
        return torch.optim.SGD(gen, lr=0.01), torch.optim.SGD(self.critic.parameters(), lr=0.01)


def test_manual_optimization_with_an_update_ratio_keeps_the_teacher_frozen():
    torch.manual_seed(0)
    module = TwoTimeScale(ratio=3, student=SmallCNN(width=4, depth=1), teacher=SmallCNN(width=8, depth=1))
    before = copy.deepcopy(module.teacher.state_dict())
    critic_before = copy.deepcopy(module.critic.state_dict())
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=7, limit_val_batches=0))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    assert module.updates == {"critic": 7, "gen": 3}  # iterations 0, 3, 6
    assert all(torch.equal(v, before[k]) for k, v in module.teacher.state_dict().items())
    assert any(not torch.equal(v, critic_before[k]) for k, v in module.critic.state_dict().items())
    assert {"train/critic", "train/gen"} <= set(trainer.logged_metrics)


def test_is_update_step_rejects_a_zero_ratio():
    assert [DistillationModule.is_update_step(i, 2, offset=1) for i in range(5)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="`every` must be >= 1"):
        DistillationModule.is_update_step(0, 0)


def test_student_built_in_eval_mode_trains_in_train_mode():
    torch.manual_seed(0)
    student = SmallCNN(width=4, depth=1).eval()  # as trained_classifier / from_pretrained return it
    module = TinyKD(student=student, teacher=SmallCNN(width=8, depth=1))
    modes = {}

    class Spy(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes["student"] = all(m.training for m in pl_module.student.modules())
            modes["teacher"] = any(m.training for m in pl_module.teacher.modules())

    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, callbacks=[Spy()]))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert modes == {"student": True, "teacher": False}


def test_a_trainable_module_left_in_eval_mode_is_reported():
    module = make_module()
    module.student.stem.eval()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1))
    with pytest.warns(UserWarning, match=r"trainable module\(s\) are in eval mode.*student.stem"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
