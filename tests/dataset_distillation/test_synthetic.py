"""SyntheticSet: class blocks, initialisation from real images, artifact round trip, evaluation."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation import EvalSpec, SyntheticSet

TINY_SPEC = EvalSpec(
    architecture=EvalSpec.convnet(in_channels=1, num_classes=10, image_size=[8, 8], width=8, depth=2),
    augment="crop_scale",
    epochs=30,
    lr=0.05,
)


def test_real_initialisation_takes_distinct_images_of_each_class():
    x = torch.arange(40, dtype=torch.float32).reshape(40, 1, 1, 1).expand(40, 1, 2, 2).clone()
    y = torch.arange(4).repeat(10)
    syn = SyntheticSet(4, 3, (1, 2, 2), init="real", seed=0)
    assert not bool(syn.initialized)
    syn.initialize_from(x, y)
    for c in range(4):
        values = syn.class_images(c)[:, 0, 0, 0]
        assert all(int(v) % 4 == c for v in values) and len(set(values.tolist())) == 3
    before = syn.images.detach().clone()
    syn.initialize_from(x, y)  # already initialised: a resumed run does not redraw
    assert torch.equal(before, syn.images)
    other = SyntheticSet(4, 3, (1, 2, 2), init="real", seed=1).initialize_from(x, y)
    assert not torch.equal(other.images, syn.images)


def test_noise_init_soft_labels_and_learned_lr():
    syn = SyntheticSet(
        3, 2, (1, 4, 4), init="noise", seed=0, learn_soft_labels=True, learn_lr=True, lr_init=0.02
    )
    assert bool(syn.initialized)
    assert torch.equal(syn.soft_labels.argmax(1), syn.labels)
    torch.testing.assert_close(syn.lr, torch.tensor(0.02))
    names = {n for n, p in syn.named_parameters()}
    assert names == {"images", "soft_labels", "log_lr"}
    assert {n for n, _ in SyntheticSet(3, 2, (1, 4, 4)).named_parameters()} == {"images"}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_round_trip_keeps_tensors_and_eval_spec(tmp_path, suffix):
    syn = SyntheticSet(
        3, 2, (1, 4, 4), init="noise", seed=4, learn_soft_labels=True, learn_lr=True, eval_spec=TINY_SPEC
    )
    with torch.no_grad():
        syn.soft_labels.add_(torch.randn(6, 3))
    path = syn.save(tmp_path / f"set{suffix}", metadata={"method": "test", "steps": 3})
    loaded = SyntheticSet.load(path)
    for name in ("images", "labels", "soft_labels", "log_lr"):
        assert torch.equal(getattr(loaded, name), getattr(syn, name)), name
    assert loaded.eval_spec == TINY_SPEC and loaded.metadata == {"method": "test", "steps": 3}
    assert bool(loaded.initialized)


def test_load_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a synthetic-set artifact"):
        SyntheticSet.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        SyntheticSet.load(tmp_path / "missing.pt")


def test_saved_set_evaluates_to_the_same_accuracy(tmp_path):
    dm = DigitsDataModule()
    dm.setup("fit")
    syn = SyntheticSet(10, 2, (1, 8, 8), init="real", seed=0, eval_spec=TINY_SPEC)
    syn.initialize_from(*dm.train_images())
    with torch.no_grad():
        syn.images.add_(0.1 * torch.randn_like(syn.images))  # something a fresh init would not give
    before = syn.evaluate(dm, seeds=(0,))
    after = SyntheticSet.load(syn.save(tmp_path / "set.pt")).evaluate(dm, seeds=(0,))
    assert before.accuracies == after.accuracies
    assert 0.2 < before.mean <= 1.0  # a few epochs on 20 real digits is far above chance


def test_eval_spec_validation():
    with pytest.raises(ValueError, match="label_type"):
        EvalSpec(label_type="fuzzy")
    with pytest.raises(ValueError, match="class_path"):
        EvalSpec(architecture={"init_args": {}})
    with pytest.raises(ValueError, match="Unknown EvalSpec keys"):
        EvalSpec.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="soft labels"):
        SyntheticSet(10, 1, (1, 8, 8), init="noise", eval_spec=TINY_SPEC).evaluate(
            DigitsDataModule(), seeds=(0,), label_type="soft"
        )
