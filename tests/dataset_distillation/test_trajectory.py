"""Trajectory matching toolkit: the unrolled student, sharpness, SAM/GSAM experts, the expert buffer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation import (
    ConvNet,
    ConvNetSpec,
    SiameseAugment,
    full_training_set,
)
from lightning_distill.dataset_distillation.experts import (
    ExpertSpec,
    ExpertStep,
    ExpertTrajectories,
    expert_trajectories,
    train_expert,
)
from lightning_distill.dataset_distillation.trajectory import (
    ParamLayout,
    hessian_top_eigenvalue,
    unroll_student,
)
from lightning_distill.losses.dataset_distillation import trajectory_matching_loss

SPEC = ConvNetSpec(in_channels=1, num_classes=10, image_size=(8, 8), width=8, depth=2)
TINY_EXPERTS = ExpertSpec(
    num_experts=2, epochs=3, optimizer="sgd", batch_size=256, augment=None, momentum=0.9
)


# ---------------------------------------------------------------------------- toolkit


@pytest.mark.parametrize("with_augment", [False, True])
def test_unrolled_student_equals_an_explicit_sgd_loop(with_augment):
    torch.manual_seed(0)
    net = ConvNet.from_spec(SPEC)
    layout = ParamLayout.of(net)
    images, labels = torch.randn(10, 1, 8, 8), torch.arange(10)
    lr, steps, batch = 0.05, 5, 4  # 5 steps of 4 images cross a permutation boundary (10 images)
    augment = SiameseAugment("crop_scale_rotate", siamese=False) if with_augment else None
    before = layout.flatten(net)
    got = unroll_student(
        net,
        layout,
        layout.flatten(net),
        images,
        labels,
        lr,
        steps,
        batch_size=batch,
        augment=augment,
        generator=torch.Generator().manual_seed(3),
    )
    # The same training written as a plain loop on a copy of the module.
    reference = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(3)
    pending: list[torch.Tensor] = []
    for _ in range(steps):
        if not pending:
            pending = list(torch.randperm(10, generator=generator).split(batch))
        index = pending.pop(0)
        x = images[index]
        if augment is not None:
            x = augment(x, augment.sample(x, generator))
        loss = F.cross_entropy(reference(x), labels[index])
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads):
                p -= lr * g
    torch.testing.assert_close(got.detach(), layout.flatten(reference), rtol=1e-5, atol=1e-6)
    assert torch.equal(layout.flatten(net), before)  # the module's own weights are never used or changed


def test_unroll_backpropagates_to_images_and_lr_but_not_to_the_start():
    torch.manual_seed(0)
    net = ConvNet.from_spec(SPEC)
    layout = ParamLayout.of(net)
    start = layout.flatten(net).requires_grad_(True)
    images = torch.randn(10, 1, 8, 8, requires_grad=True)
    log_lr = torch.tensor(-3.0, requires_grad=True)
    end = unroll_student(net, layout, start, images, torch.arange(10), log_lr.exp(), 3)
    trajectory_matching_loss(end, start, start.detach() + 1.0).backward()
    assert images.grad.abs().sum() > 0 and log_lr.grad.abs() > 0
    assert start.grad is None and all(p.grad is None for p in net.parameters())


def test_hessian_top_eigenvalue_matches_the_explicit_hessian():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3))
    layout = ParamLayout.of(net)
    x, y = torch.randn(16, 1, 2, 2), torch.arange(16) % 3
    flat = layout.flatten(net)

    def loss(theta):
        return F.cross_entropy(torch.func.functional_call(net, layout.unflatten(theta), (x,)), y)

    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    top = eigenvalues[eigenvalues.abs().argmax()]
    got = hessian_top_eigenvalue(
        net, layout, flat, x, y, iterations=200, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(got, top, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------- SAM / GSAM experts
def _quadratic_problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    w0 = ParamLayout.of(model).flatten(model)
    return model, x, y, w0


def _grad_at(model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    layout = ParamLayout.of(model)
    theta = flat.clone().requires_grad_(True)
    loss = F.cross_entropy(torch.func.functional_call(model, layout.unflatten(theta), (x,)), y)
    return torch.autograd.grad(loss, theta)[0]


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_matches_the_closed_form_perturbation(adaptive):
    model, x, y, w0 = _quadratic_problem()
    lr, rho = 0.1, 0.3
    ExpertStep(model, ExpertSpec(optimizer="sam", lr=lr, rho=rho, adaptive=adaptive))(x, y)
    g = _grad_at(model, w0, x, y)
    t = w0.abs() if adaptive else torch.ones_like(w0)
    e = (
        rho * t**2 * g / (t * g).norm()
    )  # SAM (and ASAM with T_w = |w|): the ascent to the neighbourhood's worst point
    expected = w0 - lr * _grad_at(model, w0 + e, x, y)
    torch.testing.assert_close(ParamLayout.of(model).flatten(model), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_gsam_step_matches_the_closed_form_decomposition(adaptive):
    model, x, y, w0 = _quadratic_problem()
    lr, rho, alpha = 0.1, 0.3, 0.4
    ExpertStep(model, ExpertSpec(optimizer="gsam", lr=lr, rho=rho, alpha=alpha, adaptive=adaptive))(x, y)
    g = _grad_at(model, w0, x, y)
    t = w0.abs() if adaptive else torch.ones_like(w0)
    e = rho * t**2 * g / (t * g).norm()
    g_p = _grad_at(model, w0 + e, x, y)
    orthogonal = g - (g @ g_p) / (g_p @ g_p) * g_p  # the part of g orthogonal to the perturbed gradient
    expected = w0 - lr * (g_p - alpha * orthogonal)
    torch.testing.assert_close(ParamLayout.of(model).flatten(model), expected, rtol=1e-5, atol=1e-6)


def test_sam_experts_are_flatter_than_sgd_experts():
    dm = DigitsDataModule()
    x, y = full_training_set(dm)
    x, y = x[:300], y[:300]
    spec = ConvNetSpec(in_channels=1, num_classes=10, image_size=(8, 8), width=8, depth=2, norm="none")
    sharpness = {}
    for optimizer in ("sgd", "sam"):
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # both experts start from the same weights
        expert = ConvNet.from_spec(spec)
        settings = ExpertSpec(
            num_experts=1,
            epochs=15,
            optimizer=optimizer,
            lr=0.1,
            momentum=0.9,
            batch_size=50,
            augment=None,
            rho=0.2,
            adaptive=False,
        )
        trajectory = train_expert(expert, x, y, settings, generator)
        layout = ParamLayout.of(expert)
        sharpness[optimizer] = float(
            hessian_top_eigenvalue(
                expert, layout, trajectory[-1], x, y, generator=torch.Generator().manual_seed(1)
            )
        )
    assert sharpness["sam"] < 0.8 * sharpness["sgd"], sharpness


# ---------------------------------------------------------------------------- buffer
def test_buffer_is_cached_by_its_settings_and_reloads(tmp_path):
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 10
    spec = ExpertSpec(num_experts=2, epochs=2, optimizer="sgd", batch_size=20, augment=None)
    first = expert_trajectories(SPEC, x, y, spec, cache_dir=tmp_path)
    assert first.params.shape == (2, 3, ParamLayout.of(ConvNet.from_spec(SPEC)).numel)
    again = expert_trajectories(SPEC, x, y, spec, cache_dir=tmp_path)
    assert torch.equal(first.params, again.params) and again.metadata["key"] == first.metadata["key"]
    other = expert_trajectories(SPEC, x, y, ExpertSpec(**{**spec.to_dict(), "lr": 0.02}), cache_dir=tmp_path)
    assert other.metadata["key"] != first.metadata["key"]
    assert len(list((tmp_path / "experts").glob("*.pt"))) == 2
    loaded = ExpertTrajectories.load(first.save(tmp_path / "b.pt"))
    assert torch.equal(loaded.params, first.params) and loaded.layout == first.layout
    assert ExpertSpec.from_dict(loaded.spec) == spec
    start, target = loaded.segment(1, 0, 2)
    assert torch.equal(start, first.params[1, 0]) and torch.equal(target, first.params[1, 2])
    with pytest.raises(ValueError, match="train the experts longer"):
        loaded.check_window(max_start_epoch=2, expert_epochs=2)
