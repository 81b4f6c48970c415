"""LR / bicubic / SR / teacher / HR pictures, logged each validation."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_distill.callbacks.super_resolution_pictures import SuperResolutionPictures, sr_picture
from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.models.super_resolution import IMDN, ResidualSRNet
from lightning_distill.recipes.imdn import IMDNRecipe
from tests.conftest import quiet_trainer_kwargs


def test_sr_picture_puts_lr_bicubic_outputs_and_hr_side_by_side():
    hr = torch.rand(2, 3, 8, 8)
    picture = sr_picture(hr[:, :, ::2, ::2], hr, {"student": hr, "teacher": hr}, gap=1)
    assert picture.shape == (2 * 8 + 1, 5 * 8 + 4, 3)
    torch.testing.assert_close(
        torch.from_numpy(picture[:8, -8:]).float(), (hr[0].permute(1, 2, 0) * 255).round()
    )
    with pytest.raises(ValueError, match="shape"):
        sr_picture(hr[:, :, ::2, ::2], hr, {"student": hr[:, :, :4]})


class _ImageLogger(CSVLogger):
    def __init__(self, root):
        super().__init__(root)
        self.images = []

    def log_image(self, key, images, step):
        self.images.append((key, images[0].shape, step))


def test_pictures_are_logged_at_each_validation(tmp_path):
    torch.manual_seed(0)
    recipe = IMDNRecipe(student=IMDN(2, channels=8, num_blocks=1), teacher=ResidualSRNet(2, 8, 1))
    logger = _ImageLogger(tmp_path)
    callback = SuperResolutionPictures(num_images=2)
    kwargs = quiet_trainer_kwargs(
        max_epochs=2, limit_train_batches=1, limit_val_batches=1, callbacks=[callback]
    )
    kwargs["logger"] = logger
    dm = SuperResolutionDataModule(scale=2, hr_size=16, patches_per_image=2, test_size=32, batch_size=4)
    L.Trainer(**kwargs).fit(recipe, datamodule=dm)
    assert [key for key, _, _ in logger.images] == ["val/sr", "val/sr"]
    assert logger.images[0][1] == (2 * 16 + 2, 5 * 16 + 8, 3)


def test_a_module_with_sr_outputs_chooses_the_columns(tmp_path):
    torch.manual_seed(0)

    class Sampled(IMDNRecipe):
        def sr_outputs(self, lr):
            up = torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")
            return {"one step": up, "teacher, 8 steps": up.flip(-1)}

    recipe = Sampled(student=IMDN(2, channels=8, num_blocks=1), teacher=ResidualSRNet(2, 8, 1))
    logger = _ImageLogger(tmp_path)
    callback = SuperResolutionPictures(num_images=2)
    kwargs = quiet_trainer_kwargs(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[callback]
    )
    kwargs["logger"] = logger
    dm = SuperResolutionDataModule(scale=2, hr_size=16, patches_per_image=2, test_size=32, batch_size=4)
    L.Trainer(**kwargs).fit(recipe, datamodule=dm)
    # LR, bicubic, the two named outputs, HR: four columns of 16 + the LR column
    assert logger.images[0][1] == (2 * 16 + 2, 5 * 16 + 8, 3)
    lr, hr = callback._batch
    up = torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")
    expected = sr_picture(lr, hr, {"one step": up, "teacher, 8 steps": up.flip(-1)})
    assert (callback.last_picture == expected).all()
