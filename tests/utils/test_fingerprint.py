"""Fingerprints and cache keys: stable values (they key files on disk and are kept in checkpoints)."""

import pytest
import torch
from torch import nn

from lightning_distill.utils.fingerprint import (
    config_hash,
    file_sha256,
    fingerprint,
    fingerprint_dataset,
    fingerprint_module,
)


def _fixed_module() -> nn.Module:
    module = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for i, t in enumerate(module.state_dict().values()):
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=t.dtype).view_as(t) / (i + 1))
    return module


def test_fingerprint_module_reproduces_the_teacher_cache_manifest_values():
    # Values of `callbacks.teacher_cache.fingerprint_module` before it moved here (commit 46fd309):
    # existing teacher-output caches keep matching their manifests.
    assert fingerprint_module(_fixed_module()) == (
        "sha256=6ae26cd057c4100227760403c0126b6e57eecff5f27f760ea9161382cfe4ad7a"
    )
    assert fingerprint_module(_fixed_module().to(torch.bfloat16)) == (
        "sha256=44052edb63bf9dcad85df80cf55484d9d4241ed63801711ceb63d0573acb9509"
    )


def test_fingerprint_dataset_reproduces_the_teacher_cache_manifest_value():
    data = torch.arange(24.0).view(6, 4)
    assert fingerprint_dataset(data) == (
        "len=6;sha256=c5a11f25fde59db08f3269de87861ed34b8363030ab9e7ac2e25376ce6e054ae"
    )


def test_config_hash_reproduces_the_train_on_first_use_cache_keys():
    # sha256(json.dumps(spec, sort_keys=True))[:16], the key of models.pretrained's cache.
    spec = {"format": 1, "model": "SmallCNN()", "epochs": 5, "lr": 0.001}
    assert config_hash(spec) == "f6c44a0385dff6f7"
    assert config_hash(dict(reversed(spec.items()))) == "f6c44a0385dff6f7"
    with pytest.raises(TypeError):
        config_hash({"path": object()})
    assert len(config_hash({"path": object()}, default=str, length=8)) == 8


def test_fingerprints_see_weights_dtypes_and_names():
    a = _fixed_module()
    b = _fixed_module()
    assert fingerprint_module(a) == fingerprint_module(b)
    with torch.no_grad():
        b[0].bias[0] += 1e-6
    assert fingerprint_module(a) != fingerprint_module(b)
    assert fingerprint_module(a) != fingerprint_module(a.double())
    assert fingerprint(torch.zeros(2)) != fingerprint(torch.zeros(2, dtype=torch.float64))
    assert fingerprint([1, 2]) != fingerprint([1, 2.0])
    assert fingerprint([1, 2]) == fingerprint((1, 2))  # collation gives either
    assert fingerprint((torch.arange(4.0), torch.tensor([1, 2])), length=16) == "b691d8fef6a47609"
    with pytest.raises(TypeError, match="nn.Module"):
        fingerprint_module(torch.zeros(2))


def test_fingerprint_dataset_refuses_random_datasets():
    data = torch.arange(24.0).view(6, 4)
    assert fingerprint_dataset(data) == fingerprint_dataset(data.clone())
    assert fingerprint_dataset(data) != fingerprint_dataset(data[:-1])

    class Noisy:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2)

    with pytest.raises(ValueError, match="random transforms"):
        fingerprint_dataset(Noisy())


def test_file_sha256_reads_the_bytes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea"  # SHA-256("abc") starts with these digits
    assert len(file_sha256(path, length=64)) == 64
