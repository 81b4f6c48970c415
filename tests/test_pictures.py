"""Every family logs at least one picture during validation, through the logger a researcher uses.

One config per family is fitted for two training steps and one validation batch with W&B offline
(TensorBoard is not installed here; every picture callback and recipe logs to both, or to W&B only,
see below). The logger records each ``log_image`` call; the test asserts that a picture was logged
at the end of validation, under the key the family's callback or recipe uses.

* baseline / classification / representation: ``ClassificationPictures`` (confusion matrix and
  per-class accuracy, student next to teachers);
* diffusion: ``SampleLogger`` (samples over the data);
* dataset: the recipe base's synthetic set as one picture (W&B's ``log_image`` only);
* lidar: ``PointCloudLogger`` (a scan coloured by label and by feature PCA);
* graphs: Mirage's mined graph set, a few graphs per class (``graphs.visualize.draw_graphs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from lightning.pytorch.loggers import WandbLogger

from lightning_distill.cli import main

REPO = Path(__file__).resolve().parents[1]


class RecordingWandbLogger(WandbLogger):
    """A W&B logger that also records the keys of the pictures it is given."""

    logged: ClassVar[list[str]] = []

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        RecordingWandbLogger.logged.append(key)
        super().log_image(key=key, images=images, step=step, **kwargs)


FAMILIES = {
    "baseline": ("kd/config.yaml", "val/classes", []),
    "representation": ("beyond_ssl/config.yaml", "val/classes", []),
    "diffusion": (  # the config pictures every 13th epoch: 13 epochs of one batch
        "dmd2/config.yaml",
        "val/samples",
        ["--trainer.max_epochs=13", "--trainer.max_steps=-1", "--trainer.limit_train_batches=1"],
    ),
    "dataset": (
        "cda/config.yaml",
        "samples/synthetic_set",
        ["--model.init_args.val_epochs=1"],
    ),  # 1 retraining epoch
    "lidar": (
        "slidr/config.yaml",
        "val/point_cloud_labels",
        ["--data.init_args.num_scenes=2", "--data.init_args.val_scenes=1", "--data.init_args.test_scenes=1"],
    ),
    "graphs": ("mirage/config.yaml", "samples/graph_set", []),
}
NO_PICTURE_YET: set[str] = set()


@pytest.fixture
def wandb_finished():
    """End the offline W&B run after each fit, so the next test's logger starts its own."""
    yield
    import wandb

    wandb.finish()


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(
            f,
            marks=pytest.mark.xfail(
                strict=True, reason="Mirage logs no picture yet (see the module docstring)"
            ),
        )
        if f in NO_PICTURE_YET
        else f
        for f in FAMILIES
    ],
)
def test_each_family_logs_a_picture_during_validation(family, tmp_path, monkeypatch, wandb_finished):
    config, key, extra = FAMILIES[family]
    monkeypatch.chdir(tmp_path)  # configs' relative paths (data/tu, caches) land in tmp_path
    monkeypatch.setenv("WANDB_MODE", "offline")
    RecordingWandbLogger.logged.clear()
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / config),
            "--trainer.logger=tests.test_pictures.RecordingWandbLogger",
            "--trainer.logger.offline=true",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.max_steps=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--test_after_fit=false",
            *extra,
        ]
    )
    logged = list(RecordingWandbLogger.logged)
    assert logged, f"{family} ({config}) logged no picture during validation"
    assert any(k.startswith(key) for k in logged), f"{family}: expected a picture `{key}...`, got {logged}"
