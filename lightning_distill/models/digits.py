"""The digits classifier of the toy benches: a small CNN trained on the bundled digits on first use, then cached.

Its penultimate features are what :class:`~lightning_distill.diffusion.frechet.FrechetClassifierDistance`
compares (the digits FCD of the diffusion recipes; not FID). It lives here, not in the diffusion
toolkit, because training it needs the digits data module (``models`` may import ``data``; the
diffusion toolkit may not, since ``data`` imports it).
"""

from __future__ import annotations

from torch import nn

from lightning_distill.data.images import DigitsDataModule
from lightning_distill.models.classifiers import SmallCNN
from lightning_distill.models.pretrained import trained_classifier

__all__ = ["digits_classifier"]


def digits_classifier(
    size: int = 16,
    width: int = 32,
    depth: int = 2,
    epochs: int = 30,
    seed: int = 0,
    cache_dir: str | None = None,
) -> nn.Module:
    """A :class:`~lightning_distill.models.SmallCNN` trained on the bundled digits (cached after the first call).

    Its inputs are images as :class:`~lightning_distill.data.DigitsDataModule` serves them
    (``(B, 1, size, size)``, normalised with the training set's mean and std), so a generator
    trained on that data module can be scored directly. Training goes through
    :func:`~lightning_distill.models.trained_classifier`: cached under its cache directory by a key
    of the architecture, the data settings and the training settings (not of this function's name
    or module), so every caller shares one trained classifier per setting.

    Args:
        size: image side (8, 16 or 32), the ``DigitsDataModule(size=...)`` it is trained on.
        width: channels of the first convolution.
        depth: convolution blocks.
        epochs: training epochs.
        seed: seed of the initialisation and the data order.
        cache_dir: where cached teachers live (default :func:`~lightning_distill.models.default_cache_dir`).
    """
    model = SmallCNN(in_channels=1, num_classes=10, width=width, depth=depth)
    return trained_classifier(
        model, DigitsDataModule(size=size), epochs=epochs, seed=seed, cache_dir=cache_dir
    )
