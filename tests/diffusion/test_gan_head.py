"""Tests for ``lightning_distill.diffusion.gan_head``: the discriminator head on hooked fake-score features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lightning_distill.callbacks import FeatureHooks
from lightning_distill.diffusion.denoisers import feature_path, tiny_unet
from lightning_distill.diffusion.fake_score import FakeScore
from lightning_distill.diffusion.gan_head import GANHead, discriminator_logits
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.losses.distribution_matching import gan_discriminator_loss, gan_generator_loss


@pytest.mark.parametrize("shape", [(3, 64, 4, 4), (3, 64, 1, 1), (3, 64, 7, 5), (3, 64)])
def test_head_gives_one_logit_per_sample_for_any_feature_shape(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    head = GANHead(64, hidden_channels=32)
    assert head(torch.randn(shape)).shape == (3,)


def test_head_matches_its_layers_written_out() -> None:
    torch.manual_seed(0)
    head = GANHead(8, hidden_channels=16, num_groups=4)
    x = torch.randn(2, 8, 3, 3)
    h = F.silu(
        F.group_norm(
            F.conv2d(x, head.conv.weight, head.conv.bias, padding=1), 4, head.norm.weight, head.norm.bias
        )
    )
    assert_close(head(x), F.linear(h.mean(dim=(2, 3)), head.out.weight, head.out.bias).squeeze(-1))
    assert GANHead(12).norm.num_groups == 12 and GANHead(48).norm.num_groups == 24


def test_vector_features_are_layer_normalised_not_reduced_to_signs() -> None:
    """Groups of two values would normalise to +-1 and make the logit piecewise constant."""
    torch.manual_seed(0)
    head = GANHead(64)  # 32 groups of 2 channels on 4x4 maps
    x = torch.randn(4, 64)
    h = F.conv2d(x[:, :, None, None], head.conv.weight, head.conv.bias, padding=1).flatten(1)
    expected = F.linear(F.silu(F.layer_norm(h, (64,)) * head.norm.weight + head.norm.bias), head.out.weight)
    assert_close(head(x), expected.squeeze(-1) + head.out.bias)
    nudged = head(x + 1e-2 * torch.randn(4, 64))
    assert not torch.equal(nudged, head(x))


def test_head_rejects_bad_features_and_arguments() -> None:
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        GANHead(8)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="`num_groups` must divide"):
        GANHead(8, num_groups=3)


def test_gan_losses_through_the_hooked_fake_unet_bottleneck_reach_head_fake_score_and_images() -> None:
    torch.manual_seed(0)
    teacher = tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16).requires_grad_(False)
    fake = FakeScore.copy_of(teacher, NoiseSchedule.ddpm())
    head = GANHead(64)
    path = feature_path(fake)
    assert path == "model.mid_block"
    real, generated = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8, requires_grad=True)
    t, emb = torch.zeros(2, dtype=torch.long), torch.randn(2, 3, 16)
    with FeatureHooks({"bottleneck": path}).attach(fake) as hooks:
        d_loss = gan_discriminator_loss(
            discriminator_logits(fake, head, hooks, "bottleneck", real, t, emb),
            discriminator_logits(fake, head, hooks, "bottleneck", generated.detach(), t, emb),
        )
        d_loss.backward()
        assert all(p.grad is not None for p in head.parameters())
        assert fake.model.mid_block.resnets[0].conv1.weight.grad is not None
        assert generated.grad is None
        g_loss = gan_generator_loss(discriminator_logits(fake, head, hooks, "bottleneck", generated, t, emb))
        (grad,) = torch.autograd.grad(g_loss, generated)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
