import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.feature_hooks import FeatureHooks

REPO = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self, width: int = 4, inplace: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=inplace)
        self.layer1 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = torch.relu(self.layer1(x))
        return self.head(self.pool(x).flatten(1))


def frozen(module: nn.Module) -> nn.Module:
    return module.requires_grad_(False).eval()


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = Net(4)
        self.teacher = frozen(Net(6))


class PairList(nn.Module):
    """Teachers in a ModuleList, as in DistillationModule: ``teacher.`` is an alias of ``teachers.0.``."""

    def __init__(self) -> None:
        super().__init__()
        self.student = Net(4)
        self.teachers = nn.ModuleList([frozen(Net(6)), frozen(Net(5))])


def all_hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_output_and_input_taps_equal_the_values_computed_by_calling_submodules():
    torch.manual_seed(0)
    model = Pair()
    x = torch.randn(2, 3, 5, 5)
    taps = {
        "s_stem": "student.stem",
        "s_l1": "student.layer1",
        "s_head_in": {"path": "student.head", "kind": "input"},
        "t_l1": "teacher.layer1",
    }
    with FeatureHooks(taps).attach(model) as hooks:
        model.student(x)
        model.teacher(x)
        features = hooks.features
    s = model.student
    stem = s.stem(x)
    l1 = s.layer1(s.act(s.bn(stem)))
    head_in = s.pool(torch.relu(l1)).flatten(1)
    t = model.teacher
    t_l1 = t.layer1(t.act(t.bn(t.stem(x))))
    assert list(features) == ["s_stem", "s_l1", "s_head_in", "t_l1"]
    assert_close(features["s_stem"], stem)
    assert_close(features["s_l1"], l1)
    assert_close(features["s_head_in"], head_in)
    assert_close(features["t_l1"], t_l1)


def test_bn_stats_transform_matches_manual_mean_and_biased_variance_of_the_bn_input():
    torch.manual_seed(0)
    model = Net(4)
    x = torch.randn(3, 3, 4, 4)
    with FeatureHooks({"bn": {"path": "bn", "kind": "input", "transform": "bn_stats"}}).attach(
        model
    ) as hooks:
        model(x)
        mean, var = hooks["bn"]
    y = model.stem(x)
    per_channel = y.permute(1, 0, 2, 3).reshape(4, -1)
    assert_close(mean, per_channel.mean(dim=1))
    assert_close(var, ((per_channel - per_channel.mean(dim=1, keepdim=True)) ** 2).mean(dim=1))


def test_attention_and_callable_transforms():
    torch.manual_seed(0)
    model = Net(4)
    x = torch.randn(2, 3, 4, 4)
    taps = {
        "att": {"path": "layer1", "transform": "attention"},
        "flat": {"path": "layer1", "transform": lambda f: f.flatten(1)},
    }
    with FeatureHooks(taps).attach(model) as hooks:
        model(x)
        att, flat = hooks["att"], hooks["flat"]
    l1 = model.layer1(model.act(model.bn(model.stem(x))))
    assert_close(att, (l1[:, 0] ** 2 + l1[:, 1] ** 2 + l1[:, 2] ** 2 + l1[:, 3] ** 2) / 4)
    assert_close(flat, l1.reshape(2, -1))


def test_teacher_taps_are_detached_and_student_taps_keep_their_graph():
    torch.manual_seed(0)
    model = PairList()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)  # without detaching, teacher taps would have a graph
    taps = {"s": "student.layer1", "t0": "teacher.layer1", "t1": "teachers.1.layer1"}
    with FeatureHooks(taps).attach(model) as hooks:
        model.student(x)
        for teacher in model.teachers:
            teacher(x)
        assert hooks["s"].grad_fn is not None
        assert not hooks["t0"].requires_grad and not hooks["t1"].requires_grad
        assert hooks["t0"].shape[1] == 6 and hooks["t1"].shape[1] == 5  # alias went to teachers[0]


def test_detach_false_lets_gradients_reach_the_input_through_a_frozen_teacher():
    # SRe2L/CDA recovery: match BN input statistics of a frozen teacher by optimising the input.
    torch.manual_seed(0)
    model = Pair()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    taps = {"stats": {"path": "teacher.bn", "kind": "input", "transform": "bn_stats", "detach": False}}
    with FeatureHooks(taps).attach(model) as hooks:
        model.teacher(x)
        mean, var = hooks["stats"]
        (mean.square().sum() + var.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_taps_inside_modules_listed_by_frozen_modules_are_detached():
    class WithEMA(nn.Module):  # the DistillationModule interface: frozen_modules() yields frozen submodules
        def __init__(self) -> None:
            super().__init__()
            self.student = Net(4)
            self.ema = frozen(Net(4))

        def frozen_modules(self):
            yield self.ema

    model = WithEMA()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with FeatureHooks({"ema": "ema.layer1", "s": "student.act"}).attach(model) as hooks:
        model.ema(x)
        model.student(x)
        assert not hooks["ema"].requires_grad
        assert hooks["s"].grad_fn is not None  # a parameter-free student module keeps its graph


def test_student_tap_can_be_forced_detached():
    model = Net(4)
    with FeatureHooks({"s": {"path": "layer1", "detach": True}}).attach(model) as hooks:
        model(torch.randn(2, 3, 4, 4))
        assert hooks["s"].grad_fn is None


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(3, 3)

    def forward(self, x):
        return self.block(torch.tanh(self.block(x)))


def test_module_called_twice_keeps_last_or_list():
    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(2, 3)
    first = model.block(x)
    second = model.block(torch.tanh(first))
    with FeatureHooks({"last": "block", "all": {"path": "block", "multiple": "list"}}).attach(model) as hooks:
        model(x)
        assert_close(hooks["last"], second)
        assert len(hooks["all"]) == 2
        assert_close(hooks["all"][0], first)
        assert_close(hooks["all"][1], second)
        hooks.clear()
        model(x)
        assert len(hooks["all"]) == 2
    with FeatureHooks({"all": "block"}, multiple="list").attach(model) as hooks:
        model(x)
        assert len(hooks["all"]) == 2


def test_reading_a_tap_that_did_not_fire_names_the_tap_and_the_module():
    model = Pair()
    with FeatureHooks({"t": "teacher.layer1", "s": "student.layer1"}).attach(model) as hooks:
        model.student(torch.randn(1, 3, 4, 4))
        assert "s" in hooks and "t" not in hooks
        assert list(hooks.features) == ["s"]
        with pytest.raises(KeyError, match=r"Tap 't' has no value: module 'teacher.layer1' did not run"):
            hooks["t"]
        with pytest.raises(KeyError, match=r"No tap named 'x'; the taps are \['t', 's'\]"):
            hooks["x"]
    with pytest.raises(KeyError, match="not attached"):
        hooks["s"]


def test_in_place_modification_after_capture_is_detected_and_clone_fixes_it():
    torch.manual_seed(0)
    model = Net(4, inplace=True)  # bn output is overwritten by ReLU(inplace=True)
    x = torch.randn(2, 3, 4, 4)
    with FeatureHooks({"bn": "bn", "bn_copy": {"path": "bn", "clone": True}}).attach(model) as hooks:
        model(x)
        with pytest.raises(RuntimeError, match=r"modified in place.*`clone: True`"):
            hooks["bn"]
        kept = hooks["bn_copy"]
    expected = model.bn(model.stem(x))
    assert (expected < 0).any()
    assert_close(kept, expected)


def test_wrong_path_error_lists_the_closest_valid_paths():
    with pytest.raises(ValueError, match=r"path 'student.layr1' does not name.*'student.layer1'"):
        FeatureHooks({"s": "student.layr1"}).attach(Pair())
    with pytest.raises(ValueError, match=r"Closest valid paths: \['teacher.layer1'"):
        FeatureHooks({"t": "teacher.layer1x"}).attach(PairList())
    with pytest.raises(ValueError, match=r"Top-level submodules: \['student', 'teacher'\]"):
        FeatureHooks({"t": "zzzzzz"}).attach(Pair())


def test_a_failed_attach_registers_nothing():
    model = Pair()
    with pytest.raises(ValueError):
        FeatureHooks({"ok": "student.layer1", "bad": "student.nope"}).attach(model)
    assert all_hooks(model) == 0


@pytest.mark.parametrize(
    ("taps", "kwargs", "error", "match"),
    [
        ({}, {}, TypeError, "non-empty dict"),
        (
            {"s": {"path": "a", "kinde": "input"}},
            {},
            ValueError,
            r"`taps\['s'\]` has unknown keys \['kinde'\]",
        ),
        ({"s": {"path": "a", "kind": "inputs"}}, {}, ValueError, r"\['kind'\] must be one of"),
        ({"s": {"path": "a", "transform": "bn"}}, {}, ValueError, r"\['transform'\] must be one of"),
        ({"s": {"path": "a", "multiple": "all"}}, {}, ValueError, r"\['multiple'\]"),
        ({"s": {"kind": "input"}}, {}, ValueError, r"\['path'\] must be a dotted module path"),
        ({"s": "a..b"}, {}, ValueError, "dotted module path"),
        ({"s": {"path": "a", "detach": "yes"}}, {}, TypeError, r"\['detach'\]"),
        ({"s": 3}, {}, TypeError, r"`taps\['s'\]` must be a module path"),
        ({"s": "a"}, {"multiple": "first"}, ValueError, "`multiple` must be one of"),
    ],
)
def test_bad_tap_specs_are_rejected_at_construction(taps, kwargs, error, match):
    with pytest.raises(error, match=match):
        FeatureHooks(taps, **kwargs)


def test_context_manager_removes_handles_and_data_parallel_is_looked_through():
    model = Pair()
    wrapped = nn.DataParallel(model)  # no GPU: forwards to the module
    with FeatureHooks({"s": "student.layer1"}).attach(wrapped) as hooks:
        assert all_hooks(model) == 1
        wrapped.module.student(torch.randn(1, 3, 4, 4))
        assert hooks["s"].shape == (1, 4, 4, 4)
    assert all_hooks(model) == 0
    assert not hooks.is_attached
    with pytest.raises(RuntimeError, match="attach"):
        with FeatureHooks({"s": "student.layer1"}):
            pass


class HintModule(L.LightningModule):
    """A FitNets-style module written the documented way: the callback kept as an attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.student = Net(4)
        self.teacher = frozen(Net(6))
        self.adapter = nn.Conv2d(4, 6, 1)
        self.hooks = FeatureHooks(
            {"s": "student.layer1", "t": "teacher.layer1", "both": {"path": "student.stem"}}
        )
        self.seen: list[tuple[bool, int]] = []
        self.val_errors: list[str] = []

    def configure_callbacks(self):
        return [self.hooks]

    def training_step(self, batch, batch_idx):
        x, y = batch
        fresh = "s" not in self.hooks and "t" not in self.hooks  # cleared at the batch start
        logits = self.student(x)
        with torch.no_grad():
            self.teacher(x)
        hint = F.mse_loss(self.adapter(self.hooks["s"]), self.hooks["t"])
        self.seen.append((fresh, len(self.hooks._store)))
        return F.cross_entropy(logits, y) + hint

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self.teacher(x)  # only the teacher runs in validation
        try:
            self.hooks["s"]
        except KeyError as error:
            self.val_errors.append(str(error))

    def configure_optimizers(self):
        return torch.optim.SGD([*self.student.parameters(), *self.adapter.parameters()], lr=0.01)


def loader(n: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 4, 4, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=2)


def test_in_a_trainer_taps_are_cleared_every_batch_do_not_grow_and_hooks_are_removed():
    torch.manual_seed(0)
    module = HintModule()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=15,  # 60 steps
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader(), loader(4))
    assert len(module.seen) == 60
    assert all(fresh for fresh, _ in module.seen)
    assert {size for _, size in module.seen} == {3}
    # no stale student feature from the training step is visible in validation
    assert module.val_errors and all("'student.layer1' did not run" in e for e in module.val_errors)
    assert all_hooks(module) == 0
    assert not module.hooks.is_attached


class CLIModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.student = Net(4)


def test_taps_declared_in_a_config_file_parse_with_lightning_cli(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-distill"])
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            """
            trainer:
              callbacks:
                - class_path: lightning_distill.callbacks.feature_hooks.FeatureHooks
                  init_args:
                    taps:
                      s1: student.layer1
                      stats: {path: student.bn, kind: input, transform: bn_stats, detach: false}
                    multiple: list
            """
        )
    )
    cli = LightningCLI(CLIModule, run=False, args=["--config", str(config)], save_config_callback=None)
    (hooks,) = [c for c in cli.trainer.callbacks if isinstance(c, FeatureHooks)]
    assert [(t.name, t.path, t.kind, t.transform, t.detach, t.multiple) for t in hooks.taps] == [
        ("s1", "student.layer1", "output", "identity", None, "list"),
        ("stats", "student.bn", "input", "bn_stats", False, "list"),
    ]
    hooks.attach(cli.model)
    cli.model.student(torch.randn(2, 3, 4, 4))
    assert len(hooks["stats"]) == 1 and hooks["stats"][0][0].shape == (4,)
    hooks.remove()


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_distill.callbacks.feature_hooks import FeatureHooks
from lightning_distill.models.adapters import ConvAdapter

out_dir = sys.argv[1]


def net(width):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3),
    )


class FitNet(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.student = net(4)
        self.teacher = net(8).requires_grad_(False).eval()
        self.adapter = ConvAdapter(4, 8)
        self.hooks = FeatureHooks({"s": "student.2", "t": "teacher.2"})
        self.hints, self.checks, self.wrappers = [], [], set()

    def configure_callbacks(self):
        return [self.hooks]

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.student(x)
        with torch.no_grad():
            self.teacher(x)
        s, t = self.hooks["s"], self.hooks["t"]
        self.wrappers.add(type(self.trainer.strategy.model).__name__)
        if batch_idx == 0:
            manual = self.student[2](self.student[1](self.student[0](x)))
            self.checks.append(bool(torch.allclose(s, manual)) and s.grad_fn is not None and not t.requires_grad)
        hint = F.mse_loss(self.adapter(s), t)
        self.hints.append(hint.item())
        return F.cross_entropy(logits, y) + 10 * hint

    def configure_optimizers(self):
        return torch.optim.Adam([*self.student.parameters(), *self.adapter.parameters()], lr=0.02)


if __name__ == "__main__":
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 6, 6, generator=g), torch.randint(0, 3, (32,), generator=g))
    model = FitNet()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=8, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    hooks_left = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    wrapped = sorted(model.wrappers)
    result = {"hints": model.hints, "checks": model.checks, "hooks_left": hooks_left, "wrapped": wrapped}
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)
"""


def test_hint_loss_trains_under_two_process_ddp(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MASTER_PORT", None)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["wrapped"] == ["DistributedDataParallel"]  # the hooks fired in the wrapped forward
        assert len(result["hints"]) == 16  # 8 epochs x 2 batches per rank
        assert result["checks"] and all(result["checks"])
        hints = result["hints"]
        assert sum(hints[-4:]) < 0.5 * sum(hints[:4])
        assert result["hooks_left"] == 0
