"""spconv on a CPU: the backward fix, and gradients equal to a dense nn.Conv3d (float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.lidar.spconv_cpu import apply_cpu_backward_fix, import_spconv

spconv = import_spconv()


def _sparse_input(seed: int, shape=(6, 6, 6), channels: int = 3, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    dense_mask = torch.rand(batch, *shape, generator=g) < 0.3
    # spconv reads indices as a contiguous buffer; torch.nonzero(...).int() is not contiguous
    indices = torch.nonzero(dense_mask).int().contiguous()
    features = torch.randn(len(indices), channels, generator=g)
    return indices, features, list(shape), batch


def _densify(indices, features, shape, batch):
    dense = torch.zeros(batch, features.shape[1], *shape)
    b, z, y, x = indices.long().unbind(1)
    dense[b, :, z, y, x] = features
    return dense


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fix applies only without CUDA")
def test_fix_is_applied_once_and_only_without_cuda():
    import spconv.pytorch.ops as ops

    assert apply_cpu_backward_fix() is True
    first = ops.get_current_stream
    assert apply_cpu_backward_fix() is True and ops.get_current_stream is first
    assert ops.get_current_stream() == 0


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_sparse_conv_gradients_match_dense_conv3d(kind):
    indices, features, shape, batch = _sparse_input(0)
    torch.manual_seed(0)
    if kind == "subm":
        conv = spconv.SubMConv3d(3, 4, 3, padding=1, bias=False, indice_key="k")
    else:
        conv = spconv.SparseConv3d(3, 4, 2, stride=2, bias=False)
    feats = features.clone().requires_grad_(True)
    out = conv(spconv.SparseConvTensor(feats, indices, shape, batch)).dense()  # (B, C, D, H, W)
    weight = conv.weight.detach().permute(0, 4, 1, 2, 3).clone().requires_grad_(True)  # (Cout, Cin, k, k, k)
    dense_in = _densify(indices, features, shape, batch).requires_grad_(True)
    if kind == "subm":
        dense_out = F.conv3d(dense_in, weight, padding=1)
        active = _densify(indices, torch.ones(len(indices), 1), shape, batch)
        dense_out = dense_out * active  # submanifold: outputs only at the input sites
    else:
        dense_out = F.conv3d(dense_in, weight, stride=2)
    torch.testing.assert_close(out, dense_out, rtol=1e-4, atol=1e-5)

    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * upstream).sum().backward()
    (dense_out * upstream).sum().backward()
    b, z, y, x = indices.long().unbind(1)
    torch.testing.assert_close(feats.grad, dense_in.grad[b, :, z, y, x], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.grad.permute(0, 4, 1, 2, 3), weight.grad, rtol=1e-4, atol=1e-4)
