"""Tests for ``lightning_distill.callbacks.ema_teacher``.

References are computed independently: ``torch.lerp`` on snapshots of the live weights taken after
every optimizer step, ``torch.optim.swa_utils.AveragedModel``, the BYOL/DINO formula, a plain
PyTorch training loop for the distributed runs.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.ema_teacher import EMATeacher
from lightning_distill.utils.ema import EMAUpdater

TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def make_loader(samples: int = 32, batch_size: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(samples, 4, generator=generator), torch.randn(samples, 2, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))


class Regressor(pl.LightningModule):
    """A student trained by MSE; records what the tests inspect."""

    def __init__(self, make_target: bool = False, optimize_all: bool = False, manual: bool = False) -> None:
        super().__init__()
        self.student = make_net()
        if make_target:
            self.ema_student = copy.deepcopy(self.student)
        self.optimize_all = optimize_all
        self.automatic_optimization = not manual
        self.losses: list[torch.Tensor] = []
        self.target_flags: list[tuple[bool, bool]] = []
        self.val_weights: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.student(x).float(), y.float())
        self.losses.append(loss.detach().clone())
        target = getattr(self, "ema_student", None)
        if target is not None:
            self.target_flags.append((target.training, any(p.requires_grad for p in target.parameters())))
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return None
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_weights.append((self.student[0].weight.clone(), self.ema_student[0].weight.clone()))

    def configure_optimizers(self):
        params = self.parameters() if self.optimize_all else self.student.parameters()
        return torch.optim.SGD(params, lr=0.1)


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Snapshots(Callback):
    """The student's weights at fit start and after every optimizer step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self._step = 0

    def on_fit_start(self, trainer, pl_module):
        self.states = [state(pl_module.student)]
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self._step:
            self._step = trainer.global_step
            self.states.append(state(pl_module.student))


class CountingEMA(EMATeacher):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.asked: list[int] = []

    def should_update(self, step: int) -> bool:
        self.asked.append(step)
        return super().should_update(step)


class Crash(Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def fit(
    model, callbacks, max_steps=-1, loader=None, val_loader=None, ckpt_path=None, **overrides
) -> pl.Trainer:
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "callbacks": callbacks,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(overrides)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(model, loader or make_loader(), val_loader, ckpt_path=ckpt_path)
    return trainer


def reference_ema(
    states: list[dict[str, torch.Tensor]], decays: list[float | None], average_buffers: bool
) -> dict[str, torch.Tensor]:
    """EMA over ``states[1:]`` starting from ``states[0]``; decay ``None`` skips a step."""
    buffers = {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    ema = {k: v.clone() for k, v in states[0].items()}
    for live, decay in zip(states[1:], decays, strict=True):
        if decay is None:
            continue
        for key in ema:
            if ema[key].is_floating_point() and (key not in buffers or average_buffers):
                ema[key] = torch.lerp(ema[key], live[key], 1.0 - decay)
            else:
                ema[key] = live[key].clone()
    return ema


def assert_state_close(actual: nn.Module | dict, expected: dict, **tolerance) -> None:
    actual = actual.state_dict() if isinstance(actual, nn.Module) else actual
    assert actual.keys() == expected.keys()
    for key in expected:
        assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}", **(tolerance or TIGHT))


# ----------------------------------------------------------------------------------- the update


def test_one_update_equals_torch_lerp():
    model, snaps = Regressor(), Snapshots()
    fit(model, [snaps, EMATeacher(decay=0.9)], max_steps=1)
    start, live = snaps.states
    for name, param in model.ema_student.named_parameters():
        assert_close(param, torch.lerp(start[name], live[name], 0.1), **TIGHT)
    assert not torch.allclose(model.ema_student[0].weight, live["0.weight"])  # neither copied nor left behind
    assert not torch.allclose(model.ema_student[0].weight, start["0.weight"])
    for name, buffer in model.ema_student.named_buffers():  # buffers="copy"
        assert torch.equal(buffer, live[name])


def test_ema_teacher_matches_averaged_model():
    model, snaps = Regressor(), Snapshots()
    fit(model, [snaps, EMATeacher(decay=0.8, buffers="average")], max_steps=6)
    assert len(snaps.states) == 7
    # AveragedModel copies on its first update; feeding it the start weights first aligns it with the
    # target, which starts as a copy of the source.
    averaged = AveragedModel(make_net(), multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    live = make_net()
    for weights in snaps.states:
        live.load_state_dict(weights)
        averaged.update_parameters(live)
    expected = averaged.module.state_dict()
    for key, value in model.ema_student.state_dict().items():
        if value.is_floating_point():
            assert_close(value, expected[key], **TIGHT)
        else:  # AveragedModel averages integers too; they are copied here
            assert torch.equal(value, snaps.states[-1][key])


# ----------------------------------------------------------------------------------- schedules


def test_cosine_decay_at_known_steps():
    ema = EMATeacher(decay=0.9, schedule="cosine")
    assert ema.decay_at(0, 10) == pytest.approx(0.9)
    assert ema.decay_at(5, 10) == pytest.approx(0.95)
    assert ema.decay_at(10, 10) == pytest.approx(1.0)
    assert ema.decay_at(25, 10) == pytest.approx(1.0)
    byol = 1 - (1 - 0.9) * (math.cos(math.pi * 3 / 10) + 1) / 2
    assert ema.decay_at(3, 10) == pytest.approx(byol)
    assert EMATeacher(decay=0.9, schedule="cosine", final_decay=0.99).decay_at(5, 10) == pytest.approx(0.945)
    assert EMATeacher(decay=0.9).decay_at(7, 10) == 0.9


def test_cosine_schedule_runs_over_estimated_stepping_batches():
    model, snaps = Regressor(), Snapshots()
    trainer = fit(model, [snaps, EMATeacher(decay=0.5, schedule="cosine")], max_epochs=1)
    total = 8  # 32 samples / batch 4, one epoch
    assert trainer.estimated_stepping_batches == total
    decays = [1 - 0.5 * (math.cos(math.pi * k / total) + 1) / 2 for k in range(total)]
    assert_state_close(model.ema_student, reference_ema(snaps.states, decays, average_buffers=False))
    assert trainer.callback_metrics["ema/decay"].item() == pytest.approx(decays[-1])


@pytest.mark.parametrize(
    ("kwargs", "decays"),
    [
        ({"start_step": 2}, [0.0, 0.0, 0.5, 0.5]),
        ({"update_every": 2}, [None, 0.5, None, 0.5]),
        ({"start_step": 1, "update_every": 2}, [0.0, 0.5, None, 0.5]),
    ],
)
def test_start_step_copies_and_update_every_skips(kwargs, decays):
    model, snaps = Regressor(), Snapshots()
    fit(model, [snaps, EMATeacher(decay=0.5, **kwargs)], max_steps=4)
    assert_state_close(model.ema_student, reference_ema(snaps.states, decays, average_buffers=False))


# ----------------------------------------------------------------------------------- optimizer steps


@pytest.mark.parametrize(("manual", "accumulate", "batches"), [(False, 2, 8), (True, 1, 4)])
def test_one_update_per_optimizer_step(manual, accumulate, batches):
    model, snaps, ema = Regressor(manual=manual), Snapshots(), CountingEMA(decay=0.7)
    trainer = fit(model, [snaps, ema], max_steps=4, accumulate_grad_batches=accumulate)
    assert len(model.losses) == batches
    assert trainer.global_step == 4
    assert ema.asked == [0, 1, 2, 3]
    assert_state_close(model.ema_student, reference_ema(snaps.states, [0.7] * 4, average_buffers=False))


@pytest.mark.parametrize("policy", ["copy", "average"])
def test_integer_buffers_copied_float_buffers_follow_policy(policy):
    model, snaps = Regressor(), Snapshots()
    fit(model, [snaps, EMATeacher(decay=0.6, buffers=policy)], max_steps=3)
    target, live = model.ema_student[1], snaps.states[-1]
    assert target.num_batches_tracked.item() == live["1.num_batches_tracked"].item() == 3
    expected = reference_ema(snaps.states, [0.6] * 3, average_buffers=True)
    if policy == "copy":
        assert torch.equal(target.running_mean, live["1.running_mean"])
        assert torch.equal(target.running_var, live["1.running_var"])
    else:
        assert_close(target.running_mean, expected["1.running_mean"], **TIGHT)
        assert_close(target.running_var, expected["1.running_var"], **TIGHT)
        assert not torch.allclose(target.running_mean, live["1.running_mean"])


# ----------------------------------------------------------------------------------- the target module


def test_target_frozen_in_eval_outside_optimizer_and_in_checkpoint(tmp_path):
    model = Regressor()
    trainer = fit(model, [EMATeacher(decay=0.9)], max_steps=3)
    assert model.target_flags == [(False, False)] * 3
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.student.parameters()}
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    target = {k[len("ema_student.") :]: v for k, v in saved.items() if k.startswith("ema_student.")}
    assert_state_close(target, state(model.ema_student), rtol=0, atol=0)


def test_existing_target_is_used_and_frozen():
    model, snaps = Regressor(make_target=True), Snapshots()
    made = model.ema_student
    fit(model, [snaps, EMATeacher(decay=0.9)], max_steps=2)
    assert model.ema_student is made
    assert not any(p.requires_grad for p in made.parameters())
    assert_state_close(made, reference_ema(snaps.states, [0.9, 0.9], average_buffers=False))


def test_register_frozen_attaches_the_target_when_available():
    class WithRegisterFrozen(Regressor):
        def register_frozen(self, name: str, module: nn.Module) -> None:
            self.registered = (name, module)
            setattr(self, name, module.requires_grad_(False).eval())

    model = WithRegisterFrozen()
    fit(model, [EMATeacher()], max_steps=1)
    assert model.registered == ("ema_student", model.ema_student)


def test_created_target_does_not_inherit_forward_hooks():
    calls = []
    model = Regressor()
    model.student[0].register_forward_hook(lambda module, args, output: calls.append(module))
    fit(model, [EMATeacher()], max_steps=2)
    assert not model.ema_student[0]._forward_hooks
    assert calls == [model.student[0]] * 2


def test_source_built_in_configure_model_gets_a_target_at_fit_start():
    class Lazy(Regressor):
        def __init__(self):
            super().__init__()
            del self.student

        def configure_model(self):
            if not hasattr(self, "student"):
                self.student = make_net()

    model, snaps = Lazy(), Snapshots()
    with pytest.warns(UserWarning, match="after `configure_model`"):
        fit(model, [snaps, EMATeacher(decay=0.9)], max_steps=2)
    assert_state_close(model.ema_student, reference_ema(snaps.states, [0.9, 0.9], average_buffers=False))


def test_warns_when_target_is_in_an_optimizer():
    with pytest.warns(UserWarning, match="are in optimizer 0"):
        fit(Regressor(make_target=True, optimize_all=True), [EMATeacher()], max_steps=1)


def test_missing_source_error_lists_close_paths():
    with pytest.raises(ValueError, match=r"'studnt'.*closest valid paths: \['student'"):
        fit(Regressor(), [EMATeacher(source="studnt")], max_steps=1)


def test_swap_for_eval_puts_average_in_for_validation_only():
    model, snaps = Regressor(), Snapshots()
    loader = make_loader(samples=16)
    fit(
        model,
        [snaps, EMATeacher(decay=0.9, swap_for_eval=True)],
        max_epochs=1,
        loader=loader,
        val_loader=loader,
        limit_val_batches=1,
    )
    ((student_in_val, target_in_val),) = model.val_weights
    assert torch.equal(student_in_val, target_in_val)
    assert torch.equal(model.student[0].weight, snaps.states[-1]["0.weight"])
    assert not torch.equal(model.student[0].weight, model.ema_student[0].weight)


# ----------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])  # bf16: the fp32 masters are restored
def test_resume_equals_uninterrupted_run(tmp_path, precision):
    def callbacks():
        return [
            EMATeacher(target="ema_a", decay=0.7, buffers="average", save_averaged_as_source=True),
            EMATeacher(target="ema_b", decay=0.5, schedule="cosine", log_name="ema/decay_b"),
        ]

    # 16 samples in batches of 4, two batches per optimizer step: 2 steps per epoch. Crash at the start of
    # the second epoch and resume from the checkpoint of step 2 (Lightning cannot resume a plain DataLoader
    # mid-epoch exactly, and replays a batch when resuming from a checkpoint written in on_train_epoch_end).
    # Accumulation also checks that the first micro-batch after resume does not count as a step.
    loader = make_loader(samples=16)
    run = {"max_steps": 4, "loader": loader, "accumulate_grad_batches": 2, "precision": precision}
    full, full_callbacks = Regressor(), callbacks()
    fit(full, full_callbacks, **run)

    crashed = Regressor()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, [*callbacks(), checkpoints, Crash(at_step=2)], enable_checkpointing=True, **run)
    path = tmp_path / "epoch=0-step=2.ckpt"
    saved = torch.load(path, weights_only=False)
    # The averaged weights are saved as the student; the live ones travel alongside.
    assert torch.equal(saved["state_dict"]["student.0.weight"], saved["state_dict"]["ema_a.0.weight"])
    assert len(saved["callbacks"]) == 3  # two EMATeacher states and the checkpoint callback's

    resumed, resumed_callbacks = Regressor(), callbacks()
    fit(resumed, resumed_callbacks, ckpt_path=str(path), **run)
    assert len(crashed.losses) == len(resumed.losses) == 4
    assert_close(torch.stack(crashed.losses + resumed.losses), torch.stack(full.losses), **TIGHT)
    for name in ("student", "ema_a", "ema_b"):
        assert_state_close(getattr(resumed, name), state(getattr(full, name)))
    for fresh, uninterrupted in zip(resumed_callbacks, full_callbacks):
        assert_state_close(fresh.state_dict()["master"], uninterrupted.state_dict()["master"])
    assert bool(full_callbacks[0].state_dict()["master"]) == (precision == "bf16-true")


# ----------------------------------------------------------------------------------- precision


def test_bf16_student_keeps_fp32_master_weights():
    model, snaps, ema = Regressor(), Snapshots(), EMATeacher(decay=0.999)
    fit(model, [snaps, ema], max_steps=24, precision="bf16-true")
    assert model.student[0].weight.dtype == model.ema_student[0].weight.dtype == torch.bfloat16
    master = ema.state_dict()["master"]
    assert master["0.weight"].dtype == torch.float32
    start = snaps.states[0]
    for name in ("0.weight", "1.weight", "3.weight", "3.bias"):  # (0.bias gets no gradient before BN)
        exact, naive = start[name].float(), start[name].clone()
        for live in snaps.states[1:]:
            exact = torch.lerp(exact, live[name].float(), 0.001)  # the EMA in fp32
            naive = torch.lerp(naive, live[name], 0.001)  # the same EMA kept in bf16
        assert_close(master[name], exact, **TIGHT)
        assert torch.equal(model.ema_student.get_parameter(name), exact.to(torch.bfloat16))
        assert (exact - start[name].float()).abs().max() > 1e-4  # the average moved ...
        naive_error = (naive.float() - exact).abs().max()
        assert naive_error > 10 * (master[name] - exact).abs().max()  # ... and bf16 alone loses it
        assert naive_error > 0.5 * (exact - start[name].float()).abs().max()


# ----------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"decay": 1.5}, ValueError, "`decay` must be in"),
        ({"decay": "0.9"}, TypeError, "`decay` must be a float"),
        ({"final_decay": -0.1}, ValueError, "`final_decay`"),
        ({"schedule": "linear"}, ValueError, "`schedule`"),
        ({"buffers": "mean"}, ValueError, "`buffers`"),
        ({"start_step": -1}, ValueError, "`start_step` must be >= 0"),
        ({"update_every": 0}, ValueError, "`update_every` must be >= 1"),
        ({"update_every": 2.0}, TypeError, "`update_every` must be an int"),
        ({"source": "student", "target": "student.ema"}, ValueError, "separate modules"),
        ({"target": "ema student"}, ValueError, "`target` must be a dotted attribute path"),
        ({"total_steps": 0}, ValueError, "`total_steps`"),
        ({"swap_for_eval": 1}, TypeError, "`swap_for_eval`"),
        ({"log_name": ""}, ValueError, "`log_name`"),
    ],
)
def test_invalid_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        EMATeacher(**kwargs)


def test_updater_rejects_different_modules():
    with pytest.raises(ValueError, match="differ in their parameters"):
        EMAUpdater(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="has shape"):
        EMAUpdater(nn.Linear(2, 2), nn.Linear(2, 3))


# ----------------------------------------------------------------------------------- DDP and FSDP2


def test_ddp_and_fsdp2_equal_single_process_ema(tmp_path):
    worker = Path(__file__).with_name("ema_distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = ["ddp", "fsdp_auto", "fsdp_user"]
    result = subprocess.run(
        [sys.executable, str(worker), str(tmp_path), *runs],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # The same run in one process, in plain PyTorch: global batch = both ranks' batches.
    sys.path.insert(0, str(worker.parent))
    try:
        import ema_distributed_worker as w
    finally:
        sys.path.pop(0)
    x, y = w.make_data().tensors
    student = w.make_student()
    ema = copy.deepcopy(student)
    optimizer = torch.optim.SGD(student.parameters(), lr=w.LR)
    teacher_outputs = []
    for step in range(w.STEPS):
        rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
        with torch.no_grad():
            teacher_outputs.append(ema(x[:3]))
        optimizer.zero_grad()
        nn.functional.mse_loss(student(x[rows]), y[rows]).backward()
        optimizer.step()
        with torch.no_grad():
            for average, param in zip(ema.parameters(), student.parameters()):
                average.lerp_(param, 1 - w.DECAY)

    for run in runs:
        rank0, rank1 = (torch.load(tmp_path / f"{run}_rank{r}.pt", weights_only=False) for r in (0, 1))
        assert rank0["global_step"] == w.STEPS
        assert rank0["sharded"] == run.startswith("fsdp")
        assert_state_close(rank0["weights"], rank1["weights"], rtol=0, atol=0)
        assert_state_close(rank0["weights"], ema.state_dict(), rtol=1e-5, atol=1e-6)
        assert_close(
            torch.stack(rank0["teacher_outputs"]), torch.stack(teacher_outputs), rtol=1e-5, atol=1e-6
        )
