"""The text side of the toy CLIP teacher: captions, prompt templates and a word-level tokenizer.

* :func:`caption_bank`: every caption an image of a class in a domain may get during contrastive
  training (class names and written descriptions in several templates, with and without the
  domain's word).
* :data:`ZERO_SHOT_TEMPLATES`: the prompts whose ensemble makes a class's zero-shot embedding.
* :func:`train_word_tokenizer`: a word-level ``tokenizers`` model trained on those texts, wrapped
  as a ``transformers`` fast tokenizer (``save_pretrained``/``AutoTokenizer.from_pretrained``
  round-trip), ids ``[PAD]`` 0, ``[UNK]`` 1, ``[BOS]`` 2, ``[EOS]`` 3 (``[EOS]`` is not 2, so
  ``CLIPTextModel`` pools at the first ``[EOS]`` rather than at the largest id).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CAPTION_TEMPLATES",
    "SPECIAL_TOKENS",
    "ZERO_SHOT_TEMPLATES",
    "caption_bank",
    "train_word_tokenizer",
]

#: Prompt templates of the zero-shot classifier (``{}`` is the class name).
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {}.",
    "a picture of a {}.",
    "the number {}.",
    "a drawing of the digit {}.",
)
#: Caption templates of contrastive training: ``{c}`` class name, ``{w}`` description, ``{d}`` domain word.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {c}.",
    "a picture of a {c}.",
    "the number {c}.",
    "a drawing of the digit {c}.",
    "a {d} digit {c}.",
    "a {d} picture of a {c}.",
    "{w}, the digit {c}.",
    "a {d} image of {w}.",
    "{w}.",
)
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def caption_bank(
    class_name: str,
    descriptions: Sequence[str],
    domain_word: str,
    templates: Sequence[str] = CAPTION_TEMPLATES,
) -> list[str]:
    """Every caption of one (class, domain) pair: each template filled with each description.

    Example:
        >>> caption_bank("seven", ["a bar with a stem"], "noisy", ("a {d} {c}.", "{w}."))
        ['a noisy seven.', 'a bar with a stem.']
    """
    out: list[str] = []
    for t in templates:
        for w in descriptions if "{w}" in t else descriptions[:1]:
            text = t.format(c=class_name, w=w, d=domain_word)
            if text not in out:
                out.append(text)
    return out


def train_word_tokenizer(texts: Sequence[str], max_length: int = 24):
    """A word-level tokenizer trained on ``texts``, as a ``transformers`` fast tokenizer.

    Lower-cases, splits on whitespace and punctuation, wraps every text in ``[BOS] ... [EOS]``;
    unknown words map to ``[UNK]``. Deterministic: the vocabulary is ordered by frequency, then
    alphabetically.

    Args:
        texts: the training texts.
        max_length: ``model_max_length`` (the text encoder's position count).

    Raises:
        ValueError: no texts, or ``max_length`` < 3.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("`texts` is empty: the tokenizer needs captions to learn a vocabulary from.")
    if max_length < 3:
        raise ValueError(f"`max_length` must be >= 3, got {max_length}.")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        sorted(set(texts)), trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
    )
