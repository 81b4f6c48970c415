"""CDA (and SRe2L): squeeze, recover with a crop curriculum, relabel.

Yin & Shen, "Dataset Distillation via Curriculum Data Synthesis in Large Data Era" (first titled
"Dataset Distillation in Large Data Era"), TMLR 2024, arXiv 2311.18838; it extends SRe2L (Yin,
Xing, Shen, "Squeeze, Recover and Relabel", NeurIPS 2023, arXiv 2306.13092). Official code:
VILA-Lab/SRe2L (``CDA/recover_cda_*.py``, ``CDA/utils.py``, ``relabel/generate_soft_label.py``).

1. Squeeze: a BatchNorm classifier trained on the real data is the frozen ``teacher`` (in the
   config: ``trained_classifier``, trained on first use and cached).
2. Recover: the images ``x`` of a :class:`~lightning_distill.dataset_distillation.SyntheticSet` start from
   N(0, 1). Every step, per group of one image per class (the official batches):
   a. crop ``x`` with a random resized crop of area in ``[s_t, 1]`` (+ flip, + circular shift);
      ``s_t`` follows the curriculum (CDA: cosine 1.0 -> 0.08 over the steps; SRe2L: 0.08);
   b. run the teacher (eval mode: BN uses running statistics) and tap the input of every BN layer;
   c. ``L = CE(f(x_crop), y) + r_bn * sum_l w_l (||mu_l - mu^_l||_2 + ||var_l - var^_l||_2)``,
      ``w_0`` = 10 (first BN), ``w_l = 1``;
   d. one Adam step (betas 0.5, 0.9; lr cosine to 0) on ``x``; clip ``x`` to the data range.
3. Relabel: the teacher's logits on the final images become the set's soft labels (the artifact's
   ``EvalSpec`` trains students with KL at ``T``), and a relabel cache stores, per student epoch and
   batch, FKD crops, CutMix parameters and fp16 teacher logits (:mod:`lightning_distill.dataset_distillation.relabel`).

Total loss: ``1.0 * ce + r_bn * bn`` (``loss_weights`` ``{ce: 1, bn: 0.01}``, the ImageNet-1K value).

========================================  ========================  ==============================
paper / official code                     config key (model.init_args)  default
========================================  ========================  ==============================
r_bn (``--r-bn``)                         ``loss_weights.bn``       0.01 (ImageNet-1K)
first BN multiplier                       ``first_bn_multiplier``   10
curriculum (``--easy2hard-mode``)         ``curriculum``            cosine (SRe2L: none)
``--milestone``                           ``milestone``             1.0
crop scale range                          ``min_scale``/``max_scale``  0.08 / 1.0
jitter (``--jitter``, pixels)             ``jitter``                32 (ImageNet at 224 px)
Adam lr (``--lr``), betas, cosine         ``optimizer``, ``lr_schedule``  :func:`cda_image_adam` (0.25,
                                                                    (0.5, 0.9), eps 1e-8), cosine
iterations (``--iteration``)              ``trainer.max_steps``     (config; paper 4000)
relabel epochs / batch / mix              ``relabel_*``             EvalSpec epochs / batch, cutmix
========================================  ========================  ==============================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_distill.callbacks import FeatureHooks, ProgressiveSchedule
from lightning_distill.dataset_distillation import SyntheticSet, cda_image_adam, retrain_model
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from lightning_distill.dataset_distillation.recover import (
    CurriculumCrop,
    batchnorm_paths,
    bn_stat_taps,
    crop_schedule,
    running_stats,
)
from lightning_distill.dataset_distillation.relabel import RelabelCache, build_relabel_cache
from lightning_distill.losses.dataset_distillation import bn_matching_loss
from lightning_distill.utils.augment import RandomResizedCropFlip

__all__ = ["CDA", "cda_image_adam", "recover_adam"]

#: Former name of :func:`~lightning_distill.dataset_distillation.cda_image_adam`, kept for configs that use it.
recover_adam = cda_image_adam


class CDA(SyntheticSetModule):
    """CDA / SRe2L recipe. See the module docstring for the algorithm.

    With a soft-label EvalSpec, students retrain on fresh teacher logits in validation and on the
    relabelled ones in test (:meth:`fit_eval_model`; the rest is
    :class:`~lightning_distill.dataset_distillation.recipe_base.SyntheticSetModule`'s).

    Args:
        synthetic: the set being recovered (``init: noise`` for the paper); soft labels are added
            if it has none (they are filled by the relabel step, never trained).
        teacher: the squeezed BatchNorm classifier (frozen).
        curriculum: ``"cosine"`` (CDA), ``"linear"``, ``"step"`` or ``"none"`` (SRe2L).
        milestone: fraction of the steps the curriculum lasts.
        min_scale: the final (SRe2L: the only) smallest crop area fraction.
        max_scale: the largest crop area fraction.
        first_bn_multiplier: weight of the first BN layer in the BN loss.
        jitter: largest circular shift in pixels after the crop (official: 32 at 224 px, 4 at 64).
        flip_p: flip probability of the recovery and relabel crops (0 for digits).
        groups: ``"per_ipc"`` recovers ``ipc`` independent batches of one image per class, each with
            its own BN statistics (the official loop over ``ipc_id``); ``"whole_set"`` one batch.
        clip: ``"data"`` clips the images after every step to the range of the datamodule's
            training images (the official ``clip`` to valid pixels); ``"none"`` does not.
        lr_schedule: ``"cosine"`` (to 0 over ``trainer.max_steps``, per step) or ``"constant"``.
        relabel_epochs: epochs stored in the relabel cache (default: the EvalSpec's epochs).
        relabel_batch_size: batch size of the relabel cache (default: the EvalSpec's).
        relabel_mix: ``"cutmix"`` (official ``relabel.sh``), ``"mixup"`` or ``"none"``.
        seed: seed of the crops and of the relabel cache; ``None`` takes ``seed_everything``'s.
        val_epochs: epochs of the evaluation by retraining in validation (``val/syn_acc``).
        val_seeds: models trained per validation.
        save_path: where the set is saved at the end of fit (default ``<log dir>/synthetic_set.pt``);
            the relabel cache goes next to it as ``<stem>.relabel.pt``.
        loss_weights: ``{"ce": ..., "bn": ...}`` (``bn`` is ``r_bn``).
        optimizer: optimizer of the images (default
            :func:`~lightning_distill.dataset_distillation.cda_image_adam`, the official Adam).

    Raises:
        TypeError: ``synthetic`` is not a :class:`SyntheticSet`.
        ValueError: a bad option, or a teacher without BatchNorm layers.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("ce", "bn")
    default_loss_weights: ClassVar[dict[str, float]] = {"ce": 1.0, "bn": 0.01}
    method: ClassVar[str] = "cda"  # "sre2l" with `curriculum: none` (artifact_metadata)
    seed_key: ClassVar[str] = "cda_seed"
    model_metric_stages: ClassVar[tuple[str, ...]] = ("val",)  # the teacher's accuracy once (val/teacher_acc)

    def __init__(
        self,
        synthetic: SyntheticSet,
        teacher: nn.Module,
        curriculum: Literal["cosine", "linear", "step", "none"] = "cosine",
        milestone: float = 1.0,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        first_bn_multiplier: float = 10.0,
        jitter: int = 32,
        flip_p: float = 0.5,
        groups: Literal["per_ipc", "whole_set"] = "per_ipc",
        clip: Literal["data", "none"] = "data",
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        relabel_epochs: int | None = None,
        relabel_batch_size: int | None = None,
        relabel_mix: Literal["none", "cutmix", "mixup"] = "cutmix",
        seed: int | None = None,
        val_epochs: int = 300,
        val_seeds: Sequence[int] = (0,),
        save_path: str | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = cda_image_adam,
    ) -> None:
        super().__init__(
            synthetic,
            teacher=teacher,
            seed=seed,
            val_epochs=val_epochs,
            val_seeds=val_seeds,
            loss_weights=loss_weights,
            optimizer=optimizer,
        )
        choices = {
            "groups": (groups, ("per_ipc", "whole_set")),
            "clip": (clip, ("data", "none")),
            "lr_schedule": (lr_schedule, ("cosine", "constant")),
            "relabel_mix": (relabel_mix, ("none", "cutmix", "mixup")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {allowed}, got {value!r}; set `model.init_args.{name}`."
                )
        crop_schedule(curriculum, 1, milestone=milestone, end=min_scale)  # validates the curriculum
        if not 0.0 < min_scale <= max_scale <= 1.0:
            raise ValueError(
                f"Need 0 < `min_scale` <= `max_scale` <= 1, got {min_scale} and {max_scale}; "
                "set `model.init_args.min_scale` / `max_scale`."
            )
        if not first_bn_multiplier >= 0:
            raise ValueError(f"`first_bn_multiplier` must be >= 0, got {first_bn_multiplier}.")
        for name, value in (("relabel_epochs", relabel_epochs), ("relabel_batch_size", relabel_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or null, got {value}; set `model.init_args.{name}`.")
        self.save_hyperparameters(ignore=["synthetic", "teacher", "optimizer"])
        self.curriculum, self.milestone = curriculum, milestone
        self.first_bn_multiplier = first_bn_multiplier
        self.groups, self.clip, self.lr_schedule = groups, clip, lr_schedule
        self.relabel_epochs, self.relabel_batch_size, self.relabel_mix = (
            relabel_epochs,
            relabel_batch_size,
            relabel_mix,
        )
        self.save_path = save_path
        _, h, w = synthetic.image_shape
        self.crop = CurriculumCrop(
            (h, w), min_scale=max_scale, max_scale=max_scale, flip_p=flip_p, jitter=jitter
        )
        self.final_min_scale = min_scale
        # Where the relabelled soft labels live: a parameter that never learns.
        if synthetic.soft_labels is None:
            zeros = torch.zeros(synthetic.labels.numel(), synthetic.num_classes)
            synthetic.soft_labels = nn.Parameter(zeros, requires_grad=False)
        synthetic.soft_labels.requires_grad_(False)
        # BN taps: the batch statistics at the input of every BatchNorm layer of the teacher.
        self.bn_paths = batchnorm_paths(self.teacher, prefix="teachers.0")
        self.hooks = FeatureHooks(bn_stat_taps(self.bn_paths))
        self.relabel_cache: RelabelCache | None = None
        self._pixel_range: tuple[float, float] | None = None

    # ---------------------------------------------------------------- recover
    def recover_groups(self) -> list[Tensor]:
        """Row indices of the images recovered together (one BN batch each)."""
        k, ipc = self.synthetic.num_classes, self.synthetic.ipc
        if self.groups == "whole_set":
            return [torch.arange(k * ipc)]
        return [torch.arange(k) * ipc + j for j in range(ipc)]  # image j of every class

    def bn_loss(self) -> Tensor:
        """``sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2)`` from the taps."""
        stats = [self.hooks[f"bn{k}"] for k in range(len(self.bn_paths))]
        running = running_stats(self, self.bn_paths)
        return bn_matching_loss(stats, running, first_multiplier=self.first_bn_multiplier)

    def recover_terms(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Steps 2a-2c for one group: curriculum crop, teacher forward, CE and BN terms."""
        crops = self.crop(images, generator)
        logits = self.teacher(crops)  # frozen, eval mode; differentiated through to the images
        return {"ce": F.cross_entropy(logits, labels), "bn": self.bn_loss()}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self.step_seed(self.global_step))
        images, labels = self.synthetic.images, self.synthetic.labels
        terms: dict[str, Tensor] = {}
        # Independent groups: the sum's gradient on each group's images is that group's own loss.
        for rows in self.recover_groups():
            rows = rows.to(images.device)
            for name, value in self.recover_terms(images[rows], labels[rows], generator).items():
                terms[name] = terms[name] + value if name in terms else value
        return self.log_losses(terms)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Step 2d's clip, after the optimizer step."""
        if self._pixel_range is not None:
            with torch.no_grad():
                self.synthetic.images.clamp_(*self._pixel_range)

    # ---------------------------------------------------------------- relabel
    @torch.no_grad()
    def soft_labels(self) -> Tensor:
        """The teacher's logits ``(K * ipc, K)`` on the current, un-augmented images."""
        return torch.cat([self.teacher(x) for x in self.synthetic.images.detach().split(256)]).float()

    def relabel(self) -> RelabelCache:
        """Step 3: store the soft labels in the set and build the relabel cache."""
        with torch.no_grad():
            self.synthetic.soft_labels.copy_(self.soft_labels())
        spec = self.synthetic.eval_spec
        n = self.synthetic.images.shape[0]
        epochs = 1 if self.trainer.fast_dev_run else (self.relabel_epochs or spec.epochs)
        crop = RandomResizedCropFlip(
            self.crop.size, scale=(self.final_min_scale, 1.0), flip_p=self.crop.flip_p
        )
        self.relabel_cache = build_relabel_cache(
            self.teacher,
            self.synthetic.images.detach(),
            epochs=epochs,
            batch_size=min(self.relabel_batch_size or spec.batch_size, n),
            crop=crop,
            mix=self.relabel_mix,
            seed=int(self.seed or 0),
        )
        return self.relabel_cache

    # ---------------------------------------------------------------- evaluation
    def fit_eval_model(self, synthetic: SyntheticSet, *, epochs: int, seed: int, stage: str) -> nn.Module:
        """Retrain with the EvalSpec; soft labels: fresh teacher logits in validation, the stored ones in test."""
        spec = synthetic.eval_spec
        soft = None
        if spec.label_type == "soft":
            relabelled = bool(synthetic.soft_labels.detach().abs().sum() > 0)
            soft = synthetic.soft_labels.detach() if relabelled and stage == "test" else self.soft_labels()
        return retrain_model(
            synthetic.images.detach(),
            synthetic.labels,
            spec.build_model,
            epochs=epochs,
            seed=seed,
            soft_labels=soft,
            temperature=spec.temperature,
            **self.retrain_settings(synthetic),
        )

    # ---------------------------------------------------------------- lifecycle
    def on_train_images(self, images: Tensor, labels: Tensor) -> None:
        """``clip: data``: the range of the training images is the range the recovered images keep."""
        if self.clip == "data":
            self._pixel_range = (float(images.min()), float(images.max()))

    def missing_train_images(self, stage: str) -> str | None:
        if stage == "fit" and (self.clip == "data" or not bool(self.synthetic.initialized)):
            return (
                "`clip: data` and `synthetic.init: real` need the training images: wrap the data in "
                "lightning_distill.data.RecoverDataModule (or set `clip: none` and `init: noise`)."
            )
        return None

    def configure_callbacks(self) -> Sequence[L.Callback]:
        if self.trainer.state.fn != "fit":
            return []
        schedule = crop_schedule(
            self.curriculum,
            self._iterations(),
            milestone=self.milestone,
            start=self.crop.max_scale,
            end=self.final_min_scale,
        )
        return [self.hooks, ProgressiveSchedule({"crop.min_scale": schedule})]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer([self.synthetic.images])
        if self.lr_schedule == "constant":
            return optimizer
        total = self._iterations()
        cosine = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / total))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    def on_train_end(self) -> None:
        """Step 3 (relabel), then save the set and its relabel cache."""
        self.relabel()
        super().on_train_end()

    def artifact_metadata(self) -> dict[str, Any]:
        return {**super().artifact_metadata(), "method": "sre2l" if self.curriculum == "none" else "cda"}

    def save_artifact(self, path: Path) -> None:
        """Save the relabel cache as ``<stem>.relabel.pt`` next to the set, and the set with its metadata."""
        cache_path = self.relabel_cache.save(path.with_name(path.stem + ".relabel.pt"))
        metadata = {
            **self.artifact_metadata(),
            "relabel_cache": cache_path.name,
            "soft_label_bytes": self.synthetic.soft_labels.numel() * 2,  # as fp16
            "relabel_cache_bytes": self.relabel_cache.nbytes,
        }
        self.synthetic.save(path, metadata=metadata)
        rank_zero_info(
            f"Saved the distilled set (with its EvalSpec) to {path} and its relabel cache to {cache_path}"
        )

    # ---------------------------------------------------------------- helpers
    def _iterations(self) -> int:
        steps = int(self.trainer.max_steps)
        if steps < 1:
            raise ValueError(
                f"CDA needs the recovery budget as `trainer.max_steps` (the curriculum and the cosine lr span it), "
                f"got {steps}; set e.g. `--trainer.max_steps=1000`."
            )
        return steps
