"""A data module nested in the model's config keeps its own hyper-parameters under the CLI.

LightningCLI gives every LightningDataModule it builds the top-level ``data:`` section as its
hyper-parameters; a teacher's own training data (a data module inside ``model:``) must not read the
student's settings.
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
import yaml

from lightning_distill.cli import DistillCLI


class SettingsData(L.LightningDataModule):
    def __init__(self, num_scenes: int = 4, beams: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()


class HoldsData(L.LightningModule):
    def __init__(self, teacher_data: L.LightningDataModule, width: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["teacher_data"])
        self.teacher_data = teacher_data
        self.layer = torch.nn.Linear(width, 1)


def _cli(tmp_path, teacher_beams: int) -> DistillCLI:
    here = __name__
    config = {
        "model": {
            "class_path": f"{here}.HoldsData",
            "init_args": {
                "width": 3,
                "teacher_data": {"class_path": f"{here}.SettingsData", "init_args": {"beams": teacher_beams}},
            },
        },
        "data": {"class_path": f"{here}.SettingsData", "init_args": {"num_scenes": 8, "beams": 32}},
        "trainer": {"logger": False, "enable_checkpointing": False, "default_root_dir": str(tmp_path)},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return DistillCLI(args=["--config", str(path)], run=False)


def test_nested_data_module_keeps_its_own_hyperparameters(tmp_path):
    cli = _cli(tmp_path, teacher_beams=8)
    assert cli.datamodule.hparams["num_scenes"] == 8 and cli.datamodule.hparams["beams"] == 32
    nested = cli.model.teacher_data
    assert dict(nested.hparams) == {"num_scenes": 4, "beams": 8}
    assert cli.model.hparams["width"] == 3


def test_top_level_sections_still_record_the_config(tmp_path):
    # The top-level objects keep LightningCLI's behaviour: the class path is recorded with the arguments.
    cli = _cli(tmp_path, teacher_beams=32)
    assert cli.datamodule.hparams["_class_path"].endswith("SettingsData")
    assert cli.model.hparams["_class_path"].endswith("HoldsData")
