"""Tests for ``lightning_distill.diffusion.guidance`` and the toy denoisers it calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lightning_distill.diffusion.denoisers import MLPDenoiser, feature_path, tiny_unet
from lightning_distill.diffusion.guidance import cfg, drop_condition, guided_output, model_output


class _Counting(nn.Module):
    """Wraps a model and counts forward calls and their batch sizes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[int] = []

    def forward(self, *args, **kwargs):
        self.batches.append(args[0].shape[0])
        return self.model(*args, **kwargs)


def test_cfg_is_uncond_plus_scale_times_difference() -> None:
    cond, uncond = torch.randn(3, 4), torch.randn(3, 4)
    assert_close(cfg(cond, uncond, 4.5), uncond + 4.5 * (cond - uncond))
    assert_close(cfg(cond, uncond, 1.0), cond)
    assert_close(cfg(cond, uncond, 0.0), uncond)
    scales = torch.tensor([1.0, 2.0, 3.0])
    assert_close(cfg(cond, uncond, scales), uncond + scales[:, None] * (cond - uncond))
    with pytest.raises(ValueError, match="same shape"):
        cfg(cond, uncond[:2], 2.0)


def test_model_output_calls_a_class_conditional_unet2dmodel() -> None:
    torch.manual_seed(0)
    unet = tiny_unet(sample_size=8, in_channels=1, num_classes=10).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 700]), torch.tensor([3, 10])
    out = model_output(unet, x, t, y)
    assert_close(out, unet(x, t, class_labels=y).sample)
    assert not torch.allclose(out, model_output(unet, x, t, torch.tensor([4, 10])))


def test_model_output_calls_a_unet2dconditionmodel_with_tensor_or_mapping() -> None:
    torch.manual_seed(0)
    unet = tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16).eval()
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.randn(2, 3, 16)
    reference = unet(x, t, encoder_hidden_states=e).sample
    assert_close(model_output(unet, x, t, e), reference)
    assert_close(model_output(unet, x, t, {"encoder_hidden_states": e}), reference)


def test_model_output_unwraps_tuples_and_checks_the_shape() -> None:
    class TupleModel(nn.Module):
        def forward(self, x, t):
            return (2 * x, "extra")

    class Wide(nn.Module):
        def forward(self, x, t):
            return torch.cat([x, x], dim=1)

    x = torch.randn(2, 3)
    assert_close(model_output(TupleModel(), x, 0), 2 * x)
    with pytest.raises(ValueError, match="learned variance"):
        model_output(Wide(), x, 0)
    with pytest.raises(TypeError, match="`cond` must be None"):
        model_output(TupleModel(), x, 0, cond=[1, 2])  # type: ignore[arg-type]


def test_guided_output_batches_cond_and_uncond_in_one_forward() -> None:
    torch.manual_seed(0)
    unet = _Counting(tiny_unet(sample_size=8, in_channels=4, cross_attention_dim=16).eval())
    x, t, e, null = (
        torch.randn(3, 4, 8, 8),
        torch.tensor([5, 300, 999]),
        torch.randn(3, 3, 16),
        torch.randn(1, 3, 16),
    )
    guided = guided_output(unet, x, t, e, null, 3.0)
    assert unet.batches == [6]
    cond_out = unet(x, t, e).sample
    uncond_out = unet(x, t, null.expand(3, -1, -1)).sample
    assert_close(guided, uncond_out + 3.0 * (cond_out - uncond_out), atol=1e-5, rtol=1e-5)
    unet.batches.clear()
    assert_close(guided_output(unet, x, t, e, null, 1.0), cond_out)
    assert unet.batches == [3]


def test_guided_output_with_mapping_conditions_and_class_labels() -> None:
    torch.manual_seed(0)
    model = MLPDenoiser(dim=2, hidden=16, depth=2, num_classes=3)
    x, t = torch.randn(4, 2), torch.tensor(400)
    y, null = torch.tensor([0, 1, 2, 0]), torch.full((1,), 3)
    guided = guided_output(model, x, t, {"class_labels": y}, {"class_labels": null}, 2.0)
    reference = cfg(model(x, t, y), model(x, t, null.expand(4)), 2.0)
    assert_close(guided, reference, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="needs both `cond` and `null_cond`"):
        guided_output(model, x, t, y, None, 2.0)
    with pytest.raises(ValueError, match="same keys"):
        guided_output(model, x, t, {"class_labels": y}, {"labels": null}, 2.0)


def test_drop_condition_replaces_a_share_of_samples_with_the_null_condition() -> None:
    g = torch.Generator().manual_seed(0)
    emb, null = torch.randn(4000, 2, 3), torch.zeros(1, 2, 3)
    dropped = drop_condition(emb, null, 0.1, generator=g)
    is_null = (dropped == 0).flatten(1).all(dim=1)
    assert 0.08 < is_null.float().mean() < 0.12
    assert torch.equal(dropped[~is_null], emb[~is_null])
    mapping = drop_condition({"a": torch.arange(8)}, {"a": torch.full((8,), -1)}, 1.0)
    assert mapping["a"].tolist() == [-1] * 8
    with pytest.raises(ValueError, match="probability"):
        drop_condition(emb, null, 1.5)


def test_mlp_denoiser_defaults_to_the_null_label_and_refuses_labels_when_unconditional() -> None:
    torch.manual_seed(0)
    model = MLPDenoiser(dim=3, hidden=16, depth=2, num_classes=5)
    x, t = torch.randn(4, 3), torch.tensor([1, 2, 3, 4])
    assert model.null_label == 5
    assert_close(model(x, t), model(x, t, torch.full((4,), 5)))
    assert_close(model(x, torch.tensor(7)), model(x, torch.full((4,), 7)))
    with pytest.raises(ValueError, match="unconditional MLPDenoiser"):
        MLPDenoiser(dim=3, hidden=8, depth=1)(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        model(torch.randn(4, 2), t)


def test_feature_path_names_the_bottleneck() -> None:
    assert feature_path(tiny_unet()) == "mid_block"
    assert feature_path(MLPDenoiser(depth=2)) == "blocks.1"
    with pytest.raises(ValueError, match="No known bottleneck"):
        feature_path(nn.Linear(2, 2))
