"""Label projectors, weak teachers and online labels (HeLlO's toolkit)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation import ConvNet, SiameseAugment
from lightning_distill.dataset_distillation.label_projector import (
    CLIPImageEncoder,
    LabelProjector,
    clip_class_embeddings,
)
from lightning_distill.dataset_distillation.online_labels import (
    OnlineLabelClassifier,
)
from lightning_distill.dataset_distillation.weak_teachers import WeakTeacherEnsemble, trajectory_checkpoints
from lightning_distill.losses.dataset_distillation import soft_label_loss


def tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16, 6)
    )


def tiny_teachers(n: int = 3) -> WeakTeacherEnsemble:
    torch.manual_seed(1)
    return WeakTeacherEnsemble([ConvNet(1, 10, 8, width=4, depth=2) for _ in range(n)], temperature=2.0)


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
