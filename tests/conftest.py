"""Shared fixtures: an isolated teacher cache, quiet trainers and tiny recipe ingredients."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Trained teachers are cached once per test session, never in the user's cache."""
    if "LIGHTNING_DISTILL_TEST_CACHE" in os.environ:  # reuse across local runs if asked
        path = os.environ["LIGHTNING_DISTILL_TEST_CACHE"]
    elif "PYTEST_XDIST_WORKER" in os.environ:
        # pytest-xdist workers share one cache (the cache's file lock lets one train while the others
        # wait), in the run's common temporary folder rather than one folder per worker.
        shared = tmp_path_factory.getbasetemp().parent / "teacher_cache"
        shared.mkdir(exist_ok=True)
        path = str(shared)
    else:
        path = str(tmp_path_factory.mktemp("teacher_cache"))
    os.environ["LIGHTNING_DISTILL_CACHE"] = path
    return path


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


def quiet_trainer_kwargs(**overrides):
    """Trainer arguments for tests: CPU, no logger, no progress bar, no checkpoints."""
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return kwargs
