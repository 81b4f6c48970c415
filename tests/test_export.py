"""Taking the result away: a recipe loads from its checkpoint alone, and `lightning-distill export`
writes the student in the format its users expect (round trips give the same outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from lightning_distill import DistillationModule
from lightning_distill.cli import export_student, main
from lightning_distill.models import SmallCNN
from lightning_distill.recipes.beyond_ssl import BeyondSSL
from lightning_distill.recipes.meal_v2 import MEALV2
from lightning_distill.utils.checkpoints import (
    CKPT_KEY,
    CheckpointError,
    build_from_config,
    load_exported_student,
)
from tests.test_cli_errors import fit_small_meal_v2, sha256

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def meal_v2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_small_meal_v2(tmp_path_factory.mktemp("meal_v2_export"))


def _student_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


def test_recipe_loads_from_its_checkpoint_without_the_config(meal_v2_ckpt):
    before = sha256(meal_v2_ckpt)
    module = MEALV2.load_from_checkpoint(meal_v2_ckpt)
    assert isinstance(module, MEALV2) and len(module.teachers) == 1  # the small config has one
    assert_close(module.student.state_dict(), _student_weights(meal_v2_ckpt))
    assert not any(p.requires_grad for p in module.teachers.parameters())
    # the base class loads whichever recipe wrote it; keyword arguments override recorded init_args
    other = DistillationModule.load_from_checkpoint(meal_v2_ckpt, temperature=2.0)
    assert type(other) is MEALV2 and other.hparams.temperature == 2.0
    assert sha256(meal_v2_ckpt) == before


def test_loading_as_another_recipe_names_both_classes(meal_v2_ckpt):
    with pytest.raises(CheckpointError, match=r"meal_v2\.MEALV2.*beyond_ssl\.BeyondSSL"):
        BeyondSSL.load_from_checkpoint(meal_v2_ckpt)


def test_checkpoint_without_its_build_record_asks_for_the_modules(meal_v2_ckpt, tmp_path):
    checkpoint = torch.load(meal_v2_ckpt, weights_only=True)
    del checkpoint[CKPT_KEY]["model_config"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(CheckpointError, match=r"does not record how .* were built.*student=\.\.\."):
        MEALV2.load_from_checkpoint(bare)
    with pytest.raises(CheckpointError, match="does not record how its student was built"):
        export_student(bare, tmp_path / "out")


def test_export_round_trip_gives_the_students_outputs(meal_v2_ckpt, tmp_path, capsys):
    out = tmp_path / "student"
    main(["export", "--ckpt_path", str(meal_v2_ckpt), "--out", str(out)])
    assert str(out) in capsys.readouterr().out
    info = json.loads((out / "student.json").read_text())
    assert info["class"] == "lightning_distill.models.classifiers.SmallCNN"
    assert info["build"]["init_args"]["width"] == 8  # the architecture, not the builder that trained it
    assert (out / info["weights"]).is_file() and info["recipe"].endswith("MEALV2")

    exported = load_exported_student(out)
    in_checkpoint = MEALV2.load_from_checkpoint(meal_v2_ckpt).student.eval()
    by_hand = SmallCNN(width=8, depth=2).eval()
    by_hand.load_state_dict(_student_weights(meal_v2_ckpt))
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(exported(x), in_checkpoint(x), rtol=0, atol=0)
        assert_close(exported(x), by_hand(x), rtol=0, atol=0)


def test_export_of_a_diffusers_student_writes_a_diffusers_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from lightning_distill.diffusion.export import load_student

    # DMD2 on digits with a random UNet teacher (no training): build it, save a checkpoint as `fit` does.
    config = yaml.safe_load((REPO / "recipes/dmd2/digits.yaml").read_text())["model"]
    init = config["init_args"]
    init["teacher"] = {"class_path": "diffusers.UNet2DModel", "init_args": init["student"]["init_args"]}
    init["student_init"] = "random"
    torch.manual_seed(0)  # the export rebuilds the same random teacher (no fingerprint warning)
    module = build_from_config(config, base=DistillationModule)
    module.build_config = config
    checkpoint = {"state_dict": module.state_dict(), "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    ckpt = tmp_path / "dmd2.ckpt"
    torch.save(checkpoint, ckpt)

    torch.manual_seed(0)
    out = export_student(ckpt, tmp_path / "student")
    assert (out / "unet" / "config.json").is_file() and (out / "distillation.json").is_file()
    loaded = load_student(out)
    assert isinstance(loaded.model, diffusers.UNet2DModel)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([999, 999])
    with torch.no_grad():
        assert_close(loaded.model(x, t).sample, module.student.eval()(x, t).sample)
