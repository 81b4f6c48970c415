"""Recover toolkit (SRe2L / CDA): BatchNorm taps against the official hook, the crop curriculum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.callbacks import FeatureHooks
from lightning_distill.dataset_distillation.recover import (
    CurriculumCrop,
    batchnorm_paths,
    bn_stat_taps,
    crop_schedule,
)
from lightning_distill.losses.dataset_distillation import bn_matching_loss


class BNNet(nn.Module):
    """conv-BN-ReLU x 2 + linear, with non-trivial running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def test_bn_taps_on_a_teacher_give_the_official_hook_value():
    net = BNNet().eval()
    paths = batchnorm_paths(net)
    assert paths == ["bn1", "bn2"]
    x = torch.randn(5, 1, 6, 6, requires_grad=True)
    with FeatureHooks(bn_stat_taps(paths)).attach(net) as hooks:
        net(x)
        stats = [hooks["bn0"], hooks["bn1"]]
    loss = bn_matching_loss(
        stats, [(net.bn1.running_mean, net.bn1.running_var), (net.bn2.running_mean, net.bn2.running_var)]
    )

    # Independent computation: the official BNFeatureHook, written out on the conv outputs.
    def r_feature(inp, bn):
        nch = inp.shape[1]
        mean = inp.mean([0, 2, 3])
        var = inp.permute(1, 0, 2, 3).reshape(nch, -1).var(1, unbiased=False)
        return torch.norm(bn.running_var - var, 2) + torch.norm(bn.running_mean - mean, 2)

    a1 = net.conv1(x)
    a2 = net.conv2(F.relu(net.bn1(a1)))
    expected = 10.0 * r_feature(a1, net.bn1) + r_feature(a2, net.bn2)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("milestone", [1.0, 0.5])
def test_cosine_curriculum_matches_the_closed_form(milestone):
    n = 40
    schedule = crop_schedule("cosine", n, milestone=milestone)
    for t in range(n + 5):
        expected = 0.08
        if t < milestone * n:  # the official formula
            expected = 0.08 + (1.0 - 0.08) * (1 + math.cos(math.pi * t / (milestone * n))) / 2
        assert schedule.value_at(t) == pytest.approx(expected, abs=1e-12)
    sre2l = crop_schedule("none", n)
    assert {sre2l.value_at(t) for t in range(n)} == {0.08}
    step = crop_schedule("step", n, milestone=0.5)
    assert step.value_at(19) == 1.0 and step.value_at(20) == 0.08
    assert crop_schedule("linear", n).value_at(10) == pytest.approx(0.08 + 0.92 * 0.75)


def test_curriculum_crop_is_differentiable_and_whole_at_scale_one():
    crop = CurriculumCrop((8, 8), min_scale=1.0, jitter=0, flip_p=0.0)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = crop(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    crop.min_scale = 0.08
    out = crop(x, torch.Generator().manual_seed(1))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="min_scale"):
        crop.min_scale = 0.0
