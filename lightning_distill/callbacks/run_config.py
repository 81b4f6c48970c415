"""What a run records about itself: its resolved config, and a line that labels the student's result.

* :class:`RunConfig` (the ``lightning-distill`` command's config callback) writes ``config.yaml``
  into the run's own folder (:func:`run_directory`, next to ``checkpoints/``; W&B runs no longer
  overwrite one ``runs/config.yaml``) and logs the whole config, nested, to every logger, in place
  of Lightning's flat hyper-parameters: W&B runs can be grouped by recipe, student and teacher
  classes, optimizer, learning rate, trainer settings or seed.
* :func:`result_summary` is the line the command prints after ``test``:
  ``Result (test): student acc 97.4% vs teachers 99.3% / 98.9% (teacher0, teacher1)``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import lightning.pytorch as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_distill.utils.checkpoints import class_path_of

__all__ = ["RunConfig", "result_summary", "run_directory"]


def result_summary(metrics: dict[str, Any], stage: str = "test") -> str | None:
    """One line comparing the student's ``<stage>/<metric>`` with the teachers' ``<stage>/teacher*_<metric>``,
    for every metric both report; ``None`` without teacher metrics.

    Example:
        >>> result_summary({"test/acc": 0.974, "test/teacher0_acc": 0.993, "test/teacher1_acc": 0.989})
        'Result (test): student acc 97.4% vs teachers 99.3% / 98.9% (teacher0, teacher1)'
    """
    values = {str(k): float(v) for k, v in metrics.items() if str(k).startswith(f"{stage}/")}
    teachers = sorted({m.group(1) for k in values if (m := re.match(rf"{stage}/(teacher\d*)_", k))})
    if not teachers:
        return None
    parts = []
    for key, value in values.items():
        metric = key[len(stage) + 1 :]
        theirs = [values.get(f"{stage}/{t}_{metric}") for t in teachers]
        if metric.startswith("teacher") or any(v is None for v in theirs):
            continue

        def fmt(v: float, metric: str = metric) -> str:
            return f"{v:.1%}" if metric.endswith("acc") else f"{v:.4g}"

        noun = "teacher" if len(teachers) == 1 else "teachers"
        parts.append(f"student {metric} {fmt(value)} vs {noun} {' / '.join(fmt(v) for v in theirs)}")
    if not parts:
        return None
    names = f" ({', '.join(teachers)})" if len(teachers) > 1 else ""
    return f"Result ({stage}): " + "; ".join(parts) + names


def run_directory(trainer: L.Trainer) -> str:
    """The folder of this run: the CSV/TensorBoard logger's ``log_dir``, else ``<save_dir>/<name>/<version>``
    of the first logger (where Lightning's ``ModelCheckpoint`` puts ``checkpoints/`` for W&B, MLflow, ...),
    else ``default_root_dir``. Call it on rank zero (a W&B run is created to read its id)."""
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return logger.log_dir
    _ = getattr(logger, "experiment", None)  # W&B: start the run, so that `version` is its id
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)


class RunConfig(SaveConfigCallback):
    """Keep the resolved config of a run in the run's own folder and log it, nested, to every logger.

    LightningCLI's default writes ``config.yaml`` into ``trainer.log_dir``, which for W&B is the shared
    ``save_dir`` (every run overwrote ``runs/config.yaml``), and Lightning logs the module's and the
    datamodule's hyper-parameters in one flat namespace without the classes, optimizer, trainer or seed.
    This callback writes ``config.yaml`` into :func:`run_directory` and logs the whole config (``model``,
    ``data``, ``trainer``, ``seed_everything``, ...) plus a ``run`` summary (``recipe``, ``student`` and
    ``teachers`` classes as built, ``optimizer``, ``lr``) with ``logger.log_hyperparams``, in place of
    Lightning's flat hyper-parameters.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The nested config replaces Lightning's flat hyper-parameters (what `save_hyperparameters(logger=False)` sets).
        pl_module._log_hyperparams = False
        if trainer.datamodule is not None:
            trainer.datamodule._log_hyperparams = False
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = os.path.join(run_directory(trainer), self.config_filename)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.parser.save(
                self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
            )
            self.config_path = path
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.nested_config(pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(config)

    def nested_config(self, pl_module: L.LightningModule) -> dict[str, Any]:
        """The resolved config as nested plain data, with the ``run`` summary."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_link_targets=False)) or {}
        config.pop("config", None)  # the paths of the --config files, not settings
        model = config.get("model") if isinstance(config.get("model"), dict) else {}
        optimizer = (model.get("init_args") or {}).get("optimizer") or config.get("optimizer") or {}
        optimizer = optimizer if isinstance(optimizer, dict) else {"class_path": str(optimizer)}
        student = getattr(pl_module, "student", None)
        teachers = getattr(pl_module, "teachers", None) or []
        config["run"] = {
            "recipe": class_path_of(pl_module),
            "student": class_path_of(student) if student is not None else None,
            "teachers": [class_path_of(t) for t in teachers],
            "optimizer": optimizer.get("class_path"),
            "lr": (optimizer.get("init_args") or {}).get("lr"),
            "seed_everything": config.get("seed_everything"),
        }
        return config
