"""Label projectors: soft labels generated online from images instead of stored (HeLlO).

Soft-label dataset distillation (SRe2L, CDA, RDED) trains students on a teacher's soft labels for
*every augmented view in every epoch*; stored, that cache grows as ``epochs x views x N x K``
numbers and can outweigh the distilled images. HeLlO (Yu et al., "Heavy Labels Out! Dataset
Distillation with Label Space Lightening", arXiv 2408.08201) replaces the cache by a small
*label projector* that produces the labels online. The parts here:

* :class:`LabelProjector`: an image encoder ``(B, C, H, W) -> (B, D)`` and a linear head whose
  rows start as (scaled, unit-norm) class embeddings, so at initialisation the projector is the
  encoder's zero-shot classifier (``logit_k = s * cos(f(x), e_k)``: CLIP's zero-shot rule when the
  encoder is CLIP's image tower and ``e_k`` the text embeddings of the class prompts). It is
  adapted with LoRA through ``peft`` (on the encoder's convolutions/linears and on the head);
  only the adapters are stored.
* :func:`prototype_label_projector` (offline toy: a frozen encoder pretrained on another dataset,
  class embeddings = its normalised class-mean features) and :func:`clip_label_projector`
  (a ``transformers`` ``CLIPModel`` from a local path, class embeddings from prompts).

Elsewhere: the label generator the projector imitates (:class:`WeakTeacherEnsemble`,
:func:`trajectory_teachers`) in :mod:`~lightning_distill.dataset_distillation.weak_teachers`;
storage accounting and evaluation by retraining with online labels in
:mod:`~lightning_distill.dataset_distillation.online_labels`; the loss ``soft_label_loss`` in
:mod:`lightning_distill.losses.dataset_distillation`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.dataset_distillation.networks import ConvNet

__all__ = [
    "CLIPImageEncoder",
    "LabelProjector",
    "clip_class_embeddings",
    "clip_label_projector",
    "prototype_label_projector",
]


# ---------------------------------------------------------------------------- the projector
class LabelProjector(nn.Module):
    """An image encoder plus a linear head initialised from class embeddings, adapted with LoRA.

    ``logits = W normalize(encoder(x))`` with ``W`` initialised to ``logit_scale * normalize(E)``
    (``E`` the ``(K, D)`` class embeddings). With LoRA (``lora_rank > 0``), ``peft`` wraps every
    module of ``lora_targets`` (default: every ``nn.Conv2d`` and ``nn.Linear`` of the encoder) with
    rank-``lora_rank`` adapters and the head with rank-``head_rank`` adapters; everything else is
    frozen. The LoRA ``B`` matrices start at zero, so the adapted projector starts as the
    zero-shot classifier. ``train_head=True`` trains the whole head instead of a LoRA on it.

    Args:
        encoder: ``(B, C, H, W) -> (B, D)`` features (frozen; only adapters learn).
        class_embeddings: ``(K, D)`` one embedding per class (normalised here).
        logit_scale: the scale ``s`` of the cosine logits (CLIP: ``logit_scale.exp()`` = 100).
        lora_rank: rank of the encoder adapters; 0 trains no encoder adapter.
        head_rank: rank of the head adapter; 0 leaves the head as initialised (unless ``train_head``).
        lora_alpha: LoRA ``alpha`` (scaling ``alpha / rank``); ``None`` means ``alpha = rank``.
        lora_dropout: dropout on the adapter inputs.
        lora_targets: module names (relative to the encoder) to adapt; ``None`` picks every
            ``nn.Conv2d`` / ``nn.Linear`` of the encoder.
        train_head: train every head weight (stored in full) instead of a head adapter.

    Raises:
        TypeError: ``encoder`` is not an ``nn.Module``.
        ValueError: ``class_embeddings`` is not ``(K, D)``, ``logit_scale <= 0``, negative ranks,
            both ``train_head`` and ``head_rank``, or a target the encoder does not have.

    Example:
        >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> emb = torch.eye(3)
        >>> proj = LabelProjector(enc, emb, logit_scale=10.0, lora_rank=2, head_rank=1)
        >>> proj(torch.zeros(2, 1, 2, 2)).shape, sorted(n.split(".")[0] for n in proj.adapter_state_dict())
        (torch.Size([2, 3]), ['encoder', 'encoder', 'head', 'head'])
        >>> proj.storage_bytes()  # (2 x 4 + 3 x 2) + (1 x 3 + 3 x 1) fp32 numbers
        80
    """

    def __init__(
        self,
        encoder: nn.Module,
        class_embeddings: Tensor,
        logit_scale: float = 100.0,
        lora_rank: int = 8,
        head_rank: int = 64,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        lora_targets: Sequence[str] | None = None,
        train_head: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"`encoder` must be an nn.Module, got {type(encoder).__name__}.")
        embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
        if embeddings.ndim != 2 or min(embeddings.shape) < 1:
            raise ValueError(f"`class_embeddings` must be (K, D), got shape {tuple(embeddings.shape)}.")
        if not logit_scale > 0:
            raise ValueError(f"`logit_scale` must be > 0, got {logit_scale}.")
        for name, value in (("lora_rank", lora_rank), ("head_rank", head_rank)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}.")
        if train_head and head_rank:
            raise ValueError(
                f"`train_head=True` trains the whole head; set `head_rank=0` (got {head_rank}) or train_head=False."
            )
        self.num_classes, self.embed_dim = embeddings.shape
        self.logit_scale = float(logit_scale)
        self.encoder = encoder
        self.head = nn.Linear(self.embed_dim, self.num_classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(self.logit_scale * F.normalize(embeddings, dim=1))
        self.requires_grad_(False)
        self.lora_rank, self.head_rank, self.train_head = lora_rank, head_rank, train_head
        self.lora_targets = self._lora_targets(lora_targets) if lora_rank else []
        if self.lora_targets or head_rank:
            self._inject_lora(lora_alpha, lora_dropout)
        if train_head:
            self.head.weight.requires_grad_(True)

    # ---------------------------------------------------------------- construction
    def _lora_targets(self, targets: Sequence[str] | None) -> list[str]:
        modules = dict(self.encoder.named_modules())
        if targets is None:
            found = [n for n, m in modules.items() if n and isinstance(m, (nn.Conv2d, nn.Linear))]
            if not found:
                raise ValueError("The encoder has no nn.Conv2d or nn.Linear for LoRA; give `lora_targets`.")
            return [f"encoder.{n}" for n in found]
        missing = [t for t in targets if t not in modules]
        if missing:
            raise ValueError(
                f"`lora_targets` {missing} are not modules of the encoder; some valid names: "
                f"{[n for n in modules if n][:8]}."
            )
        return [f"encoder.{t}" for t in targets]

    def _inject_lora(self, alpha: float | None, dropout: float) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(self.lora_targets) + (["head"] if self.head_rank else [])
        base_rank = self.lora_rank or self.head_rank
        ranks = {"head": self.head_rank} if self.head_rank else {}
        alphas: dict[str, float] = {}
        if alpha is None:  # scaling 1 for every adapter
            alphas = {"head": float(self.head_rank)} if self.head_rank else {}
            alpha = float(base_rank)
        config = LoraConfig(
            r=base_rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets,
            rank_pattern=ranks,
            alpha_pattern=alphas,
            bias="none",
        )
        inject_adapter_in_model(config, self)

    # ---------------------------------------------------------------- forward
    def features(self, x: Tensor) -> Tensor:
        """Unit-norm image features ``(B, D)``."""
        return F.normalize(self.encoder(x).float(), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Label logits ``(B, K)`` of images ``(B, C, H, W)``."""
        return self.head(self.features(x))

    @property
    def head_weight(self) -> Tensor:
        """The head's base weight ``(K, D)`` (``logit_scale * normalize(E)``; without the LoRA delta)."""
        base = getattr(self.head, "base_layer", self.head)
        return base.weight

    # ---------------------------------------------------------------- storage
    def adapter_state_dict(self) -> dict[str, Tensor]:
        """What must be stored to rebuild the projector from the public encoder and class names.

        The LoRA matrices (and the head, with ``train_head``): the frozen encoder and the class
        embeddings are re-derived, not stored.
        """
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def storage_bytes(self, bytes_per_value: int = 4) -> int:
        """Bytes of :meth:`adapter_state_dict` at ``bytes_per_value`` (4 fp32, 2 fp16)."""
        if bytes_per_value < 1:
            raise ValueError(f"`bytes_per_value` must be >= 1, got {bytes_per_value}.")
        return bytes_per_value * sum(t.numel() for t in self.adapter_state_dict().values())

    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`adapter_state_dict` returned.

        Raises:
            ValueError: missing or unexpected keys.
        """
        own = self.adapter_state_dict()
        if set(state) != set(own):
            raise ValueError(
                f"Adapter keys differ: missing {sorted(set(own) - set(state))}, "
                f"unexpected {sorted(set(state) - set(own))}."
            )
        with torch.no_grad():
            params = dict(self.named_parameters())
            for name, value in state.items():
                params[name].copy_(value)


# ---------------------------------------------------------------------------- builders
@torch.no_grad()
def _class_mean_embeddings(encoder: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    features = torch.cat([F.normalize(encoder(chunk).float(), dim=-1) for chunk in x.split(512)])
    means = []
    for c in range(num_classes):
        rows = features[y == c]
        if rows.shape[0] == 0:
            raise ValueError(f"No image of class {c} to compute its class embedding from.")
        means.append(rows.mean(0))
    return F.normalize(torch.stack(means), dim=-1)


def prototype_label_projector(
    encoder: nn.Module,
    prototype_data: L.LightningDataModule,
    logit_scale: float = 30.0,
    lora_rank: int = 4,
    head_rank: int = 4,
    lora_alpha: float | None = None,
    train_head: bool = False,
) -> LabelProjector:
    """The offline stand-in for CLIP: a frozen pretrained encoder and its class-prototype head.

    CLIP brings an image tower and, through its text tower, one embedding per class name that is
    aligned with the image features. Offline, without CLIP weights, this builder plays both parts
    with a classifier pretrained on *another* dataset (e.g. a :class:`ConvNet` trained on MNIST by
    :func:`~lightning_distill.models.trained_classifier`): the encoder is its feature extractor, and
    the class embeddings are the normalised class-mean features of ``prototype_data``'s training
    images (the pretraining domain), a zero-shot head that costs no storage for the target data.

    Args:
        encoder: a trained :class:`ConvNet` (its ``embed`` is used) or any ``(B, C, H, W) -> (B, D)`` module.
        prototype_data: datamodule with ``train_images()`` of the encoder's pretraining domain.
        logit_scale: scale of the cosine logits.
        lora_rank: LoRA rank on the encoder's convolutions.
        head_rank: LoRA rank on the head.
        lora_alpha: LoRA alpha (``None``: equal to the rank).
        train_head: train the whole head instead of a head adapter.

    Returns:
        The :class:`LabelProjector` (encoder frozen, adapters trainable).

    Raises:
        TypeError: ``prototype_data`` has no ``train_images()``.
    """
    if not callable(getattr(prototype_data, "train_images", None)):
        raise TypeError(f"`prototype_data` ({type(prototype_data).__name__}) needs `train_images()`.")
    feature_extractor: nn.Module = encoder
    if isinstance(encoder, ConvNet):
        feature_extractor = nn.Sequential(encoder.features, nn.Flatten())
    feature_extractor = copy.deepcopy(feature_extractor).eval()
    prototype_data.setup("fit")
    x, y = prototype_data.train_images()
    keep = y >= 0
    num_classes = int(getattr(prototype_data, "num_classes", int(y[keep].max()) + 1))
    embeddings = _class_mean_embeddings(feature_extractor, x[keep], y[keep], num_classes)
    return LabelProjector(
        feature_extractor,
        embeddings,
        logit_scale=logit_scale,
        lora_rank=lora_rank,
        head_rank=head_rank,
        lora_alpha=lora_alpha,
        train_head=train_head,
    )


class CLIPImageEncoder(nn.Module):
    """CLIP's image tower as an encoder: ``visual_projection(vision_model(x).pooler_output)``, ``(B, D)``.

    Args:
        clip_model: a ``transformers.CLIPModel`` (its vision tower and projection are kept).
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


@torch.no_grad()
def clip_class_embeddings(
    clip_model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Unit-norm CLIP text embeddings ``(K, D)`` of tokenised prompts, one prompt per class (``(K, L)``)."""
    text = clip_model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return F.normalize(clip_model.text_projection(text).float(), dim=-1)


def clip_label_projector(
    pretrained: str,
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
    lora_rank: int = 8,
    head_rank: int = 64,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] | None = None,
) -> LabelProjector:
    """HeLlO's projector on a real CLIP: image tower + head from the class-prompt text embeddings.

    Loads ``transformers.CLIPModel`` and ``CLIPTokenizer`` from the local folder ``pretrained``
    (no download), embeds ``template.format(name)`` for every template and class, averages the
    unit-norm embeddings over templates, and builds a :class:`LabelProjector` with CLIP's learned
    ``logit_scale``: before adaptation it is exactly CLIP's zero-shot classifier. LoRA goes on the
    ``lora_targets`` of the image tower (default: the attention ``q_proj`` and ``v_proj``).

    Raises:
        FileNotFoundError: ``pretrained`` is not a local folder.
        ValueError: no class name or no template.
    """
    from transformers import CLIPModel, CLIPTokenizer

    if not Path(pretrained).is_dir():
        raise FileNotFoundError(
            f"`pretrained` must be a local folder with a CLIPModel and its tokenizer, got {pretrained!r} "
            "(nothing is downloaded; save one with `CLIPModel.save_pretrained`)."
        )
    if not class_names or not templates:
        raise ValueError(f"Give class names and templates, got {list(class_names)} and {list(templates)}.")
    model = CLIPModel.from_pretrained(pretrained).eval()
    tokenizer = CLIPTokenizer.from_pretrained(pretrained)
    per_template = []
    for template in templates:
        tokens = tokenizer([template.format(name) for name in class_names], padding=True, return_tensors="pt")
        per_template.append(clip_class_embeddings(model, tokens["input_ids"], tokens["attention_mask"]))
    embeddings = F.normalize(torch.stack(per_template).mean(0), dim=-1)
    encoder = CLIPImageEncoder(model)
    if lora_targets is None:
        lora_targets = [
            n
            for n, _ in encoder.named_modules()
            if n.endswith("self_attn.q_proj") or n.endswith("self_attn.v_proj")
        ]
    return LabelProjector(
        encoder,
        embeddings,
        logit_scale=float(model.logit_scale.detach().exp()),
        lora_rank=lora_rank,
        head_rank=head_rank,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,
    )
