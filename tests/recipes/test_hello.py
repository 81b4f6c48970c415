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
from lightning_distill.dataset_distillation import ConvNet, EvalSpec, SiameseAugment, SyntheticSet
from lightning_distill.dataset_distillation.label_projector import (
    CLIPImageEncoder,
    LabelProjector,
    OnlineLabelClassifier,
    WeakTeacherEnsemble,
    clip_class_embeddings,
    hard_label_bytes,
    soft_label_cache_bytes,
    soft_label_loss,
    trajectory_checkpoints,
)
from lightning_distill.module import _fingerprint
from lightning_distill.recipes.hello import HeLlO
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


def test_projector_head_starts_at_the_scaled_class_embeddings_and_is_the_zero_shot_classifier():
    embeddings = torch.randn(10, 6)
    projector = LabelProjector(tiny_encoder(), embeddings, logit_scale=7.0, lora_rank=2, head_rank=3)
    torch.testing.assert_close(projector.head_weight, 7.0 * embeddings / embeddings.norm(dim=1, keepdim=True))
    x = torch.randn(5, 1, 8, 8)
    features = projector.encoder(x)
    cosine = F.normalize(features, dim=1) @ F.normalize(embeddings, dim=1).T
    torch.testing.assert_close(projector(x), 7.0 * cosine)  # LoRA B = 0: exactly zero-shot at init


def test_only_lora_parameters_train_unless_the_head_is_trained_whole():
    projector = LabelProjector(tiny_encoder(), torch.randn(10, 6), lora_rank=2, head_rank=2)
    trainable = [n for n, p in projector.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable} == {"encoder.0", "encoder.4", "head"}
    whole = LabelProjector(tiny_encoder(), torch.randn(10, 6), lora_rank=2, head_rank=0, train_head=True)
    names = {n for n, p in whole.named_parameters() if p.requires_grad}
    assert "head.weight" in names and all("lora" in n for n in names - {"head.weight"})


def test_weak_teacher_average_matches_an_independent_computation():
    ensemble = tiny_teachers(3)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        probs = [
            torch.exp(t(x) / 2.0) / torch.exp(t(x) / 2.0).sum(1, keepdim=True) for t in ensemble.teachers
        ]
        expected = sum(probs) / 3
        torch.testing.assert_close(ensemble(x).exp(), expected)
        torch.testing.assert_close(ensemble(x).exp().sum(1), torch.ones(4))


def test_soft_label_losses_match_a_direct_computation():
    logits, target = torch.randn(3, 4), torch.randn(3, 4)
    p = torch.exp(target / 2) / torch.exp(target / 2).sum(1, keepdim=True)
    q = torch.exp(logits / 2) / torch.exp(logits / 2).sum(1, keepdim=True)
    kl = 4 * (p * (p.log() - q.log())).sum(1)
    torch.testing.assert_close(soft_label_loss(logits, target, kind="kl", temperature=2.0), kl.mean())
    torch.testing.assert_close(
        soft_label_loss(logits, target, kind="kl", temperature=2.0, reduction="none"), kl
    )
    q1, p1 = logits.softmax(1), target.softmax(1)
    torch.testing.assert_close(soft_label_loss(logits, target, kind="mse"), ((q1 - p1) ** 2).mean())
    logits.requires_grad_(True)
    target.requires_grad_(True)
    soft_label_loss(logits, target).backward()
    assert logits.grad is not None and target.grad is None  # the target is detached
    with pytest.raises(ValueError, match="kind"):
        soft_label_loss(logits, target, kind="l1")
    with pytest.raises(ValueError, match="shape|\\(B, K\\)"):
        soft_label_loss(logits, target[:, :3])


def test_trajectory_checkpoints_are_the_weights_after_those_epochs(tmp_path):
    dm = DigitsDataModule()
    states = trajectory_checkpoints(ConvNet(1, 10, 8, width=4, depth=1), dm, [2, 1], cache_dir=str(tmp_path))
    # Independent re-run of the documented loop: SGD, seed 0, per-epoch permutations.
    x, y = dm.train_images()
    net = ConvNet(1, 10, 8, width=4, depth=1)
    torch.manual_seed(0)
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    after = []
    for _ in range(2):
        for index in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[index]), y[index]).backward()
            opt.step()
        after.append({k: v.clone() for k, v in net.state_dict().items()})
    for key in after[0]:
        torch.testing.assert_close(states[0][key], after[1][key])
        torch.testing.assert_close(states[1][key], after[0][key])
    again = trajectory_checkpoints(ConvNet(1, 10, 8, width=4, depth=1), dm, [1], cache_dir=str(tmp_path))
    torch.testing.assert_close(again[0]["classifier.weight"], after[0]["classifier.weight"])  # from the cache


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


def test_phases_update_adapters_then_images_and_never_the_teachers_or_encoder():
    recipe = make(image_steps=2)
    teacher_print = _fingerprint(recipe.teacher)
    encoder_before = {
        k: v.clone() for k, v in recipe.projector.encoder.state_dict().items() if "base_layer" in k
    }
    adapters0 = {k: v.clone() for k, v in recipe.projector.adapter_state_dict().items()}
    snapshots = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append(
                (
                    dict(pl_module.projector.adapter_state_dict()),
                    pl_module.synthetic.images.detach().clone(),
                    outputs,
                )
            )

    L.seed_everything(0)
    trainer = L.Trainer(max_steps=4, callbacks=[Spy()], limit_val_batches=0, **quiet_trainer_kwargs())
    trainer.fit(recipe, datamodule=DigitsDataModule(batch_size=16))
    assert [set(o) - {"loss"} for _, _, o in snapshots] == [{"label", "ce"}] * 2 + [{"image"}] * 2
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


def test_online_labels_are_computed_on_the_augmented_view():
    model, label_fn = ConvNet(1, 10, 8, width=4, depth=1), tiny_teachers(2)
    module = OnlineLabelClassifier(model, label_fn, epochs=2, augment="crop_rotate", seed=3)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    loss = module.training_step((x, y), 0)
    aug = SiameseAugment("crop_rotate", siamese=False)
    view = aug(x, aug.sample(x, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        expected = soft_label_loss(model(view), label_fn(view))
    torch.testing.assert_close(loss.detach(), expected)


def test_clip_projector_at_initialisation_is_clip_zero_shot():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 50,
            "max_position_embeddings": 8,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    torch.manual_seed(0)
    clip = transformers.CLIPModel(config).eval()
    input_ids = torch.randint(1, 49, (3, 5))
    pixels = torch.randn(2, 3, 16, 16)
    embeddings = clip_class_embeddings(clip, input_ids)
    encoder = CLIPImageEncoder(clip)
    targets = [n for n, _ in encoder.named_modules() if n.endswith(("q_proj", "v_proj"))]
    projector = LabelProjector(
        encoder,
        embeddings,
        logit_scale=float(clip.logit_scale.detach().exp()),
        lora_rank=2,
        head_rank=2,
        lora_targets=targets,
    )
    with torch.no_grad():
        expected = clip(input_ids=input_ids, pixel_values=pixels).logits_per_image
        torch.testing.assert_close(projector(pixels), expected, rtol=1e-4, atol=1e-4)
    assert all("lora" in n for n, p in projector.named_parameters() if p.requires_grad)


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
