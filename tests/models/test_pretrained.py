"""Teacher builders: train once and cache by config, load users' checkpoints, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_distill
from lightning_distill.data import DigitsDataModule
from lightning_distill.models import MLPClassifier, SmallCNN, load_weights, trained_classifier
from lightning_distill.models.pretrained import cached_training, chance_margin


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


@pytest.mark.filterwarnings("ignore:The teacher cached at .* looks broken")  # one epoch: near chance
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


# --- fail loudly, never silently (issue 11) ---------------------------------------------------


class _ArrayData(L.LightningDataModule):
    """A user's datamodule (not ours, so nothing validates it): random images, optional NaN pixels."""

    def __init__(self, nan_fraction: float = 0.0, random_labels: bool = False, n: int = 600) -> None:
        super().__init__()
        self.nan_fraction, self.random_labels, self.n = nan_fraction, random_labels, n
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (n,), generator=gen)
        x = torch.randn(n, 1, 8, 8, generator=gen) * 0.1
        if not random_labels:
            x[:, 0, 0, :] += torch.nn.functional.one_hot(y, 10)[:, :8] * 3.0  # learnable signal
        x[torch.rand(x.shape, generator=gen) < nan_fraction] = float("nan")
        self.x, self.y = x, (torch.randint(0, 10, (n,), generator=gen) if random_labels else y)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x[: self.n // 2], self.y[: self.n // 2]), batch_size=50)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[self.n // 2 :], self.y[self.n // 2 :]), batch_size=100)


def _cached_files(cache) -> list[str]:
    folder = Path(cache) / "teachers"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_nan_training_data_stops_teacher_training_naming_the_step_file_and_config(tmp_path):
    with pytest.raises(FloatingPointError) as info:
        trained_classifier(
            MLPClassifier(hidden=(16,)), _ArrayData(nan_fraction=0.01), epochs=2, cache_dir=str(tmp_path)
        )
    message = str(info.value)
    assert "loss is nan at epoch 0, step 0" in message
    assert "Nothing was cached" in message and str(tmp_path / "teachers" / "MLPClassifier-") in message
    assert "_ArrayData(nan_fraction=0.01" in message and "epochs=2" in message
    assert _cached_files(tmp_path) == []
    # Clean data with the same cache works afterwards: nothing was poisoned.
    trained_classifier(MLPClassifier(hidden=(16,)), _ArrayData(), epochs=2, cache_dir=str(tmp_path))
    assert len([n for n in _cached_files(tmp_path) if n.endswith(".pt")]) == 1


def test_non_finite_weights_are_never_cached_and_the_message_names_the_parameters(tmp_path):
    model, data = SmallCNN(width=4, depth=1), _ArrayData()

    def fit():
        with torch.no_grad():
            model.head.weight[0, 0] = float("inf")
            model.stem[1].running_var.fill_(float("nan"))
        return {}

    with pytest.raises(
        FloatingPointError, match="non-finite values in `stem.1.running_var`, `head.weight`"
    ) as info:
        cached_training(model, data, {"epochs": 3}, fit, seed=0, cache_dir=str(tmp_path))
    assert str(tmp_path / "teachers" / "SmallCNN-") in str(info.value) and "epochs=3" in str(info.value)
    assert _cached_files(tmp_path) == []


@pytest.fixture
def chance_data():
    return _ArrayData(random_labels=True)


def test_teacher_near_chance_is_cached_with_a_warning_repeated_on_every_load(tmp_path, chance_data):
    assert chance_margin(10, 300) == pytest.approx(3 * (0.1 * 0.9 / 300) ** 0.5)
    with pytest.warns(
        UserWarning, match=r"looks broken: validation accuracy 0\.\d+ on 300 images is within 0\.052"
    ):
        trained_classifier(MLPClassifier(hidden=(16,)), chance_data, epochs=2, cache_dir=str(tmp_path))
    (record,) = (tmp_path / "teachers").glob("*.json")
    assert "of chance (0.100 for 10 classes)" in json.loads(record.read_text())["warning"]
    with pytest.warns(UserWarning, match="was flagged when it was trained: validation accuracy"):
        trained_classifier(MLPClassifier(hidden=(16,)), chance_data, epochs=2, cache_dir=str(tmp_path))


def test_teacher_near_chance_is_refused_with_near_chance_error(tmp_path, chance_data):
    with pytest.raises(RuntimeError, match=r"Refusing to cache .*MLPClassifier-.*within 0\.052 of chance"):
        trained_classifier(
            MLPClassifier(hidden=(16,)), chance_data, epochs=2, cache_dir=str(tmp_path), near_chance="error"
        )
    assert _cached_files(tmp_path) == []
    with pytest.raises(ValueError, match="`near_chance` must be 'warn' or 'error', got 'ignore'"):
        trained_classifier(MLPClassifier(), chance_data, near_chance="ignore")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())


def _other_architecture(path: Path) -> None:
    torch.save(SmallCNN(width=4, depth=1).state_dict(), path)


def _non_finite(path: Path) -> None:  # what versions before the guard could cache
    state = torch.load(path, weights_only=True)
    torch.save(
        {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path
    )


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_truncate, "truncated"),
        (_random_bytes, "not a PyTorch file"),
        (_other_architecture, "does not fit MLPClassifier"),
        (_non_finite, "non-finite values in `body.1.weight`, `body.1.bias`, `head.weight`"),
    ],
    ids=["truncated", "random-bytes", "other-architecture", "non-finite"],
)
def test_corrupted_cached_teacher_is_moved_aside_and_retrained_to_the_same_weights(tmp_path, corrupt, reason):
    data = DigitsDataModule(batch_size=128)
    first = trained_classifier(MLPClassifier(hidden=(16,)), data, epochs=1, cache_dir=str(tmp_path))
    (weights,) = (tmp_path / "teachers").glob("*.pt")
    corrupt(weights)
    bad_bytes = weights.read_bytes()

    with pytest.warns(UserWarning) as caught:
        again = trained_classifier(MLPClassifier(hidden=(16,)), data, epochs=1, cache_dir=str(tmp_path))
    message = " ".join(str(w.message) for w in caught)
    assert f"The cached teacher {weights} cannot be used: " in message and reason in message
    (aside,) = (tmp_path / "teachers").glob(f"{weights.name}.corrupt-*")
    assert f"Moved it to {aside}" in message
    assert aside.read_bytes() == bad_bytes  # kept for inspection, not deleted
    assert (tmp_path / "teachers" / aside.name.replace(".pt.", ".json.")).is_file()
    for k, v in first.state_dict().items():  # retrained deterministically: the same weights
        assert torch.equal(v, again.state_dict()[k])
    assert json.loads(weights.with_suffix(".json").read_text())["key"] in weights.name


@pytest.mark.parametrize("corrupt", [_truncate, _random_bytes], ids=["truncated", "random-bytes"])
def test_unreadable_user_checkpoint_names_the_file_and_never_advises_unsafe_loading(tmp_path, corrupt):
    path = tmp_path / "teacher.pt"
    torch.save(SmallCNN(width=4, depth=1).state_dict(), path)
    corrupt(path)
    with pytest.raises(RuntimeError, match=f"Cannot read the checkpoint '{path}'") as info:
        trained_classifier(SmallCNN(width=4, depth=1), checkpoint=str(path))
    assert "weights_only" not in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(RuntimeError, match=f"Cannot read the checkpoint '{path}'"):
        load_weights(SmallCNN(width=4, depth=1), path)


_TRAIN_IN_A_FRESH_PROCESS = """
import sys, torch
from lightning_distill.data import DigitsDataModule
from lightning_distill.models import SmallCNN, trained_classifier
cache, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(threads)
torch.rand(100)  # a process whose global random state was used before the teacher is built
trained_classifier(SmallCNN(width=8, depth=1), DigitsDataModule(size=8, shift=1), epochs=1, cache_dir=cache)
"""


def test_first_use_training_gives_bitwise_equal_weights_in_two_processes(tmp_path):
    """Two processes, two empty caches, different thread counts and global random states."""
    env = {**os.environ, "PYTHONPATH": str(Path(lightning_distill.__file__).parents[1])}
    env.pop("LIGHTNING_DISTILL_CACHE", None)
    caches = [tmp_path / "cache1", tmp_path / "cache2"]
    runs = [  # run side by side: starting Python and importing Lightning dominates the time
        subprocess.Popen(
            [sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS, str(cache), str(threads)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for threads, cache in zip((1, 2), caches)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output.decode()[-2000:]
    states = [torch.load(next((cache / "teachers").glob("*.pt")), weights_only=True) for cache in caches]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
