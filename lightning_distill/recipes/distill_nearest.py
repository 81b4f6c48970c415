"""DistillNearest / DistillWeighted: distil the source models most similar to the target task.

Borup, Phoo & Hariharan, "Distilling from Similar Tasks for Transfer Learning on a Budget"
(ICCV 2023, arXiv 2304.12314). No official code; what the paper's text could not confirm is listed
in ``recipes/distill_nearest/README.md``.

Setting: a zoo of frozen source models (each trained on another source task; here
:func:`~lightning_distill.vision_language.source_zoo.source_model`), a small target model, a few
labelled target images and many unlabelled ones. Algorithm:

1. Once, before training (:meth:`DistillNearest.select_sources`): every source's features ``g_s(x)``
   of the labelled target images give a task-similarity score ``score_s`` (the Gaussian
   Bhattacharyya Coefficient, :func:`~lightning_distill.losses.task_similarity.gbc_score`) and a
   target-class linear probe ``h_s`` (:func:`~lightning_distill.vision_language.source_zoo.fit_linear_probe`).
2. Weights ``w = softmax(score / τ)`` over the ``num_sources`` best sources, 0 for the others
   (:func:`~lightning_distill.losses.task_similarity.source_weights`). ``num_sources = 1`` is
   DistillNearest (the single best source, weight 1); more is DistillWeighted.
3. Each step, on labelled + unlabelled target images: target features ``f = φ(x)``, logits ``z = h(f)``;
   ``L_ce`` = cross-entropy on the labelled images;
   ``L_features = Σ_s w_s ‖P_s f / ‖P_s f‖ − g_s(x) / ‖g_s(x)‖‖²`` (``P_s`` a linear projection per source);
   ``L_pseudo_labels = Σ_s w_s T² KL(softmax(h_s(g_s(x)) / T) ‖ softmax(z / T))``.
4. Total ``L_ce + L_features + L_pseudo_labels`` (``loss_weights``). Predict with ``h(φ(x))``.

Hyper-parameters -> config keys (``model.init_args.*``):

==============================  ===========================  ==========================================
paper                           key                          default
==============================  ===========================  ==========================================
sources kept (1: Nearest)       ``num_sources``              1
weighting temperature           ``similarity_temperature``   1.0 (our choice; see the README)
GBC's PCA dimension             ``num_components``           64 (Pándy et al.)
pseudo-label temperature        ``temperature``              1.0
probe regularisation            ``probe_c``                  1.0 (scikit-learn's default)
loss weights                    ``loss_weights``             {ce: 1, features: 1, pseudo_labels: 1}
forced sources (ablation)       ``sources``                  None (chosen by score)
==============================  ===========================  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.losses import kd_loss, labelled_cross_entropy
from lightning_distill.losses.task_similarity import gbc_score, normalised_feature_mse, source_weights
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option, check_positive
from lightning_distill.vision_language.source_zoo import fit_linear_probe

__all__ = ["DistillNearest", "distill_nearest_adamw", "labelled_examples"]


def distill_nearest_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW at lr 1e-3 (the paper's optimiser settings are not given in the text we could read)."""
    return torch.optim.AdamW(params, lr=1e-3)


def labelled_examples(loader: Any, max_batches: int | None = None) -> tuple[Tensor, Tensor]:
    """The distinct labelled ``(x, y)`` of a training loader (label ``-1`` = unlabelled), read once.

    Loaders that cycle the labelled images (``MixedBatchSampler``) repeat them; repeats are dropped.
    """
    xs, ys = [], []
    for k, batch in enumerate(loader):
        if max_batches is not None and k >= max_batches:
            break
        x, y = batch[0], batch[1]
        keep = y >= 0
        xs.append(x[keep])
        ys.append(y[keep])
    if not xs or sum(len(y) for y in ys) == 0:
        raise ValueError(
            "The training data holds no labelled image (label >= 0); DistillNearest needs a few."
        )
    x, y = torch.cat(xs), torch.cat(ys)
    rows = torch.cat([x.flatten(1).double(), y[:, None].double()], dim=1)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(y), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(y)), reduce="amin")
    first = torch.sort(first).values
    return x[first], y[first]


class DistillNearest(DistillationModule):
    """DistillNearest (``num_sources=1``) and DistillWeighted (``num_sources > 1``). See the module docstring.

    Args:
        student: target feature extractor ``(B, 3, H, W) -> (B, F)`` with ``num_features``, e.g.
            :class:`~lightning_distill.vision_language.ImageEncoder`.
        teachers: the frozen source models, each with ``features(x) -> (B, F_s)`` and ``num_features``
            (:func:`~lightning_distill.vision_language.source_zoo.source_model`).
        num_classes: target classes ``K``.
        num_sources: how many of the best-scoring sources are distilled.
        similarity_temperature: softmax temperature ``τ`` of the weights over the kept scores.
        num_components: PCA dimension of the GBC score (``None``: every feature).
        temperature: temperature ``T`` of the pseudo-label KL.
        probe_c: inverse L2 strength of the sources' target-class logistic-regression probes.
        sources: distil exactly these source indices (weighted by score among them) instead of the best
            ``num_sources``: the per-source transfer measurements of the benchmark.
        loss_weights: ``{"ce": ..., "features": ..., "pseudo_labels": ...}``.
        optimizer: optimizer of the target model, its head and the projections (default AdamW 1e-3).
        lr_scheduler: optional scheduler.

    Raises:
        ValueError: no source, a source without ``features``/``num_features``, a student without
            ``num_features``, ``num_sources`` outside ``1..S``, bad ``sources``, non-positive temperatures.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ce", "features", "pseudo_labels")
    default_loss_weights: ClassVar[dict[str, float]] = {"ce": 1.0, "features": 1.0, "pseudo_labels": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module],
        num_classes: int,
        num_sources: int = 1,
        similarity_temperature: float = 1.0,
        num_components: int | None = 64,
        temperature: float = 1.0,
        probe_c: float = 1.0,
        sources: Sequence[int] | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = distill_nearest_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teachers=teachers,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        count = len(self.teachers)
        for k, source in enumerate(self.teachers):
            if not callable(getattr(source, "features", None)) or not isinstance(
                getattr(source, "num_features", None), int
            ):
                raise ValueError(
                    f"`teachers[{k}]` ({type(source).__name__}) needs a `features(x)` method and an integer "
                    "`num_features`; build sources with `lightning_distill.vision_language.source_zoo.source_model`."
                )
        num_features = getattr(student, "num_features", None)
        if not isinstance(num_features, int):
            raise ValueError(
                f"The student {type(student).__name__} has no integer `num_features`; wrap it in "
                "`lightning_distill.vision_language.ImageEncoder`."
            )
        check_option(
            1 <= num_sources <= count, "num_sources", num_sources, f"in 1..{count} (the sources given)"
        )
        if sources is not None:
            sources = [int(s) for s in sources]
            check_option(
                len(sources) > 0
                and len(set(sources)) == len(sources)
                and all(0 <= s < count for s in sources),
                "sources",
                sources,
                f"distinct indices in 0..{count - 1}",
            )
        check_option(num_classes >= 2, "num_classes", num_classes, ">= 2")
        self.similarity_temperature = check_positive("similarity_temperature", similarity_temperature)
        self.temperature = check_positive("temperature", temperature)
        self.probe_c = check_positive("probe_c", probe_c)
        check_option(
            num_components is None or num_components >= 1, "num_components", num_components, ">= 1 or null"
        )
        self.save_hyperparameters(ignore=["student", "teachers", "optimizer", "lr_scheduler"])
        self.num_classes, self.num_sources, self.num_components = num_classes, num_sources, num_components
        self.forced_sources = sources
        self.head = nn.Linear(num_features, num_classes)
        self.projections = nn.ModuleList(nn.Linear(num_features, s.num_features) for s in self.teachers)
        self.register_frozen(
            "probes", nn.ModuleList(nn.Linear(s.num_features, num_classes) for s in self.teachers)
        )
        self.register_buffer("scores", torch.zeros(count))
        self.register_buffer("weights", torch.zeros(count))
        self.register_buffer("selected", torch.tensor(False))

    # ---------------------------------------------------------------- steps 1-2
    @torch.no_grad()
    def source_features(self, k: int, x: Tensor, chunk: int = 512) -> Tensor:
        """``g_k(x)`` of source ``k``, ``(N, F_k)``, in chunks."""
        return torch.cat([self.teachers[k].features(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    @torch.no_grad()
    def select_sources(self, x: Tensor, y: Tensor) -> Tensor:
        """Steps 1-2 on the labelled target images ``(x, y)``: scores, probes and weights; returns the weights."""
        if y.ndim != 1 or len(y) != len(x) or bool((y < 0).any() or (y >= self.num_classes).any()):
            raise ValueError(f"`y` must hold labels in 0..{self.num_classes - 1}, one per image in `x`.")
        x, y = x.to(self.device), y.to(self.device)
        scores = []
        for k in range(len(self.teachers)):
            feats = self.source_features(k, x)
            scores.append(float(gbc_score(feats, y, num_components=self.num_components)))
            probe = fit_linear_probe(feats, y, self.num_classes, c=self.probe_c)
            self.probes[k].load_state_dict(probe.state_dict())
        self.scores.copy_(torch.tensor(scores))
        if self.forced_sources is None:
            weights = source_weights(self.scores, self.num_sources, self.similarity_temperature)
        else:
            kept = torch.tensor(self.forced_sources, device=self.device)
            weights = torch.zeros_like(self.scores)
            weights[kept] = source_weights(self.scores[kept], len(kept), self.similarity_temperature)
        self.weights.copy_(weights)
        self.selected.fill_(True)
        self._freeze_unused_projections()
        return self.weights

    def _freeze_unused_projections(self) -> None:
        for k, projection in enumerate(self.projections):
            projection.requires_grad_(bool(self.weights[k] > 0))

    def active_sources(self) -> list[int]:
        return [k for k in range(len(self.teachers)) if float(self.weights[k]) > 0]

    def setup(self, stage: str) -> None:
        """Step 1-2 before the optimizers are built, from the labelled images of the training loader."""
        if bool(self.selected):
            self._freeze_unused_projections()
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "train_dataloader"):
            raise ValueError(
                "DistillNearest selects its sources from the labelled images of the training data: fit with "
                "a datamodule, or call `select_sources(x, y)` first."
            )
        weights = self.select_sources(*labelled_examples(datamodule.train_dataloader()))
        names = [getattr(self.teachers[k], "name", f"source{k}") for k in self.active_sources()]
        rank_zero_info(
            f"DistillNearest: GBC scores {[round(s, 3) for s in self.scores.tolist()]}; distilling {names} "
            f"with weights {[round(float(weights[k]), 3) for k in self.active_sources()]}"
        )

    # ---------------------------------------------------------------- step 3-4
    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.student(x))

    def loss_terms_of(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Step 3: the three terms on one batch (label -1 = unlabelled)."""
        if not bool(self.selected):
            raise RuntimeError("Call `select_sources(x, y)` (or fit with a datamodule) before training.")
        feats = self.student(x)
        logits = self.head(feats)
        features = pseudo = feats.sum() * 0.0
        for k in self.active_sources():
            w = self.weights[k]
            source_feats = self.source_features(k, x)
            features = features + w * normalised_feature_mse(self.projections[k](feats), source_feats)
            pseudo = pseudo + w * kd_loss(logits, self.probes[k](source_feats), temperature=self.temperature)
        return {"ce": labelled_cross_entropy(logits, y), "features": features, "pseudo_labels": pseudo}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self.log_losses(self.loss_terms_of(batch[0], batch[1]))

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """The target model through its head; a source through its target-class probe (linear-probe accuracy)."""
        if model is self.student:
            return super().evaluate(self, batch)
        k = next(i for i, t in enumerate(self.teachers) if t is model)
        return super().evaluate(lambda x: self.probes[k](model.features(x)), batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)
