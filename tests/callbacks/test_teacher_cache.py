"""TeacherCacheCallback: a Lightning run reads teacher outputs from the cache (one process and DDP)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.teacher_cache import TeacherCacheCallback
from lightning_distill.data.indexed import IndexedDataset
from lightning_distill.models.teacher_store import TeacherCache
from lightning_distill.utils.augment import RandomResizedCropFlip

NUM_SAMPLES, NUM_CLASSES = 12, 5


class CountingTeacher(nn.Module):
    """A small CNN that counts its forward calls and the samples it saw."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(NUM_CLASSES)
        )
        self.net(torch.zeros(1, 1, 6, 6))  # materialise the lazy layer
        self.requires_grad_(False).eval()
        self.calls = 0
        self.samples = 0

    def forward(self, x):
        self.calls += 1
        self.samples += x.shape[0]
        return self.net(x)


def _images(n=NUM_SAMPLES, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _cache(tmp_path, dataset=None, teacher=None, **kwargs):
    dataset = _images() if dataset is None else dataset
    teacher = CountingTeacher() if teacher is None else teacher
    kwargs.setdefault("output_dim", NUM_CLASSES)
    return TeacherCache(tmp_path / "cache", dataset, teacher, **kwargs)


class _KDModule(pl.LightningModule):
    """A user's own KD module: with a cache callback, or the teacher on the same crops each step."""

    def __init__(self, teacher, cache_callback=None):
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Flatten(), nn.Linear(36, NUM_CLASSES))
        self.teacher = teacher
        self.cache_callback = cache_callback
        self.augmentation = RandomResizedCropFlip(6, scale=(0.3, 1.0))
        self.losses = []
        self.teacher_calls_per_epoch = []

    def configure_callbacks(self):
        return [self.cache_callback] if self.cache_callback is not None else []

    def training_step(self, batch, batch_idx):
        images, _, index = batch
        if self.cache_callback is not None:
            inputs, teacher_logits = self.cache_callback.teacher_outputs(images, index)
        else:
            params = self.augmentation.params_for(index, seed=0, slot=0, height=8, width=8)
            inputs = self.augmentation.apply(images, params)
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
        student_logits = self.student(inputs)
        loss = F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits, 1), reduction="batchmean")
        self.losses.append(loss.detach())
        return loss

    def on_train_epoch_end(self):
        self.teacher_calls_per_epoch.append(self.teacher.calls)

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.5)


def _fit(tmp_path, use_cache):
    teacher = CountingTeacher()
    callback = None
    if use_cache:
        callback = TeacherCacheCallback(
            tmp_path / "cache",
            output_dim=NUM_CLASSES,
            augmentation=RandomResizedCropFlip(6, scale=(0.3, 1.0)),
            seed=0,
        )
    model = _KDModule(teacher, callback)
    data = IndexedDataset(TensorDataset(_images(), torch.zeros(NUM_SAMPLES, dtype=torch.long)))
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    return model, trainer


def test_fit_skips_the_teacher_after_the_first_epoch_with_the_same_losses(tmp_path):
    cached, trainer = _fit(tmp_path, use_cache=True)
    assert cached.teacher_calls_per_epoch == [3, 3, 3]  # 3 batches in epoch 0, none after
    assert float(trainer.callback_metrics["cache/hit_rate"]) == 1.0

    plain, _ = _fit(tmp_path, use_cache=False)
    assert plain.teacher_calls_per_epoch == [3, 6, 9]
    assert_close(torch.stack(cached.losses), torch.stack(plain.losses), rtol=2e-3, atol=1e-6)

    again, _ = _fit(tmp_path, use_cache=True)  # a second run reuses the cache from its first step
    assert again.teacher_calls_per_epoch == [0, 0, 0]
    assert_close(torch.stack(again.losses), torch.stack(cached.losses), rtol=0, atol=0)


def test_callback_refuses_a_module_without_the_teacher_attribute(tmp_path):
    class NoTeacher(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(1, 1)

    callback = TeacherCacheCallback(tmp_path, output_dim=2)
    with pytest.raises(ValueError, match="teacher_attribute"):
        callback.setup(pl.Trainer(logger=False), NoTeacher(), "fit")


DDP_SCRIPT = """
import json
import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.callbacks.teacher_cache import TeacherCacheCallback
from lightning_distill.data.indexed import IndexedDataset
from lightning_distill.utils.augment import RandomResizedCropFlip

out_dir = sys.argv[1]


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
        self.requires_grad_(False).eval()
        self.calls = 0
        self.seen = []

    def forward(self, x):
        self.calls += 1
        return self.net(x)


class KD(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.student = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
        self.teacher = Teacher()
        self.cache = TeacherCacheCallback(
            out_dir + "/cache", output_dim=5, augmentation=RandomResizedCropFlip(6, scale=(0.3, 1.0)), seed=0
        )
        self.calls_per_epoch, self.indices = [], []

    def configure_callbacks(self):
        return [self.cache]

    def training_step(self, batch, batch_idx):
        images, _, index = batch
        self.indices.append(index.tolist())
        inputs, teacher_logits = self.cache.teacher_outputs(images, index)
        return F.kl_div(F.log_softmax(self.student(inputs), 1), F.softmax(teacher_logits, 1), reduction="batchmean")

    def on_train_epoch_end(self):
        self.calls_per_epoch.append(self.teacher.calls)

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


if __name__ == "__main__":
    images = torch.rand(14, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = IndexedDataset(TensorDataset(images, torch.zeros(14, dtype=torch.long)))
    model = KD()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True))
    result = {
        "calls": model.calls_per_epoch,
        "indices": model.indices,
        "hit_rate": float(trainer.callback_metrics["cache/hit_rate"]),
    }
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)
"""


def test_two_process_ddp_fills_the_cache_once_with_replayable_entries(tmp_path):
    script = tmp_path / "ddp_cache.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MASTER_PORT", None)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        assert result["calls"] == [2, 2, 2]  # cumulative: 2 batches per rank in epoch 1, none after
        assert result["hit_rate"] == 1.0
    first_epoch = [set(sum(r["indices"][:2], [])) for r in results]
    assert first_epoch[0] | first_epoch[1] == set(range(14))  # the shards cover the data (one sample twice)

    # Every entry, whichever rank wrote it, equals a fresh teacher forward on its replayed crop.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    images = torch.rand(14, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cache = TeacherCache(
        tmp_path / "cache",
        IndexedDataset(TensorDataset(images, torch.zeros(14, dtype=torch.long))),
        None,
        output_dim=5,
        augmentation=RandomResizedCropFlip(6, scale=(0.3, 1.0)),
        teacher_id=json.loads((tmp_path / "cache" / "manifest.json").read_text())["teacher"]["fingerprint"],
        create=False,
    )
    outputs, hit = cache.lookup(torch.arange(14), epoch=0)
    params, _ = cache.lookup_params(torch.arange(14), epoch=0)
    assert hit.all()
    assert_close(params, cache.augmentation.params_for(torch.arange(14), seed=0, slot=0, height=8, width=8))
    with torch.no_grad():
        fresh = net(cache.augmentation.apply(images, params))
    assert_close(outputs, fresh, rtol=1e-3, atol=1e-3)  # fp16 storage; the ranks ran other batch shapes
