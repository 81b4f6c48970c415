"""The shared benchmark harness (benchmarks/_harness.py): flags, threads, quiet CLI runs, where results go."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("_harness")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture
def restore_threads(monkeypatch):
    """``start`` sets torch threads, env variables and warning filters: put them back afterwards."""
    threads = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    with warnings.catch_warnings():
        yield
    torch.set_num_threads(threads)


def test_shared_flags_and_defaults(harness) -> None:
    parser = harness.bench_parser(
        str(ROOT / "benchmarks" / "dmd2.py"), "First line.\n\nMore.", quick="1 seed"
    )
    args = parser.parse_args([])
    assert (args.seeds, args.threads, args.quick, args.no_readme) == ([0, 1, 2], 1, False, False)
    assert parser.description == "First line."
    assert parser.script == "benchmarks/dmd2.py"
    args = parser.parse_args(["--seeds", "3", "4", "--threads", "2", "--quick", "--no-readme"])
    assert (args.seeds, args.threads, args.quick, args.no_readme) == ([3, 4], 2, True, True)


def test_optional_flags_are_left_out(harness) -> None:
    parser = harness.bench_parser("benchmarks/x.py", None, seeds=None, threads=None, readme=False)
    args = parser.parse_args([])
    assert vars(args) == {"threads": None}
    assert harness.bench_parser("benchmarks/x.py", None, samples=500).parse_args(["--n", "7"]).n == 7
    for flag in ("--seeds", "--quick", "--no-readme"):
        with pytest.raises(SystemExit):
            parser.parse_args([flag])


def test_start_sets_threads_env_and_command(harness, restore_threads) -> None:
    parser = harness.bench_parser(str(ROOT / "benchmarks" / "msd.py"), "doc")
    parser.add_argument("--name", default="a")
    args = parser.start(["--threads", "2", "--name", "b c"])
    assert torch.get_num_threads() == 2
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
    assert args.command == "python benchmarks/msd.py --threads 2 --name 'b c'"
    with pytest.raises(SystemExit):
        parser.start(["--threads", "0"])


def test_start_with_no_thread_count_keeps_torchs_choice(harness, restore_threads) -> None:
    before = torch.get_num_threads()
    harness.bench_parser("benchmarks/x.py", "doc", threads=None).start([])
    assert torch.get_num_threads() == before


def test_quiet_silences_the_noisy_warnings_only(harness, restore_threads) -> None:
    harness.quiet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        harness.quiet()
        warnings.warn(
            "The 'train_dataloader' does not have many workers which may be a bottleneck.", stacklevel=1
        )
        warnings.warn("something else", stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
    with warnings.catch_warnings(record=True) as caught:
        harness.quiet(all_warnings=True)
        warnings.warn("something else", stacklevel=1)
    assert caught == []


def test_quiet_cli_args(harness) -> None:
    args = harness.quiet_cli_args()
    assert "--trainer.logger=false" in args and "--trainer.limit_val_batches=0" in args
    assert harness.quiet_cli_args("/tmp/w")[-1] == "--trainer.default_root_dir=/tmp/w"


def test_recipe_cli_builds_a_quiet_trainer(harness, tmp_path: Path) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "recipes" / "dmd2" / "config.yaml").read_text())
    cli = harness.recipe_cli(config, 3, ["--trainer.max_epochs=1"], workdir=tmp_path)
    trainer = cli.trainer
    assert (tmp_path / "config.yaml").is_file()
    assert trainer.logger is None and trainer.max_epochs == 1
    assert trainer.limit_val_batches == 0 and trainer.progress_bar_callback is None
    assert trainer.default_root_dir == str(tmp_path)
    with pytest.raises(ValueError, match="workdir"):
        harness.recipe_cli(config, 0)


def test_timed_fit_and_logged(harness) -> None:
    calls = []
    trainer = SimpleNamespace(
        fit=lambda model, datamodule, **kw: calls.append((model, datamodule, kw)),
        callback_metrics={"train/loss": torch.tensor(0.5)},
    )
    cli = SimpleNamespace(trainer=trainer, model="m", datamodule="d")
    wall, cpu = harness.timed_fit(cli, ckpt_path="x.ckpt")
    assert calls == [("m", "d", {"ckpt_path": "x.ckpt"})] and wall >= 0 and cpu >= 0
    assert harness.logged(cli, "train/loss") == 0.5
    assert harness.logged(cli, "train/other") != harness.logged(cli, "train/other")  # nan


def test_sampling_ms_seeds_each_call(harness) -> None:
    seen = []

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        seen.append(int(torch.randint(1000, (1,), generator=generator)))
        return torch.zeros(n)

    assert harness.sampling_ms(draw, 4, repeats=3) >= 0
    assert seen == [
        int(torch.randint(1000, (1,), generator=torch.Generator().manual_seed(k))) for k in range(3)
    ]


def test_results_dir_and_update_readme(harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    assert harness.results_dir(argparse.Namespace(quick=False)) == tmp_path / "results"
    assert harness.results_dir(argparse.Namespace(quick=True)).is_dir()
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    for flags in ({"quick": True, "no_readme": False}, {"quick": False, "no_readme": True}):
        assert not harness.update_readme(argparse.Namespace(**flags), readme, "new")
    assert "old" in readme.read_text()
    assert harness.update_readme(argparse.Namespace(quick=False, no_readme=False), readme, "new")
    assert readme.read_text() == "x\n<!-- results:start -->\nnew\n<!-- results:end -->\n"
