"""The training order of a data module must not depend on the global random state.

DDP re-seeds the global generator at setup (Lightning's ``reset_seed``), after the model was built
from it, so a loader that draws its order from the global state (``DataLoader(shuffle=True)``: a
``RandomSampler`` seeded at ``iter``) trains on other batches under DDP than in one process. That
made LiMA fail the matrix's DDP same-batch check (docs/strategies.md); these tests catch it in
seconds instead of a matrix run.
"""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.lidar import SyntheticLidarDataModule, SyntheticSequenceDataModule

TINY = dict(
    num_scenes=3,
    val_scenes=1,
    test_scenes=1,
    beams=8,
    azimuth_steps=192,
    image_size=(32, 64),
    num_cameras=4,
    horizontal_fov_deg=110.0,
    batch_size=2,
    seed=0,
)


def _order(loader, epoch: int = 0) -> list[tuple[int, int]]:
    """(scene, frame) of every training sample in the order the loader serves them."""
    loader.sampler.set_epoch(epoch) if hasattr(loader.sampler, "set_epoch") else None
    return [(int(s), int(f)) for batch in loader for s, f in zip(batch["scene"], batch["frame"])]


@pytest.mark.parametrize(
    "cls, extra",
    [
        (SyntheticSequenceDataModule, {"history": 2, "num_frames": 4}),
        (SyntheticLidarDataModule, {"num_frames": 2}),
    ],
)
def test_training_order_ignores_the_global_random_state(cls, extra):
    dm = cls(**TINY, **extra)
    dm.setup("fit")
    torch.manual_seed(0)
    first = dm.train_dataloader()
    torch.rand(1000)  # what building a model between seeding and the first batch does
    reference = _order(first)
    torch.manual_seed(0)  # what DDP's reset_seed does: the same run seed, another global state
    second = dm.train_dataloader()
    assert _order(second) == reference
    torch.rand(7)
    assert _order(second) == reference, "the order depends on the global state at `iter`"
    assert sorted(reference) == sorted(_order(dm.train_dataloader(), epoch=1))  # a permutation each epoch
    assert _order(second, epoch=1) != reference
    assert "collate" in type(dm).collate_samples.__name__
    assert set(next(iter(second))) >= ({"past_images", "past_pose"} if "history" in extra else {"points"})
