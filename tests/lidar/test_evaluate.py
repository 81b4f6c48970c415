"""Segmentation metrics, linear probing and fine-tuning of a sparse backbone."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.evaluate import finetune, linear_probe, segmentation_metrics
from lightning_distill.lidar.networks import SparseUNet


def test_segmentation_metrics_match_a_confusion_matrix():
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
    target = torch.tensor([0, 1, 1, 1, 2, 0, 2, -1])
    r = segmentation_metrics(preds, target, 4)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 0, fn 1 -> 2/3; class 2: tp 2, fp 1 -> 2/3; class 3 absent
    torch.testing.assert_close(r.iou[:3], torch.tensor([1 / 3, 2 / 3, 2 / 3]))
    assert torch.isnan(r.iou[3])
    assert abs(r.miou - 5 / 9) < 1e-6 and abs(r.accuracy - 5 / 7) < 1e-6


def test_linear_probe_and_finetune_run_and_leave_the_backbone_alone(tiny_datamodule):
    torch.manual_seed(0)
    net = SparseUNet(1, widths=(4, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train = DataLoader(tiny_datamodule.scenes("train"), batch_size=2, collate_fn=collate)
    test = tiny_datamodule.test_dataloader()
    probe = linear_probe(net, train, test, num_classes=6, voxel_size=0.3, steps=20)
    assert 0 <= probe.miou <= 1 and probe.iou.shape == (6,)
    tuned, model = finetune(net, train, test, num_classes=6, voxel_size=0.3, labelled_fraction=0.5, epochs=1)
    assert 0 <= tuned.miou <= 1
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model["backbone"].state_dict()["stem.0.weight"], before["stem.0.weight"])
