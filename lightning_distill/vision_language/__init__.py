"""Vision-language toolkit: a CLIP teacher (``transformers.CLIPModel``), its text side, student encoders.

* :class:`CLIPTeacher`, :func:`small_clip_config` (``clip_teacher.py``): any ``CLIPModel`` with its
  tokenizer, image/text feature extraction and a prompt-ensemble zero-shot classifier.
* :func:`clip_teacher` (``train.py``): a small CLIP trained contrastively on first use on the
  multi-domain digits (cached with its tokenizer), or a local checkpoint through ``from_pretrained``.
* :func:`train_word_tokenizer`, :func:`caption_bank`, :data:`ZERO_SHOT_TEMPLATES` (``text.py``).
* :class:`ImageEncoder` (``encoders.py``): pooled features of a CNN or a ``transformers`` vision tower.
* :func:`mix_heads`, :func:`search_head_mixing` (``heads.py``): DHO's dual-head inference.

The data (:class:`~lightning_distill.data.domains.DigitDomainsDataModule`) lives in
:mod:`lightning_distill.data.domains`; the losses in :mod:`lightning_distill.losses.vision_language`.
What this package may import: README.md.
"""

from lightning_distill.vision_language.clip_teacher import CLIP_MEAN, CLIP_STD, CLIPTeacher, small_clip_config
from lightning_distill.vision_language.encoders import ImageEncoder
from lightning_distill.vision_language.heads import DHO_ALPHAS, DHO_BETAS, mix_heads, search_head_mixing
from lightning_distill.vision_language.text import (
    CAPTION_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    caption_bank,
    train_word_tokenizer,
)
from lightning_distill.vision_language.train import clip_teacher, teacher_captions

__all__ = [
    "CAPTION_TEMPLATES",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPTeacher",
    "DHO_ALPHAS",
    "DHO_BETAS",
    "ImageEncoder",
    "ZERO_SHOT_TEMPLATES",
    "caption_bank",
    "clip_teacher",
    "mix_heads",
    "search_head_mixing",
    "small_clip_config",
    "teacher_captions",
    "train_word_tokenizer",
]
