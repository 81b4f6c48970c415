"""trained_denoiser's label dropout: the null label reaches a share of the batches, existing cache keys are kept."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data import GMMDataModule
from lightning_distill.diffusion import MLPDenoiser, ddpm_schedule
from lightning_distill.diffusion.teachers import trained_denoiser

K = 8


def _data() -> GMMDataModule:
    return GMMDataModule(preset="ring", num_classes=K, conditional=True, num_train=512, batch_size=256)


class Spy(MLPDenoiser):
    """An MLPDenoiser that records the class labels it is called with."""

    def __init__(self) -> None:
        super().__init__(dim=2, hidden=8, depth=1, num_classes=K)
        self.seen: list[torch.Tensor] = []

    def forward(self, sample, timestep, class_labels=None):
        self.seen.append(class_labels.clone())
        return super().forward(sample, timestep, class_labels)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_share_label_dropout_of_the_labels_becomes_the_null_label(tmp_path, dropout: float) -> None:
    model = Spy()
    trained_denoiser(
        model,
        _data(),
        ddpm_schedule(),
        steps=4,
        warmup=1,
        class_conditional=True,
        label_dropout=dropout,
        cache_dir=str(tmp_path),
    )
    labels = torch.cat(model.seen)
    assert labels.numel() == 4 * 256
    share = float((labels == K).float().mean())  # K is the null label of an MLPDenoiser with K classes
    if dropout == 0:
        assert share == 0.0
    else:
        assert 0.4 < share < 0.6, share
        assert set(labels[labels != K].tolist()) <= set(range(K))


def test_no_dropout_keeps_the_cache_key_of_existing_teachers(tmp_path) -> None:
    kwargs = dict(steps=2, warmup=1, class_conditional=True, cache_dir=str(tmp_path))
    trained_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K), _data(), ddpm_schedule(), **kwargs)
    again = trained_denoiser(
        MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K),
        _data(),
        ddpm_schedule(),
        label_dropout=0.0,
        **kwargs,
    )
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    assert "label_dropout" not in again.training_record
    dropped = trained_denoiser(
        MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K),
        _data(),
        ddpm_schedule(),
        label_dropout=0.1,
        **kwargs,
    )
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2
    assert dropped.training_record["label_dropout"] == 0.1


@pytest.mark.parametrize(
    ("model", "conditional", "dropout"),
    [
        (MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K), True, -0.1),
        (MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K), True, 1.0),
        (MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=K), False, 0.1),
        (MLPDenoiser(dim=2, hidden=8, depth=1), True, 0.1),
    ],
)
def test_bad_label_dropout_is_rejected(tmp_path, model, conditional: bool, dropout: float) -> None:
    with pytest.raises(ValueError, match="label_dropout"):
        trained_denoiser(
            model,
            _data(),
            ddpm_schedule(),
            steps=1,
            class_conditional=conditional,
            label_dropout=dropout,
            cache_dir=str(tmp_path),
        )
