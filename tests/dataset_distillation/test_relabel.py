"""Relabel caches (SRe2L / CDA): the same crops and labels replayed, deterministic students."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation.relabel import (
    RelabelCache,
    build_relabel_cache,
    evaluate_relabel_cache,
)
from lightning_distill.utils.augment import RandomResizedCropFlip


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


def test_relabel_cache_replays_the_same_crops_and_labels(tmp_path):
    teacher = BNNet().eval()
    images = torch.randn(7, 1, 8, 8)
    crop = RandomResizedCropFlip(8, flip_p=0.5)
    for mix in ("none", "cutmix", "mixup"):
        cache = build_relabel_cache(teacher, images, epochs=3, batch_size=3, crop=crop, mix=mix, seed=5)
        assert cache.num_batches == 3 and cache.logits.dtype == torch.float16
        assert cache.label_bytes == 3 * 7 * 10 * 2
        for e in range(3):
            assert sorted(cache.order[e].tolist()) == list(range(7))  # every image once per epoch
        loaded = RelabelCache.load(cache.save(tmp_path / f"{mix}.pt"))
        for e, b in ((0, 0), (2, 2), (4, 1)):  # epoch 4 replays stored epoch 1
            x, soft, index = loaded.batch(images, e, b)
            pos = cache.positions(b)
            # The replayed input is the stored crop of the stored images, as an independent computation.
            manual = crop.apply(images[cache.order[e % 3, pos]], cache.crops[e % 3, pos].float())
            if mix == "mixup":
                lam = float(cache.lam[e % 3, b])
                manual = lam * manual + (1 - lam) * manual[cache.partner[e % 3, pos]]
            elif mix == "cutmix":
                top, left, bottom, right = cache.box[e % 3, b].tolist()
                partner = manual[cache.partner[e % 3, pos]]
                manual[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
            torch.testing.assert_close(x, manual)
            # The stored labels are the teacher's logits on exactly that input, in fp16.
            torch.testing.assert_close(soft, teacher(x).half().float())
            assert torch.equal(index, cache.order[e % 3, pos])
    first, again = (
        build_relabel_cache(teacher, images, epochs=3, batch_size=3, crop=crop, mix="cutmix", seed=5)
        for _ in range(2)
    )
    assert torch.equal(again.crops, first.crops) and torch.equal(again.logits, first.logits)
    assert torch.equal(again.box, first.box) and torch.equal(again.partner, first.partner)


def test_relabel_cache_trains_a_student_deterministically():
    dm = DigitsDataModule()
    teacher = BNNet().eval()
    from lightning_distill.dataset_distillation import random_real_subset

    x, y = random_real_subset(dm, 1, seed=0)
    cache = build_relabel_cache(teacher, x, epochs=2, batch_size=5, mix="cutmix")
    model_fn = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # noqa: E731
    a = evaluate_relabel_cache(x, y, cache, dm, model_fn, epochs=3, seeds=(0,))
    b = evaluate_relabel_cache(x, y, cache, dm, model_fn, epochs=3, seeds=(0,))
    assert a.accuracies == b.accuracies and 0.0 <= a.mean <= 1.0
