"""TeacherCache: the memory-mapped store of teacher outputs and replayable augmentation parameters."""

import json

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lightning_distill.data.indexed import IndexedDataset
from lightning_distill.models.teacher_store import TeacherCache, TeacherCacheMismatchError
from lightning_distill.utils.augment import RandomResizedCropFlip
from lightning_distill.utils.fingerprint import fingerprint_dataset

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


def test_the_manifest_fingerprints_the_dataset_inside_an_indexed_dataset(tmp_path):
    data = _images()
    cache = _cache(tmp_path, dataset=IndexedDataset(data.clone()))
    assert cache.manifest["dataset"]["fingerprint"] == fingerprint_dataset(data)


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
