"""Toy-bench evaluation of a generator as callbacks a config lists: exact mixture metrics and the digits FCD.

Both pool the evaluation points of a validation/test epoch (in ``on_validation_batch_end`` /
``on_test_batch_end``), draw as many samples of the LightningModule's inference path at the end
of the epoch and log through ``pl_module.log``:

* :class:`MixtureMetrics` — on the exact-score Gaussian-mixture bench:
  ``<stage>/{swd, mmd, mode_coverage, mode_tv}`` (and ``on_class`` for recipes scored per label)
  of :func:`~lightning_distill.diffusion.metrics.sample_metrics`; once per run the teacher's
  sampler (``<stage>/teacher_<metric>``) and a second data sample, the noise floor
  (``<stage>/<metric>_floor``).
* :class:`FrechetClassifierDistanceMetric` — on digits-like images (single-channel 8, 16 or 32 px
  squares): ``<stage>/fcd`` and once per run ``<stage>/teacher_fcd``, the Fréchet distance of
  :class:`~lightning_distill.diffusion.frechet.FrechetClassifierDistance` (features of the digits
  classifier :func:`~lightning_distill.models.digits.digits_classifier`, trained in this repository;
  not FID).

The LightningModule provides what :class:`~lightning_distill.diffusion.recipe_base.DiffusionDistillationModule`
has (:data:`EVALUATION_INTERFACE`): ``split_batch(batch) -> (x, cond)``, ``evaluation_labels(cond)``,
``evaluation_samples(n, labels, generator)``, ``teacher_samples(noise, labels)``,
``initial_noise(n, generator)``, ``evaluation_seed``, ``resolve_sample_shape()`` and
``reference_mixture``. Samples come from a generator on the module's device seeded with
``evaluation_seed``; the teacher's noise is drawn after the student's from the same generator, the
floor's data from ``evaluation_seed + 1`` and, for image-free batches (conditions only), the
reference data from ``evaluation_seed + 2``.

"Once per run" is per callback instance: the teacher once per stage (``val``, ``test``), the
floor once in all (it does not depend on the model). Nothing is logged during the sanity check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_distill.diffusion.frechet import FrechetClassifierDistance
from lightning_distill.diffusion.gmm import GaussianMixture
from lightning_distill.diffusion.metrics import sample_metrics
from lightning_distill.models.digits import digits_classifier
from lightning_distill.utils.checks import check_int

__all__ = ["EVALUATION_INTERFACE", "FrechetClassifierDistanceMetric", "MixtureMetrics", "digits_like"]

#: What the evaluation callbacks call on the LightningModule.
EVALUATION_INTERFACE = (
    "split_batch",
    "evaluation_labels",
    "evaluation_samples",
    "teacher_samples",
    "initial_noise",
    "evaluation_seed",
    "resolve_sample_shape",
    "reference_mixture",
)


def digits_like(x: Any) -> bool:
    """Single-channel 8, 16 or 32 px square images ``(B, 1, S, S)`` (what the FCD classifier reads).

    Example:
        >>> digits_like(torch.zeros(4, 1, 8, 8)), digits_like(torch.zeros(4, 3, 8, 8))
        (True, False)
    """
    return (
        isinstance(x, Tensor)
        and x.ndim == 4
        and x.shape[1] == 1
        and x.shape[-1] == x.shape[-2] in (8, 16, 32)
    )


def _check_flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


class _EvaluationCallback(Callback, ABC):
    """Pools a stage's evaluation batches and logs at its end; subclasses say what they keep and log."""

    def __init__(self, every_n_epochs: int, log_teacher: bool) -> None:
        check_int("every_n_epochs", every_n_epochs, low=1)
        _check_flag(log_teacher, "log_teacher")
        self.every_n_epochs = every_n_epochs
        self.log_teacher = log_teacher
        self._batches: list[tuple[Tensor | None, Tensor | None]] = []
        self._teacher_pending = {"val": log_teacher, "test": log_teacher}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        missing = [name for name in EVALUATION_INTERFACE if not hasattr(pl_module, name)]
        if missing:
            raise TypeError(
                f"{type(self).__name__} needs {type(pl_module).__name__} to provide {', '.join(missing)} (what "
                "DiffusionDistillationModule has); implement them or remove the callback from `trainer.callbacks`."
            )

    # ------------------------------------------------------------------ when
    def active(self, trainer: pl.Trainer, stage: str) -> bool:
        """Whether this epoch is evaluated: never in the sanity check; tests always; validation every ``every_n_epochs``."""
        if trainer.sanity_checking:
            return False
        return stage == "test" or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ------------------------------------------------------------------ hooks
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.active(trainer, "val"):
            self._batches.append(self.keep(pl_module, batch))

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.active(trainer, "test"):
            self._batches.append(self.keep(pl_module, batch))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_of_epoch(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_of_epoch(trainer, pl_module, "test")

    def _end_of_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        batches, self._batches = self._batches, []
        if not batches or not self.active(trainer, stage):
            return
        with torch.no_grad():
            self.log_metrics(pl_module, stage, batches, teacher=self._teacher_pending[stage])
        self._teacher_pending[stage] = False

    # ------------------------------------------------------------------ what a subclass implements
    @abstractmethod
    def keep(self, pl_module: pl.LightningModule, batch: Any) -> tuple[Tensor | None, Tensor | None]:
        """``(points or images, labels)`` of one evaluation batch, detached."""

    @abstractmethod
    def log_metrics(
        self,
        pl_module: pl.LightningModule,
        stage: str,
        batches: list[tuple[Tensor | None, Tensor | None]],
        teacher: bool,
    ) -> None:
        """Log the stage's metrics of the pooled ``batches`` (and the teacher's when ``teacher``)."""

    @staticmethod
    def _log(pl_module: pl.LightningModule, name: str, value: Tensor | float) -> None:
        pl_module.log(name, value, on_epoch=True, sync_dist=True)


class MixtureMetrics(_EvaluationCallback):
    """The exact-bench metrics of the student's samples against the epoch's evaluation points.

    Logs ``<stage>/{swd, mmd, mode_coverage, mode_tv}`` (+ ``on_class`` with labels) of
    :func:`~lightning_distill.diffusion.metrics.sample_metrics` between ``N`` samples of
    ``pl_module.evaluation_samples`` and the ``N`` pooled evaluation points (for image-free
    batches: ``N`` points drawn from the mixture with the batches' labels), against
    ``pl_module.reference_mixture``. See the module docstring for the teacher and floor rows.

    Args:
        max_samples: use at most this many evaluation points (the first ones; and as many
            samples); ``None``: all of the epoch's.
        every_n_epochs: evaluate validation epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1, ...``
            (test epochs always).
        log_teacher: once per stage also the teacher's samples, ``<stage>/teacher_<metric>``.
        log_floor: once per run also a second data sample, ``<stage>/<metric>_floor``.

    Raises:
        ValueError: a bad argument; (in an epoch) a module without a reference mixture.
        TypeError: (at setup) a LightningModule without the evaluation interface.

    Example:
        >>> MixtureMetrics(every_n_epochs=2).log_floor
        True
    """

    def __init__(
        self,
        max_samples: int | None = None,
        every_n_epochs: int = 1,
        log_teacher: bool = True,
        log_floor: bool = True,
    ) -> None:
        super().__init__(every_n_epochs, log_teacher)
        check_int("max_samples", max_samples, low=2, optional=True)
        _check_flag(log_floor, "log_floor")
        self.max_samples = max_samples
        self.log_floor = log_floor
        self._floor_pending = log_floor

    def keep(self, pl_module: pl.LightningModule, batch: Any) -> tuple[Tensor | None, Tensor | None]:
        if self._mixture(pl_module) is None:
            raise ValueError(
                f"MixtureMetrics needs a reference Gaussian mixture ({type(pl_module).__name__}.reference_mixture: "
                "an analytic teacher, or a datamodule with a `mixture`); remove it from `trainer.callbacks`."
            )
        x, cond = pl_module.split_batch(batch)
        return None if x is None else x.detach(), pl_module.evaluation_labels(cond)

    def log_metrics(
        self,
        pl_module: pl.LightningModule,
        stage: str,
        batches: list[tuple[Tensor | None, Tensor | None]],
        teacher: bool,
    ) -> None:
        gmm = self._mixture(pl_module)
        data, labels, n = self.evaluation_data(pl_module, batches, gmm)
        if n == 0:
            return
        reference = data
        if reference is None:
            seed = pl_module.evaluation_seed + 2
            reference = gmm.sample(n, torch.Generator().manual_seed(seed), labels=labels).float()
        generator = torch.Generator(device=pl_module.device).manual_seed(pl_module.evaluation_seed)
        rows = [("", pl_module.evaluation_samples(n, labels, generator), "")]
        if teacher:
            rows.append(
                ("teacher_", pl_module.teacher_samples(pl_module.initial_noise(n, generator), labels), "")
            )
        if self._floor_pending:
            floor_generator = torch.Generator().manual_seed(pl_module.evaluation_seed + 1)
            rows.append(("", gmm.sample(n, floor_generator, labels=labels), "_floor"))
            self._floor_pending = False
        for prefix, x, suffix in rows:
            for name, value in sample_metrics(x.reshape(n, -1), reference, labels, gmm).items():
                self._log(pl_module, f"{stage}/{prefix}{name}{suffix}", value)

    def evaluation_data(
        self,
        pl_module: pl.LightningModule,
        batches: list[tuple[Tensor | None, Tensor | None]],
        gmm: GaussianMixture,
    ) -> tuple[Tensor | None, Tensor | None, int]:
        """``(points (N, D) or None, labels (N,) or None, N)`` of the pooled batches; ``N = 0``: nothing to score.

        Image-free batches (conditions only) give ``None`` points and ``N`` = their label count
        when the module's sample shape has the mixture's dimension; points of another dimension
        give ``N = 0``.
        """
        labels = None if batches[0][1] is None else torch.cat([b[1] for b in batches])
        if batches[0][0] is None:
            n = 0 if labels is None else labels.shape[0]
            size = 1
            for s in pl_module.resolve_sample_shape():
                size *= s
            n = n if size == gmm.dim else 0
            data = None
        else:
            data = torch.cat([b[0] for b in batches]).float().to(gmm.means.device)
            data = data.reshape(data.shape[0], -1)
            n = data.shape[0] if data.shape[1] == gmm.dim else 0
        if self.max_samples is not None and n > self.max_samples:
            n = self.max_samples
            data = None if data is None else data[:n]
            labels = None if labels is None else labels[:n]
        return data, labels, n

    @staticmethod
    def _mixture(pl_module: pl.LightningModule) -> GaussianMixture | None:
        gmm = getattr(pl_module, "reference_mixture", None)
        return gmm if isinstance(gmm, GaussianMixture) else None


class FrechetClassifierDistanceMetric(_EvaluationCallback):
    """``<stage>/fcd`` of the student's samples against the epoch's digits-like evaluation images.

    The Fréchet classifier distance (:class:`~lightning_distill.diffusion.frechet.FrechetClassifierDistance`,
    features of the repository's digits classifier, trained and cached on first use; not FID)
    between the first ``num_samples`` evaluation images and as many samples of
    ``pl_module.evaluation_samples`` (unconditional), reshaped to the images' shape; once per
    stage also the teacher's (``<stage>/teacher_fcd``). The metric (with its classifier) is held
    by this callback, one per image size, built at first use.

    Args:
        num_samples: at most this many evaluation images (the first ones), and as many samples.
        every_n_epochs: evaluate validation epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1, ...``
            (test epochs always).
        log_teacher: once per stage also the teacher's samples, ``<stage>/teacher_fcd``.

    Raises:
        ValueError: a bad argument; (in an epoch) evaluation images that are not single-channel
            8, 16 or 32 px squares.
        TypeError: (at setup) a LightningModule without the evaluation interface.

    Example:
        >>> FrechetClassifierDistanceMetric(num_samples=500).num_samples
        500
    """

    def __init__(self, num_samples: int = 1000, every_n_epochs: int = 1, log_teacher: bool = True) -> None:
        super().__init__(every_n_epochs, log_teacher)
        check_int("num_samples", num_samples, low=2)
        self.num_samples = num_samples
        self._metrics: dict[int, FrechetClassifierDistance] = {}

    def metric(self, image_size: int) -> FrechetClassifierDistance:
        """The FCD metric for ``image_size`` px images (its classifier may be trained on first use)."""
        if image_size not in self._metrics:
            with torch.inference_mode(False), torch.enable_grad():
                classifier = digits_classifier(size=image_size)
                self._metrics[image_size] = FrechetClassifierDistance(classifier, image_size=image_size)
        return self._metrics[image_size]

    def keep(self, pl_module: pl.LightningModule, batch: Any) -> tuple[Tensor | None, Tensor | None]:
        x, _ = pl_module.split_batch(batch)
        if not digits_like(x):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"FrechetClassifierDistanceMetric reads single-channel 8, 16 or 32 px square images (B, 1, S, S), got "
                f"{shape}; remove it from `trainer.callbacks`."
            )
        return x.detach(), None

    def log_metrics(
        self,
        pl_module: pl.LightningModule,
        stage: str,
        batches: list[tuple[Tensor | None, Tensor | None]],
        teacher: bool,
    ) -> None:
        data = torch.cat([x for x, _ in batches])[: self.num_samples]
        metric = self.metric(int(data.shape[-1])).to(pl_module.device)
        n = int(data.shape[0])
        generator = torch.Generator(device=pl_module.device).manual_seed(pl_module.evaluation_seed)
        rows = [("", pl_module.evaluation_samples(n, None, generator))]
        if teacher:
            rows.append(("teacher_", pl_module.teacher_samples(pl_module.initial_noise(n, generator), None)))
        for prefix, samples in rows:
            metric.reset()
            metric.update(data.float(), real=True)
            metric.update(samples.float().reshape(data.shape), real=False)
            self._log(pl_module, f"{stage}/{prefix}fcd", float(metric.compute()))
