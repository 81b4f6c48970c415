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
* :class:`WeakTeacherEnsemble` and :func:`trajectory_teachers`: the label generator the projector
  imitates, the average of the softmax outputs of checkpoints saved along one teacher's training
  trajectory ("weak teachers"), cached on first use.
* :func:`soft_label_loss`: KL or MSE between the projector's softmax and the averaged soft labels.
* :func:`prototype_label_projector` (offline toy: a frozen encoder pretrained on another dataset,
  class embeddings = its normalised class-mean features) and :func:`clip_label_projector`
  (a ``transformers`` ``CLIPModel`` from a local path, class embeddings from prompts).
* Storage accounting: :func:`hard_label_bytes`, :func:`soft_label_cache_bytes`,
  :meth:`LabelProjector.storage_bytes`.
* Evaluation by retraining with labels taken online from any label function
  (:func:`evaluate_online_labels`), the same protocol as
  :func:`~lightning_distill.dataset_distillation.evaluate_synthetic` otherwise.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.dataset_distillation.evaluate import (
    EvalResult,
    RetrainClassifier,
    classification_accuracy,
    fit_fresh_model,
)
from lightning_distill.dataset_distillation.networks import ConvNet

__all__ = [
    "CLIPImageEncoder",
    "LabelProjector",
    "OnlineLabelClassifier",
    "WeakTeacherEnsemble",
    "clip_class_embeddings",
    "clip_label_projector",
    "evaluate_online_labels",
    "hard_label_bytes",
    "prototype_label_projector",
    "retrain_with_online_labels",
    "soft_label_cache_bytes",
    "soft_label_loss",
    "trajectory_checkpoints",
    "trajectory_teachers",
]

LabelLoss = Literal["kl", "mse"]


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


# ---------------------------------------------------------------------------- the label generator
class WeakTeacherEnsemble(nn.Module):
    """The average soft label of several teachers: ``log mean_m softmax(z_m / T)``.

    The output is a log-probability vector, so ``softmax(output)`` is the averaged soft label and
    the ensemble can stand wherever teacher logits are expected (with temperature 1).

    Args:
        teachers: the classifiers ``(B, C, H, W) -> (B, K)`` (e.g. checkpoints of one trajectory).
        temperature: softmax temperature of each teacher before averaging.

    Raises:
        ValueError: no teacher or ``temperature <= 0``.

    Example:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> ens = WeakTeacherEnsemble([a, b])
        >>> x = torch.randn(4, 2)
        >>> expected = (a(x).softmax(-1) + b(x).softmax(-1)) / 2
        >>> torch.allclose(ens(x).exp(), expected, atol=1e-6)
        True
    """

    def __init__(self, teachers: Sequence[nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("`teachers` is empty: give at least one teacher.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        self.teachers = nn.ModuleList(teachers)
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack(
            [F.log_softmax(t(x).float() / self.temperature, dim=-1) for t in self.teachers]
        )
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.teachers))


def _trajectory_key(model: nn.Module, data: L.LightningDataModule, settings: dict[str, Any]) -> str:
    cls = type(data)
    spec = {
        "model": repr(model),
        "data": f"{cls.__module__}.{cls.__qualname__}",
        "data_hparams": {k: repr(v) for k, v in sorted(dict(data.hparams).items())},
        **settings,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def trajectory_checkpoints(
    model: nn.Module,
    data: L.LightningDataModule,
    save_epochs: Sequence[int],
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> list[dict[str, Tensor]]:
    """Train ``model`` once with SGD on ``data``'s labelled training images; its weights after each save epoch.

    The run lasts ``max(save_epochs)`` epochs at a constant learning rate (a plain trajectory, as
    expert buffers record); the weights are re-initialised from ``seed`` first. The result is
    cached under ``cache_dir/trajectories`` by a key of the architecture, data and settings.

    Args:
        model: the architecture (its weights are overwritten by the last checkpoint).
        data: a datamodule with ``train_images()`` (e.g. :class:`~lightning_distill.data.DigitsDataModule`).
        save_epochs: 1-based epochs after which the weights are kept.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: minibatch size.
        seed: initialisation and data-order seed.
        cache_dir: cache root (default ``$LIGHTNING_DISTILL_CACHE`` or ``~/.cache/lightning_distill``).
        retrain: ignore a cached trajectory.

    Returns:
        One ``state_dict`` per save epoch, in the order given.

    Raises:
        ValueError: empty or non-positive ``save_epochs``.
        TypeError: a datamodule without ``train_images()``.
    """
    from lightning_distill.models.pretrained import default_cache_dir, file_lock, reinitialize

    epochs = [int(e) for e in save_epochs]
    if not epochs or min(epochs) < 1:
        raise ValueError(f"`save_epochs` must be non-empty 1-based epochs, got {list(save_epochs)}.")
    if not callable(getattr(data, "train_images", None)):
        raise TypeError(f"`data` ({type(data).__name__}) needs `train_images()`, like DigitsDataModule.")
    settings = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size}
    settings.update(seed=seed, epochs=max(epochs))
    key = _trajectory_key(model, data, settings)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / "trajectories" / f"{type(model).__name__}-{key}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file() and not retrain:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        else:
            start = time.perf_counter()
            data.setup("fit")
            x, y = data.train_images()
            keep = y >= 0
            x, y = x[keep], y[keep]
            stored = {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                reinitialize(model)
                optimizer = torch.optim.SGD(
                    model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
                )
                generator = torch.Generator().manual_seed(seed)
                model.train()
                for epoch in range(1, max(epochs) + 1):
                    for index in torch.randperm(len(y), generator=generator).split(batch_size):
                        loss = F.cross_entropy(model(x[index]), y[index])
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    stored[str(epoch)] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stored, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
            rank_zero_info(
                f"Trajectory of {max(epochs)} epochs trained in {time.perf_counter() - start:.1f} s: {path}"
            )
    model.load_state_dict(stored[str(max(epochs))])
    return [stored[str(e)] for e in epochs]


def trajectory_teachers(
    model: nn.Module,
    data: L.LightningDataModule,
    save_epochs: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9),
    temperature: float = 1.0,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    cache_dir: str | None = None,
) -> WeakTeacherEnsemble:
    """A :class:`WeakTeacherEnsemble` of the checkpoints of one training trajectory (trained on first use).

    HeLlO's projector imitates the averaged soft labels of "weak teachers" saved along a teacher's
    training (nine ResNet-18 checkpoints in the paper). Arguments as in
    :func:`trajectory_checkpoints`; ``temperature`` is the ensemble's.

    Returns:
        The ensemble, frozen, in eval mode, with ``distill_source`` naming the trajectory.
    """
    states = trajectory_checkpoints(
        model,
        data,
        save_epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        cache_dir=cache_dir,
    )
    teachers = []
    for state in states:
        teacher = copy.deepcopy(model)
        teacher.load_state_dict(state)
        teachers.append(teacher)
    ensemble = WeakTeacherEnsemble(teachers, temperature=temperature).requires_grad_(False).eval()
    ensemble.distill_source = (
        f"trajectory_teachers({type(model).__name__}, epochs {list(save_epochs)}, seed {seed}, lr {lr})"
    )
    return ensemble


# ---------------------------------------------------------------------------- losses
def soft_label_loss(
    logits: Tensor,
    target_log_probs: Tensor,
    *,
    kind: LabelLoss = "kl",
    temperature: float = 1.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """Distance between ``softmax(logits / T)`` and soft labels given as log-probabilities.

    ``kind="kl"``: ``T^2 KL(p || softmax(logits / T))`` with ``p = softmax(target_log_probs / T)``
    (summed over classes). ``kind="mse"``: ``mean_k (softmax(logits / T)_k - p_k)^2`` (HeLlO's
    projector and student objectives are written with MSE). Computed in fp32; the target is detached.

    Args:
        logits: ``(B, K)``.
        target_log_probs: ``(B, K)`` (e.g. :class:`WeakTeacherEnsemble` output, or any teacher logits).
        kind: ``"kl"`` or ``"mse"``.
        temperature: ``T``.
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` ``(B,)``.

    Raises:
        ValueError: shapes differ, an unknown ``kind``/``reduction``, or ``temperature <= 0``.

    Example:
        >>> z = torch.tensor([[0.0, 0.0]])
        >>> float(soft_label_loss(z, z)), float(soft_label_loss(z, torch.tensor([[0.0, -1e9]]), kind="mse"))
        (0.0, 0.25)
    """
    if logits.shape != target_log_probs.shape or logits.ndim != 2:
        raise ValueError(
            f"`logits` and `target_log_probs` must both be (B, K), got {tuple(logits.shape)} and "
            f"{tuple(target_log_probs.shape)}."
        )
    if kind not in ("kl", "mse"):
        raise ValueError(f"`kind` must be 'kl' or 'mse', got {kind!r}.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(target_log_probs.detach().float() / temperature, dim=-1)
    if kind == "kl":
        per_sample = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    else:
        per_sample = ((log_q.exp() - log_p.exp()) ** 2).mean(-1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


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


# ---------------------------------------------------------------------------- storage
def hard_label_bytes(num_images: int, num_classes: int) -> int:
    """Bytes of ``num_images`` class indices stored in the smallest unsigned integer type.

    Example:
        >>> hard_label_bytes(100, 10), hard_label_bytes(100, 1000)
        (100, 200)
    """
    if num_images < 0 or num_classes < 1:
        raise ValueError(f"Need num_images >= 0 and num_classes >= 1, got {num_images} and {num_classes}.")
    width = 1 if num_classes <= 2**8 else 2 if num_classes <= 2**16 else 4
    return num_images * width


def soft_label_cache_bytes(
    num_images: int, num_classes: int, epochs: int, *, views_per_epoch: int = 1, bytes_per_value: int = 2
) -> int:
    """Bytes of a relabel cache: one ``K``-vector per image, augmented view and epoch (SRe2L/CDA).

    SRe2L's ``FKD``-style relabelling stores teacher outputs for every augmented view the student
    will see (``epochs x views x N x K`` numbers, fp16 by default); the augmentation parameters
    stored beside them are not counted here.

    Example:
        >>> soft_label_cache_bytes(100, 10, epochs=300)
        600000
    """
    for name, value in (("num_images", num_images), ("num_classes", num_classes), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}.")
    if views_per_epoch < 1 or bytes_per_value < 1:
        raise ValueError(
            f"`views_per_epoch` and `bytes_per_value` must be >= 1, got {views_per_epoch}, {bytes_per_value}."
        )
    return epochs * views_per_epoch * num_images * num_classes * bytes_per_value


# ---------------------------------------------------------------------------- evaluation with online labels
class OnlineLabelClassifier(RetrainClassifier):
    """:class:`RetrainClassifier` whose soft labels come online from ``label_fn`` on each augmented view.

    ``label_fn`` (a projector, a teacher, an ensemble: ``(B, C, H, W) -> (B, K)`` logits or
    log-probabilities) is frozen and run without gradient on exactly the augmented images the model
    trains on; the loss is :func:`soft_label_loss` (``kind``) plus ``hard_weight`` times the
    cross-entropy on the hard labels. Reading a stored relabel cache gives the same targets as
    running its teacher online, so this also evaluates "teacher soft labels for every view".

    Args:
        model: the classifier being trained.
        label_fn: the label generator (frozen here).
        loss: ``"kl"`` or ``"mse"``.
        hard_weight: weight of the hard-label cross-entropy (HeLlO's ``beta``; 0 by default).
        **kwargs: :class:`RetrainClassifier` arguments (``epochs``, ``lr``, ``augment``, ``temperature``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        label_fn: nn.Module,
        *,
        loss: LabelLoss = "kl",
        hard_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if loss not in ("kl", "mse") or hard_weight < 0:
            raise ValueError(
                f"`loss` must be 'kl' or 'mse' and `hard_weight` >= 0, got {loss!r} and {hard_weight}."
            )
        self.label_fn = label_fn.requires_grad_(False).eval()
        self.loss, self.hard_weight = loss, hard_weight

    def train(self, mode: bool = True) -> OnlineLabelClassifier:
        super().train(mode)
        self.label_fn.eval()
        return self

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if self.augment is not None:
            x = self.augment(x, self.augment.sample(x, self.generator))
        with torch.no_grad():
            target = self.label_fn(x)
        logits = self.model(x)
        loss = soft_label_loss(logits, target, kind=self.loss, temperature=self.temperature)
        if self.hard_weight:
            loss = loss + self.hard_weight * F.cross_entropy(logits, y)
        return loss


def retrain_with_online_labels(
    images: Tensor,
    labels: Tensor,
    model_fn: Callable[[], nn.Module],
    label_fn: nn.Module,
    *,
    epochs: int,
    lr: float = 0.01,
    seed: int = 0,
    loss: LabelLoss = "kl",
    hard_weight: float = 0.0,
    temperature: float = 1.0,
    augment: str | None = "color_crop_cutout_scale_rotate",
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    accelerator: str = "cpu",
    devices: int | list[int] = 1,
) -> nn.Module:
    """:func:`~lightning_distill.dataset_distillation.retrain_model` with labels from ``label_fn`` on every augmented view.

    The same Trainer settings, seeding, SGD schedule (lr / 10 at half time) and augmentation as
    :func:`~lightning_distill.dataset_distillation.retrain_model`; ``label_fn`` is used in place (moved to the
    training device and back to the CPU afterwards).

    Returns:
        The trained model, on the CPU, in eval mode.

    Raises:
        ValueError: mismatched shapes or bad settings.
    """
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    tensors = [images.detach().cpu().float().clone(), labels.detach().cpu().long().clone()]
    was_training = label_fn.training
    flags = [p.requires_grad for p in label_fn.parameters()]
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=min(batch_size, tensors[0].shape[0]),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )

    def wrap(model: nn.Module) -> OnlineLabelClassifier:
        return OnlineLabelClassifier(
            model,
            label_fn,
            loss=loss,
            hard_weight=hard_weight,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            augment=augment,
            temperature=temperature,
            seed=seed,
        )

    try:
        return fit_fresh_model(
            model_fn, wrap, loader, epochs=epochs, seed=seed, accelerator=accelerator, devices=devices
        )
    finally:
        label_fn.cpu().train(was_training)
        for p, flag in zip(label_fn.parameters(), flags):
            p.requires_grad_(flag)


def evaluate_online_labels(
    images: Tensor,
    labels: Tensor,
    datamodule: L.LightningDataModule,
    label_fn: nn.Module,
    model_fn: Callable[[], nn.Module] | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    **kwargs: Any,
) -> EvalResult:
    """Evaluation by retraining with online labels: one model per seed, accuracy on the real test split.

    Args:
        images: the training set ``(N, C, H, W)``.
        labels: its hard labels ``(N,)``.
        datamodule: supplies ``test_dataloader()``.
        label_fn: the label generator (projector, teacher, ensemble).
        model_fn: fresh classifier per seed (default: ConvNet-3 width 128, as :func:`evaluate_synthetic`).
        seeds: one model per seed.
        **kwargs: :func:`retrain_with_online_labels` settings (``epochs`` required).

    Raises:
        ValueError: empty ``seeds``.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    if model_fn is None:
        num_classes = int(getattr(datamodule, "num_classes", int(labels.max()) + 1))
        c, h, w = images.shape[1:]
        model_fn = lambda: ConvNet(c, num_classes, (h, w))  # noqa: E731
    datamodule.setup("test")
    accuracies = []
    for seed in seeds:
        model = retrain_with_online_labels(images, labels, model_fn, label_fn, seed=seed, **kwargs)
        accuracies.append(classification_accuracy(model, datamodule.test_dataloader()))
    return EvalResult(tuple(accuracies), seeds)
