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
projector optimiser            ``optimizer``           ``torch.optim.AdamW`` defaults (assumed)
image optimiser                ``image_optimizer``     :func:`hello_image_adam`: Adam lr 0.01 (assumed)
student loss / CE weight beta  ``student_loss`` /      ``mse`` / 0.1 (assumed)
                               ``student_beta``
=============================  ======================  ===========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.dataset_distillation import SiameseAugment, SyntheticSet, hello_image_adam
from lightning_distill.dataset_distillation.label_projector import LabelProjector
from lightning_distill.dataset_distillation.online_labels import (
    hard_label_bytes,
    retrain_with_online_labels,
    soft_label_cache_bytes,
)
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from lightning_distill.losses.dataset_distillation import LabelLoss, soft_label_loss

__all__ = ["HeLlO", "hello_image_adam", "image_adam"]

#: Former name of :func:`~lightning_distill.dataset_distillation.hello_image_adam`, kept for configs that use it.
image_adam = hello_image_adam


class HeLlO(SyntheticSetModule):
    """HeLlO recipe. See the module docstring for the algorithm.

    Students take their labels online from the projector (:meth:`fit_eval_model` of
    :class:`~lightning_distill.dataset_distillation.recipe_base.SyntheticSetModule`); the projector's own
    accuracy (``<stage>/acc``) and its agreement with the generator (``<stage>/label_kl``) are
    logged next to ``<stage>/syn_acc``.

    Args:
        student: the :class:`LabelProjector` (LoRA adapters trainable).
        teacher: the original label generator, typically a
            :class:`~lightning_distill.dataset_distillation.WeakTeacherEnsemble`; any classifier
            whose outputs are logits or log-probabilities works.
        synthetic: the image set the students train on (random real images, or a distilled set).
        projector_steps: optimiser steps of phase 3 (projector training).
        image_steps: optimiser steps of phase 4 (image update) after them; 0 switches it off.
        label_loss: ``"mse"`` or ``"kl"``, the distance ``D`` between soft labels.
        augment: DSA strategy applied to the real batches of phase 3 and the synthetic images of
            phase 4 (per-image parameters; projector and teacher see the same view).
        student_loss: ``"mse"`` or ``"kl"``, the students' loss to the projector's labels at evaluation.
        student_beta: HeLlO's ``beta``, the factor of the students' cross-entropy on the hard labels
            (evaluation by retraining; not a term of this recipe's loss, so not in ``loss_weights``).
        augment_seed: seed of the augmentations (``None``: from ``seed_everything``).
        val_epochs: epochs of the evaluation by retraining in validation (``val/syn_acc``).
        val_seeds: students trained per validation.
        save_dir: where the synthetic set and the projector adapters are written at the end of fit
            (default: the log directory; nothing under ``fast_dev_run`` or without a logger).
        loss_weights: ``{"label": ..., "ce": ..., "image": ...}``.
        optimizer: optimiser of the projector adapters (default: torch's ``AdamW`` at its defaults,
            lr 1e-3, weight decay 0.01; our choice, the paper's is not known to us).
        image_optimizer: optimiser of the synthetic images (phase 4; default
            :func:`~lightning_distill.dataset_distillation.hello_image_adam`, Adam lr 0.01, our choice).
        lr_scheduler: optional scheduler of the projector optimiser, stepped every projector step.

    Raises:
        TypeError: ``student`` is not a :class:`LabelProjector` or ``synthetic`` not a :class:`SyntheticSet`.
        ValueError: negative step counts, unknown losses, or a projector whose classes differ from the set's.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("label", "ce", "image")
    default_loss_weights: ClassVar[dict[str, float]] = {"label": 1.0, "ce": 0.1, "image": 1.0}
    method: ClassVar[str] = "hello"
    seed_key: ClassVar[str] = "hello_seed"
    model_metric_stages: ClassVar[tuple[str, ...]] = ("val", "test")  # the projector's and the teacher's acc
    datamodule_hint: ClassVar[str] = "lightning_distill.data.DigitsDataModule"
    save_option: ClassVar[str] = "save_dir"

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
        student_beta: float = 0.1,
        augment_seed: int | None = None,
        val_epochs: int = 300,
        val_seeds: Sequence[int] = (0,),
        save_dir: str | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        image_optimizer: OptimizerCallable = hello_image_adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(student, LabelProjector):
            raise TypeError(
                f"`student` must be a LabelProjector, got {type(student).__name__}; set `model.init_args.student`."
            )
        super().__init__(
            synthetic,
            student,
            teacher=teacher,
            seed=augment_seed,
            val_epochs=val_epochs,
            val_seeds=val_seeds,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
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
        if not student_beta >= 0:
            raise ValueError(
                f"`student_beta` must be >= 0, got {student_beta}; set `model.init_args.student_beta`."
            )
        self.save_hyperparameters(
            ignore=["student", "teacher", "synthetic", "optimizer", "image_optimizer", "lr_scheduler"]
        )
        self.automatic_optimization = False
        self.synthetic.images.requires_grad_(image_steps > 0)
        self.projector_steps, self.image_steps = projector_steps, image_steps
        self.label_loss, self.student_loss, self.student_beta = (
            label_loss,
            student_loss,
            student_beta,
        )
        self.augment = SiameseAugment(augment, siamese=False)
        self.image_optimizer = image_optimizer
        self.save_dir = save_dir

    @property
    def projector(self) -> LabelProjector:
        """The label projector (the recipe's ``student``)."""
        return self.student

    @property
    def augment_seed(self) -> int | None:
        """Seed of the augmentations (the base's ``seed``; config key ``augment_seed``)."""
        return self.seed

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

    def training_step(self, batch: Any, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.step_seed(self.global_step))
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        if self.global_step < self.projector_steps or self.image_steps == 0:
            # 3. Projector training on an augmented real batch (steps the projector's scheduler, if any).
            x, y = batch[0], batch[1]
            keep = y >= 0
            x, y = x[keep], y[keep]
            x = self.augment(x, self.augment.sample(x, generator))
            self.update(optimizers[0], self.projector_loss(x, y), turn="projector")
            return
        # 4. Image update: the projector and the teacher are fixed, only the images move.
        images = self.synthetic.images
        terms = {"image": self.image_loss(self.augment(images, self.augment.sample(images, generator)))}
        # `update` toggles the image optimizer: the projector's adapters (the other optimizer's
        # parameters) stop requiring gradients, so the backward fills only the images' gradient.
        self.update(optimizers[1], terms, turn="images")

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
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_agreement(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_agreement(batch, "test")

    def fit_eval_model(self, synthetic: SyntheticSet, *, epochs: int, seed: int, stage: str) -> nn.Module:
        """Step 5: a fresh student on the synthetic set, labels online from the projector."""
        spec = synthetic.eval_spec
        model = retrain_with_online_labels(
            synthetic.images.detach(),
            synthetic.labels,
            spec.build_model,
            self.projector,
            epochs=epochs,
            seed=seed,
            loss=self.student_loss,
            hard_weight=self.student_beta,
            temperature=spec.temperature,
            **self.retrain_settings(synthetic),
        )
        self.projector.to(self.device)  # retraining returns it on the CPU
        return model

    @torch.no_grad()
    def _log_agreement(self, batch: Any, stage: str) -> None:
        x = batch[0]
        kl = soft_label_loss(self.projector(x), self.generator_labels(x), kind="kl")
        self.log(f"{stage}/label_kl", kl, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    # ---------------------------------------------------------------- lifecycle
    def artifact_path(self) -> Path | None:
        """``<save_dir>/synthetic_set.pt`` (the projector adapters go next to it), else ``None``."""
        return None if self.save_dir is None else Path(self.save_dir) / "synthetic_set.pt"

    def artifact_metadata(self) -> dict[str, Any]:
        return {
            **super().artifact_metadata(),
            "label_bytes": self.label_storage(self.synthetic.eval_spec.epochs),
        }

    def save_artifact(self, path: Path) -> None:
        """Save the set (with its EvalSpec and label storage) and ``label_projector.pt`` next to it."""
        metadata = self.artifact_metadata()
        self.synthetic.save(path, metadata=metadata)
        torch.save(self.projector.adapter_state_dict(), path.parent / "label_projector.pt")
        rank_zero_info(
            f"Saved the set and the projector adapters ({metadata['label_bytes']['projector']} bytes) "
            f"to {path.parent}"
        )
