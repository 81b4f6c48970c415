"""DHO: dual-head optimisation for distilling a vision-language teacher with few labels.

Kang et al., "Simple yet Effective Semi-supervised Knowledge Distillation from Vision-Language
Models via Dual-Head Optimization" (arXiv 2505.07675; official code erjui/DHO, ``train_others.py``).

Algorithm (one step on a batch of labelled and unlabelled images):

1. Teacher: the CLIP zero-shot logits ``z_T`` (prompt-ensemble class embeddings) of every image.
2. Student: shared features ``f = g(x)``, then two linear heads, ``z_ce = h_ce(f)`` and ``z_kd = h_kd(f)``.
3. ``L_ce = CE(z_ce, y)`` on the labelled images.
4. ``L_kd = T² KL(softmax(z_T / T) || softmax(z_kd / T))`` at ``T = 2``, separately on the labelled
   and on the unlabelled images.
5. Total ``0.5 L_ce + 0.5 (L_kd^lab + L_kd^unl)``.
6. Inference: ``p = (1 - α) softmax(z_ce) + α softmax(z_kd / β)``, with ``(α, β)`` grid-searched on the
   validation set after every validation epoch (:func:`~lightning_distill.vision_language.search_head_mixing`).

``heads="single"`` puts both losses on one head (the single-head baselines of the paper: CE-only
with ``loss_weights: {kd_labelled: 0, kd_unlabelled: 0}``, KD-only with ``{ce: 0}``, or both).

Hyper-parameters -> config keys (``model.init_args.*``):

==============================  ===============================  ==========================================
paper / official code           key                              default
==============================  ===============================  ==========================================
KD temperature T = 2            ``temperature``                  2.0
0.5 CE + 0.5 (KD_l + KD_u)      ``loss_weights``                 {ce: 0.5, kd_labelled: 0.5, kd_unlabelled: 0.5}
α grid 0:0.05:1, β grid         ``alphas``, ``betas``            :data:`DHO_ALPHAS`, :data:`DHO_BETAS`
two heads / one head            ``heads``                        "dual"
AdamW lr 1e-3                   ``optimizer``                    :func:`dho_adamw`
==============================  ===============================  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses import kd_loss, labelled_cross_entropy
from lightning_distill.module import DistillationModule
from lightning_distill.utils.checks import check_option, check_positive
from lightning_distill.vision_language.heads import DHO_ALPHAS, DHO_BETAS, mix_heads, search_head_mixing

__all__ = ["DHO", "dho_adamw"]


def dho_adamw(params: Any) -> torch.optim.Optimizer:
    """The official optimizer: AdamW, lr 1e-3, torch's other defaults (``train_others.py``)."""
    return torch.optim.AdamW(params, lr=1e-3)


class DHO(DistillationModule):
    """Dual-head optimisation. See the module docstring for the algorithm.

    Args:
        student: image encoder ``(B, 3, H, W) -> (B, F)`` with a ``num_features`` attribute, e.g.
            :class:`~lightning_distill.vision_language.ImageEncoder`.
        teacher: frozen zero-shot classifier ``(B, 3, H, W) -> (B, K)``, e.g.
            :func:`~lightning_distill.vision_language.clip_teacher`.
        num_classes: ``K``.
        temperature: KD temperature ``T``.
        heads: ``"dual"`` (DHO) or ``"single"`` (one head takes both losses; the baselines).
        alphas: candidate weights ``α`` of the KD head at inference.
        betas: candidate temperatures ``β`` of the KD head at inference.
        loss_weights: ``{"ce": ..., "kd_labelled": ..., "kd_unlabelled": ...}``.
        optimizer: optimizer of the student and heads (default :func:`dho_adamw`).
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: ``temperature`` <= 0, an unknown ``heads``, empty grids, or a student without
            ``num_features``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ce", "kd_labelled", "kd_unlabelled")
    default_loss_weights: ClassVar[dict[str, float]] = {"ce": 0.5, "kd_labelled": 0.5, "kd_unlabelled": 0.5}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        temperature: float = 2.0,
        heads: Literal["dual", "single"] = "dual",
        alphas: Sequence[float] = DHO_ALPHAS,
        betas: Sequence[float] = DHO_BETAS,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = dho_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.temperature = check_positive("temperature", temperature)
        check_option(heads in ("dual", "single"), "heads", heads, "'dual' or 'single'")
        check_option(
            len(alphas) > 0 and all(0 <= a <= 1 for a in alphas), "alphas", alphas, "values in [0, 1]"
        )
        check_option(len(betas) > 0 and all(b > 0 for b in betas), "betas", betas, "values > 0")
        num_features = getattr(student, "num_features", None)
        if not isinstance(num_features, int):
            raise ValueError(
                f"The student {type(student).__name__} has no integer `num_features`; wrap it in "
                "`lightning_distill.vision_language.ImageEncoder`."
            )
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.heads, self.alphas, self.betas = heads, tuple(alphas), tuple(betas)
        self.ce_head = nn.Linear(num_features, num_classes)
        self.kd_head = nn.Linear(num_features, num_classes) if heads == "dual" else None
        # The inference mix (α, β); searched on validation data, saved in checkpoints.
        self.register_buffer("mix_alpha", torch.tensor(0.5 if heads == "dual" else 0.0))
        self.register_buffer("mix_beta", torch.tensor(1.0))
        self._val_outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    # ---------------------------------------------------------------- the paper
    def head_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Step 2: ``(z_ce, z_kd)``, each ``(B, K)``, from shared features (the same tensor with one head)."""
        features = self.student(x)
        z_ce = self.ce_head(features)
        return z_ce, (self.kd_head(features) if self.kd_head is not None else z_ce)

    def ce_loss(self, z_ce: Tensor, labels: Tensor) -> Tensor:
        """Step 3: cross-entropy on the labelled images (label -1 marks unlabelled ones)."""
        return labelled_cross_entropy(z_ce, labels)

    def kd_term(self, z_kd: Tensor, teacher_logits: Tensor, rows: Tensor) -> Tensor:
        """Step 4: ``T² KL(softmax(z_T/T) || softmax(z_kd/T))`` over ``rows`` (0 with a graph when empty)."""
        if not bool(rows.any()):
            return z_kd.sum() * 0.0
        return kd_loss(z_kd[rows], teacher_logits[rows], temperature=self.temperature)

    def predict_probabilities(self, x: Tensor) -> Tensor:
        """Step 6: ``(1 - α) softmax(z_ce) + α softmax(z_kd / β)`` with the searched ``(α, β)``."""
        z_ce, z_kd = self.head_logits(x)
        return mix_heads(z_ce, z_kd, float(self.mix_alpha), float(self.mix_beta))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        # 1. Teacher zero-shot logits of every image.
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        # 2. Shared features and the two heads.
        z_ce, z_kd = self.head_logits(x)
        self.check_output_shapes(z_kd, teacher_logits)
        labelled = y >= 0
        # 3.-5. CE on labelled images, KD on labelled and on unlabelled images; the base weighs them.
        terms = {
            "ce": self.ce_loss(z_ce, y),
            "kd_labelled": self.kd_term(z_kd, teacher_logits, labelled),
            "kd_unlabelled": self.kd_term(z_kd, teacher_logits, ~labelled),
        }
        return self.log_losses(terms)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """The student is scored through the mixed heads (log-probabilities as logits); teachers as they are."""
        if model is self.student:
            return super().evaluate(lambda x: self.predict_probabilities(x).clamp_min(1e-12).log(), batch)
        return super().evaluate(model, batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if not self.trainer.sanity_checking:
            z_ce, z_kd = self.head_logits(batch[0])
            self._val_outputs.append((z_ce.detach(), z_kd.detach(), batch[1]))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._val_outputs:
            z_ce, z_kd, y = (torch.cat(t) for t in zip(*self._val_outputs))
            self._val_outputs.clear()
            self.select_mixing(z_ce, z_kd, y, log=True)

    def select_mixing(self, z_ce: Tensor, z_kd: Tensor, labels: Tensor, *, log: bool = False) -> float:
        """Step 6's grid search on validation logits; sets ``(α, β)`` (logs them with ``log``), returns the best accuracy."""
        keep = labels >= 0
        if self.kd_head is None:  # one head: nothing to mix
            alpha, beta = 0.0, 1.0
            acc = float((z_ce[keep].argmax(-1) == labels[keep]).float().mean())
        else:
            alpha, beta, acc = search_head_mixing(
                z_ce[keep], z_kd[keep], labels[keep], self.alphas, self.betas
            )
        self.mix_alpha.fill_(alpha)
        self.mix_beta.fill_(beta)
        if log:
            self.log_dict({"val/mix_alpha": alpha, "val/mix_beta": beta, "val/mixed_acc": acc})
        return acc

    @torch.no_grad()
    def fit_mixing(self, loader: Any) -> float:
        """Run :meth:`select_mixing` on every batch of ``loader`` (e.g. a validation loader); the best accuracy."""
        was_training = self.training
        self.eval()
        outs = [(*self.head_logits(b[0].to(self.device)), b[1].to(self.device)) for b in loader]
        self.train(was_training)
        return self.select_mixing(*(torch.cat(t) for t in zip(*outs)))

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.predict_probabilities(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_probabilities(x)
