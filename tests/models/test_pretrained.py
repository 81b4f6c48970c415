"""Teacher builders: train once and cache by config, load users' checkpoints, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.models import MLPClassifier, SmallCNN, load_weights, trained_classifier


def test_trained_once_then_loaded_from_cache_and_retrained_when_config_changes(tmp_path):
    dm = DigitsDataModule(batch_size=64)
    a = trained_classifier(MLPClassifier(hidden=(64,)), dm, epochs=4, cache_dir=str(tmp_path))
    files = sorted((tmp_path / "teachers").glob("*.pt"))
    assert len(files) == 1
    record = json.loads(files[0].with_suffix(".json").read_text())
    assert record["val_acc"] > 0.8  # chance is 0.1
    files[0].with_suffix(".json").write_text(json.dumps({**record, "marker": 1}))

    torch.manual_seed(123)  # a different init must not matter: weights come from the cache
    b = trained_classifier(MLPClassifier(hidden=(64,)), dm, epochs=4, cache_dir=str(tmp_path))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert "cache" in b.distill_source

    trained_classifier(MLPClassifier(hidden=(64,)), dm, epochs=1, cache_dir=str(tmp_path))
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2


def test_training_does_not_touch_the_global_random_state(tmp_path):
    model, data = SmallCNN(width=4, depth=1), DigitsDataModule(batch_size=256)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    trained_classifier(model, data, epochs=1, cache_dir=str(tmp_path))
    torch.testing.assert_close(torch.rand(3), expected)


def test_load_weights_from_a_lightning_checkpoint_with_prefix(tmp_path):
    src = SmallCNN(width=4, depth=1)
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = load_weights(SmallCNN(width=4, depth=1), path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(SmallCNN(width=8, depth=1), path)
    with pytest.raises(RuntimeError, match="do not match"):
        load_weights(SmallCNN(width=4, depth=2), path)


def test_missing_checkpoint_and_missing_data_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="`checkpoint`"):
        trained_classifier(SmallCNN(), checkpoint=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="needs `checkpoint`.*or `data`"):
        trained_classifier(SmallCNN())


def test_cache_key_reads_the_datamodule_not_hparams_left_by_lightning_cli():
    """Under LightningCLI a teacher's nested datamodule can carry the top-level data section's hparams."""
    from lightning_distill.models.pretrained import _cache_key

    model = SmallCNN(width=4, depth=1)
    own = DigitsDataModule(size=16, shift=1)
    polluted = DigitsDataModule(size=16, shift=1)
    polluted.hparams.update(size=12, shift=0, batch_size=17)
    assert _cache_key(model, polluted, {}) == _cache_key(model, own, {})
    assert _cache_key(model, DigitsDataModule(size=12, shift=1), {}) != _cache_key(model, own, {})
