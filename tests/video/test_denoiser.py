"""The video teacher: trained on first use, cached, loaded unchanged; bad settings rejected."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.video import MovingGlyphsDataModule
from lightning_distill.video import LabelConditionedVideoUNet, tiny_video_unet, trained_video_denoiser


def _data():
    return MovingGlyphsDataModule(
        num_train=8, num_val=2, num_test=2, size=8, num_frames=2, glyph_size=4, batch_size=4
    )


def test_teacher_is_trained_once_then_loaded_from_the_cache(tmp_path):
    first = trained_video_denoiser(
        LabelConditionedVideoUNet(tiny_video_unet(sample_size=8)), _data(), steps=2, cache_dir=str(tmp_path)
    )
    assert first.training_record["last_loss"] > 0 and not first.training
    again = trained_video_denoiser(
        LabelConditionedVideoUNet(tiny_video_unet(sample_size=8)), _data(), steps=2, cache_dir=str(tmp_path)
    )
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kwargs, name", [({"steps": 0}, "steps"), ({"label_dropout": 1.0}, "label_dropout")])
def test_bad_teacher_settings_are_rejected(kwargs, name, tmp_path):
    with pytest.raises(ValueError, match=name):
        trained_video_denoiser(
            LabelConditionedVideoUNet(tiny_video_unet(sample_size=8)),
            _data(),
            cache_dir=str(tmp_path),
            **kwargs,
        )
    with pytest.raises(ValueError, match="checkpoint"):
        trained_video_denoiser(LabelConditionedVideoUNet(tiny_video_unet(sample_size=8)))
