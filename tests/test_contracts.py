"""Contracts every registered recipe keeps: argument names from the glossary, the logging rule.

The glossary lives in docs/contributing.md. The logging rule (docs/concepts/module.md): every key
a recipe logs under ``train/`` is ``train/loss``, ``train/loss_<turn>`` (a manual-optimization
turn's total, from ``DistillationModule.update``) or ``train/<term>`` with ``term`` in the recipe's
``loss_terms``; everything else goes under ``diag/`` (``log_diagnostics``). ``LoggedKeysRule`` is
appended to every config's fit in tests/test_cli.py.
"""

from __future__ import annotations

import inspect
import re

import lightning.pytorch as L
import pytest

from lightning_distill.recipes import RECIPES, load_recipe

#: Names the glossary replaces, and by what.
NOT_IN_GLOSSARY = {
    "clip_grad_norm": "max_grad_norm",
    "grad_clip": "max_grad_norm",
    "gradient_clip": "max_grad_norm",
    "dfake_gen_update_ratio": "generator_update_every",
    "update_ratio": "generator_update_every",
    "ema_momentum": "ema_decay",
    "momentum": "ema_decay (for an EMA) or the optimizer's own argument",
    "tau": "temperature",
    "scheduler": "lr_scheduler",
    "noise_scheduler": "schedule",
    "fake_optimizer": "fake_score_optimizer",
    "nan_policy": "on_nonfinite",
    "skip_nonfinite": "on_nonfinite",
    "skip_nan": "on_nonfinite",
    "max_consecutive_skips": "max_skipped_steps",
    "nan_patience": "max_skipped_steps",
}
#: A constructor argument that weighs a loss term duplicates `loss_weights`.
LOSS_WEIGHT_ARGUMENT = re.compile(r"(^|_)(loss_weight|weight)$|^lambda_|^w_")


class LoggedKeysRule(L.Callback):
    """Fails the fit when a ``train/`` key breaks the logging rule."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bad = sorted(key for key in trainer.callback_metrics if not follows_rule(key, pl_module))
        if bad:
            raise AssertionError(
                f"{type(pl_module).__name__} logged {bad} under train/; allowed: train/loss, "
                f"train/loss_<turn>, train/<term> for term in {list(getattr(pl_module, 'loss_terms', ()))}; "
                "log other values with `log_diagnostics` (diag/<name>)."
            )


def follows_rule(key: str, module: L.LightningModule) -> bool:
    if not key.startswith("train/"):
        return True
    name = key.removeprefix("train/")
    if name == "loss" or re.fullmatch(r"loss_[a-z][a-z0-9_]*", name):
        return True
    return name in getattr(module, "loss_terms", ())


@pytest.mark.parametrize("slug", sorted(RECIPES))
def test_recipe_arguments_follow_the_glossary(slug):
    recipe = load_recipe(slug)
    names = list(inspect.signature(recipe.__init__).parameters)
    for name in names:
        assert name not in NOT_IN_GLOSSARY, (
            f"{recipe.__name__}({name}=...): the glossary (docs/contributing.md) calls it "
            f"`{NOT_IN_GLOSSARY[name]}`."
        )
        assert not LOSS_WEIGHT_ARGUMENT.search(name) or name == "loss_weights", (
            f"{recipe.__name__}({name}=...) weighs a loss term: use `loss_weights` and "
            "`default_loss_weights` instead."
        )


@pytest.mark.parametrize("slug", sorted(RECIPES))
def test_recipe_defaults_weigh_only_declared_terms(slug):
    recipe = load_recipe(slug)
    unknown = set(recipe.default_loss_weights) - set(recipe.loss_terms)
    assert not unknown, f"{recipe.__name__}.default_loss_weights names undeclared terms {sorted(unknown)}"


def test_logged_keys_rule_accepts_terms_turn_totals_and_rejects_the_rest():
    class Module(L.LightningModule):
        loss_terms = ("dm", "fake")

    module = Module()
    assert all(
        follows_rule(k, module)
        for k in ("train/loss", "train/loss_generator", "train/dm", "val/acc", "diag/pred_realism_real")
    )
    assert not follows_rule("train/pred_realism_real", module)
    assert not follows_rule("train/Loss_x", module)
