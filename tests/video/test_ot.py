"""VDOT's OT parts: patch tokens, Sinkhorn plans (marginals, hand-solved cases), the barycentric gradient, the critic."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.losses.video import (
    barycentric_gradient,
    relativistic_critic_loss,
    relativistic_generator_loss,
)
from lightning_distill.video.critic import VideoCritic
from lightning_distill.video.ot import from_patch_tokens, ot_gradient, patch_tokens, sinkhorn_plan


def test_patch_tokens_cut_each_frame_into_patches_and_fold_back():
    video = torch.randn(2, 3, 4, 8, 8)
    tokens = patch_tokens(video, 2)
    assert tokens.shape == (2, 4 * 4 * 4, 3 * 4)
    # token 0 of frame 1 is the top-left 2x2 patch of frame 1, channels first
    torch.testing.assert_close(tokens[0, 16], video[0, :, 1, :2, :2].reshape(-1))
    torch.testing.assert_close(from_patch_tokens(tokens, video.shape, 2), video)


def test_plan_marginals_sum_to_the_weights_rows_and_columns():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 20, 5, generator=g), torch.randn(3, 30, 5, generator=g) + 1.0
    a = torch.rand(3, 20, generator=g).double()
    a = a / a.sum(1, keepdim=True)
    b = torch.rand(3, 30, generator=g).double()
    b = b / b.sum(1, keepdim=True)
    plan = sinkhorn_plan(x, y, epsilon=0.1, max_iter=2000, tol=1e-10, source_weights=a, target_weights=b)
    assert plan.shape == (3, 20, 30) and bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(2).double(), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(1).double(), b, atol=1e-6, rtol=0)
    uniform = sinkhorn_plan(x, y, epsilon=0.1, max_iter=2000, tol=1e-10)
    torch.testing.assert_close(uniform.sum(2), torch.full((3, 20), 1 / 20), atol=1e-6, rtol=0)
    torch.testing.assert_close(uniform.sum(1), torch.full((3, 30), 1 / 30), atol=1e-6, rtol=0)


def test_two_point_plan_matches_the_closed_form_entropic_solution():
    # 2x2 with uniform marginals: P = [[p, 1/2 - p], [1/2 - p, p]], optimal p solves
    # log(p / (1/2 - p)) = (C01 + C10 - C00 - C11) / (2 eps_abs)
    x, y = torch.tensor([[[0.0], [1.0]]]), torch.tensor([[[0.2], [0.9]]])
    C = torch.cdist(x[0].double(), y[0].double()).square()
    eps = 0.5
    plan = sinkhorn_plan(x, y, epsilon=eps, max_iter=5000, tol=1e-12)[0].double()
    delta = (C[0, 1] + C[1, 0] - C[0, 0] - C[1, 1]) / (2 * eps * C.mean())
    p = 0.5 * torch.sigmoid(delta)
    expected = torch.stack([torch.stack([p, 0.5 - p]), torch.stack([0.5 - p, p])])
    torch.testing.assert_close(plan, expected, atol=1e-6, rtol=0)


def test_small_epsilon_recovers_the_hand_solved_assignment():
    # 3 points to 3 points: the optimal assignment is the permutation 0->2, 1->0, 2->1
    x = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]])
    y = torch.tensor([[[5.1, 0.2], [0.1, 5.2], [0.2, -0.1]]])
    plan = sinkhorn_plan(x, y, epsilon=1e-3, max_iter=5000)
    expected = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float32) / 3
    torch.testing.assert_close(plan[0], expected, atol=1e-5, rtol=0)
    grad = barycentric_gradient(x, y, plan)
    torch.testing.assert_close(grad[0], x[0] - y[0, [2, 0, 1]], atol=1e-3, rtol=0)


def test_barycentric_gradient_is_the_transport_cost_gradient_over_the_mass():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, generator=g, requires_grad=True)
    y = torch.randn(2, 4, 3, generator=g)
    plan = torch.rand(2, 6, 4, generator=g)
    cost = 0.5 * (plan * (x[:, :, None] - y[:, None]).square().sum(-1)).sum()
    (autograd,) = torch.autograd.grad(cost, x)
    expected = autograd / plan.sum(-1, keepdim=True)
    torch.testing.assert_close(barycentric_gradient(x, y, plan), expected)


def test_the_ot_pseudo_target_moves_the_source_toward_the_target_tokens():
    g = torch.Generator().manual_seed(2)
    source = torch.randn(2, 1, 2, 4, 4, generator=g)
    target = torch.randn(2, 1, 2, 4, 4, generator=g) * 0.3 + 2.0
    grad = ot_gradient(source, target, patch_size=2, epsilon=0.05)
    moved = source - 0.5 * grad  # a half step toward the pseudo-target source − ∇_OT

    def transport_cost(a):
        ta, tb = patch_tokens(a, 2), patch_tokens(target, 2)
        plan = sinkhorn_plan(ta, tb, epsilon=0.05)
        return float((plan * torch.cdist(ta, tb).square()).sum())

    assert transport_cost(moved) < 0.5 * transport_cost(source)
    assert transport_cost(source - grad) < 0.05 * transport_cost(source)


def test_relativistic_losses_match_their_formulas():
    real, fake = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    sp = lambda v: torch.log1p(torch.exp(v))  # noqa: E731
    torch.testing.assert_close(relativistic_critic_loss(real, fake), sp(fake - real).mean())
    torch.testing.assert_close(relativistic_generator_loss(real, fake), sp(real - fake).mean())
    # the critic's loss falls as the real logits rise above the fakes, the generator's rises
    assert relativistic_critic_loss(real + 1, fake) < relativistic_critic_loss(real, fake)
    assert relativistic_generator_loss(real + 1, fake) > relativistic_generator_loss(real, fake)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: relativistic_critic_loss(torch.zeros(3), torch.zeros(2)), "paired"),
        (
            lambda: barycentric_gradient(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 2)),
            "zero mass",
        ),
        (
            lambda: barycentric_gradient(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2, 2)),
            "share B and D",
        ),
        (lambda: patch_tokens(torch.zeros(1, 1, 2, 6, 6), 4), "patch_size"),
        (lambda: patch_tokens(torch.zeros(1, 6, 6), 2), "video batch"),
        (lambda: sinkhorn_plan(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), epsilon=0.0), "ot_epsilon"),
        (
            lambda: ot_gradient(torch.zeros(1, 1, 1, 4, 4), torch.zeros(1, 1, 2, 4, 4), patch_size=2),
            "one shape",
        ),
    ],
)
def test_bad_inputs_are_rejected_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_critic_scores_clips_with_the_label_projection():
    torch.manual_seed(0)
    critic = VideoCritic(1, width=4, depth=2)
    video = torch.randn(2, 1, 3, 8, 8)
    labels = torch.tensor([[1, 2], [3, 4]])
    null = torch.full((2, 2), critic.null_label)
    assert critic(video, labels).shape == (2,)
    torch.testing.assert_close(critic(video, null), critic(video))  # the null label projects to 0
    assert not torch.allclose(critic(video, labels), critic(video))
