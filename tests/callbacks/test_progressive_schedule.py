import math
import sys
import textwrap
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.progressive_schedule import ProgressiveSchedule


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"kind": "linaer", "start": 0, "end": 1, "steps": 5}, "'kind' must be one of"),
        ({"start": 0}, "'kind' must be one of"),
        ({"kind": "linear", "start": 0, "end": 1}, r"needs the keys \['steps'\]"),
        ({"kind": "linear", "start": 0, "end": 1, "steps": 5, "stop": 3}, r"unknown keys \['stop'\]"),
        ({"kind": "linear", "start": 0, "end": 1, "steps": 0}, "`steps` must be an int >= 1"),
        ({"kind": "linear", "start": [0, 1], "end": 1, "steps": 5}, "both be numbers or lists of one length"),
        ({"kind": "cosine", "start": "a", "end": 1, "steps": 5}, "`start` must be a number"),
        ({"kind": "exponential", "start": 1, "gamma": -0.5}, "`gamma` must be a finite number > 0"),
        ({"kind": "step", "start": 1, "milestones": [5, 3], "gamma": 0.5}, "strictly increasing"),
        ({"kind": "piecewise", "points": []}, "non-empty list"),
        ({"kind": "piecewise", "points": [[0, 1], [0, 2]]}, "strictly increasing"),
        ({"kind": "piecewise", "points": [[0, "a"], [5, "b"]]}, "must be a number"),
        ({"kind": "piecewise", "points": [[0, 1]], "interpolation": "cubic"}, "`interpolation`"),
        ({"kind": "stages", "boundaries": [2, 5], "values": [0, 1]}, "one more entry than `boundaries`"),
        ({"kind": "linear", "start": 0, "end": 1, "steps": 5, "unit": "batch"}, "'unit' must be one of"),
        ("linear", "must be a dict"),
    ],
)
def test_invalid_specs_raise_at_construction_naming_the_key(spec, match):
    with pytest.raises(ValueError, match=r"`schedules\['loss_weights.kd'\]`") as info:
        ProgressiveSchedule({"loss_weights.kd": spec})
    assert info.match(match)


def test_invalid_callback_arguments():
    with pytest.raises(ValueError, match="`unit` must be one of"):
        ProgressiveSchedule({"a": {"kind": "constant", "value": 1}}, unit="iteration")
    with pytest.raises(ValueError, match="non-empty dict"):
        ProgressiveSchedule({})
    with pytest.raises(ValueError, match="dotted attribute names"):
        ProgressiveSchedule({"a..b": {"kind": "constant", "value": 1}})


# ---------------------------------------------------------------------- in a Trainer
SCHEDULES = {
    "loss_weights.kd": {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 8, "begin": 1},
    "loss_weights.ce": {"kind": "piecewise", "points": [[0, 1.0], [5, 0.5]], "interpolation": "constant"},
    "dataset.min_crop": {"kind": "cosine", "start": 1.0, "end": 0.08, "steps": 10},
    "mask_ratio": {"kind": "exponential", "start": 0.9, "gamma": 0.8},
    "scale_factor": {"kind": "step", "start": 2.0, "milestones": [4, 8], "gamma": 2.0},
    "timestep_range": {"kind": "piecewise", "points": [[0, [0, 1000]], [10, [500, 1000]]]},
    "dataset.size": {
        "kind": "piecewise",
        "points": [[0, 8], [1, 16]],
        "interpolation": "constant",
        "unit": "epoch",
    },
    "phase": {"kind": "stages", "boundaries": [3, 7], "values": [0, 1, 2]},
}


def expected_values(step: int, epoch: int) -> dict:
    """Independent hand formulas for SCHEDULES."""
    return {
        "kd": min(max((step - 1) / 8, 0.0), 1.0),
        "ce": 1.0 if step < 5 else 0.5,
        "min_crop": 0.08 + 0.92 * (1 + math.cos(math.pi * min(step, 10) / 10)) / 2,
        "mask_ratio": 0.9 * 0.8**step,
        "scale_factor": 2.0 * 2.0 ** ((step >= 4) + (step >= 8)),
        "timestep_range": (50.0 * min(step, 10), 1000.0),
        "size": 8 if epoch < 1 else 16,
        "phase": 0 if step < 3 else (1 if step < 7 else 2),
    }


class Scheduled(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.loss_weights = {"kd": -1.0, "ce": -1.0}
        self.scale_factor = -1.0
        self.phase = -1
        self.timestep_range = (-1.0, -1.0)
        self.register_buffer("mask_ratio", torch.tensor(-1.0))
        self.dataset = SimpleNamespace(min_crop=-1.0, size=-1)
        self.records: list[tuple[int, int, dict]] = []
        self.stage_calls: list[tuple] = []

    def current(self) -> dict:
        return {
            "kd": self.loss_weights["kd"],
            "ce": self.loss_weights["ce"],
            "min_crop": self.dataset.min_crop,
            "mask_ratio": self.mask_ratio.item(),
            "scale_factor": self.scale_factor,
            "timestep_range": self.timestep_range,
            "size": self.dataset.size,
            "phase": self.phase,
        }

    def on_stage_change(self, name, old, new):
        self.stage_calls.append((name, old, new, self.trainer.global_step, getattr(self, name)))

    def training_step(self, batch, batch_idx):
        self.records.append((self.trainer.global_step, self.trainer.current_epoch, self.current()))
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches per epoch


def make_trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


def assert_values(values: dict, step: int, epoch: int) -> None:
    expected = expected_values(step, epoch)
    for key, value in expected.items():
        if isinstance(value, float):
            assert values[key] == pytest.approx(value, abs=1e-6), (key, step)
        else:
            assert values[key] == value, (key, step)


def test_values_in_each_training_step_follow_global_step_and_epoch(tmp_path):
    module = Scheduled()
    callback = ProgressiveSchedule(SCHEDULES)
    buffer = module.mask_ratio
    make_trainer(tmp_path, max_steps=11, callbacks=[callback]).fit(module, loader())
    assert [step for step, _, _ in module.records] == list(range(11))
    for step, epoch, values in module.records:
        assert_values(values, step, epoch)
    assert module.mask_ratio is buffer  # filled in place, still the registered buffer
    assert module.records[4][1] == 1 and module.records[4][2]["size"] == 16  # epoch unit


def test_stage_change_fires_once_per_boundary_with_old_and_new(tmp_path):
    module = Scheduled()
    make_trainer(tmp_path, max_steps=10, callbacks=[ProgressiveSchedule(SCHEDULES)]).fit(module, loader())
    # (name, old, new, global_step at the call, attribute value seen by the hook)
    assert module.stage_calls == [("phase", 0, 1, 3, 1), ("phase", 1, 2, 7, 2)]


def test_values_are_logged_under_schedule_names(tmp_path):
    module = Scheduled()
    trainer = make_trainer(tmp_path, max_steps=6, callbacks=[ProgressiveSchedule(SCHEDULES)])
    trainer.fit(module, loader())
    logged = trainer.logged_metrics
    last = expected_values(5, 1)
    assert_close(logged["schedule/loss_weights.kd"], torch.tensor(last["kd"]))
    assert_close(logged["schedule/mask_ratio"], torch.tensor(last["mask_ratio"]))
    assert_close(logged["schedule/timestep_range/0"], torch.tensor(last["timestep_range"][0]))
    assert_close(logged["schedule/phase"], torch.tensor(float(last["phase"])))


def test_gradient_accumulation_uses_the_optimizer_step_count(tmp_path):
    module = Scheduled()
    trainer = make_trainer(
        tmp_path, max_steps=5, accumulate_grad_batches=2, callbacks=[ProgressiveSchedule(SCHEDULES)]
    )
    trainer.fit(module, loader())
    assert [step for step, _, _ in module.records] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for step, epoch, values in module.records:
        assert_values(values, step, epoch)
    assert [call[:4] for call in module.stage_calls] == [("phase", 0, 1, 3)]


def test_epoch_unit_for_every_schedule(tmp_path):
    module = Scheduled()
    callback = ProgressiveSchedule(
        {
            "loss_weights.kd": {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 2},
            "phase": SCHEDULES["phase"],
        },
        unit="epoch",
    )
    make_trainer(tmp_path, max_epochs=4, callbacks=[callback]).fit(module, loader())
    assert len(module.records) == 16
    for _, epoch, values in module.records:
        assert values["kd"] == pytest.approx(min(epoch / 2, 1.0))
        assert values["phase"] == (0 if epoch < 3 else 1)  # the stage boundaries (3, 7) are epochs now
    assert module.stage_calls == [("phase", 0, 1, 12, 1)]  # at the first step of epoch 3


@pytest.mark.parametrize("stop", [3, 5, 7])
def test_resume_sets_the_same_values_and_stage_calls_as_an_uninterrupted_run(tmp_path, stop):
    # The uninterrupted run saves a checkpoint after every optimizer step; a fresh module and
    # callback (as in a new process) resume from the one taken after `stop` steps.
    full = Scheduled()
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(
        tmp_path, max_steps=10, enable_checkpointing=True, callbacks=[ProgressiveSchedule(SCHEDULES), saver]
    )
    trainer.fit(full, loader())

    resumed = Scheduled()
    trainer = make_trainer(tmp_path / "b", max_steps=10, callbacks=[ProgressiveSchedule(SCHEDULES)])
    trainer.fit(resumed, loader(), ckpt_path=tmp_path / f"step={stop}.ckpt")

    assert resumed.records == full.records[stop:]
    before = [call for call in full.stage_calls if call[3] < stop]
    # stop=3 and 7 resume exactly at a boundary: the change is made once, before the first resumed step
    assert before + resumed.stage_calls == full.stage_calls
    assert len(full.stage_calls) == 2


def test_state_dict_keeps_the_last_stage_and_ignores_unknown_names():
    callback = ProgressiveSchedule({"phase": SCHEDULES["phase"]})
    assert callback.state_dict() == {"last_stage": {}}
    callback.load_state_dict({"last_stage": {"phase": 1, "gone": 3}})
    assert callback.state_dict() == {"last_stage": {"phase": 1}}
    callback.load_state_dict({})  # tolerant of checkpoints without the key
    assert callback.state_key != ProgressiveSchedule({"other": SCHEDULES["phase"]}).state_key


def test_unknown_attribute_paths_raise_at_setup_with_close_matches(tmp_path):
    module = Scheduled()
    with pytest.raises(
        ValueError, match=r"`loss_weights` \(dict\) has no attribute or key 'kdd'.*'loss_weights.kd'"
    ):
        ProgressiveSchedule({"loss_weights.kdd": {"kind": "constant", "value": 1.0}}).setup(
            None, module, "fit"
        )
    with pytest.raises(ValueError, match=r"no attribute or key 'scale_factr'.*\['scale_factor'\]"):
        ProgressiveSchedule({"scale_factr": {"kind": "constant", "value": 1.0}}).setup(None, module, "fit")
    with pytest.raises(ValueError, match=r"`dataset` \(SimpleNamespace\).*'dataset.min_crop'"):
        ProgressiveSchedule({"dataset.min_crp": {"kind": "constant", "value": 1.0}}).setup(
            None, module, "fit"
        )
    with pytest.raises(ValueError, match="cannot set an item of a tuple"):
        ProgressiveSchedule({"timestep_range.0": {"kind": "constant", "value": 1.0}}).setup(
            None, module, "fit"
        )
    with pytest.raises(ValueError, match="is a method"):
        ProgressiveSchedule({"current": {"kind": "constant", "value": 1.0}}).setup(None, module, "fit")
    with pytest.raises(ValueError, match="kdd"):  # and through a Trainer, before any step
        bad = ProgressiveSchedule({"loss_weights.kdd": {"kind": "constant", "value": 1.0}})
        make_trainer(tmp_path, max_steps=1, callbacks=[bad]).fit(module, loader())
    assert module.records == []


def test_list_items_and_nested_module_attributes_can_be_scheduled(tmp_path):
    class Nested(Scheduled):
        def __init__(self):
            super().__init__()
            self.head = nn.Module()
            self.head.temperature = 1.0
            self.weights = [1.0, 1.0]

    module = Nested()
    callback = ProgressiveSchedule(
        {
            "head.temperature": {"kind": "constant", "value": 4.0},
            "weights.1": {"kind": "constant", "value": 0.5},
        }
    )
    make_trainer(tmp_path, max_steps=1, callbacks=[callback]).fit(module, loader())
    assert module.head.temperature == 4.0 and module.weights == [1.0, 0.5]


def test_schedules_declared_in_a_config_file_parse_with_lightning_cli(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-distill"])
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            """
            trainer:
              callbacks:
                - class_path: lightning_distill.callbacks.progressive_schedule.ProgressiveSchedule
                  init_args:
                    schedules:
                      loss_weights.kd: {kind: linear, start: 0.0, end: 1.0, steps: 100}
                      timestep_range: {kind: piecewise, points: [[0, [0, 1000]], [100, [500, 1000]]]}
                      phase: {kind: stages, boundaries: [2000, 5000], values: [0, 1, 2]}
                    unit: step
            """
        )
    )
    cli = LightningCLI(Scheduled, run=False, args=["--config", str(config)], save_config_callback=None)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ProgressiveSchedule)]
    assert callback.value_at("loss_weights.kd", 50) == 0.5
    assert callback.value_at("timestep_range", 50) == (250.0, 1000.0)
    assert callback.value_at("phase", 5000) == 2
