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

from lightning_distill.callbacks.teacher_cache import (
    IndexedDataset,
    RandomResizedCropFlip,
    TeacherCache,
    TeacherCacheCallback,
    TeacherCacheMismatchError,
    counter_uniforms,
    fingerprint_dataset,
    fingerprint_module,
)

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


def test_store_lookup_round_trip_in_fp16(tmp_path):
    cache = _cache(tmp_path)
    outputs = torch.randn(3, NUM_CLASSES, generator=torch.Generator().manual_seed(1)) * 10
    returned = cache.store(torch.tensor([1, 3, 7]), 0, outputs)
    got, hit = cache.lookup(torch.tensor([1, 2, 3, 7]), epoch=0)
    assert hit.tolist() == [True, False, True, True]
    assert torch.isnan(got[1]).all()
    assert_close(got[[0, 2, 3]], outputs.half().float(), rtol=0, atol=0)
    assert_close(got[[0, 2, 3]], outputs, rtol=1e-3, atol=1e-3)
    assert_close(returned, got[[0, 2, 3]], rtol=0, atol=0)
    cache.close()
    reopened = _cache(tmp_path)  # a new process would see the same
    assert_close(reopened.lookup([1, 3, 7], epoch=5)[0], outputs.half().float(), rtol=0, atol=0)


def test_top_k_stores_values_and_classes_and_fills_the_rest(tmp_path):
    cache = _cache(tmp_path, top_k=2)
    outputs = torch.tensor([[0.0, 3.0, 1.0, -1.0, 2.5], [5.0, 0.0, 0.0, 4.0, 1.0]])
    cache.store([4, 9], 0, outputs)
    got, hit = cache.lookup([4, 9], 0)
    assert hit.all()
    inf = float("-inf")
    assert_close(got, torch.tensor([[inf, 3.0, inf, inf, 2.5], [5.0, inf, inf, 4.0, inf]]))
    expected = torch.softmax(torch.tensor([[3.0, 2.5], [5.0, 4.0]]), dim=1)
    assert_close(torch.softmax(got, dim=1)[got.isfinite()].view(2, 2), expected)
    assert (tmp_path / "cache" / "classes.npy").exists()


def test_hit_mask_follows_epoch_slots(tmp_path):
    cache = _cache(tmp_path, augmentation=RandomResizedCropFlip(6), num_slots=2)
    cache.store(
        [0, 1], 0, torch.zeros(2, NUM_CLASSES), aug_params=torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.0]] * 2)
    )
    assert cache.lookup([0, 1, 2], epoch=0)[1].tolist() == [True, True, False]
    assert cache.lookup([0, 1, 2], epoch=2)[1].tolist() == [True, True, False]  # slot 0 again
    assert cache.lookup([0, 1, 2], epoch=1)[1].tolist() == [False, False, False]
    params, hit = cache.lookup_params([0, 2], epoch=2)
    assert_close(params[0], torch.tensor([0.0, 0.0, 8.0, 8.0, 0.0]))
    assert torch.isnan(params[1]).all()


@pytest.mark.parametrize("section", ["dataset", "teacher", "augmentation"])
def test_manifest_mismatch_names_what_differs_and_how_to_rebuild(tmp_path, section):
    base = dict(augmentation=RandomResizedCropFlip(6, scale=(0.5, 1.0)))
    cache = _cache(tmp_path, **base)
    cache.store([0], 0, torch.ones(1, NUM_CLASSES), aug_params=torch.tensor([[0.0, 0.0, 8.0, 8.0, 1.0]]))
    cache.close()
    changed = dict(base)
    if section == "dataset":
        data = _images()
        data[NUM_SAMPLES - 1] += 1  # a probed sample changes
        changed["dataset"] = data
    elif section == "teacher":
        teacher = CountingTeacher()
        teacher.net[0].bias.add_(1e-3)
        changed["teacher"] = teacher
    else:
        changed["augmentation"] = RandomResizedCropFlip(6, scale=(0.25, 1.0))
    with pytest.raises(TeacherCacheMismatchError) as info:
        _cache(tmp_path, **changed)
    message = str(info.value)
    assert f"different {section}:" in message
    for other in {"dataset", "teacher", "augmentation"} - {section}:
        assert f"{other}:" not in message
    assert "rebuild=True" in message and "delete" in message

    rebuilt = _cache(tmp_path, rebuild=True, **changed)
    assert not rebuilt.lookup([0], 0)[1].any()
    stored = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert stored == rebuilt.manifest


def test_output_format_change_is_refused_and_other_files_survive_rebuild(tmp_path):
    _cache(tmp_path).close()
    keep = tmp_path / "cache" / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(TeacherCacheMismatchError, match="different outputs"):
        _cache(tmp_path, top_k=2)
    _cache(tmp_path, top_k=2, rebuild=True)
    assert keep.read_text() == "mine"


def test_a_damaged_cache_is_refused_or_rebuilt(tmp_path):
    cache = _cache(tmp_path)
    cache.store([0], 0, torch.ones(1, NUM_CLASSES))
    cache.close()
    (tmp_path / "cache" / "values.npy").unlink()
    with pytest.raises(FileNotFoundError, match="values.npy is missing.*rebuild=True"):
        _cache(tmp_path)
    rebuilt = _cache(tmp_path, rebuild=True)
    assert not rebuilt.lookup([0], 0)[1].any()


def test_user_given_ids_replace_hashes(tmp_path):
    def open_cache(data, teacher_id):
        return TeacherCache(
            tmp_path, data, None, output_dim=NUM_CLASSES, dataset_id="digits-v1", teacher_id=teacher_id
        )

    open_cache(_images(), "resnet-a").close()
    open_cache(_images(seed=5), "resnet-a").close()  # same ids: the samples are not hashed
    with pytest.raises(TeacherCacheMismatchError, match="different teacher"):
        open_cache(_images(), "resnet-b")
    with pytest.raises(TeacherCacheMismatchError, match="different dataset"):
        open_cache(_images(n=NUM_SAMPLES + 1), "resnet-a")  # the length still counts


def test_fingerprints_see_weights_and_samples_and_refuse_random_datasets():
    assert fingerprint_module(CountingTeacher(0)) == fingerprint_module(CountingTeacher(0))
    assert fingerprint_module(CountingTeacher(0)) != fingerprint_module(CountingTeacher(1))
    data = _images()
    assert fingerprint_dataset(data) == fingerprint_dataset(IndexedDataset(data.clone()))
    assert fingerprint_dataset(data) != fingerprint_dataset(data[:-1])

    class Noisy:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2)

    with pytest.raises(ValueError, match="random transforms"):
        fingerprint_dataset(Noisy())


def test_random_resized_crop_flip_matches_crop_interpolate_flip():
    aug = RandomResizedCropFlip((5, 7), scale=(0.2, 1.0))
    images = torch.rand(16, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    params = aug.sample_params(16, 9, 11, generator=torch.Generator().manual_seed(1))
    got = aug.apply(images, params)
    for image, (top, left, h, w, flip), out in zip(images, params.long().tolist(), got):
        crop = image[None, :, top : top + h, left : left + w]
        expected = F.interpolate(crop, size=(5, 7), mode="bilinear", align_corners=False)[0]
        if flip:
            expected = expected.flip(-1)
        assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert params[:, 4].min() == 0 and params[:, 4].max() == 1  # both flips occur in 16 draws


def test_random_resized_crop_params_respect_scale_ratio_and_fall_back_to_centre():
    aug = RandomResizedCropFlip(4, scale=(0.3, 0.6), ratio=(0.5, 2.0))
    params = aug.params_for(torch.arange(200), seed=0, slot=0, height=20, width=30)
    top, left, h, w, flip = params.unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= 20) & (left + w <= 30)).all()
    area = h * w / 600
    assert area.min() > 0.25 and area.max() < 0.65  # rounding widens the range slightly
    assert ((w / h) > 0.45).all() and ((w / h) < 2.2).all()
    assert 0.35 < flip.mean() < 0.65
    # An impossible request (a 1:3 crop of the whole square) falls back to the centre crop.
    tall = RandomResizedCropFlip(4, scale=(1.0, 1.0), ratio=(3.0, 3.0), flip_p=0.0)
    assert tall.params_for([0], seed=0, slot=0, height=9, width=9).tolist() == [[3.0, 0.0, 3.0, 9.0, 0.0]]


def test_counter_uniforms_depend_only_on_seed_slot_and_index():
    a = counter_uniforms(1, 0, [5, 6, 7], 3)
    b = counter_uniforms(1, 0, [7, 5], 3)
    assert_close(a[[2, 0]], b, rtol=0, atol=0)
    assert not torch.equal(a, counter_uniforms(2, 0, [5, 6, 7], 3))
    assert not torch.equal(a, counter_uniforms(1, 1, [5, 6, 7], 3))
    u = counter_uniforms(0, 0, torch.arange(5000), 2)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02


def test_replayed_augmentation_gives_the_cached_teacher_outputs(tmp_path):
    teacher = CountingTeacher()
    aug = RandomResizedCropFlip(6, scale=(0.3, 1.0))
    cache = _cache(tmp_path, teacher=teacher, augmentation=aug, seed=3)
    images = _images()
    idx = torch.tensor([2, 9, 4, 0])
    first_x, first_out = cache.teacher_outputs(teacher, images[idx], idx, epoch=0)
    assert teacher.calls == 1 and teacher.samples == 4

    second_x, second_out = cache.teacher_outputs(teacher, images[idx], idx, epoch=1)
    assert teacher.calls == 1  # all hits
    assert_close(second_x, first_x, rtol=0, atol=0)
    assert_close(second_out, first_out, rtol=0, atol=0)

    params, hit = cache.lookup_params(idx, epoch=1)
    assert hit.all()
    assert_close(params, aug.params_for(idx, seed=3, slot=0, height=8, width=8), rtol=0, atol=0)
    fresh = teacher(aug.apply(images[idx], params))  # a fresh forward on the replayed crop
    assert_close(second_out, fresh.half().float(), rtol=0, atol=0)
    assert_close(second_out, fresh, rtol=1e-3, atol=1e-3)


def test_two_caches_write_disjoint_indices_into_the_same_files(tmp_path):
    teacher = CountingTeacher()
    aug = RandomResizedCropFlip(6)
    rank0 = _cache(tmp_path, teacher=teacher, augmentation=aug)
    rank1 = _cache(
        tmp_path, teacher=teacher, augmentation=aug, create=False
    )  # opened after rank 0 created it
    images = _images()
    mine0, mine1 = torch.arange(0, NUM_SAMPLES, 2), torch.arange(1, NUM_SAMPLES, 2)
    out = torch.empty(NUM_SAMPLES, NUM_CLASSES)
    for part in range(3):  # interleaved writes, as two ranks would
        for cache, mine in ((rank0, mine0), (rank1, mine1)):
            idx = mine[part * 2 : part * 2 + 2]
            out[idx] = cache.teacher_outputs(teacher, images[idx], idx, epoch=0)[1]
    # A sample both ranks see (DistributedSampler padding) gets identical bytes from either.
    dup0 = rank0.teacher_outputs(teacher, images[[0]], torch.tensor([0]), epoch=1)
    rank0.flush(), rank1.flush()
    reader = _cache(tmp_path, teacher=teacher, augmentation=aug)
    got, hit = reader.lookup(torch.arange(NUM_SAMPLES), epoch=0)
    assert hit.all()
    assert_close(got, out, rtol=0, atol=0)
    assert reader.filled_fraction(0) == 1.0
    assert_close(dup0[1], got[:1], rtol=0, atol=0)


def test_store_and_lookup_validate_their_arguments(tmp_path):
    cache = _cache(tmp_path)
    with pytest.raises(ValueError, match="indices"):
        cache.lookup([NUM_SAMPLES], 0)
    with pytest.raises(ValueError, match="outputs"):
        cache.store([0], 0, torch.zeros(1, NUM_CLASSES + 1))
    with pytest.raises(ValueError, match="aug_params"):
        cache.store([0], 0, torch.zeros(1, NUM_CLASSES), aug_params=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="not finite in float16"):
        cache.store([0], 0, torch.full((1, NUM_CLASSES), 1e6))
    with pytest.raises(ValueError, match="epoch"):
        cache.lookup([0], -1)
    with pytest.raises(ValueError, match="num_slots"):
        _cache(tmp_path, num_slots=2)
    with pytest.raises(FileNotFoundError):
        _cache(tmp_path / "elsewhere", create=False)


def test_indexed_dataset_appends_the_index():
    assert IndexedDataset([(1, 2)])[0] == (1, 2, 0)
    assert IndexedDataset([{"x": 1}])[0] == {"x": 1, "index": 0}
    assert IndexedDataset(["a", "b"])[1] == ("b", 1)
    batch = next(iter(DataLoader(IndexedDataset(TensorDataset(torch.zeros(3, 2))), batch_size=3)))
    assert batch[1].tolist() == [0, 1, 2]


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

from lightning_distill.callbacks.teacher_cache import IndexedDataset, RandomResizedCropFlip, TeacherCacheCallback

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
