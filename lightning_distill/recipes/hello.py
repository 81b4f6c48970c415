"""HeLlO: dataset distillation with a label projector instead of stored soft labels.

Yu, Liu, Chen, Ye, Wang, "Heavy Labels Out! Dataset Distillation with Label Space Lightening",
ICCV 2025, arXiv 2408.08201 (no official code). Soft-label methods (SRe2L, CDA, RDED) train
students on a teacher's labels for every augmented view; stored, those labels can outweigh the
images. HeLlO stores a *label projector* instead and generates the labels online:

1. Label generator: the averaged soft labels ``p_bar(x) = mean_m softmax(z_m(x))`` of weak teachers,
   checkpoints of one teacher's training trajectory (:class:`WeakTeacherEnsemble`, the ``teacher``).
2. Projector ``f_theta``: a pretrained image encoder and a linear head initialised from class
   (text) embeddings, i.e. the zero-shot classifier; LoRA adapters (``peft``) on the encoder and
   the head are the only trainable and stored parameters (:class:`LabelProjector`, the ``student``).
3. Projector training on real images ``x`` (augmented): ``L = D(f_theta(x), p_bar(x)) + lambda CE(f_theta(x), y)``.
4. Image update (optional, after 3): the synthetic images move so that the projector's labels
   agree with the original generator's: ``min_S D(f_theta(A(S)), p_bar(A(S)))``, both frozen.
5. Students train on the synthetic set with labels taken online from ``f_theta`` on every
   augmented view (validation / test: evaluation by retraining).

Total loss: ``w_label D + w_ce CE`` in phase 3, ``w_image D`` in phase 4; ``D`` is MSE between
soft-label vectors (``label_loss: mse``, the paper's objective as summarised) or KL (``kl``).

Hyper-parameters -> config keys (``model.init_args.*``):

=============================  ======================  ===========================================
paper                          key                     default
=============================  ======================  ===========================================
projector (CLIP + text head)   ``student``             :func:`clip_label_projector` / toy builder
LoRA ranks (encoder / head)    ``student.init_args``   8 / 64 (IN-100; 8 / 128 IN-1K)
weak teachers (trajectory)     ``teacher``             :func:`trajectory_teachers` (9 checkpoints)
label distance D               ``label_loss``          ``mse``
CE weight lambda               ``loss_weights.ce``     0.1 (not given in what we could read)
projector steps / image steps  ``projector_steps`` /   (config)
                               ``image_steps``
image optimiser                ``image_optimizer``     Adam lr 0.01 (assumed)
student loss / CE weight beta  ``student_loss`` /      ``mse`` / 0.1 (assumed)
                               ``student_hard_weight``
=============================  ======================  ===========================================
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn

from lightning_distill.dataset import SiameseAugment, SyntheticSet, classification_accuracy
from lightning_distill.dataset.label_projector import (
    LabelLoss,
    LabelProjector,
    hard_label_bytes,
    retrain_with_online_labels,
    soft_label_cache_bytes,
    soft_label_loss,
)
from lightning_distill.module import DistillationModule

__all__ = ["HeLlO", "image_adam"]


def image_adam(params: Any) -> torch.optim.Optimizer:
    """Default optimiser of the image update: Adam, lr 0.01 (our choice; the paper's is not known to us)."""
    return torch.optim.Adam(params, lr=0.01)


class HeLlO(DistillationModule):
    """HeLlO recipe. See the module docstring for the algorithm.

    Args:
        student: the :class:`LabelProjector` (LoRA adapters trainable).
        teacher: the original label generator, typically a
            :class:`~lightning_distill.dataset.label_projector.WeakTeacherEnsemble`; any classifier
            whose outputs are logits or log-probabilities works.
        synthetic: the image set the students train on (random real images, or a distilled set).
        projector_steps: optimiser steps of phase 3 (projector training).
        image_steps: optimiser steps of phase 4 (image update) after them; 0 switches it off.
        label_loss: ``"mse"`` or ``"kl"``, the distance ``D`` between soft labels.
        augment: DSA strategy applied to the real batches of phase 3 and the synthetic images of
            phase 4 (per-image parameters; projector and teacher see the same view).
        student_loss: ``"mse"`` or ``"kl"``, the students' loss to the projector's labels at evaluation.
        student_hard_weight: weight ``beta`` of the students' cross-entropy on the hard labels.
        augment_seed: seed of the augmentations (``None``: from ``seed_everything``).
        val_epochs: epochs of the evaluation by retraining in validation (``val/syn_acc``).
        val_seeds: students trained per validation.
        save_dir: where the synthetic set and the projector adapters are written at the end of fit
            (default: the log directory; nothing under ``fast_dev_run`` or without a logger).
        loss_weights: ``{"label": ..., "ce": ..., "image": ...}``.
        optimizer: optimiser of the projector adapters.
        image_optimizer: optimiser of the synthetic images (phase 4).
        lr_scheduler: optional scheduler of the projector optimiser, stepped every projector step.

    Raises:
        TypeError: ``student`` is not a :class:`LabelProjector` or ``synthetic`` not a :class:`SyntheticSet`.
        ValueError: negative step counts, unknown losses, or a projector whose classes differ from the set's.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("label", "ce", "image")
    default_loss_weights: ClassVar[dict[str, float]] = {"label": 1.0, "ce": 0.1, "image": 1.0}

    def __init__(
        self,
        student: LabelProjector,
        teacher: nn.Module,
        synthetic: SyntheticSet,
        projector_steps: int = 1000,
        image_steps: int = 0,
        label_loss: LabelLoss = "mse",
        augment: str = "color_crop_cutout_scale_rotate",
        student_loss: LabelLoss = "mse",
        student_hard_weight: float = 0.1,
        augment_seed: int | None = None,
        val_epochs: int = 300,
        val_seeds: Sequence[int] = (0,),
        save_dir: str | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        image_optimizer: OptimizerCallable = image_adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(student, LabelProjector):
            raise TypeError(
                f"`student` must be a LabelProjector, got {type(student).__name__}; set `model.init_args.student`."
            )
        if not isinstance(synthetic, SyntheticSet):
            raise TypeError(
                f"`synthetic` must be a SyntheticSet, got {type(synthetic).__name__}; set `model.init_args.synthetic`."
            )
        super().__init__(
            student, teacher, loss_weights=loss_weights, optimizer=optimizer, lr_scheduler=lr_scheduler
        )
        for name, value in (("projector_steps", projector_steps), ("image_steps", image_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"`{name}` must be an integer >= 0, got {value!r}; set `model.init_args.{name}`."
                )
        for name, value in (("label_loss", label_loss), ("student_loss", student_loss)):
            if value not in ("mse", "kl"):
                raise ValueError(
                    f"`{name}` must be 'mse' or 'kl', got {value!r}; set `model.init_args.{name}`."
                )
        if student.num_classes != synthetic.num_classes:
            raise ValueError(
                f"The projector has {student.num_classes} classes but the synthetic set {synthetic.num_classes}."
            )
        if val_epochs < 1 or not val_seeds or student_hard_weight < 0:
            raise ValueError(
                f"Need `val_epochs` >= 1, non-empty `val_seeds` and `student_hard_weight` >= 0, got {val_epochs}, "
                f"{list(val_seeds)} and {student_hard_weight}."
            )
        self.save_hyperparameters(
            ignore=["student", "teacher", "synthetic", "optimizer", "image_optimizer", "lr_scheduler"]
        )
        self.automatic_optimization = False
        self.synthetic = synthetic
        self.synthetic.images.requires_grad_(image_steps > 0)
        self.projector_steps, self.image_steps = projector_steps, image_steps
        self.label_loss, self.student_loss, self.student_hard_weight = (
            label_loss,
            student_loss,
            student_hard_weight,
        )
        self.augment = SiameseAugment(augment, siamese=False)
        self.image_optimizer = image_optimizer
        self.augment_seed, self.val_epochs, self.val_seeds = augment_seed, val_epochs, tuple(val_seeds)
        self.save_dir = save_dir
        self._eval_models: list[nn.Module] = []
        self._fit_start: float | None = None

    @property
    def projector(self) -> LabelProjector:
        """The label projector (the recipe's ``student``)."""
        return self.student

    # ---------------------------------------------------------------- the paper
    @torch.no_grad()
    def generator_labels(self, x: Tensor) -> Tensor:
        """Step 1: the original generator's soft labels (log-probabilities ``(B, K)``), without gradient."""
        return self.teacher(x).float()

    def projector_loss(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Step 3: ``D(f_theta(x), p_bar(x))`` (term ``label``) and ``CE(f_theta(x), y)`` (term ``ce``)."""
        logits = self.projector(x)
        return {
            "label": soft_label_loss(logits, self.generator_labels(x), kind=self.label_loss),
            "ce": F.cross_entropy(logits, y),
        }

    def image_loss(self, images: Tensor) -> Tensor:
        """Step 4: ``D(f_theta(A(S)), p_bar(A(S)))``; the gradient reaches the images through both frozen models."""
        target = self.teacher(images).float()  # no torch.no_grad: the images need this gradient
        return soft_label_loss(self.projector(images), target, kind=self.label_loss)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self._step_seed(self.global_step))
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        if self.global_step < self.projector_steps or self.image_steps == 0:
            # 3. Projector training on an augmented real batch.
            x, y = batch[0], batch[1]
            keep = y >= 0
            x, y = x[keep], y[keep]
            x = self.augment(x, self.augment.sample(x, generator))
            out = self.log_losses(self.projector_loss(x, y))
            self.manual_update(out["loss"], optimizers[0])
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
            return out
        # 4. Image update: the projector and the teacher are fixed, only the images move.
        images = self.synthetic.images
        out = self.log_losses(
            {"image": self.image_loss(self.augment(images, self.augment.sample(images, generator)))}
        )
        optimizers[1].zero_grad(set_to_none=True)
        self.manual_backward(out["loss"], inputs=[images])
        optimizers[1].step()
        return out

    def configure_optimizers(self) -> Any:
        adapters = [p for p in self.projector.parameters() if p.requires_grad]
        if not adapters:
            raise ValueError(
                "The projector has no trainable parameter: give it `lora_rank`/`head_rank` > 0 or `train_head`."
            )
        optimizer = self.optimizer(adapters)
        optimizers = [optimizer]
        if self.image_steps:
            optimizers.append(self.image_optimizer([self.synthetic.images]))
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [{"scheduler": self.lr_scheduler(optimizer), "interval": "step"}]

    # ---------------------------------------------------------------- storage
    def label_storage(self, epochs: int) -> dict[str, int]:
        """Bytes of each way to supply the students' labels for ``epochs`` epochs of retraining.

        ``hard`` (class indices), ``soft_static`` (one fp32 logit vector per image),
        ``soft_cache`` (fp16 labels for every view and epoch, as SRe2L/CDA store them) and
        ``projector`` (the LoRA adapters in fp32).
        """
        n, k = self.synthetic.images.shape[0], self.synthetic.num_classes
        return {
            "hard": hard_label_bytes(n, k),
            "soft_static": 4 * n * k,
            "soft_cache": soft_label_cache_bytes(n, k, epochs),
            "projector": self.projector.storage_bytes(),
        }

    # ---------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._eval_models = [] if self.trainer.sanity_checking else self._retrain(self.val_epochs)

    def on_test_epoch_start(self) -> None:
        self._eval_models = self._retrain(self.synthetic.eval_spec.epochs)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_agreement(batch, "val")
        self._log_eval_models(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_agreement(batch, "test")
        self._log_eval_models(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_models = []
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._eval_models = []
        super().on_test_epoch_end()

    def _retrain(self, epochs: int) -> list[nn.Module]:
        """Step 5: fresh students on the synthetic set, labels online from the projector."""
        spec = self.synthetic.eval_spec
        epochs = 1 if self.trainer.fast_dev_run else epochs
        on_gpu = self.device.type == "cuda"
        models = [
            retrain_with_online_labels(
                self.synthetic.images.detach(),
                self.synthetic.labels,
                spec.build_model,
                self.projector,
                epochs=epochs,
                lr=spec.lr,
                seed=seed,
                loss=self.student_loss,
                hard_weight=self.student_hard_weight,
                temperature=spec.temperature,
                augment=spec.augment,
                batch_size=spec.batch_size,
                momentum=spec.momentum,
                weight_decay=spec.weight_decay,
                accelerator="gpu" if on_gpu else "cpu",
                devices=[self.device.index or 0] if on_gpu else 1,
            )
            for seed in self.val_seeds
        ]
        self.projector.to(self.device)
        return [m.to(self.device) for m in models]

    @torch.no_grad()
    def _log_agreement(self, batch: Any, stage: str) -> None:
        x = batch[0]
        kl = soft_label_loss(self.projector(x), self.generator_labels(x), kind="kl")
        self.log(f"{stage}/label_kl", kl, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    def _log_eval_models(self, batch: Any, stage: str) -> None:
        if not self._eval_models:
            return
        x, y = batch[0], batch[1]
        accuracy = sum(classification_accuracy(m, [(x, y)]) for m in self._eval_models) / len(
            self._eval_models
        )
        self.log(
            f"{stage}/syn_acc", accuracy, on_epoch=True, batch_size=y.numel(), prog_bar=True, sync_dist=True
        )

    # ---------------------------------------------------------------- lifecycle
    def setup(self, stage: str) -> None:
        """Fill the set from the datamodule's real images (``init="real"``) and fix the seed."""
        if self.augment_seed is None:
            self.augment_seed = int(torch.initial_seed()) & 0x7FFF_FFFF
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        train_images = getattr(datamodule, "train_images", None)
        if callable(train_images):
            datamodule.setup("fit")
            self.synthetic.initialize_from(*train_images())
        elif stage == "fit" and self.synthetic.init == "real" and not bool(self.synthetic.initialized):
            raise ValueError(
                "`synthetic.init='real'` needs real images: use a datamodule with `train_images()` "
                "(e.g. lightning_distill.data.DigitsDataModule), or `init: noise`."
            )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._fit_start = time.perf_counter()

    def on_train_end(self) -> None:
        if self.save_dir is None and (self.trainer.fast_dev_run or self.trainer.logger is None):
            return
        self._save_artifacts()

    @rank_zero_only
    def _save_artifacts(self) -> None:
        folder = Path(self.save_dir) if self.save_dir else Path(self.trainer.log_dir)
        seconds = time.perf_counter() - self._fit_start if self._fit_start is not None else None
        storage = self.label_storage(self.synthetic.eval_spec.epochs)
        metadata = {
            "method": "hello",
            "steps": int(self.global_step),
            "fit_seconds": seconds,
            "label_bytes": storage,
        }
        self.synthetic.save(folder / "synthetic_set.pt", metadata=metadata)
        torch.save(self.projector.adapter_state_dict(), folder / "label_projector.pt")
        rank_zero_info(f"Saved the set and the projector adapters ({storage['projector']} bytes) to {folder}")

    def _step_seed(self, step: int) -> int:
        return (int(self.augment_seed or 0) * 1_000_003 + step) & 0x7FFF_FFFF_FFFF
