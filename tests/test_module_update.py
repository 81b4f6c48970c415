"""`DistillationModule.update` (one manual-optimization turn) and the non-finite guard."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill import DistillationModule


class TwoTurns(DistillationModule):
    """A generator and a critic, each updated by one `update` call per iteration."""

    loss_terms = ("fit", "reg", "critic")
    requires_teacher = False

    def __init__(self, generator_update_every: int = 1, max_grad_norm: float | None = None, **kwargs):
        super().__init__(student=nn.Linear(3, 2), **kwargs)
        self.critic = nn.Linear(2, 1)
        self.automatic_optimization = False
        self.generator_update_every = generator_update_every
        self.max_grad_norm = max_grad_norm
        self.recorded: list[dict[str, torch.Tensor]] = []
        self.corrupt_at: int | None = None

    def training_step(self, batch, batch_idx):
        (x,) = batch
        opt_gen, opt_critic = self.optimizers()
        if self.is_update_step(batch_idx, self.generator_update_every):
            out = self.student(x)
            fit = out.square().mean()
            if batch_idx == self.corrupt_at:
                fit = fit * float("nan")
            terms = {"fit": fit, "reg": self.critic(out).mean()}
            self.update(opt_gen, terms, turn="generator", max_grad_norm=self.max_grad_norm)
            self.recorded.append({n: p.grad.clone() for n, p in self.student.named_parameters()})
        critic = self.critic(self.student(x).detach()).square().mean()
        self.update(opt_critic, {"critic": critic}, turn="critic")

    def configure_optimizers(self):
        gen = torch.optim.SGD(self.student.parameters(), lr=0.1)
        critic = torch.optim.SGD(self.critic.parameters(), lr=0.1)
        schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (gen, critic)]
        return [gen, critic], schedulers


def _fit(module: DistillationModule, steps: int = 4) -> L.Trainer:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4 * steps, 3)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    return trainer


def test_update_weighs_terms_and_logs_each_term_and_the_turn_total():
    module = TwoTurns(loss_weights={"reg": 0.5})
    trainer = _fit(module)
    keys = set(trainer.callback_metrics)
    assert {"train/fit", "train/reg", "train/critic", "train/loss_generator", "train/loss_critic"} <= keys
    fit, reg = trainer.callback_metrics["train/fit"], trainer.callback_metrics["train/reg"]
    torch.testing.assert_close(trainer.callback_metrics["train/loss_generator"], fit + 0.5 * reg)


def test_update_gradient_is_the_weighted_sum_and_never_reaches_the_other_optimizer():
    torch.manual_seed(0)
    module = TwoTurns(loss_weights={"reg": 0.5})
    x = torch.randn(4, 3)
    student, critic = module.student, module.critic
    out = student(x)
    expected = torch.autograd.grad(out.square().mean() + 0.5 * critic(out).mean(), list(student.parameters()))

    class Probe(TwoTurns):
        def training_step(self, batch, batch_idx):
            opt_gen, _ = self.optimizers()
            out = self.student(batch[0])
            self.update(
                opt_gen, {"fit": out.square().mean(), "reg": self.critic(out).mean()}, turn="generator"
            )
            self.critic_grads = [p.grad for p in self.critic.parameters()]
            self.student_grads = [p.grad.clone() for p in self.student.parameters()]

    probe = Probe(loss_weights={"reg": 0.5})
    probe.load_state_dict(module.state_dict())
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(probe, DataLoader(TensorDataset(x), batch_size=4))
    for got, want in zip(probe.student_grads, expected):
        torch.testing.assert_close(got, want)
    assert all(g is None for g in probe.critic_grads), "the generator turn gave the critic a gradient"


def test_update_steps_only_its_own_scheduler():
    module = TwoTurns(generator_update_every=2)
    trainer = _fit(module, steps=4)
    gen_sched, critic_sched = (c.scheduler for c in trainer.lr_scheduler_configs)
    assert gen_sched.last_epoch == 2  # generator turns at iterations 0 and 2
    assert critic_sched.last_epoch == 4


def test_update_clips_the_gradient_norm():
    module = TwoTurns(max_grad_norm=1e-3)
    _fit(module, steps=2)
    norms = [
        torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])) for grads in module.recorded
    ]
    assert all(n <= 1e-3 * (1 + 1e-5) for n in norms), norms


def test_a_non_finite_term_stops_the_run_naming_the_term_and_step_before_any_update():
    module = TwoTurns()
    module.corrupt_at = 2
    with pytest.raises(
        FloatingPointError, match=r"`loss_generator` is not finite at global step 4.*\['fit'\]"
    ):
        _fit(module)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_log_losses_rejects_a_non_finite_total_in_automatic_optimization():
    class Auto(DistillationModule):
        loss_terms = ("kd",)
        requires_teacher = False

        def training_step(self, batch, batch_idx):
            return self.log_losses({"kd": self.student(batch[0]).mean() * float("inf")})

    with pytest.raises(FloatingPointError, match=r"non-finite term\(s\): \['kd'\]"):
        _fit(Auto(student=nn.Linear(3, 2)))


def test_update_rejects_a_turn_name_that_is_not_an_identifier():
    class Bad(TwoTurns):
        def training_step(self, batch, batch_idx):
            opt_gen, _ = self.optimizers()
            self.update(opt_gen, {"fit": self.student(batch[0]).mean()}, turn="gen erator")

    with pytest.raises(ValueError, match="`turn` must be an identifier"):
        _fit(Bad())


class _RecordsAutocastInBackward(torch.autograd.Function):
    """Identity whose backward records whether CPU autocast is on (as spconv's custom backward would see it)."""

    seen: list[bool] = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _RecordsAutocastInBackward.seen.append(torch.is_autocast_enabled("cpu"))
        return grad


class AutocastProbe(TwoTurns):
    def training_step(self, batch, batch_idx):
        (x,) = batch
        opt_gen, _ = self.optimizers()
        out = _RecordsAutocastInBackward.apply(self.student(x))
        self.update(opt_gen, {"fit": out.float().square().mean()}, turn="generator")


def test_update_backpropagates_outside_autocast_under_bf16_mixed():
    # Lightning autocasts `training_step`, and `update` runs inside it: a custom backward (spconv's sparse
    # convolutions) must not run its matmuls in bf16 (spconv has no bf16 kernels).
    _RecordsAutocastInBackward.seen = []
    module = AutocastProbe(loss_weights={"fit": 1.0, "reg": 0.0, "critic": 0.0})
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", precision="bf16-mixed",
    )  # fmt: skip
    trainer.fit(module, data)
    assert _RecordsAutocastInBackward.seen == [False, False]
