"""Non-finite losses: ``on_nonfinite="raise"`` stops naming the term and step; ``"skip"`` trains on.

Both optimisation modes: the KD recipe (automatic, ``training_step`` returns ``log_losses``) and a
two-turn module stepping its own optimizers through ``update`` (manual, like DMD2).
"""

from __future__ import annotations

import warnings

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill import DistillationModule
from lightning_distill.callbacks.nonfinite import NonFiniteLosses
from lightning_distill.recipes.kd import KnowledgeDistillation

POISONED = (2, 3)  # batch indices whose inputs hold a NaN


def _data(poisoned=POISONED, batches: int = 6, labels: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * batches, 5, generator=g)
    for b in poisoned:
        x[4 * b, 0] = float("nan")
    tensors = (x, torch.randint(0, 3, (4 * batches,), generator=g)) if labels else (x,)
    return DataLoader(TensorDataset(*tensors), batch_size=4)


class WeightsPerBatch(L.Callback):
    """The student's weights before and after every training batch."""

    def __init__(self):
        self.before, self.after = {}, {}

    def _copy(self, module):
        return torch.cat([p.detach().flatten().clone() for p in module.student.parameters()])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[batch_idx] = self._copy(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[batch_idx] = self._copy(pl_module)


def _fit(module, data, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=list(callbacks),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`training_step` returned `None`")
        trainer.fit(module, data)
    return trainer


def _kd(**options) -> KnowledgeDistillation:
    """KD does not list the base's options in its constructor: set them as the callback does."""
    torch.manual_seed(0)
    module = KnowledgeDistillation(student=nn.Linear(5, 3), teacher=nn.Linear(5, 3))
    for name, value in options.items():
        setattr(module, name, value)
    return module


class TwoTurns(DistillationModule):
    """A generator and a critic, each stepped by one `update` call per batch (manual optimization)."""

    loss_terms = ("fit", "critic")
    requires_teacher = False

    def __init__(self, **kwargs):
        super().__init__(student=nn.Linear(5, 2), **kwargs)
        self.critic = nn.Linear(2, 1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        (x,) = batch
        opt_gen, opt_critic = self.optimizers()
        self.update(opt_gen, {"fit": self.student(x).square().mean()}, turn="generator")
        clean = torch.nan_to_num(x)  # the critic's turn stays finite
        self.update(
            opt_critic, {"critic": self.critic(self.student(clean).detach()).square().mean()}, turn="critic"
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1), torch.optim.SGD(
            self.critic.parameters(), lr=0.1
        )


def test_raise_is_the_default_and_names_the_term_and_the_step_automatic():
    module = _kd()
    assert module.on_nonfinite == "raise"
    with pytest.raises(
        FloatingPointError, match=r"`loss` is not finite at global step 2.*'kd'.*on_nonfinite='skip'"
    ):
        _fit(module, _data())


def test_raise_names_the_turn_and_the_step_manual():
    with pytest.raises(
        FloatingPointError, match=r"`loss_generator` is not finite at global step 4.*\['fit'\]"
    ):
        _fit(TwoTurns(), _data(labels=False))  # two optimizer steps per batch: batch 2 starts at step 4


@pytest.mark.parametrize("make", [_kd, TwoTurns], ids=["automatic_kd", "manual_two_turns"])
def test_skip_trains_on_leaves_the_poisoned_steps_alone_and_counts_them(make):
    module = make(on_nonfinite="skip")
    record = WeightsPerBatch()
    with pytest.warns(
        UserWarning, match=r"not finite at global step \d+ \(term\(s\) \['(kd', 'ce|fit)'\]\); skipping"
    ) as caught:
        trainer = _fit(module, _data(labels=make is _kd), callbacks=[record])
    assert sum("skipping this step" in str(w.message) for w in caught) == 1  # warned once for two skips
    for b in range(6):
        unchanged = torch.equal(record.before[b], record.after[b])
        assert unchanged == (b in POISONED), f"batch {b}: weights {'un' if unchanged else ''}changed"
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.callback_metrics["diag/skipped_steps"] == len(POISONED)
    assert module._skipped_steps == len(POISONED)
    if make is TwoTurns:  # the finite critic turn still stepped on the poisoned batches
        assert trainer.global_step == 2 * 6 - len(POISONED)
    else:  # Lightning counts a skipped automatic step in `global_step` (the weights stay put, above)
        assert trainer.global_step == 6


@pytest.mark.parametrize("make", [_kd, TwoTurns], ids=["automatic_kd", "manual_two_turns"])
def test_skip_still_raises_after_too_many_skips_in_a_row(make):
    module = make(on_nonfinite="skip", max_skipped_steps=3)
    with pytest.warns(UserWarning, match="skipping"):
        with pytest.raises(
            FloatingPointError, match=r"not finite 3 steps in a row \(limit `max_skipped_steps`=3\)"
        ):
            _fit(module, _data(poisoned=range(6), labels=make is _kd))
    assert all(torch.isfinite(p).all() for p in module.student.parameters())


def test_a_finite_step_resets_the_count_in_a_row():
    module = _kd(on_nonfinite="skip", max_skipped_steps=2)
    with pytest.warns(UserWarning, match="skipping"):
        _fit(module, _data(poisoned=(0, 2, 4)))  # never two in a row
    assert module._skipped_steps == 3


def test_the_callback_sets_the_option_for_any_recipe():
    module = _kd()
    with pytest.warns(UserWarning, match="skipping"):
        trainer = _fit(module, _data(), callbacks=[NonFiniteLosses(on_nonfinite="skip", max_skipped_steps=4)])
    assert (module.on_nonfinite, module.max_skipped_steps) == ("skip", 4)
    assert trainer.callback_metrics["diag/skipped_steps"] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_nonfinite": "ignore"}, "`on_nonfinite` must be 'raise' or 'skip', got 'ignore'"),
        ({"max_skipped_steps": 0}, "`max_skipped_steps` must be an integer >= 1, got 0"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoTurns(**kwargs)
    with pytest.raises(ValueError, match=match):
        _kd(**kwargs)
    with pytest.raises(ValueError, match=match):
        NonFiniteLosses(**{"on_nonfinite": "skip", **kwargs})


def test_the_callback_refuses_a_module_without_the_option():
    class Plain(L.LightningModule):
        pass

    with pytest.raises(ValueError, match="has no `on_nonfinite`"):
        NonFiniteLosses().setup(None, Plain(), "fit")
