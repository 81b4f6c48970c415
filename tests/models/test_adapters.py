import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from lightning_distill.models.adapters import ConvAdapter, LinearAdapter, MLPAdapter, build_adapter


def test_linear_adapter_matches_affine_map_on_last_dim():
    torch.manual_seed(0)
    adapter = LinearAdapter(6, 10)
    x = torch.randn(2, 3, 6)
    expected = torch.einsum("bnc,oc->bno", x, adapter.proj.weight) + adapter.proj.bias
    assert_close(adapter(x), expected)


def test_conv_adapter_matches_conv_then_batch_norm_in_training_mode():
    torch.manual_seed(0)
    adapter = ConvAdapter(4, 7)
    x = torch.randn(3, 4, 5, 5)
    y = F.conv2d(x, adapter.conv.weight)  # 1x1, no bias
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (y - mean) / torch.sqrt(var + adapter.norm.eps)
    expected = expected * adapter.norm.weight.view(1, -1, 1, 1) + adapter.norm.bias.view(1, -1, 1, 1)
    assert_close(adapter(x), expected)
    assert adapter.conv.bias is None


def test_conv_adapter_without_norm_is_a_plain_conv_with_bias():
    torch.manual_seed(0)
    adapter = ConvAdapter(4, 7, kernel_size=3, norm=False)
    x = torch.randn(2, 4, 6, 6)
    expected = F.conv2d(x, adapter.conv.weight, adapter.conv.bias, padding=1)
    assert_close(adapter(x), expected)
    assert isinstance(adapter.norm, nn.Identity)


def test_mlp_adapter_matches_two_linear_layers_with_relu():
    torch.manual_seed(0)
    adapter = MLPAdapter(5, 9, 3)
    first, second = adapter.net[0], adapter.net[2]
    x = torch.randn(4, 5)
    expected = torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    assert_close(adapter(x), expected)


@pytest.mark.parametrize(
    ("adapter", "x"),
    [
        (LinearAdapter(6, 10), torch.randn(4, 6)),
        (ConvAdapter(4, 8), torch.randn(4, 4, 3, 3)),
        (MLPAdapter(6, 12, 10, activation="gelu"), torch.randn(4, 2, 6)),
    ],
)
def test_every_adapter_parameter_and_the_input_get_gradients(adapter, x):
    x = x.clone().requires_grad_(True)
    adapter(x).square().sum().backward()
    for name, parameter in adapter.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_adapter_owned_by_a_module_is_in_its_parameters_and_state_dict():
    class Recipe(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = nn.Conv2d(3, 4, 1)
            self.adapter = ConvAdapter(4, 8)

    recipe = Recipe()
    adapter_params = {id(p) for p in recipe.adapter.parameters()}
    assert adapter_params <= {id(p) for p in recipe.parameters()}
    assert {"adapter.conv.weight", "adapter.norm.running_mean"} <= set(recipe.state_dict())


@pytest.mark.parametrize(
    ("student", "teacher", "hidden", "cls", "out_shape"),
    [
        ((2, 16, 4, 4), (2, 64, 4, 4), None, ConvAdapter, (2, 64, 4, 4)),
        ((2, 16), (2, 32), None, LinearAdapter, (2, 32)),
        ((2, 5, 16), (2, 5, 32), None, LinearAdapter, (2, 5, 32)),
        ((2, 5, 16), (2, 5, 32), 24, MLPAdapter, (2, 5, 32)),
        ((2, 16, 4, 4), (2, 16, 4, 4), None, ConvAdapter, (2, 16, 4, 4)),
    ],
)
def test_build_adapter_picks_the_adapter_for_the_shapes(student, teacher, hidden, cls, out_shape):
    adapter = build_adapter(student, teacher, hidden_features=hidden)
    assert type(adapter) is cls
    assert adapter(torch.randn(student)).shape == out_shape


def test_build_adapter_accepts_example_tensors():
    adapter = build_adapter(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    assert adapter.conv.weight.shape == (5, 3, 1, 1)


@pytest.mark.parametrize(
    ("student", "teacher", "kwargs", "error", "match"),
    [
        ((2, 16, 4, 4), (2, 16), {}, ValueError, "same rank"),
        ((2, 16, 4, 4), (2, 16, 8, 8), {}, ValueError, "same H, W"),
        ((2, 5, 16), (2, 6, 16), {}, ValueError, "token count"),
        ((2, 1, 16, 4, 4), (2, 1, 16, 4, 4), {}, ValueError, "Supported feature shapes"),
        ((2, 16, 4, 4), (2, 8, 4, 4), {"hidden_features": 8}, ValueError, "hidden_features"),
        ("abc", (2, 3), {}, TypeError, "`student`"),
    ],
)
def test_build_adapter_rejects_bad_shapes(student, teacher, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_adapter(student, teacher, **kwargs)


def test_adapters_reject_bad_arguments():
    with pytest.raises(ValueError, match="`out_features` must be >= 1, got 0"):
        LinearAdapter(3, 0)
    with pytest.raises(TypeError, match="`in_channels` must be an int"):
        ConvAdapter(3.0, 4)
    with pytest.raises(ValueError, match="`kernel_size` must be odd"):
        ConvAdapter(3, 4, kernel_size=2)
    with pytest.raises(ValueError, match="`activation`"):
        MLPAdapter(3, 4, 5, activation="tanh")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ConvAdapter(3, 4)(torch.randn(2, 3))
