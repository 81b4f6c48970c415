"""DistillDIFT's similarity-map loss against a naive loop, hand values, edge cases and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_distill.losses.correspondence import cosine_similarity_maps, similarity_distillation_loss


def naive_loss(ss, st, ts, tt, temperature):
    """Per (b, n): build both rows of cosines one by one, softmax, cross-entropy; average."""
    total, count = 0.0, 0
    for b in range(ss.shape[0]):
        for n in range(ss.shape[1]):
            s_row = [
                torch.nn.functional.cosine_similarity(ss[b, n], st[b, m], dim=0) / temperature
                for m in range(st.shape[1])
            ]
            t_row = [
                torch.nn.functional.cosine_similarity(ts[b, n], tt[b, m], dim=0) / temperature
                for m in range(tt.shape[1])
            ]
            s_row, t_row = torch.stack(s_row).double(), torch.stack(t_row).double()
            p = torch.exp(t_row - torch.logsumexp(t_row, 0))
            log_q = s_row - torch.logsumexp(s_row, 0)
            total = total - (p * log_q).sum()
            count += 1
    return total / count


def test_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    ss, st = torch.randn(2, 5, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    ts, tt = torch.randn(2, 5, 7, generator=g), torch.randn(2, 6, 7, generator=g)
    for tau in (0.01, 0.5):
        got = similarity_distillation_loss(ss, st, ts, tt, temperature=tau)
        torch.testing.assert_close(got.double(), naive_loss(ss, st, ts, tt, tau), rtol=1e-4, atol=1e-4)


def test_hand_value_two_targets():
    # one source, two targets; student cosines (1, 0), teacher cosines (0, 1), tau = 1
    ss = torch.tensor([[[1.0, 0.0]]])
    st = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    ts = torch.tensor([[[0.0, 1.0]]])
    tt = st.clone()
    p = torch.tensor([1.0, math.e]) / (1 + math.e)  # softmax(0, 1)
    log_q = torch.tensor([1.0, 0.0]) - math.log(math.e + 1)  # log softmax(1, 0)
    expected = -(p * log_q).sum()
    torch.testing.assert_close(similarity_distillation_loss(ss, st, ts, tt, temperature=1.0), expected)


def test_loss_is_the_teacher_entropy_when_student_equals_teacher_and_grows_otherwise():
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(1, 4, 3, generator=g), torch.randn(1, 4, 3, generator=g)
    same = similarity_distillation_loss(f_s, f_t, f_s, f_t, temperature=0.1, reduction="none")
    p = torch.softmax(cosine_similarity_maps(f_s, f_t) / 0.1, -1)
    torch.testing.assert_close(same, -(p * p.log()).sum(-1))
    other = similarity_distillation_loss(f_s, f_t.flip(1), f_s, f_t, temperature=0.1, reduction="none")
    assert (other >= same - 1e-6).all() and (other > same + 1e-3).any()


def test_reductions_and_scale_invariance():
    g = torch.Generator().manual_seed(2)
    a, b, c, d = (torch.randn(2, 3, 4, generator=g) for _ in range(4))
    rows = similarity_distillation_loss(a, b, c, d, reduction="none")
    assert rows.shape == (2, 3)
    torch.testing.assert_close(similarity_distillation_loss(a, b, c, d, reduction="sum"), rows.sum())
    # cosine: scaling the features changes nothing
    torch.testing.assert_close(similarity_distillation_loss(3 * a, b, c, 5 * d), rows.mean())


def test_gradient_reaches_student_never_teacher():
    a, b = torch.randn(1, 3, 4, requires_grad=True), torch.randn(1, 3, 4, requires_grad=True)
    c, d = torch.randn(1, 3, 5, requires_grad=True), torch.randn(1, 3, 5, requires_grad=True)
    similarity_distillation_loss(a, b, c, d).backward()
    assert a.grad is not None and b.grad is not None and c.grad is None and d.grad is None


def test_bad_input_is_rejected():
    x = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="temperature"):
        similarity_distillation_loss(x, x, x, x, temperature=0.0)
    with pytest.raises(ValueError, match="same locations"):
        similarity_distillation_loss(x, x, torch.randn(1, 2, 4), x)
    with pytest.raises(ValueError, match="3 dimensions"):
        similarity_distillation_loss(x[0], x, x, x)
    with pytest.raises(ValueError, match="channel"):
        cosine_similarity_maps(x, torch.randn(1, 3, 5))
