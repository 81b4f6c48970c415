"""The plumbing every dataset-distillation recipe shares: one base class, :class:`SyntheticSetModule`.

A dataset-distillation recipe learns a :class:`~lightning_distill.dataset_distillation.SyntheticSet` (or, like
HeLlO, something that goes with one) instead of a network, so it has no student to validate.
Everything around its ``training_step`` is the same from recipe to recipe and lives here:

* **evaluation by retraining**: at the start of every validation (not the sanity check) and test
  epoch, ``len(val_seeds)`` fresh models train on the current set (``val_epochs`` epochs in
  validation, the set's ``EvalSpec.epochs`` in test, one epoch under ``fast_dev_run``); every
  validation/test batch logs their mean accuracy as ``<stage>/syn_acc``;
* **setup**: the seed is fixed (from ``seed_everything`` when not given) and the set is filled from
  the datamodule's ``train_images()`` where it has one;
* **the artifact**: at the end of fit the set is saved with its ``EvalSpec`` and metadata
  (method, steps, fit time) to ``save_path`` or ``<log dir>/synthetic_set.pt``;
* **the seed in checkpoints** (``checkpoint["lightning_distill"][seed_key]``), so that a resumed run
  draws what the interrupted one would have (:meth:`SyntheticSetModule.step_seed`);
* the set as one picture for ``WandbLogger`` (``samples/synthetic_set``).

What a subclass provides is listed in the class docstring.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor, nn

from lightning_distill.dataset_distillation.evaluate import classification_accuracy, retrain_model
from lightning_distill.dataset_distillation.synthetic import SyntheticSet
from lightning_distill.module import DistillationModule

__all__ = ["SyntheticSetModule"]

_STAGES = ("val", "test")


class SyntheticSetModule(DistillationModule):
    """Base of the recipes whose product is a synthetic training set.

    A subclass provides:

    * ``training_step`` and ``loss_terms``: how the set (or whatever the recipe trains) learns;
      draw its randomness from ``torch.Generator().manual_seed(self.step_seed(self.global_step))``.
    * ``method`` (the artifact's ``metadata["method"]``) and ``seed_key`` (the checkpoint key of
      the seed, e.g. ``"datadam_seed"``).
    * How one evaluation model is retrained, by overriding :meth:`fit_eval_model`. The default
      trains on the hard labels with the set's ``EvalSpec`` (:func:`retrain_model`); CDA passes
      the teacher's soft labels (KL at ``T``), HeLlO takes labels online from its projector
      (:func:`~lightning_distill.dataset_distillation.online_labels.retrain_with_online_labels`).

    and where it needs to:

    * :meth:`evaluated_set`: the set that is evaluated and saved, when it is not the live one
      (FTD: the EMA of the images);
    * :meth:`on_train_images`: what else to take from the datamodule's training images (CDA: the
      pixel range to clip to); :meth:`missing_train_images`: when their absence is an error;
    * :meth:`artifact_metadata`, :meth:`save_artifact`, :meth:`artifact_path`: what is written at
      the end of fit and where (CDA adds its relabel cache, HeLlO the projector adapters);
    * ``model_metric_stages``: the stages in which :class:`DistillationModule`'s own metrics
      (the student's and, once, the teachers' ``<stage>/acc``) are logged as well.

    Args:
        synthetic: the set being distilled.
        student: the module that learns when it is not the set itself (HeLlO's projector); the set
            is then a submodule named ``synthetic``. ``None``: the set is the ``student``.
        teacher: a frozen teacher, for recipes that have one (set ``requires_teacher``).
        seed: seed of the recipe's random draws; ``None`` takes it from ``seed_everything`` at setup.
        val_epochs: epochs of the evaluation by retraining that validation runs (``val/syn_acc``).
        val_seeds: seeds of the models retrained per validation/test (their mean accuracy is logged).
        loss_weights: weight per loss term (see :class:`DistillationModule`).
        optimizer: optimizer of the trainable parameters.
        lr_scheduler: optional scheduler.

    Raises:
        TypeError: ``synthetic`` is not a :class:`SyntheticSet`.
        ValueError: ``val_epochs < 1`` or no ``val_seeds``.

    Example:
        >>> import torch
        >>> from lightning_distill.dataset_distillation import SyntheticSet
        >>> class Nothing(SyntheticSetModule):
        ...     requires_teacher = False
        ...     method, seed_key = "nothing", "nothing_seed"
        >>> recipe = Nothing(SyntheticSet(num_classes=2, ipc=3, image_shape=(1, 4, 4)), seed=5)
        >>> recipe.synthetic is recipe.student
        True
        >>> recipe.step_seed(2) == 5 * 1_000_003 + 2
        True
    """

    #: ``metadata["method"]`` of the saved artifact.
    method: ClassVar[str] = "synthetic_set"
    #: Key of the seed under ``checkpoint["lightning_distill"]``.
    seed_key: ClassVar[str] = "synthetic_set_seed"
    #: Stages where DistillationModule's student/teacher metrics are logged next to ``syn_acc``.
    model_metric_stages: ClassVar[tuple[str, ...]] = ()
    #: An example datamodule with ``train_images()``, named in the error of a missing one.
    datamodule_hint: ClassVar[str] = "lightning_distill.data.ClassBalancedDataModule"
    #: The constructor argument that says where the artifact goes (named in the "not saved" warning).
    save_option: ClassVar[str] = "save_path"

    def __init__(
        self,
        synthetic: SyntheticSet,
        student: nn.Module | None = None,
        *,
        teacher: nn.Module | None = None,
        seed: int | None = None,
        val_epochs: int = 300,
        val_seeds: Sequence[int] = (0,),
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(synthetic, SyntheticSet):
            raise TypeError(
                "`synthetic` must be a lightning_distill.dataset_distillation.SyntheticSet, got "
                f"{type(synthetic).__name__}; set `model.init_args.synthetic.class_path`."
            )
        super().__init__(
            synthetic if student is None else student,
            teacher=teacher,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if student is not None:
            # Registered directly: `add_module` would refuse the name of the `synthetic` property.
            self._modules["synthetic"] = synthetic
        if isinstance(val_epochs, bool) or not isinstance(val_epochs, int) or val_epochs < 1 or not val_seeds:
            raise ValueError(
                f"`val_epochs` must be an integer >= 1 and `val_seeds` non-empty, got {val_epochs!r} and "
                f"{list(val_seeds)}; set `model.init_args.val_epochs` / `val_seeds`."
            )
        self.seed = seed
        self.val_epochs, self.val_seeds = val_epochs, tuple(val_seeds)
        self._eval_models: list[nn.Module] = []
        self._fit_start: float | None = None

    @property
    def synthetic(self) -> SyntheticSet:
        """The synthetic set: the ``student``, or the submodule ``synthetic`` when a student was given."""
        found = self._modules.get("synthetic")
        return self.student if found is None else found

    def step_seed(self, step: int) -> int:
        """The seed of step ``step``'s generator, a function of ``(seed, step)`` only (resumed runs match)."""
        return (int(self.seed or 0) * 1_000_003 + step) & 0x7FFF_FFFF_FFFF

    # ------------------------------------------------------------- evaluation by retraining
    def evaluated_set(self) -> SyntheticSet:
        """The set that is evaluated and saved (default: the live :attr:`synthetic`)."""
        return self.synthetic

    def retrain_settings(self, synthetic: SyntheticSet) -> dict[str, Any]:
        """Keyword arguments of the retraining functions from ``synthetic``'s ``EvalSpec`` and this device.

        ``lr``, ``augment``, ``batch_size``, ``momentum``, ``weight_decay``, ``accelerator`` and
        ``devices`` (the GPU this module is on, else the CPU).
        """
        spec = synthetic.eval_spec
        on_gpu = self.device.type == "cuda"
        return {
            "lr": spec.lr,
            "augment": spec.augment,
            "batch_size": spec.batch_size,
            "momentum": spec.momentum,
            "weight_decay": spec.weight_decay,
            "accelerator": "gpu" if on_gpu else "cpu",
            "devices": [self.device.index or 0] if on_gpu else 1,
        }

    def fit_eval_model(self, synthetic: SyntheticSet, *, epochs: int, seed: int, stage: str) -> nn.Module:
        """Train one fresh model on ``synthetic`` for ``epochs`` epochs; override to change the labels.

        The default trains ``synthetic.eval_spec.build_model()`` on the hard labels with the
        settings of :meth:`retrain_settings` (:func:`~lightning_distill.dataset_distillation.retrain_model`).

        Args:
            synthetic: the set to train on (:meth:`evaluated_set`).
            epochs: training epochs (already 1 under ``fast_dev_run``).
            seed: the model's seed (one of ``val_seeds``).
            stage: ``"val"`` or ``"test"``.

        Returns:
            The trained model (any device; it is moved to this module's).
        """
        return retrain_model(
            synthetic.images.detach(),
            synthetic.labels,
            synthetic.eval_spec.build_model,
            epochs=epochs,
            seed=seed,
            **self.retrain_settings(synthetic),
        )

    def retrain(self, epochs: int, stage: str = "test") -> list[nn.Module]:
        """Evaluation by retraining: one model per ``val_seeds`` entry on :meth:`evaluated_set`.

        Args:
            epochs: training epochs of each model (1 under ``fast_dev_run``).
            stage: ``"val"`` or ``"test"``, passed to :meth:`fit_eval_model`.

        Returns:
            The trained models, on this module's device.

        Raises:
            ValueError: an unknown ``stage`` or ``epochs < 1``.
        """
        if stage not in _STAGES:
            raise ValueError(f"`stage` must be one of {_STAGES}, got {stage!r}.")
        if epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
        if self._trainer is not None and self.trainer.fast_dev_run:
            epochs = 1
        synthetic = self.evaluated_set()
        return [
            self.fit_eval_model(synthetic, epochs=epochs, seed=seed, stage=stage).to(self.device)
            for seed in self.val_seeds
        ]

    def log_retrained_accuracy(self, batch: Any, stage: str) -> None:
        """Log the retrained models' mean accuracy on ``batch`` ``(x, y, ...)`` as ``<stage>/syn_acc``."""
        if not self._eval_models:
            return
        x, y = batch[0], batch[1]
        accuracy = sum(classification_accuracy(m, [(x, y)]) for m in self._eval_models) / len(
            self._eval_models
        )
        self.log(
            f"{stage}/syn_acc", accuracy, on_epoch=True, batch_size=y.numel(), prog_bar=True, sync_dist=True
        )

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        if model is self.synthetic:  # the set is not a classifier; its metric is <stage>/syn_acc
            return {}
        return super().evaluate(model, batch)

    def on_validation_epoch_start(self) -> None:
        self._eval_models = [] if self.trainer.sanity_checking else self.retrain(self.val_epochs, "val")

    def on_test_epoch_start(self) -> None:
        self._eval_models = self.retrain(self.synthetic.eval_spec.epochs, "test")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if "val" in self.model_metric_stages:
            super().validation_step(batch, batch_idx)
        self.log_retrained_accuracy(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        if "test" in self.model_metric_stages:
            super().test_step(batch, batch_idx)
        self.log_retrained_accuracy(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_models = []
        log_image = getattr(self.logger, "log_image", None)  # WandbLogger: the set as one picture
        if callable(log_image) and not self.trainer.sanity_checking:
            picture = (self.synthetic_grid() * 255).round().to(torch.uint8).squeeze(-1).numpy()
            log_image(key="samples/synthetic_set", images=[picture], step=self.global_step)
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._eval_models = []
        super().on_test_epoch_end()

    @torch.no_grad()
    def synthetic_grid(self) -> Tensor:
        """The set as one picture: a row per class, ``(K * H, ipc * W, C)`` in ``[0, 1]`` (min-max scaled)."""
        images = self.synthetic.images.detach().float().cpu()
        k, ipc = self.synthetic.num_classes, self.synthetic.ipc
        c, h, w = self.synthetic.image_shape
        images = (images - images.min()) / (images.max() - images.min()).clamp_min(1e-8)
        grid = images.reshape(k, ipc, c, h, w).permute(0, 3, 1, 4, 2)  # (K, H, ipc, W, C)
        return grid.reshape(k * h, ipc * w, c)

    # ------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Fix the seed and fill the set from the datamodule's ``train_images()``.

        Done for every stage: a checkpoint (``ckpt_path``) is restored after ``setup`` and replaces
        the images, and ``test`` without a checkpoint then evaluates the initialisation.

        Raises:
            ValueError: the datamodule has no ``train_images()`` and :meth:`missing_train_images`
                says the recipe needs them.
        """
        if self.seed is None:
            self.seed = int(torch.initial_seed()) & 0x7FFF_FFFF
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        train_images = getattr(datamodule, "train_images", None)
        if callable(train_images):
            datamodule.setup("fit")
            x, y = train_images()
            self.synthetic.initialize_from(x, y)
            self.on_train_images(x, y)
            return
        problem = self.missing_train_images(stage)
        if problem is not None:
            raise ValueError(problem)

    def on_train_images(self, images: Tensor, labels: Tensor) -> None:
        """Called in :meth:`setup` with the datamodule's training images ``(N, C, H, W)``, labels ``(N,)``."""

    def missing_train_images(self, stage: str) -> str | None:
        """The error message when the datamodule has no ``train_images()``, or ``None`` if that is fine.

        Default: an error in ``fit`` for a set that starts from real images and has none yet.
        """
        if stage == "fit" and self.synthetic.init == "real" and not bool(self.synthetic.initialized):
            return (
                "`synthetic.init='real'` needs real images: use a datamodule with `train_images()` (e.g. "
                f"{self.datamodule_hint}), or `init: noise`."
            )
        return None

    # ------------------------------------------------------------- the artifact
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._fit_start = time.perf_counter()

    def artifact_path(self) -> Path | None:
        """Where the set is saved as asked by the configuration (``save_path``), or ``None`` if not asked."""
        save_path = getattr(self, "save_path", None)
        return None if save_path is None else Path(save_path)

    def artifact_metadata(self) -> dict[str, Any]:
        """``{"method", "steps", "fit_seconds"}`` of the artifact; extend it in a subclass."""
        seconds = time.perf_counter() - self._fit_start if self._fit_start is not None else None
        return {"method": self.method, "steps": int(self.global_step), "fit_seconds": seconds}

    def save_artifact(self, path: Path) -> None:
        """Save :meth:`evaluated_set` with its EvalSpec and :meth:`artifact_metadata` to ``path`` (rank 0)."""
        self.evaluated_set().save(path, metadata=self.artifact_metadata())
        rank_zero_info(f"Saved the distilled set and its EvalSpec to {path}")

    def on_train_end(self) -> None:
        """Save the artifact to :meth:`artifact_path` or ``<log dir>/synthetic_set.pt``.

        Nothing is saved under ``fast_dev_run`` or without a logger directory, unless a path is given.
        """
        path = self.artifact_path()
        if path is None and (self.trainer.fast_dev_run or self.trainer.logger is None):
            if not self.trainer.fast_dev_run:
                rank_zero_warn(
                    "The distilled set was not saved: there is no logger directory and no "
                    f"`{self.save_option}`; set `model.init_args.{self.save_option}` to keep it (or call "
                    "`model.evaluated_set().save(path)`)."
                )
            return
        self._save_on_rank_zero(path or Path(self.trainer.log_dir) / "synthetic_set.pt")

    @rank_zero_only
    def _save_on_rank_zero(self, path: Path) -> None:
        self.save_artifact(path)

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint.setdefault("lightning_distill", {})[self.seed_key] = self.seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        seed = checkpoint.get("lightning_distill", {}).get(self.seed_key)
        if seed is not None:
            self.seed = int(seed)
