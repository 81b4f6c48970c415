"""The `lightning-distill` command: list, configs of every recipe, errors, DDP and W&B."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_distill.cli import main
from lightning_distill.recipes import RECIPES, load_recipe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "recipes").glob("*/*.yaml"))
CONFIG_IDS = [f"{c.parent.name}/{c.stem}" for c in CONFIGS]
CLASSIFIERS = {"baseline", "classification", "representation"}  # student and teacher report test/acc
NOT_CLASSIFIERS = {"diffusion_features": "test/pck"}  # recipes of those families scored otherwise
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def config_args(config: Path) -> list[str]:
    """``--config`` arguments for ``config``; an overlay (no ``model.class_path``, e.g.
    ``lasermix_pp/supervised.yaml``) is applied on top of its recipe's ``config.yaml``."""
    model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    if "class_path" in model:
        return ["--config", str(config)]
    return ["--config", str(config.parent / "config.yaml"), "--config", str(config)]


def test_every_yaml_under_recipes_parses():
    for path in (REPO / "recipes").rglob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_every_registered_recipe_has_a_config_readme_and_importable_class():
    for slug, info in RECIPES.items():
        assert (REPO / "recipes" / slug / info.config).is_file(), slug
        assert (REPO / "recipes" / slug / "README.md").is_file(), slug
        assert load_recipe(slug).__name__


def test_list_prints_every_recipe_with_its_paper(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for slug, info in RECIPES.items():
        assert slug in out and info.title in out


def test_unknown_recipe_name_suggests_close_matches():
    with pytest.raises(SystemExit, match=r"Unknown recipe 'meal_v3'.*'meal_v2'"):
        main(["fit", "--recipe", "meal_v3"])
    with pytest.raises(KeyError, match="lightning-distill list"):
        load_recipe("nope")


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_print_config_resolves_the_recipe(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *config_args(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe_module = RECIPES[config.parent.name].class_path.rpartition(".")[0]
    assert printed["model"]["class_path"].rpartition(".")[0] == recipe_module


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_fit_then_test_runs_each_recipe_config(config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in configs (e.g. a cache directory) land in tmp_path
    main(
        [
            "fit",
            *config_args(config),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks+=tests.test_contracts.LoggedKeysRule",  # the logging rule
            *QUIET,
        ]
    )
    ckpt = tmp_path / "model.ckpt"
    main(
        [
            "test",
            *config_args(config),
            "--trainer.limit_test_batches=1",
            *QUIET,
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    out = capsys.readouterr().out
    assert "test/" in out  # the test loop ran and printed its metrics table
    slug = config.parent.name
    if slug in NOT_CLASSIFIERS:
        assert NOT_CLASSIFIERS[slug] in out and "test/teacher" in out
    elif RECIPES[slug].family in CLASSIFIERS:
        assert "test/acc" in out and "test/teacher" in out
    assert not ckpt.exists()


def test_recipe_flag_is_the_same_as_its_config(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["fit", "--recipe", "beyond_ssl", "--print_config"])
    assert "lightning_distill.recipes.beyond_ssl.BeyondSSL" in capsys.readouterr().out


def test_missing_teacher_checkpoint_is_reported_with_its_argument(tmp_path):
    missing = tmp_path / "nope.ckpt"
    # jsonargparse reports it while instantiating the model; the message is ours.
    with pytest.raises(
        (FileNotFoundError, ValueError), match=r"Teacher checkpoint not found: `checkpoint`='.*nope.ckpt'"
    ):
        main(
            [
                "fit",
                "--config",
                str(REPO / "recipes/beyond_ssl/config.yaml"),
                "--trainer.fast_dev_run=true",
                f"--model.init_args.teacher.init_args.checkpoint={missing}",
                *QUIET,
            ]
        )


def test_each_run_keeps_its_config_logs_it_nested_and_labels_the_student(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default CSV logger writes under ./runs
    args = [
        "fit",
        "--config",
        str(REPO / "recipes/kd/config.yaml"),
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false",
        "--test_after_fit=true",
        *QUIET,
    ]
    main(args)
    main(args)
    out = capsys.readouterr().out
    assert out.count("Result (test): student acc ") == 2 and " vs teacher " in out
    runs = sorted((tmp_path / "runs" / "lightning_logs").glob("version_*"))
    assert [r.name for r in runs] == ["version_0", "version_1"]  # one config per run, none overwritten
    for run in runs:
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["class_path"].endswith(
            "KnowledgeDistillation"
        )
        logged = yaml.safe_load((run / "hparams.yaml").read_text())
        assert logged["run"] == {
            "recipe": "lightning_distill.recipes.kd.KnowledgeDistillation",
            "student": "lightning_distill.models.classifiers.SmallCNN",
            "teachers": ["lightning_distill.models.classifiers.SmallCNN"],
            "optimizer": "torch.optim.AdamW",
            "lr": 3.0e-3,
            "seed_everything": 0,
        }
        assert logged["model"]["init_args"]["temperature"] == 4.0  # nested, not flat
        assert logged["data"]["init_args"]["batch_size"] == 64 and logged["trainer"]["max_steps"] == 1
        assert "temperature" not in logged and "batch_size" not in logged


def _run_cli(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_distill.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fit_with_ddp_on_two_cpu_processes(tmp_path):
    result = _run_cli(
        [
            "fit",
            "--config",
            str(REPO / "recipes/meal_v2/config.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.max_steps=3",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--test_after_fit=false",
            *QUIET,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered" in result.stderr + result.stdout
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert ckpts, "no checkpoint written"


def test_wandb_offline_run_holds_loss_terms_and_metrics(tmp_path):
    pytest.importorskip("wandb")
    result = _run_cli(
        [
            "fit",
            "--config",
            str(REPO / "recipes/beyond_ssl/config.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.log_every_n_steps=1",
            "--test_after_fit=false",
            "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.offline=true",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.logger.project=lightning-distill-test",
            *QUIET,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = (b"train/dist", b"train/ce", b"train/loss", b"val/acc", b"val/teacher_acc")
    # wandb's service process may still be flushing the run file when the CLI process has exited.
    deadline = time.monotonic() + 60
    while True:
        history = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        if all(key in history for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for key in keys:
        assert key in history, key
    # the nested config (classes, lr, seed) and the classification picture; the config file in the run's folder
    for fragment in (
        b"lightning_distill.models.classifiers.SmallCNN",
        b"seed_everything",
        b"init_args",
        b"val/classes",
    ):
        assert fragment in history, fragment
    (config,) = (tmp_path / "lightning-distill-test").glob("*/config.yaml")
    assert config.parent.name == runs[0].name.rsplit("-", 1)[1]  # the W&B run id
