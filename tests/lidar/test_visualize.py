"""Point-cloud pictures: colours, renders, PLY files, W&B objects and the validation callback."""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_distill.lidar.batches import read_scan
from lightning_distill.lidar.networks import SmallImageBackbone, SparseUNet
from lightning_distill.lidar.scene import CLASS_COLORS
from lightning_distill.lidar.visualize import (
    PointCloudLogger,
    label_colors,
    pca_colors,
    render_points,
    save_point_cloud,
    wandb_point_cloud,
)
from lightning_distill.recipes.slidr import SLidR


def test_label_colors_follow_the_palette_and_grey_out_the_rest():
    colors = label_colors(torch.tensor([2, 0, -1, 99]))
    torch.testing.assert_close(colors[0], torch.tensor(CLASS_COLORS[2]))
    torch.testing.assert_close(colors[1], torch.tensor(CLASS_COLORS[0]))
    torch.testing.assert_close(colors[2], colors[3])
    with pytest.raises(ValueError, match="labels"):
        label_colors(torch.zeros(2, 2))


def test_pca_first_channel_orders_points_along_the_main_direction():
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, 200)
    direction = torch.randn(16, generator=gen)
    features = t[:, None] * direction * 10 + 0.01 * torch.randn(200, 16, generator=gen)
    red = pca_colors(features)[:, 0]
    inner = slice(5, 195)  # the 1% tails are clipped to 0 / 1
    steps = torch.diff(red[inner])
    assert bool((steps > 0).all()) or bool((steps < 0).all())


def test_render_shows_the_colours_it_was_given():
    points = torch.randn(500, 3) * torch.tensor([10.0, 10.0, 1.0])
    red = torch.tensor([[1.0, 0.0, 0.0]]).expand(500, 3)
    picture = render_points(points, red, size=(300, 150), point_size=4.0)
    assert picture.shape == (150, 300, 3) and picture.dtype == np.uint8
    reddish = (picture[..., 0] > 200) & (picture[..., 1] < 60) & (picture[..., 2] < 60)
    assert reddish.sum() > 50
    with pytest.raises(ValueError, match="colors"):
        render_points(points, red[:10])


def test_ply_round_trip_keeps_coordinates_and_colours(tmp_path):
    import open3d as o3d

    points = torch.randn(64, 3)
    colors = torch.rand(64, 3)
    path = save_point_cloud(tmp_path / "cloud.ply", points, colors)
    cloud = o3d.io.read_point_cloud(str(path))
    torch.testing.assert_close(torch.from_numpy(np.asarray(cloud.points)).float(), points)
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(cloud.colors)).float(), colors, atol=1 / 255, rtol=0
    )
    torch.testing.assert_close(read_scan(path)[:, :3], points)
    with pytest.raises(ValueError, match=".ply"):
        save_point_cloud(tmp_path / "cloud.png", points)


def test_wandb_object_carries_xyz_and_0_255_colours():
    obj = wandb_point_cloud(torch.zeros(3, 3), torch.ones(3, 3))
    assert obj is not None and type(obj).__name__ == "Object3D"


def _fit_one_epoch(tmp_path, datamodule, logger, **kwargs):
    torch.manual_seed(0)
    model = SLidR(SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), voxel_size=0.3)
    callback = PointCloudLogger(**kwargs)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    return callback


def test_callback_writes_label_and_feature_pictures(tmp_path, tiny_datamodule):
    callback = _fit_one_epoch(tmp_path, tiny_datamodule, CSVLogger(tmp_path), save_ply=True)
    assert set(callback.last_pictures) == {"labels", "features"}
    written = sorted(p.name for p in tmp_path.rglob("point_clouds/*"))
    assert sum(name.endswith(".png") for name in written) == 2
    assert sum(name.endswith(".ply") for name in written) == 2


def test_callback_logs_images_and_3d_objects_to_wandb(tmp_path, tiny_datamodule, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), project="visualize-test")
    _fit_one_epoch(tmp_path, tiny_datamodule, logger)
    logger.experiment.finish()
    files = [p for p in tmp_path.rglob("media/**/*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files), [str(p) for p in files]
    assert any("object3D" in str(p) or p.suffix in (".pts.json", ".json") for p in files), [
        str(p) for p in files
    ]


def test_predictions_need_predict_labels(tmp_path, tiny_datamodule):
    with pytest.raises(TypeError, match="predict_labels"):
        _fit_one_epoch(tmp_path, tiny_datamodule, False, predictions=True)
