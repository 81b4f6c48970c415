"""The `lightning-distill` command off the happy path: bad checkpoints, bad config values, typos, SIGTERM.

Each test feeds the bad input, checks the message, and checks that nothing was lost or poisoned
(the checkpoint is unchanged, nothing was written, a stopped run resumes).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_distill.cli import main
from lightning_distill.utils.checkpoints import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
MEAL_V2 = REPO / "recipes/meal_v2/config.yaml"
BEYOND_SSL = REPO / "recipes/beyond_ssl/config.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# MEAL V2 with teachers and the student's starting checkpoint trained for 2 epochs (seconds, not minutes).
_SMALL_TEACHERS = """
model:
  init_args:
    student:
      class_path: lightning_distill.models.trained_classifier
      init_args:
        model: {class_path: lightning_distill.models.SmallCNN, init_args: {width: 8, depth: 2}}
        data: {class_path: lightning_distill.data.DigitsDataModule, init_args: {size: 16}}
        epochs: 2
        seed: 100
    teachers:
      - class_path: lightning_distill.models.trained_classifier
        init_args:
          model: {class_path: lightning_distill.models.SmallCNN, init_args: {width: 16, depth: 2}}
          data: {class_path: lightning_distill.data.DigitsDataModule, init_args: {size: 16, shift: 1}}
          epochs: 2
          seed: 0
"""
UNSAFE_ADVICE = re.compile(r"weights_only\W*(=|set to|to)\W*False", re.IGNORECASE)


def small_meal_v2(tmp_path: Path) -> list[str]:
    """``--config`` arguments for MEAL V2 with small, quickly trained teachers."""
    overlay = tmp_path / "small_teachers.yaml"
    overlay.write_text(_SMALL_TEACHERS)
    return ["--config", str(MEAL_V2), "--config", str(overlay)]


def fit_small_meal_v2(root: Path, steps: int = 3) -> Path:
    """A short MEAL V2 ``fit`` under ``root``; returns its ``last.ckpt``."""
    root.mkdir(parents=True, exist_ok=True)
    main(
        [
            "fit",
            *small_meal_v2(root),
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={root}",
            "--trainer.logger=false",
            "--test_after_fit=false",
            *QUIET,
        ]
    )
    return root / "checkpoints" / "last.ckpt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def meal_v2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_small_meal_v2(tmp_path_factory.mktemp("meal_v2_run"))


def _run_from_command_line(monkeypatch, args: list[str]) -> int:
    """``main()`` as the console script calls it (argv read from ``sys.argv``); returns the exit code."""
    monkeypatch.setattr(sys, "argv", ["lightning-distill", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


# ---------------------------------------------------------------- 1. a checkpoint of another recipe
@pytest.mark.parametrize("subcommand", ["test", "validate", "fit"])
def test_checkpoint_of_another_recipe_is_refused_before_anything_is_built(meal_v2_ckpt, tmp_path, subcommand):
    before = sha256(meal_v2_ckpt)
    root = tmp_path / "run"
    with pytest.raises(CheckpointError) as info:
        main(
            [
                subcommand,
                "--config",
                str(BEYOND_SSL),
                "--ckpt_path",
                str(meal_v2_ckpt),
                f"--trainer.default_root_dir={root}",
                *QUIET,
            ]
        )
    message = str(info.value)
    assert "lightning_distill.recipes.meal_v2.MEALV2" in message
    assert "lightning_distill.recipes.beyond_ssl.BeyondSSL" in message
    assert str(meal_v2_ckpt) in message and "--recipe meal_v2" in message
    assert sha256(meal_v2_ckpt) == before
    assert not root.exists()  # no run folder, no logs, no checkpoint: nothing was built


def test_checkpoint_of_the_same_recipe_tests_with_its_config(meal_v2_ckpt, tmp_path, capsys):
    main(
        [
            "test",
            *small_meal_v2(tmp_path),
            "--ckpt_path",
            str(meal_v2_ckpt),
            "--trainer.limit_test_batches=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            *QUIET,
        ]
    )
    assert "test/acc" in capsys.readouterr().out


def test_checkpoint_with_arguments_the_recipe_no_longer_takes_is_refused(meal_v2_ckpt, tmp_path):
    checkpoint = torch.load(meal_v2_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["old_argument"] = 3
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with pytest.raises(
        CheckpointError, match=r"records hyper-parameters \['old_argument'\] that .*MEALV2 does not take"
    ):
        main(
            [
                "test",
                "--config",
                str(MEAL_V2),
                "--ckpt_path",
                str(old),
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )


# ---------------------------------------------------------------- 2. unreadable --ckpt_path
def _bad_checkpoints(good: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    files = {
        "empty": (b"", "is empty"),
        "truncated": (data[: len(data) // 3], "is truncated"),
        "random": (os.urandom(4096), "is not a PyTorch checkpoint"),
        "corrupted": (data[:100] + os.urandom(len(data) - 200) + data[-100:], "corrupted"),
        "state_dict": (None, "is not a Lightning checkpoint"),
    }
    out = {}
    for name, (content, expected) in files.items():
        path = folder / f"{name}.ckpt"
        if content is None:
            torch.save({"weight": torch.zeros(2)}, path)
        else:
            path.write_bytes(content)
        out[name] = (path, expected)
    out["missing"] = (folder / "nope.ckpt", "does not exist")
    out["folder"] = (folder, "is a folder")
    return out


def test_unreadable_checkpoints_are_named_with_what_is_wrong(meal_v2_ckpt, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, (path, expected) in _bad_checkpoints(meal_v2_ckpt, folder).items():
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and expected in message, (name, message)
        assert not UNSAFE_ADVICE.search(message), (name, message)
        assert info.value.__cause__ is None or name == "folder"  # torch's text (and advice) left out
        if before is not None:
            assert path.read_bytes() == before, name


@pytest.mark.parametrize("bad", ["truncated", "random", "empty"])
def test_unreadable_ckpt_path_stops_the_cli_with_the_path(meal_v2_ckpt, tmp_path, bad):
    path, expected = _bad_checkpoints(meal_v2_ckpt, tmp_path)[bad]
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + expected):
        main(["test", "--config", str(MEAL_V2), "--ckpt_path", str(path), *QUIET])


def test_command_line_prints_a_checkpoint_error_without_traceback(
    meal_v2_ckpt, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "half.ckpt"
    path.write_bytes(meal_v2_ckpt.read_bytes()[:5000])
    code = _run_from_command_line(monkeypatch, ["test", "--config", str(MEAL_V2), "--ckpt_path", str(path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: Checkpoint {str(path)!r} is truncated" in err
    assert "Traceback" not in err and not UNSAFE_ADVICE.search(err)


# ---------------------------------------------------------------- 3. errors not buried
def test_bad_value_prints_message_config_key_and_hint_only(tmp_path, monkeypatch, capsys):
    args = ["fit", *small_meal_v2(tmp_path), "--model.init_args.temperature=-1", "--trainer.logger=false"]
    args += [f"--trainer.default_root_dir={tmp_path / 'run'}"]
    code = _run_from_command_line(monkeypatch, args)
    err = capsys.readouterr().err
    assert code == 1
    assert "error: `temperature` must be > 0, got -1.0; set `model.init_args.temperature`." in err
    assert "config key: model.init_args.temperature" in err and "--debug" in err
    assert "Traceback" not in err and "Namespace(" not in err
    assert len(err) < 1000, err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_DISTILL_DEBUG", "1")
    args = ["fit", *small_meal_v2(tmp_path), "--model.init_args.temperature=-1", "--trainer.logger=false"]
    monkeypatch.setattr(sys, "argv", ["lightning-distill", *args])
    with pytest.raises(ValueError) as info:
        main()
    chain = [info.value, info.value.__cause__]
    assert any("`temperature` must be > 0" in str(e) for e in chain)


@pytest.mark.parametrize(
    ("flag", "suggestion", "owner"),
    [
        ("--model.init_args.temprature=2", "`temperature`", "lightning_distill.recipes.meal_v2.MEALV2"),
        ("--data.init_args.batch_sise=8", "`batch_size`", "lightning_distill.data"),
        (
            "--trainer.max_epoch=3",
            "`--trainer.max_epochs`",
            "not `--trainer.max_epoch`",
        ),  # not expanded silently
    ],
)
def test_mistyped_key_gets_did_you_mean(flag, suggestion, owner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(MEAL_V2), flag])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"did you mean {suggestion}?" in err and owner in err
    assert "usage:" not in err and len(err) < 1500, err  # not buried under the usage text


def test_no_warning_about_args_and_sys_argv(monkeypatch, recwarn, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning-distill", "fit", "--config", str(MEAL_V2), "--print_config"])
    with pytest.raises(SystemExit):
        main()
    assert "MEALV2" in capsys.readouterr().out
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


# ---------------------------------------------------------------- 5. SIGTERM
def test_sigterm_saves_a_resumable_checkpoint_and_exits_non_zero(tmp_path):
    root = tmp_path / "run"
    args = ["fit", *small_meal_v2(tmp_path), "--trainer.max_epochs=1000", "--trainer.limit_val_batches=1"]
    args += [f"--trainer.default_root_dir={root}", "--trainer.logger=false", "--test_after_fit=false", *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_distill.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list((root / "checkpoints").glob("epoch=*.ckpt")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.2)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    assert f"resumable checkpoint: {last}" in output
    saved = read_checkpoint(last)
    assert saved["global_step"] > 0 and saved["optimizer_states"]

    target = saved["global_step"] + 4
    main(
        [
            "fit",
            *small_meal_v2(tmp_path),
            f"--trainer.max_steps={target}",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={root}",
            "--trainer.logger=false",
            "--test_after_fit=false",
            "--ckpt_path",
            str(last),
            *QUIET,
        ]
    )
    assert read_checkpoint(last)["global_step"] == target


@pytest.mark.parametrize(("requeued", "code"), [(False, 143), (True, 0)])
def test_sigterm_exit_code_is_zero_only_when_slurm_requeues(monkeypatch, capsys, requeued, code):
    from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import lightning_distill.cli as cli

    class Trainer:  # what SigtermCheckpoint reads from the trainer
        default_root_dir, checkpoint_callback, saved = "root", None, []

        class strategy:  # noqa: N801
            cluster_environment = SLURMEnvironment(auto_requeue=True) if requeued else LightningEnvironment()

        def save_checkpoint(self, path, weights_only=None):
            self.saved.append(path)

    def stopped_fit(*args, **kwargs):
        stop = SIGTERMException()
        cli.SigtermCheckpoint().on_exception(Trainer(), None, stop)
        raise stop

    monkeypatch.setattr(cli, "DistillCLI", stopped_fit)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit"])
    assert exit_info.value.code == code
    assert Trainer.saved == [os.path.join("root", "checkpoints", "last.ckpt")]
    assert "resumable checkpoint: root" in capsys.readouterr().err


# ---------------------------------------------------------------- 6. README's and quickstart's commands
def _ckpt_commands() -> list[list[str]]:
    """Every ``lightning-distill ... --ckpt_path ...`` line of README and the quickstart, split."""
    commands = []
    for doc in (REPO / "README.md", REPO / "docs/quickstart.md"):
        for line in doc.read_text().splitlines():
            if line.startswith("lightning-distill ") and "--ckpt_path" in line:
                commands.append(shlex.split(line.split("#")[0])[1:])
    return commands


def test_readme_checkpoint_commands_run_on_what_fit_writes(tmp_path, monkeypatch, capsys):
    commands = _ckpt_commands()
    assert {c[0] for c in commands} >= {"test", "export", "fit"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    small = small_meal_v2(tmp_path)[2:]  # additions to the documented commands: smaller teachers, fewer steps
    main(
        [
            "fit",
            "--config",
            "recipes/meal_v2/config.yaml",
            *small,
            "--trainer.max_steps=2",
            "--test_after_fit=false",
        ]
    )
    for command in commands:
        assert Path(command[command.index("--ckpt_path") + 1]).is_file(), command
        extra = {
            "test": [*small, "--trainer.limit_test_batches=2", *QUIET],
            "fit": [
                *small,
                "--trainer.max_steps=4",
                "--trainer.limit_val_batches=1",
                "--test_after_fit=false",
                *QUIET,
            ],
        }.get(command[0], [])
        main([*command, *extra])
    assert "test/acc" in capsys.readouterr().out
    assert (tmp_path / "student" / "student.json").is_file()
