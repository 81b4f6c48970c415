"""ConvNet shapes and the random-network sampler: deterministic, fresh per draw, frozen."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_distill.dataset_distillation import ConvNet, ConvNetSpec, random_network, reset_parameters


@pytest.mark.parametrize("size,depth,feature", [(8, 3, 1), (16, 3, 2), (32, 3, 4), (28, 3, 3)])
def test_convnet_embedding_size_follows_the_poolings(size, depth, feature):
    net = ConvNet(in_channels=1, image_size=size, width=8, depth=depth)
    x = torch.zeros(2, 1, size, size)
    assert net.embed(x).shape == (2, 8 * feature * feature)
    assert net(x).shape == (2, 10)


def test_convnet_default_is_instance_norm_relu_avgpool_width_128_depth_3():
    net = ConvNet()
    kinds = [type(m) for m in net.features]
    assert kinds == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    norm = net.features[1]
    assert norm.num_groups == norm.num_channels == 128  # one group per channel = instance norm
    assert net.activation_paths == ("features.2", "features.6", "features.10")


def test_spec_round_trip_and_validation():
    spec = ConvNetSpec(in_channels=1, image_size=(16, 16), width=32, depth=2, norm="batch")
    assert ConvNetSpec.from_dict(spec.to_dict()) == spec
    assert ConvNet.from_spec(spec).spec == spec
    with pytest.raises(ValueError, match="at least 16"):
        ConvNetSpec(image_size=(8, 8), depth=4)
    with pytest.raises(ValueError, match="norm"):
        ConvNetSpec(norm="weird")
    with pytest.raises(ValueError, match="Unknown ConvNetSpec keys"):
        ConvNetSpec.from_dict({"widht": 3})


def test_random_network_is_a_function_of_the_generator_and_frozen():
    spec = ConvNetSpec(in_channels=1, image_size=(8, 8), width=8, depth=2)
    gen = torch.Generator().manual_seed(0)
    first, second = random_network(spec, gen), random_network(spec, gen)
    again = random_network(spec, torch.Generator().manual_seed(0))
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(first.features[0].weight, second.features[0].weight)
    assert all(not p.requires_grad for p in first.parameters())


def test_reset_parameters_draws_pytorch_default_ranges():
    net = ConvNet(in_channels=3, image_size=8, width=16, depth=2)
    reset_parameters(net, torch.Generator().manual_seed(1))
    conv = net.features[4]  # second conv: fan_in 16 * 9
    bound = 1.0 / math.sqrt(16 * 9)  # kaiming_uniform(a=sqrt(5)) and bias share this bound
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert conv.bias.abs().max() <= bound
    assert torch.equal(net.features[1].weight, torch.ones(16))
    with pytest.raises(TypeError, match="does not know"):
        reset_parameters(nn.Sequential(nn.Embedding(3, 2)))
