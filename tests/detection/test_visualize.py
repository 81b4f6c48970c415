"""BEV pictures: boxes are drawn where they are, and the callback logs a picture with the module's predictions."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_distill.detection.visualize import DetectionPictures, render_bev


def test_render_bev_draws_boxes_in_their_class_colour():
    points = torch.zeros(0, 4)
    empty = render_bev(points, size=(200, 200))
    with_box = render_bev(points, torch.tensor([[20.0, 0.0, 0.0, 8.0, 4.0, 1.5, 0.0]]), size=(200, 200))
    assert empty.shape == with_box.shape == (200, 200, 3) and with_box.dtype == np.uint8
    changed = np.abs(with_box.astype(int) - empty.astype(int)).sum(-1) > 0
    rows, cols = np.nonzero(changed)
    assert rows.mean() < 100  # x = 20 m forward is drawn in the upper half of the page
    assert abs(cols.mean() - 100) < 30  # y = 0 near the middle
    blue = with_box[changed].astype(int)
    assert (blue[:, 2] > blue[:, 0]).mean() > 0.5  # cars are blue


def test_render_bev_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels and scores"):
        render_bev(torch.zeros(3, 3), torch.zeros(2, 7), gt_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`points`"):
        render_bev(torch.zeros(3, 2))


class _Echo(pl.LightningModule):
    """Predicts the ground truth shifted by 1 m; trains a dummy weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def predict_boxes(self, batch):
        boxes = batch["boxes"][0].clone()
        boxes[:, 0] += 1.0
        return [{"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": batch["labels"][0]}]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_writes_a_picture_with_predictions(tmp_path):
    frame = {
        "points": torch.randn(50, 4) * 5,
        "batch_index": torch.zeros(50, dtype=torch.long),
        "boxes": [torch.tensor([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])],
        "labels": [torch.tensor([0])],
    }
    loader = DataLoader([frame], batch_size=None)  # one batch: the frame itself
    callback = DetectionPictures()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    trainer.fit(_Echo(), train_dataloaders=loader, val_dataloaders=loader)
    assert callback.last_picture is not None and callback.last_picture.shape[2] == 3
    assert len(list((tmp_path / "detections").glob("*.png"))) == 1
    with pytest.raises(ValueError, match="`every_n_epochs`"):
        DetectionPictures(every_n_epochs=0)
