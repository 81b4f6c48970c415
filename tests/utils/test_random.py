"""counter_uniforms: stateless random numbers keyed by (seed, slot, index)."""

import torch
from torch.testing import assert_close

from lightning_distill.utils.random import counter_uniforms


def test_counter_uniforms_depend_only_on_seed_slot_and_index():
    a = counter_uniforms(1, 0, [5, 6, 7], 3)
    b = counter_uniforms(1, 0, [7, 5], 3)
    assert_close(a[[2, 0]], b, rtol=0, atol=0)
    assert not torch.equal(a, counter_uniforms(2, 0, [5, 6, 7], 3))
    assert not torch.equal(a, counter_uniforms(1, 1, [5, 6, 7], 3))
    u = counter_uniforms(0, 0, torch.arange(5000), 2)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
