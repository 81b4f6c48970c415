"""HeLlO: projector initialisation, LoRA-only training, weak-teacher averaging, losses, storage, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.cli import main as cli_main
from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation import ConvNet, EvalSpec, SyntheticSet
from lightning_distill.dataset_distillation.label_projector import (
    LabelProjector,
)
from lightning_distill.dataset_distillation.online_labels import (
    hard_label_bytes,
    soft_label_cache_bytes,
)
from lightning_distill.dataset_distillation.weak_teachers import WeakTeacherEnsemble
from lightning_distill.recipes.hello import HeLlO
from lightning_distill.utils.fingerprint import fingerprint_module as _fingerprint
from tests.conftest import quiet_trainer_kwargs

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "hello" / "config.yaml"


def tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16, 6)
    )


def tiny_teachers(n: int = 3) -> WeakTeacherEnsemble:
    torch.manual_seed(1)
    return WeakTeacherEnsemble([ConvNet(1, 10, 8, width=4, depth=2) for _ in range(n)], temperature=2.0)


def make(image_steps: int = 0, **kwargs) -> HeLlO:
    embeddings = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    projector = LabelProjector(tiny_encoder(), embeddings, logit_scale=5.0, lora_rank=2, head_rank=2)
    spec = EvalSpec(
        architecture=EvalSpec.convnet(in_channels=1, image_size=[8, 8], width=8, depth=2), epochs=1
    )
    synthetic = SyntheticSet(10, 1, (1, 8, 8), init="real", seed=0, eval_spec=spec)
    kwargs.setdefault("val_epochs", 1)
    return HeLlO(projector, tiny_teachers(), synthetic, projector_steps=2, image_steps=image_steps, **kwargs)


def test_projector_loss_matches_a_direct_computation():
    recipe = make(label_loss="kl")
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    terms = recipe.projector_loss(x, y)
    logits = recipe.projector(x)
    with torch.no_grad():
        target = torch.stack([t(x).div(2.0).softmax(1) for t in recipe.teacher.teachers]).mean(0)
    kl = (target * (target.log() - logits.log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(terms["label"], kl)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))


@pytest.mark.filterwarnings("ignore:The distilled set was not saved")
def test_phases_update_adapters_then_images_and_never_the_teachers_or_encoder():
    recipe = make(image_steps=2)
    teacher_print = _fingerprint(recipe.teacher)
    encoder_before = {
        k: v.clone() for k, v in recipe.projector.encoder.state_dict().items() if "base_layer" in k
    }
    adapters0 = {k: v.clone() for k, v in recipe.projector.adapter_state_dict().items()}
    snapshots, grads = [], []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append(
                (
                    dict(pl_module.projector.adapter_state_dict()),
                    pl_module.synthetic.images.detach().clone(),
                    {k for k in trainer.callback_metrics if k.startswith("train/")},
                )
            )
            grads.append([p.grad.clone() for p in pl_module.projector.parameters() if p.requires_grad])

    L.seed_everything(0)
    trainer = L.Trainer(max_steps=4, callbacks=[Spy()], limit_val_batches=0, **quiet_trainer_kwargs())
    trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=16))
    # One `update` turn per step: the projector's terms, then (phase 4) the image term.
    logged = [keys for _, _, keys in snapshots]
    assert logged[0] == logged[1] == {"train/label", "train/ce", "train/loss_projector"}
    assert logged[2] == logged[3] == logged[1] | {"train/image", "train/loss_images"}
    for g2, g4 in zip(grads[1], grads[3]):  # the image turn's backward reaches only the images
        torch.testing.assert_close(g4, g2, rtol=0, atol=0)
    (a1, s1, _), (a2, s2, _), (a3, s3, _), (a4, s4, _) = [(dict(a), s, o) for a, s, o in snapshots]
    assert any(not torch.equal(a2[k], adapters0[k]) for k in a2)  # adapters learn in phase 3 ...
    torch.testing.assert_close(s2, s1)  # ... while the images stay
    assert not torch.equal(s3, s2) and not torch.equal(s4, s3)  # images move in phase 4 ...
    for k in a4:
        torch.testing.assert_close(a4[k], a2[k])  # ... while the adapters stay
    assert _fingerprint(recipe.teacher) == teacher_print
    after = {k: v for k, v in recipe.projector.encoder.state_dict().items() if "base_layer" in k}
    for k in encoder_before:
        torch.testing.assert_close(after[k], encoder_before[k])
    assert all(not p.requires_grad for p in recipe.teacher.parameters())


def test_storage_bytes_count_the_adapters_and_the_relabel_cache():
    projector = LabelProjector(tiny_encoder(), torch.randn(10, 6), lora_rank=2, head_rank=3)
    # conv 1->4 3x3: A (2, 1, 3, 3), B (4, 2, 1, 1); linear 16->6: A (2, 16), B (6, 2); head 6->10: A (3, 6), B (10, 3)
    numbers = (2 * 9 + 4 * 2) + (2 * 16 + 6 * 2) + (3 * 6 + 10 * 3)
    assert projector.storage_bytes() == 4 * numbers and projector.storage_bytes(2) == 2 * numbers
    assert (
        soft_label_cache_bytes(100, 10, 300, views_per_epoch=2, bytes_per_value=2) == 300 * 2 * 100 * 10 * 2
    )
    assert hard_label_bytes(7, 10) == 7 and hard_label_bytes(7, 300) == 14
    storage = make().label_storage(epochs=5)
    assert storage == {
        "hard": 10,
        "soft_static": 400,
        "soft_cache": 1000,
        "projector": make().projector.storage_bytes(),
    }
    reloaded = LabelProjector(tiny_encoder(), torch.randn(10, 6), lora_rank=2, head_rank=3)
    with torch.no_grad():
        for p in projector.adapter_state_dict().values():
            p.normal_()
    reloaded.load_adapter_state_dict(projector.adapter_state_dict())
    reloaded.head.base_layer.weight.data.copy_(projector.head_weight)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(reloaded(x), projector(x))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="class_embeddings"):
        LabelProjector(tiny_encoder(), torch.randn(10))
    with pytest.raises(ValueError, match="lora_targets"):
        LabelProjector(tiny_encoder(), torch.randn(10, 6), lora_targets=["nope"])
    with pytest.raises(ValueError, match="train_head"):
        LabelProjector(tiny_encoder(), torch.randn(10, 6), head_rank=2, train_head=True)
    with pytest.raises(ValueError, match="teachers"):
        WeakTeacherEnsemble([])
    with pytest.raises(ValueError, match="label_loss"):
        make(label_loss="l1")
    with pytest.raises(TypeError, match="LabelProjector"):
        HeLlO(nn.Linear(2, 2), tiny_teachers(), SyntheticSet(10, 1, (1, 8, 8)))
    assert math.isfinite(float(make().projector(torch.zeros(1, 1, 8, 8)).sum()))


@pytest.mark.filterwarnings("ignore:The teacher cached at .* looks broken")
@pytest.mark.filterwarnings("ignore:The cached teacher .* was flagged when it was trained")
def test_config_runs_with_fast_dev_run_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.fast_dev_run=true",
            "--model.init_args.student.init_args.encoder.init_args.epochs=1",
            "--model.init_args.teacher.init_args.save_epochs=[1]",
            "--model.init_args.synthetic.init_args.ipc=2",
            "--model.init_args.val_epochs=1",
            "--model.init_args.student.init_args.encoder.init_args.model.init_args.width=8",
            "--model.init_args.teacher.init_args.model.init_args.width=8",
        ]
    )
    assert not (tmp_path / "label_projector.pt").exists()  # fast_dev_run writes no artifact
