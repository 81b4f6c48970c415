"""PHG-MAE: a multi-modal masked-autoencoder ensemble distilled into an RGB-only student (arXiv 2510.10068).

Probabilistic hypergraphs with masked autoencoders: the teacher reads several per-pixel modalities
and, on every forward pass while it trains, masks *whole modalities*, so each pass samples a
hyperedge (the visible subset) of the hypergraph over the modalities and reconstructs all of them:
pretraining (rebuilding the inputs) and fine-tuning (predicting the task layers, on the labelled
views) in one loop. At inference it averages the predictions of several hyperedges (the ensemble).
The ensemble is then distilled into a small network that reads RGB only (fewer than 1M
parameters), on labelled and unlabelled views alike (semi-supervised).

Algorithm (the teacher comes from :func:`~lightning_distill.segmentation.hypergraph.phg_mae_teacher`):

1. Teacher training (on first use): per sample a visible subset of the modalities it has (each kept
   with ``keep_prob``, never empty); loss = sum over modalities of the reconstruction terms
   (:func:`~lightning_distill.losses.multimodal.modality_reconstruction_losses`).
2. Distillation, per batch: the frozen teacher's ensemble over ``hyperedges`` (default: every
   non-empty subset of the inference inputs ``rgb`` and ``normals``) gives class probabilities
   ``p_T`` and depth ``d_T``, for every view.
3. The student reads ``rgb`` only: semantic logits ``z_S`` and depth ``d_S``.
4. ``L = kd * softCE(z_S, p_T) + depth_kd * |d_S - d_T| + ce * CE(z_S, y) + depth * |d_S - d|``,
   the last two on labelled views only.

Hyper-parameters -> config keys (``model.init_args.*``; the paper gives no loss details, so these
are our choices, see the README):

==================================  ======================  ============================
what                                key                     default
==================================  ======================  ============================
modalities the ensemble reads       ``inputs``              ``[rgb, normals]``
hyperedges of the ensemble          ``hyperedges``          all non-empty subsets of inputs
depth normaliser (metres)           ``max_depth``           40.0
term weights                        ``loss_weights``        {kd: 1, depth_kd: 1, ce: 1, depth: 1}
==================================  ======================  ============================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.multimodal import masked_l1, soft_pixel_cross_entropy
from lightning_distill.module import DistillationModule
from lightning_distill.segmentation.hypergraph import (
    TASK_MODALITIES,
    MultiModalMAE,
    encode_modalities,
    enumerate_hyperedges,
)
from lightning_distill.segmentation.metrics import IoUTracker
from lightning_distill.utils.checks import check_positive

__all__ = ["PHGMAE"]


class PHGMAE(DistillationModule):
    """An RGB-only student learns semantic labels and depth from a PHG-MAE ensemble (and the labels it has).

    Args:
        student: network ``(B, 3, H, W) -> (B, K + 1, H, W)``: ``K`` class logits, then depth
            divided by ``max_depth``; it reads ``rgb`` and nothing else.
        teacher: a frozen :class:`~lightning_distill.segmentation.hypergraph.MultiModalMAE`.
        inputs: modalities the teacher's ensemble may read at inference.
        hyperedges: the ensemble's visible subsets (lists of modality names); ``None`` = every
            non-empty subset of ``inputs``.
        max_depth: metres that map to 1 in the normalised depth.
        ignore_index: label of pixels without a class (sky).
        loss_weights: ``{"kd", "depth_kd", "ce", "depth"}``.
        optimizer: optimizer of the student.
        lr_scheduler: optional epoch-wise scheduler.

    Batches are dicts from :class:`~lightning_distill.data.multimodal.MultiModalSceneDataModule`.

    Raises:
        ValueError: a teacher that is not a ``MultiModalMAE``, a student that does not read 3
            channels, ``inputs`` holding a task layer (depth, semantic), a hyperedge outside ``inputs``
            or empty, ``max_depth`` <= 0; at the first
            step, a student whose output is not ``K + 1`` planes.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("kd", "depth_kd", "ce", "depth")
    default_loss_weights: ClassVar[dict[str, float]] = {"kd": 1.0, "depth_kd": 1.0, "ce": 1.0, "depth": 1.0}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        inputs: Sequence[str] = ("rgb", "normals"),
        hyperedges: Sequence[Sequence[str]] | None = None,
        max_depth: float = 40.0,
        ignore_index: int = -1,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if not isinstance(teacher, MultiModalMAE):
            raise ValueError(
                f"`teacher` must be a MultiModalMAE (e.g. from phg_mae_teacher), got {type(teacher).__name__}."
            )
        if getattr(student, "in_channels", 3) != 3:
            raise ValueError(f"`student` must read the 3 RGB channels only, it takes {student.in_channels}.")
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer", "lr_scheduler"])
        self.max_depth = check_positive("max_depth", max_depth)
        self.ignore_index = ignore_index
        names = list(teacher.names)
        self.inputs = list(inputs)
        if any(n in TASK_MODALITIES for n in self.inputs):
            raise ValueError(
                f"`inputs` {self.inputs} may not hold the task layers {list(TASK_MODALITIES)}: the ensemble would "
                "read the labels it is meant to predict; use e.g. [rgb, normals]."
            )
        edges = enumerate_hyperedges(names, self.inputs)
        if hyperedges is not None:
            bad = [e for e in hyperedges if not e or any(n not in self.inputs for n in e)]
            if not hyperedges or bad:
                raise ValueError(
                    f"`hyperedges` must be non-empty subsets of `inputs` {self.inputs}, got {bad or hyperedges}."
                )
            edges = torch.stack([torch.tensor([n in e for n in names]) for e in hyperedges])
        self.register_buffer("edges", edges, persistent=False)
        self.iou = IoUTracker(ignore_index=ignore_index)
        self._depth_errors: dict[str, list[Tensor]] = {}

    # ---------------------------------------------------------------- the paper
    def student_predict(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Step 3: class logits ``(B, K, H, W)`` and normalised depth ``(B, 1, H, W)`` from ``rgb`` alone."""
        out = self.student(batch["rgb"])
        classes = self.teacher.num_classes
        if out.ndim != 4 or out.shape[1] != classes + 1:
            raise ValueError(
                f"The student must output {classes} class logits and 1 depth plane (B, {classes + 1}, H, W), "
                f"got {tuple(out.shape)}; set its `num_classes: {classes + 1}`."
            )
        return out[:, :classes], out[:, classes:]

    @torch.no_grad()
    def teacher_predict(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Step 2: the ensemble's class probabilities and normalised depth over ``hyperedges``."""
        inputs = encode_modalities(batch, self.teacher.num_classes, self.max_depth)
        return self.teacher.ensemble(inputs, self.edges)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        logits, depth = self.student_predict(batch)
        zero = logits.sum() * 0.0
        if self.loss_weights["kd"] or self.loss_weights["depth_kd"]:
            teacher_probs, teacher_depth = self.teacher_predict(batch)
            self.check_output_shapes(logits, teacher_probs)
            kd, depth_kd = soft_pixel_cross_entropy(logits, teacher_probs), masked_l1(depth, teacher_depth)
        else:  # both distillation weights 0 (the RGB-alone baseline): the teacher need not run
            kd = depth_kd = zero
        labelled = batch["labelled"].bool()
        if bool(labelled.any()):
            ce = F.cross_entropy(
                logits[labelled].float(), batch["semantic"][labelled], ignore_index=self.ignore_index
            )
            depth_sup = masked_l1(depth[labelled], batch["depth"][labelled] / self.max_depth)
        else:
            ce = depth_sup = zero
        terms = {
            "kd": kd,
            "depth_kd": depth_kd,
            "ce": ce,
            "depth": depth_sup,
        }
        return self.log_losses(terms)

    # -------------------------------------------------------------- evaluation
    def _count(self, name: str, logits: Tensor, depth: Tensor, batch: Any) -> None:
        self.iou.update(name, logits, batch["semantic"])
        error = masked_l1(
            depth.float() * self.max_depth, batch["depth"], batch["semantic"] != self.ignore_index
        )
        self._depth_errors.setdefault(name, []).append(error.detach())

    def _evaluate(self, batch: Any, stage: str) -> None:
        logits, depth = self.student_predict(batch)
        self._count(f"{stage}/", logits, depth, batch)
        if self._teacher_metrics_pending.get(stage, False) and not self.trainer.sanity_checking:
            probs, teacher_depth = self.teacher_predict(batch)
            self._count(f"{stage}/teacher_", probs, teacher_depth, batch)

    def _log_evaluation(self, stage: str) -> None:
        for prefix in (f"{stage}/", f"{stage}/teacher_"):
            self.iou.log(self, prefix, prefix)
            errors = self._depth_errors.pop(prefix, None)
            if errors:
                self.log(f"{prefix}depth_mae", torch.stack(errors).mean(), sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The student's class ids ``(B, H, W)`` and depth in metres ``(B, H, W)``, stacked ``(B, 2, H, W)``."""
        logits, depth = self.student_predict(batch)
        return torch.stack([logits.argmax(dim=1).float(), depth[:, 0] * self.max_depth], dim=1)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
        super().on_test_epoch_end()
