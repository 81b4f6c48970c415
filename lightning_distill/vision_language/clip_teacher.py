"""A CLIP teacher: a ``transformers.CLIPModel`` with its tokenizer and a zero-shot classifier.

:class:`CLIPTeacher` wraps any ``CLIPModel`` (a user's ``openai/clip-vit-base-patch16`` loaded
with ``from_pretrained``, or the small one :func:`clip_teacher` trains on first use) and offers
the parts the vision-language recipes use: normalised image features
(:meth:`CLIPTeacher.encode_images`), normalised text features (:meth:`CLIPTeacher.encode_texts`),
a prompt-ensemble zero-shot classifier (:meth:`CLIPTeacher.zero_shot_classifier`, stored in the
``class_embeddings`` buffer) and zero-shot logits as its ``forward``, so the base module's
``val/teacher_acc`` is the teacher's zero-shot accuracy.

Images arrive as the data modules serve them (pixels mapped by ``(p - 0.5) / 0.5``); the teacher
converts them to its own normalisation (``pixel_mean``/``pixel_std``, CLIP's statistics for the
OpenAI checkpoints) and resizes them to the vision tower's ``image_size``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.vision_language.text import ZERO_SHOT_TEMPLATES

__all__ = ["CLIP_MEAN", "CLIP_STD", "CLIPTeacher", "small_clip_config"]

#: Pixel statistics of the OpenAI CLIP checkpoints.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
_DATA_MEAN, _DATA_STD = 0.5, 0.5


def small_clip_config(
    vocab_size: int,
    *,
    image_size: int = 16,
    patch_size: int = 4,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    projection_dim: int = 64,
    max_length: int = 24,
):
    """A small ``CLIPConfig``: ViT and text transformer of ``depth`` layers and ``width`` channels.

    Token ids follow :func:`~lightning_distill.vision_language.text.train_word_tokenizer`
    (pad 0, bos 2, eos 3).
    """
    from transformers import CLIPConfig

    common = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "projection_dim": projection_dim,
    }
    text = {**common, "vocab_size": vocab_size, "max_position_embeddings": max_length}
    text |= {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    vision = {**common, "image_size": image_size, "patch_size": patch_size, "num_channels": 3}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


class CLIPTeacher(nn.Module):
    """A ``CLIPModel`` with its tokenizer, prompt templates and zero-shot class embeddings.

    Args:
        clip: the ``transformers.CLIPModel``.
        tokenizer: its tokenizer (any ``transformers`` tokenizer: ``__call__`` with padding).
        class_names: the classes of the zero-shot classifier, in label order.
        templates: prompt templates with one ``{}`` for the class name.
        descriptions: optional extra texts per class (averaged into the class embedding with the
            prompts, as vlm_ood's "class names + descriptions").
        pixel_mean: per-channel mean of the teacher's own pixel normalisation.
        pixel_std: per-channel std of the teacher's own pixel normalisation.
        logit_scale: multiplier of the cosine similarities in :meth:`forward`; ``None`` uses the
            model's learned ``logit_scale.exp()`` (100 for the OpenAI checkpoints).

    Raises:
        ValueError: no class names, or a template without ``{}``.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
        descriptions: Sequence[Sequence[str]] | None = None,
        pixel_mean: Sequence[float] = (0.5, 0.5, 0.5),
        pixel_std: Sequence[float] = (0.5, 0.5, 0.5),
        logit_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.logit_scale = logit_scale
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1))
        dim = int(clip.config.projection_dim)
        self.register_buffer("class_embeddings", torch.zeros(len(class_names), dim))
        self.set_classes(class_names, templates, descriptions)

    @property
    def image_size(self) -> int:
        return int(self.clip.config.vision_config.image_size)

    @property
    def embed_dim(self) -> int:
        """Dimension ``D`` of the shared image-text space."""
        return int(self.clip.config.projection_dim)

    def pixels(self, x: Tensor) -> Tensor:
        """Data-normalised images ``(B, 3, H, W)`` -> the vision tower's input ``(B, 3, S, S)``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"CLIPTeacher expects RGB images (B, 3, H, W), got shape {tuple(x.shape)}.")
        x = ((x * _DATA_STD + _DATA_MEAN) - self.pixel_mean) / self.pixel_std
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return x

    def encode_images(self, x: Tensor) -> Tensor:
        """L2-normalised image embeddings ``(B, D)``."""
        out = self.clip.get_image_features(pixel_values=self.pixels(x))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(feats.float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        device = self.class_embeddings.device
        max_length = int(self.clip.config.text_config.max_position_embeddings)
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``(N, D)``."""
        out = self.clip.get_text_features(**self.tokenize(texts))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def zero_shot_classifier(
        self,
        class_names: Sequence[str],
        templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
        descriptions: Sequence[Sequence[str]] | None = None,
    ) -> Tensor:
        """Class embeddings ``(K, D)``: per class, the normalised mean of its normalised prompt embeddings.

        Raises:
            ValueError: no class names, a template without ``{}``, or descriptions for the wrong
                number of classes.
        """
        if not class_names:
            raise ValueError("`class_names` is empty; give the names of the classes to classify.")
        bad = [t for t in templates if "{}" not in t]
        if bad or not templates:
            raise ValueError(f"Every template needs one '{{}}' for the class name; got {list(templates)}.")
        if descriptions is not None and len(descriptions) != len(class_names):
            raise ValueError(
                f"`descriptions` has {len(descriptions)} entries for {len(class_names)} classes; give one list per class."
            )
        rows = []
        for k, name in enumerate(class_names):
            texts = [t.format(name.replace("_", " ")) for t in templates]
            texts += list(descriptions[k]) if descriptions is not None else []
            rows.append(F.normalize(self.encode_texts(texts).mean(dim=0), dim=-1))
        return torch.stack(rows)

    def set_classes(
        self,
        class_names: Sequence[str],
        templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
        descriptions: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Recompute the zero-shot classifier for new classes (e.g. classes the student never saw)."""
        was_training = self.training
        self.eval()
        weights = self.zero_shot_classifier(class_names, templates, descriptions)
        self.train(was_training)
        self.class_names, self.templates = tuple(class_names), tuple(templates)
        self.descriptions = None if descriptions is None else tuple(tuple(d) for d in descriptions)
        self.class_embeddings = weights.to(self.class_embeddings.device)

    def scale(self) -> Tensor | float:
        """The multiplier of cosine similarities: ``logit_scale`` or the model's ``logit_scale.exp()``."""
        if self.logit_scale is not None:
            return self.logit_scale
        return self.clip.logit_scale.exp().float()

    def zero_shot_logits(self, image_features: Tensor) -> Tensor:
        """``scale * f cᵀ`` for normalised image features ``(B, D)``: logits ``(B, K)``."""
        return self.scale() * image_features.float() @ self.class_embeddings.t()

    def forward(self, x: Tensor) -> Tensor:
        """Zero-shot logits ``(B, K)`` of data-normalised images ``(B, 3, H, W)``."""
        return self.zero_shot_logits(self.encode_images(x))

    # ------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        class_names: Sequence[str],
        templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
        descriptions: Sequence[Sequence[str]] | None = None,
        pixel_mean: Sequence[float] = CLIP_MEAN,
        pixel_std: Sequence[float] = CLIP_STD,
        logit_scale: float | None = None,
    ) -> CLIPTeacher:
        """Load a local CLIP checkpoint folder (``CLIPModel`` + tokenizer), e.g. ``openai/clip-vit-base-patch16``.

        Raises:
            FileNotFoundError: ``path`` is not a folder.
        """
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"`pretrained`={str(path)!r} is not a folder; download a CLIP checkpoint (config.json, weights, "
                "tokenizer files) and give its local path (no network at run time)."
            )
        clip = CLIPModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        teacher = cls(
            clip, tokenizer, class_names, templates, descriptions, pixel_mean, pixel_std, logit_scale
        )
        teacher.distill_source = f"CLIPModel.from_pretrained({str(folder)!r})"
        return teacher.eval()
