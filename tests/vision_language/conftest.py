"""Tiny CLIP ingredients shared by the vision-language tests."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.domains import CLASS_NAMES
from lightning_distill.vision_language import CLIPTeacher, small_clip_config, train_word_tokenizer


def tiny_clip_teacher(seed: int = 0) -> CLIPTeacher:
    """A random-initialised ``CLIPModel`` (8x8 images, width 16) over the ten digit classes."""
    from transformers import CLIPModel

    tokenizer = train_word_tokenizer([f"a photo of the digit {n}." for n in CLASS_NAMES], max_length=12)
    config = small_clip_config(
        len(tokenizer),
        image_size=8,
        patch_size=4,
        width=16,
        depth=1,
        heads=2,
        projection_dim=16,
        max_length=12,
    )
    torch.manual_seed(seed)
    clip = CLIPModel(config).eval()
    return CLIPTeacher(clip, tokenizer, CLASS_NAMES, templates=("a photo of the digit {}.",)).eval()


@pytest.fixture
def tiny_teacher() -> CLIPTeacher:
    return tiny_clip_teacher()
