"""CT toolkit: projector vs scikit-image, adjoint identity, FBP, phantoms, DGR parts and losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import iradon, radon

from lightning_distill.data.ct import SparseViewCTDataModule
from lightning_distill.losses.radiance import (
    dct2,
    dct_band_mask,
    focal_frequency_loss,
    latent_cosine_loss,
    smooth_l1_pixel_loss,
    supervised_contrastive_loss,
)
from lightning_distill.radiance.ct import (
    filtered_back_projection,
    radon_backward,
    radon_forward,
    random_ellipses,
    shepp_logan,
    skimage_fbp,
    view_angles,
)
from lightning_distill.radiance.dgr import (
    LatentMemoryBank,
    band_contrastive_loss,
    band_embeddings,
    ct_metrics,
)


@pytest.mark.parametrize("size", [32, 33])
def test_projector_matches_skimage_radon_on_shepp_logan(size):
    # Same geometry (rotation about pixel N // 2, bilinear interpolation, unit detector bins), so the
    # two agree to float rounding; 1e-6 relative error leaves room for another float summation order.
    image = shepp_logan(size).double()
    angles = view_angles(36)
    ours = radon_forward(image[None, None], angles)[0, 0]
    ref = torch.as_tensor(radon(image.numpy(), theta=angles.numpy(), circle=True)).T
    assert ours.shape == ref.shape == (36, size)
    assert float((ours - ref).norm() / ref.norm()) < 1e-6


def test_projector_of_a_centred_disc_is_its_chord_length_at_every_angle():
    size = 65
    r = torch.arange(size, dtype=torch.float64) - size // 2
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= 20.0**2).double()
    sino = radon_forward(disc[None, None], view_angles(8))[0, 0]
    chord = 2 * torch.sqrt((20.0**2 - r**2).clamp_min(0))
    inner = r.abs() <= 17  # away from the rim, where a pixelised disc and a circle differ most
    for view in sino:  # a rotation-invariant object: every view is the chord profile, to ~1 pixel
        assert float((view - chord)[inner].abs().max()) < 1.5
        assert float(view.sum()) == pytest.approx(float(disc.sum()), rel=2e-3)


def test_backprojection_is_the_exact_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 24, 24, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 10, 24, generator=g, dtype=torch.float64)
    angles = view_angles(10)
    lhs = (radon_forward(x, angles) * y).sum()
    rhs = (x * radon_backward(y, angles)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-10)


def test_projector_and_fbp_are_differentiable():
    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    sino = radon_forward(x, view_angles(6))
    filtered_back_projection(sino, view_angles(6)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fbp_matches_skimage_iradon_and_improves_with_views():
    # Our back-projection is the adjoint of bilinear rotation, scikit-image's interpolates each
    # filtered view linearly: the two differ by interpolation only (3-4% of the image norm).
    image = shepp_logan(64).double()
    errors = []
    for views in (18, 72):
        angles = view_angles(views)
        sino = radon_forward(image[None, None], angles)
        ours = filtered_back_projection(sino, angles)[0, 0]
        ref = torch.as_tensor(iradon(sino[0, 0].T.numpy(), theta=angles.numpy(), circle=True))
        assert float((ours - ref).norm() / ref.norm()) < 0.06
        torch.testing.assert_close(skimage_fbp(sino, angles)[0, 0], ref.float())
        errors.append(float((ours - image).norm() / image.norm()))
    assert errors[1] < errors[0] < 0.5


def test_phantoms_are_deterministic_in_range_and_zero_outside_the_circle():
    a, b, c = random_ellipses(32, 7), random_ellipses(32, 7), random_ellipses(32, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 1 and float(a.mean()) > 0.05
    assert float(a[0, 0]) == 0 and float(shepp_logan(32)[0, 0]) == 0
    with pytest.raises(ValueError, match="num_ellipses"):
        random_ellipses(32, 0, num_ellipses=(3, 1))


def test_bad_input_is_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="image"):
        radon_forward(torch.rand(1, 1, 8, 9), view_angles(4))
    with pytest.raises(ValueError, match="sinogram"):
        radon_backward(torch.rand(1, 1, 5, 8), view_angles(4))
    with pytest.raises(ValueError, match="views"):
        view_angles(0)
    with pytest.raises(ValueError, match="views"):
        SparseViewCTDataModule(views=0)
    with pytest.raises(ValueError, match="photons"):
        SparseViewCTDataModule(photons=-1.0)


def test_data_module_is_deterministic_and_sparse_fbp_is_worse_than_dense():
    kwargs = dict(size=32, views=9, num_train=3, num_val=2, num_test=3, seed=1)
    one, two = SparseViewCTDataModule(**kwargs), SparseViewCTDataModule(**kwargs)
    one.setup(), two.setup()
    for x, y in zip(one.splits["test"].tensors, two.splits["test"].tensors):
        assert torch.equal(x, y)
    sparse, dense, target = one.splits["test"].tensors
    assert one.dense_views == 18
    torch.testing.assert_close(target[-1, 0], shepp_logan(32))
    assert float(ct_metrics(dense, target)["psnr"]) > float(ct_metrics(sparse, target)["psnr"])


# ----------------------------------------------------------------------------------------- losses


def test_smooth_l1_and_focal_frequency_match_direct_formulas():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)
    d = (pred - target).abs()
    torch.testing.assert_close(
        smooth_l1_pixel_loss(pred, target), torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    )
    # focal frequency: a naive DFT with explicit sums, per-image max normalisation
    n = 4
    k = torch.arange(n, dtype=torch.float64)
    w = torch.exp(-2j * math.pi * k[:, None] * k[None, :] / n) / math.sqrt(n)
    expected = []
    for i in range(2):
        diff = w @ (pred[i, 0].double() - target[i, 0].double()).to(torch.complex128) @ w.T
        dist = diff.abs() ** 2
        weight = diff.abs() / diff.abs().max()
        expected.append((weight * dist).mean())
    torch.testing.assert_close(
        focal_frequency_loss(pred, target, reduction="none"),
        torch.stack(expected).float(),
        rtol=1e-5,
        atol=1e-7,
    )


def test_focal_frequency_weight_is_detached():
    pred, target = torch.rand(1, 1, 4, 4, requires_grad=True), torch.rand(1, 1, 4, 4)
    focal_frequency_loss(pred, target).backward()
    # with the weight detached, the gradient is 2 w · diff mapped back: compare with the constant-weight loss
    diff = torch.fft.fft2(pred.detach() - target, norm="ortho")
    weight = diff.abs() / diff.abs().max()
    p2 = pred.detach().clone().requires_grad_(True)
    d2 = torch.fft.fft2(p2 - target, norm="ortho")
    (weight * d2.abs() ** 2).mean().backward()
    torch.testing.assert_close(pred.grad, p2.grad)


def test_latent_cosine_uses_the_leading_half_of_the_channels_and_detaches_the_teacher():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, 3, 3, generator=g, requires_grad=True)
    t = torch.randn(2, 6, 3, 3, generator=g, requires_grad=True)
    loss = latent_cosine_loss(s, t)
    a, b = s[:, :3].detach(), t[:, :3].detach()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(loss, (1 - cos).mean())
    loss.backward()
    assert t.grad is None and float(s.grad[:, 3:].abs().sum()) == 0 and float(s.grad[:, :3].abs().sum()) > 0
    with pytest.raises(ValueError, match="channel_ratio"):
        latent_cosine_loss(s, t, channel_ratio=0.1)


def test_supervised_contrastive_loss_matches_a_loop_over_anchors():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    labels = torch.tensor([1, 2, 1, 2, 0, 0, 3])  # the last anchor has no positive
    tau = 0.1
    per = []
    for i in range(7):
        pos = [p for p in range(7) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(7) if a != i)
        per.append(-np.mean([float(z[i] @ z[p]) / tau - math.log(denom) for p in pos]))
    got = supervised_contrastive_loss(z, labels, temperature=tau)
    assert float(got) == pytest.approx(float(np.mean(per)), rel=1e-5)
    with pytest.raises(ValueError, match="labels"):
        supervised_contrastive_loss(z, labels[:3])
    with pytest.raises(ValueError, match="positive"):
        supervised_contrastive_loss(z[:3], torch.tensor([0, 1, 2]))


def test_dct2_matches_scipy_unnormalised_dct_and_band_mask_is_the_square_ring():
    from scipy.fft import dctn

    x = torch.rand(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(
        dct2(x).double(), torch.as_tensor(dctn(x.numpy(), type=2, axes=(-2, -1))), rtol=1e-5, atol=1e-5
    )
    mask = dct_band_mask(10, 0.1, 0.6)
    i, j = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    torch.testing.assert_close(mask, (torch.maximum(i, j) > 1) & (torch.maximum(i, j) <= 6))
    with pytest.raises(ValueError, match="band"):
        dct_band_mask(10, 0.6, 0.1)


def test_band_contrastive_loss_is_zero_until_the_memory_is_full_then_supcon():
    g = torch.Generator().manual_seed(0)
    memory = LatentMemoryBank(length=4)
    s, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    assert float(band_contrastive_loss(s, t, memory)) == 0 and int(memory.filled) == 2
    band_contrastive_loss(s, t, memory)
    assert memory.is_full
    bank = memory.bank.clone()
    s2 = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    loss = band_contrastive_loss(s2, t, memory)
    es, et = band_embeddings(s2.detach()), band_embeddings(t)
    labels = torch.tensor([1, 2, 1, 2, 0, 0, 0, 0])
    expected = supervised_contrastive_loss(torch.cat([es, et, bank]), labels, temperature=0.07)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert s2.grad is not None and float(s2.grad.abs().sum()) > 0
    state = memory.state_dict()
    fresh = LatentMemoryBank(length=4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.bank, memory.bank)
    assert fresh.is_full
