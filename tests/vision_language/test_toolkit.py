"""The CLIP teacher, its tokenizer and zero-shot classifier, the student encoders and DHO's head mixing."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.domains import CLASS_NAMES, DigitDomainsDataModule
from lightning_distill.models import SmallCNN
from lightning_distill.vision_language import (
    ImageEncoder,
    caption_bank,
    clip_teacher,
    mix_heads,
    search_head_mixing,
    train_word_tokenizer,
)


def test_tokenizer_wraps_texts_in_bos_eos_and_maps_unknown_words():
    tok = train_word_tokenizer(["a photo of a seven.", "the number two"])
    ids = tok(["a seven", "a dog"])["input_ids"]
    assert ids[0][0] == 2 and ids[0][-1] == 3  # [BOS] ... [EOS]
    assert ids[1][2] == 1  # "dog" -> [UNK]
    assert tok.pad_token_id == 0


def test_tokenizer_refuses_empty_texts():
    with pytest.raises(ValueError, match="texts"):
        train_word_tokenizer([])


def test_caption_bank_uses_names_descriptions_and_domain_words():
    bank = caption_bank("seven", ["a bar", "a line"], "noisy", ("a {d} {c}.", "{w}."))
    assert bank == ["a noisy seven.", "a bar.", "a line."]


def test_zero_shot_classifier_is_the_normalised_prompt_ensemble(tiny_teacher):
    templates = ("a photo of the digit {}.", "the digit {}.")
    weights = tiny_teacher.zero_shot_classifier(["one", "two"], templates)
    with torch.no_grad():
        expected = torch.stack(
            [
                F.normalize(tiny_teacher.encode_texts([t.format(n) for t in templates]).mean(0), dim=-1)
                for n in ("one", "two")
            ]
        )
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))


def test_teacher_logits_are_scaled_cosines_to_the_class_embeddings(tiny_teacher):
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        logits = tiny_teacher(x)
        feats = tiny_teacher.encode_images(x)
    scale = tiny_teacher.clip.logit_scale.exp()
    torch.testing.assert_close(logits, scale * feats @ tiny_teacher.class_embeddings.t())
    assert logits.shape == (4, 10)


def test_teacher_resizes_and_renormalises_inputs(tiny_teacher):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert tiny_teacher.pixels(x).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="RGB"):
        tiny_teacher.pixels(torch.zeros(2, 1, 8, 8))


def test_zero_shot_classifier_rejects_bad_templates(tiny_teacher):
    with pytest.raises(ValueError, match="template"):
        tiny_teacher.zero_shot_classifier(["one"], ["no slot"])
    with pytest.raises(ValueError, match="class_names"):
        tiny_teacher.zero_shot_classifier([], ["a {}"])


def test_trained_teacher_tokenizer_and_classifier_round_trip_through_the_cache(tmp_path):
    data = DigitDomainsDataModule(domains=("digits",), size=8)
    kwargs = dict(
        width=16,
        depth=1,
        heads=2,
        patch_size=4,
        projection_dim=16,
        epochs=1,
        batch_size=256,
        cache_dir=str(tmp_path),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a one-epoch teacher may be flagged as near chance
        first = clip_teacher(data, **kwargs)
        second = clip_teacher(DigitDomainsDataModule(domains=("digits",), size=8), **kwargs)
    files = sorted(p.name for p in (tmp_path / "teachers").iterdir())
    assert any(name.endswith(".tokenizer") for name in files) and any(name.endswith(".pt") for name in files)
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    torch.testing.assert_close(first.class_embeddings, second.class_embeddings)
    for a, b in zip(first.clip.state_dict().values(), second.clip.state_dict().values()):
        torch.testing.assert_close(a, b)
    # the cached classifier is what the loaded text tower computes from the loaded tokenizer
    torch.testing.assert_close(
        second.zero_shot_classifier(second.class_names, second.templates), second.class_embeddings
    )
    assert "clip_teacher cache" in second.distill_source


def test_clip_teacher_needs_data_or_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="pretrained"):
        clip_teacher()
    with pytest.raises(FileNotFoundError, match="pretrained"):
        clip_teacher(pretrained=str(tmp_path / "missing"))


def test_pretrained_folder_loads_through_from_pretrained(tiny_teacher, tmp_path):
    tiny_teacher.clip.save_pretrained(tmp_path)
    tiny_teacher.tokenizer.save_pretrained(tmp_path)
    loaded = clip_teacher(
        pretrained=str(tmp_path), class_names=CLASS_NAMES, templates=["a photo of the digit {}."]
    )
    assert "from_pretrained" in loaded.distill_source
    assert loaded.pixel_mean.flatten()[0] == pytest.approx(0.48145466)
    # the same class embeddings (computed from the same text tower and tokenizer)
    torch.testing.assert_close(loaded.class_embeddings, tiny_teacher.class_embeddings)


def test_image_encoder_reads_cnn_and_transformers_features():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cnn = ImageEncoder(SmallCNN(in_channels=3, width=8))
    assert cnn(torch.zeros(2, 3, 16, 16)).shape == (2, cnn.num_features)
    vit = ImageEncoder(
        CLIPVisionModel(
            CLIPVisionConfig(
                image_size=8,
                patch_size=4,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
            )
        ),
        image_size=8,
    )
    assert vit.num_features == 16 and vit(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    with pytest.raises(ValueError, match="num_features"):
        ImageEncoder(torch.nn.Identity())


def test_head_mixing_matches_the_official_formula_and_grid():
    ce, kd = torch.randn(20, 4), torch.randn(20, 4)
    y = torch.randint(0, 4, (20,))
    p = mix_heads(ce, kd, 0.3, 2.0)
    torch.testing.assert_close(p, 0.7 * ce.softmax(-1) + 0.3 * (kd / 2.0).softmax(-1))
    alpha, beta, acc = search_head_mixing(ce, kd, y)
    best = max(
        float((mix_heads(ce, kd, a, b).argmax(-1) == y).float().mean())
        for b in (0.5, 0.75, 1, 1.25, 1.5, 2, 4)
        for a in [k * 0.05 for k in range(21)]
    )
    assert acc == pytest.approx(best)
    assert float((mix_heads(ce, kd, alpha, beta).argmax(-1) == y).float().mean()) == pytest.approx(acc)
    with pytest.raises(ValueError, match="alpha"):
        mix_heads(ce, kd, 1.5, 1.0)
