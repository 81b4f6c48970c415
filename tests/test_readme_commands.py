"""Every shell command in README.md and docs/quickstart.md, run literally as a subprocess.

The commands come from the documents' ```bash blocks (comments dropped, ``\\`` continuations
joined). They run in order, README first, in one fresh temporary folder holding a copy of
``recipes/`` (so ``runs/lightning_logs/version_0/...`` is the first fit's, as the documents say),
with ``lightning-distill`` on ``PATH`` from this interpreter's environment and the test session's
teacher cache. A command that appears twice is run once.

Fast override: ``fit`` and ``test`` commands get :data:`FAST` appended (one epoch of two batches,
two validation and test batches). The documented configs train for a minute or more; the
override keeps everything else literal (the config, the checkpoint paths, ``--test_after_fit``)
and still writes ``last.ckpt``, which the later ``test``/``export``/resume commands read.
``--trainer.fast_dev_run=true`` would not: Lightning writes no checkpoint under it.

Commands that need the network or are the test suite itself are skipped with the reason in
:data:`SKIPPED`; the heavier runs in :data:`SLOW` (a first-use teacher of another recipe, two DDP
processes) run only with ``LIGHTNING_DISTILL_SLOW=1``. A new command in the documents that is
neither a ``lightning-distill`` command nor listed in :data:`SKIPPED` fails
:func:`test_every_documented_command_is_run_or_skipped_with_a_reason`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/quickstart.md")
FAST = (
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
)
#: Commands not run, and why.
SKIPPED = {
    "make demo": "creates a fresh .venv and installs from PyPI (network); its MEAL V2 run is the meal_v2 "
    "fit below and tests/test_cli.py's config smoke run",
    "make test": "the whole test suite, this test included",
    "git clone <this repository> && cd lightning_distill": "a placeholder URL and the network",
    "python -m venv .venv && . .venv/bin/activate": "a fresh virtualenv, used by the PyPI installs below",
    "pip install torch": "installs from PyPI (network)",
    'pip install -e ".[dev,wandb]"': "installs from PyPI (network); tests/test_packaging.py builds and "
    "installs the wheel offline",
}
#: Commands run only with LIGHTNING_DISTILL_SLOW=1 (each adds 10-60 s on a 2-core CPU), by a fragment.
SLOW = {
    "--recipe beyond_ssl": "trains beyond_ssl's teacher on first use",
    "MLPClassifier": "another MEAL V2 fit; only the student class differs",
    "--model.init_args.mode=adversarial": "another MEAL V2 fit; the mode is tested in tests/recipes/test_meal_v2.py",
    "--trainer.strategy=ddp": "two DDP processes and a W&B offline run",
    "--test_after_fit=true": "another MEAL V2 fit; the config sets test_after_fit already, so the "
    "README fit above runs the same test",
    "fit --config recipes/meal_v2/config.yaml --ckpt_path": "resumes the README fit (another MEAL V2 start; "
    "exact resume is tested in tests/recipes)",
}


def documented_commands(path: Path) -> list[str]:
    """The shell commands of ``path``'s ```bash blocks, one string each (continuations joined)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.M | re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                # re-quote so a command compares equal however it was spaced
                commands.append(" ".join(shlex.quote(t) if t != "&&" else t for t in tokens))
    return commands


def _all_commands() -> list[tuple[str, str]]:
    seen, out = set(), []
    for doc in DOCUMENTS:
        for command in documented_commands(ROOT / doc):
            if command not in seen:
                seen.add(command)
                out.append((doc, command))
    return out


def _normalised(command: str) -> str:
    return " ".join(shlex.quote(t) if t != "&&" else t for t in shlex.split(command))


def _slow_reason(command: str) -> str | None:
    return next((why for fragment, why in SLOW.items() if fragment in command), None)


def test_the_documents_hold_the_commands_this_test_expects():
    commands = [c for _, c in _all_commands()]
    assert sum(c.startswith("lightning-distill ") for c in commands) >= 8, commands
    assert any(" export " in c for c in commands) and any(
        c.startswith("lightning-distill test ") for c in commands
    )


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    skipped = {_normalised(c) for c in SKIPPED}
    unknown = [c for _, c in _all_commands() if not c.startswith("lightning-distill ") and c not in skipped]
    assert not unknown, f"add these to SKIPPED with a reason, or make them runnable here: {unknown}"
    stale = skipped - {c for _, c in _all_commands()}
    assert not stale, f"SKIPPED lists commands no document has any more: {stale}"


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    tokens = shlex.split(command)
    if tokens[1] in ("fit", "test") and "--print_config" not in tokens:
        command = f"{command} {' '.join(FAST)}"
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _check(command: str, result: subprocess.CompletedProcess, cwd: Path) -> None:
    assert result.returncode == 0, (
        f"`{command}` exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    tokens = shlex.split(command)
    if tokens[1] == "list":
        assert "meal_v2" in result.stdout and "kd" in result.stdout
    if "--print_config" in tokens:
        assert "class_path: lightning_distill.recipes.meal_v2.MEALV2" in result.stdout
    if tokens[1] == "fit" and "--print_config" not in tokens:
        assert list((cwd / "runs").glob("**/checkpoints/last.ckpt"))  # CSV: lightning_logs/version_<n>/
    if "--test_after_fit=true" in tokens:
        assert "Result (test): student acc" in result.stdout + result.stderr
    if tokens[1] == "export":
        out = cwd / tokens[tokens.index("--out") + 1]
        assert (out / "model.safetensors").is_file() and (out / "student.json").is_file()


@pytest.fixture
def workdir(tmp_path: Path, teacher_cache: str) -> tuple[Path, dict[str, str]]:
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LIGHTNING_DISTILL_CACHE": teacher_cache,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    }
    assert shutil.which("lightning-distill", path=env["PATH"]), (
        "the lightning-distill script is not installed"
    )
    return tmp_path, env


def test_documented_commands_run_as_written(workdir):
    cwd, env = workdir
    run = [c for _, c in _all_commands() if c.startswith("lightning-distill ") and not _slow_reason(c)]
    assert len(run) >= 5, run
    for command in run:
        _check(command, _run(command, cwd, env), cwd)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LIGHTNING_DISTILL_SLOW") != "1", reason="minutes: LIGHTNING_DISTILL_SLOW=1"
)
@pytest.mark.parametrize("command", [c for _, c in _all_commands() if _slow_reason(c)])
def test_heavier_documented_commands_run_as_written(workdir, command):
    cwd, env = workdir
    if "--ckpt_path runs/" in command:  # reads the checkpoint of the documents' first fit
        first_fit = next(c for _, c in _all_commands() if c.startswith("lightning-distill fit "))
        _check(first_fit, _run(first_fit, cwd, env), cwd)
    _check(command, _run(command, cwd, env), cwd)
