"""The toy CLIP teacher, trained contrastively on first use and cached (or a user's checkpoint).

:func:`clip_teacher` is what configs name as the teacher::

    teacher:
      class_path: lightning_distill.vision_language.clip_teacher
      init_args:
        data: {class_path: lightning_distill.data.domains.DigitDomainsDataModule}
        epochs: 12

It builds a word-level tokenizer from the caption bank, a small ``CLIPModel``
(:func:`~lightning_distill.vision_language.clip_teacher.small_clip_config`), trains it with CLIP's
symmetric image-text contrastive loss on the training part of every domain of ``data`` (each
image paired with a caption drawn from its class and domain's caption bank), and caches the weights
and the zero-shot classifier through :func:`~lightning_distill.models.first_use_cache.cached_training`;
the tokenizer is saved next to the weights (``<weights>.tokenizer/``) and read back from there.
With ``pretrained`` it loads a local CLIP checkpoint folder instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from lightning_distill.data.domains import CLASS_DESCRIPTIONS, CLASS_NAMES, DOMAIN_WORDS
from lightning_distill.models.first_use_cache import cached_training
from lightning_distill.models.pretrained import chance_margin
from lightning_distill.vision_language.clip_teacher import CLIP_MEAN, CLIP_STD, CLIPTeacher, small_clip_config
from lightning_distill.vision_language.text import (
    CAPTION_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    caption_bank,
    train_word_tokenizer,
)

__all__ = ["clip_teacher", "teacher_captions"]


def teacher_captions(domains: Sequence[str]) -> dict[tuple[int, int], list[str]]:
    """The caption bank of every (class, domain index) pair of ``domains``."""
    return {
        (c, k): caption_bank(CLASS_NAMES[c], CLASS_DESCRIPTIONS[c], DOMAIN_WORDS[d], CAPTION_TEMPLATES)
        for c in range(len(CLASS_NAMES))
        for k, d in enumerate(domains)
    }


def _fit_clip(
    teacher: CLIPTeacher,
    init_state: dict[str, torch.Tensor],
    data: L.LightningDataModule,
    captions: dict[tuple[int, int], list[str]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
) -> dict[str, Any]:
    """Contrastive training of ``teacher.clip``; returns the zero-shot validation accuracy."""
    clip = teacher.clip
    clip.load_state_dict(init_state)  # transformers' own initialisation, drawn under the seed
    data.setup("fit")
    x, y, d = data.split("all_train")
    # Every caption tokenised once; an image draws one of its (class, domain) captions per step.
    texts = sorted({t for bank in captions.values() for t in bank})
    enc = teacher.tokenize(texts)
    index = {t: i for i, t in enumerate(texts)}
    banks = {key: torch.tensor([index[t] for t in bank]) for key, bank in captions.items()}
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(y) // batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    clip.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            choice = []
            for c, k in zip(y[idx].tolist(), d[idx].tolist()):
                bank = banks[(c, k)]
                choice.append(bank[torch.randint(len(bank), ())])
            t = torch.stack(choice)
            out = clip(
                input_ids=enc["input_ids"][t],
                attention_mask=enc["attention_mask"][t],
                pixel_values=teacher.pixels(x[idx]),
                return_loss=True,
            )
            if not torch.isfinite(out.loss):
                raise FloatingPointError(
                    f"the contrastive loss is {out.loss.item()} at epoch {epoch}, step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # CLIP clamps the learned temperature at 100
                clip.logit_scale.clamp_(0, math.log(100.0))
            step += 1
    clip.eval()
    teacher.set_classes(teacher.class_names, teacher.templates, teacher.descriptions)
    vx, vy, _ = data.split("val")
    with torch.no_grad():
        acc = float((teacher(vx).argmax(-1) == vy).float().mean())
    return {
        "val_acc": acc,
        "val_images": len(vy),
        "num_classes": len(teacher.class_names),
        "final_loss": float(out.loss.detach()),
    }


def _near_chance(result: dict[str, Any]) -> str | None:
    k, n, acc = result["num_classes"], result["val_images"], result["val_acc"]
    if acc < 1.0 / k + chance_margin(k, n):
        return f"zero-shot validation accuracy {acc:.4f} on {n} images is near chance ({1 / k:.3f})"
    return None


def clip_teacher(
    data: L.LightningDataModule | None = None,
    pretrained: str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    patch_size: int = 4,
    projection_dim: int = 64,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    seed: int = 0,
    logit_scale: float | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> CLIPTeacher:
    """A :class:`CLIPTeacher`: a local checkpoint (``pretrained``), or a small CLIP trained on ``data`` on first use.

    Args:
        data: a :class:`~lightning_distill.data.domains.DigitDomainsDataModule` (its ``split("all_train")``
            images and domains give the image-caption pairs; ``split("val")`` the recorded zero-shot accuracy).
        pretrained: a local CLIP checkpoint folder (``CLIPModel`` + tokenizer, e.g. a download of
            ``openai/clip-vit-base-patch16``); CLIP's pixel statistics are used.
        class_names: the zero-shot classes, in label order.
        templates: the zero-shot prompt templates.
        width: hidden size of both towers (trained teacher).
        depth: layers of both towers.
        heads: attention heads.
        patch_size: ViT patch size (images are ``data``'s size).
        projection_dim: dimension of the shared embedding space.
        epochs: contrastive training epochs.
        batch_size: image-caption pairs per step.
        lr: peak learning rate (one-cycle AdamW).
        weight_decay: AdamW weight decay.
        seed: seed of the initialisation, the batch order and the caption draws.
        logit_scale: fixed logit multiplier of the zero-shot logits; ``None`` uses the learned one.
        cache_dir: where trained teachers are cached (default: ``$LIGHTNING_DISTILL_CACHE``).
        retrain: train again even if cached.

    Raises:
        ValueError: neither ``data`` nor ``pretrained`` given, or ``epochs`` < 1.
    """
    if pretrained is not None:
        return CLIPTeacher.from_pretrained(
            pretrained,
            class_names,
            templates,
            pixel_mean=CLIP_MEAN,
            pixel_std=CLIP_STD,
            logit_scale=logit_scale,
        )
    if data is None:
        raise ValueError(
            "`clip_teacher` needs `data` (to train the teacher on first use) or `pretrained` (a local CLIP "
            "checkpoint folder); set `model.init_args.teacher.init_args.data` or `.pretrained`."
        )
    if epochs < 1:
        raise ValueError(
            f"`epochs` must be >= 1, got {epochs}; set `model.init_args.teacher.init_args.epochs`."
        )
    from transformers import CLIPModel

    captions = teacher_captions(data.domains)
    all_texts = [t for bank in captions.values() for t in bank]
    all_texts += [t.format(n) for t in templates for n in class_names]
    tokenizer = train_word_tokenizer(all_texts)
    config = small_clip_config(
        len(tokenizer),
        image_size=data.size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        heads=heads,
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(config)
    init_state = copy.deepcopy(clip.state_dict())
    teacher = CLIPTeacher(clip, tokenizer, class_names, templates, logit_scale=logit_scale)
    settings = {
        "clip_config": config.to_json_string(use_diff=False),
        "captions": sorted(all_texts),
        "class_names": list(class_names),
        "templates": list(templates),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
    }

    def fit() -> dict[str, Any]:
        return _fit_clip(
            teacher,
            init_state,
            data,
            captions,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
        )

    weights, info = cached_training(
        teacher,
        data,
        settings,
        fit,
        seed=seed,
        stem="CLIPTeacher",
        what=f"{epochs} epochs of contrastive training",
        cache_dir=cache_dir,
        retrain=retrain,
        record_settings={k: v for k, v in settings.items() if k not in ("captions", "clip_config")},
        check=_near_chance,
    )
    teacher.tokenizer = _saved_tokenizer(weights, tokenizer)
    teacher.distill_source = (
        f"clip_teacher cache {weights} (zero-shot val acc {info.get('val_acc', float('nan')):.4f})"
    )
    return teacher.eval()


def _saved_tokenizer(weights: Path, tokenizer: Any) -> Any:
    """The tokenizer saved next to ``weights`` (written now if missing); refuses one with another vocabulary."""
    from transformers import AutoTokenizer

    folder = weights.with_suffix(".tokenizer")
    if not (folder / "tokenizer.json").is_file():
        tokenizer.save_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(folder)
    if loaded.get_vocab() != tokenizer.get_vocab():
        raise RuntimeError(
            f"The tokenizer saved at {folder} has another vocabulary than the one these captions give; delete "
            "the folder (it is rebuilt) or pass `retrain=True`."
        )
    return loaded
