"""`NonFiniteLosses`: choose, from a config, what a non-finite training loss does.

``DistillationModule`` takes ``on_nonfinite`` and ``max_skipped_steps`` as constructor arguments,
but a recipe's constructor lists only its own arguments, so ``--model.init_args.on_nonfinite`` is
not there for every recipe. This callback sets the two attributes on the module at setup, for any
recipe::

    lightning-distill fit --recipe kd \\
        --trainer.callbacks+=lightning_distill.callbacks.nonfinite.NonFiniteLosses \\
        --trainer.callbacks.on_nonfinite=skip
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as L

__all__ = ["NonFiniteLosses"]


class NonFiniteLosses(L.Callback):
    """Set ``on_nonfinite`` / ``max_skipped_steps`` of a ``DistillationModule`` when fit starts.

    Args:
        on_nonfinite: ``"skip"`` skips the optimizer step of a batch whose loss is NaN/inf (counted
            as ``diag/skipped_steps``); ``"raise"`` stops the run naming the term and the step.
        max_skipped_steps: consecutive skipped steps of one turn tolerated before raising.

    Raises:
        ValueError: an unknown ``on_nonfinite``, ``max_skipped_steps`` < 1, or (at setup) a module
            that has no ``on_nonfinite`` (not a ``DistillationModule``).
    """

    def __init__(self, on_nonfinite: Literal["raise", "skip"] = "skip", max_skipped_steps: int = 10) -> None:
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"`on_nonfinite` must be 'raise' or 'skip', got {on_nonfinite!r}.")
        if (
            isinstance(max_skipped_steps, bool)
            or not isinstance(max_skipped_steps, int)
            or max_skipped_steps < 1
        ):
            raise ValueError(f"`max_skipped_steps` must be an integer >= 1, got {max_skipped_steps!r}.")
        self.on_nonfinite = on_nonfinite
        self.max_skipped_steps = max_skipped_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "on_nonfinite"):
            raise ValueError(
                f"NonFiniteLosses works on a DistillationModule; {type(pl_module).__name__} has no `on_nonfinite`."
            )
        pl_module.on_nonfinite = self.on_nonfinite
        pl_module.max_skipped_steps = self.max_skipped_steps
