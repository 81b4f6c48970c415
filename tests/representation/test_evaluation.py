import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.models.vit import mae_vit
from lightning_distill.representation import BackboneProbes, FeatureProbe, probe_accuracy


def test_knn_with_one_neighbour_is_the_nearest_standardised_cosine_neighbour():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 5, generator=g)
    labels = torch.arange(40) % 4
    query = torch.randn(7, 5, generator=g)
    probe = FeatureProbe(k=1).fit(train, labels)
    mean, std = train.mean(0), train.std(0)
    z = torch.nn.functional.normalize((train - mean) / std, dim=1)
    q = torch.nn.functional.normalize((query - mean) / std, dim=1)
    expected = labels[(q @ z.T).argmax(1)]
    assert torch.equal(probe.predict(query)["knn"], expected)


def test_linear_probe_separates_separable_classes_and_skips_unlabelled():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, generator=g)
    y = (x[:, 1] > 0).long()
    y_hidden = y.clone()
    y_hidden[:20] = -1
    scores = FeatureProbe().fit(x, y_hidden).score(x, y)
    assert scores["acc"] > 0.95


def test_probe_needs_two_classes_and_a_fit():
    with pytest.raises(ValueError, match="two classes"):
        FeatureProbe().fit(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(RuntimeError, match="before fit"):
        FeatureProbe().predict(torch.randn(2, 2))


def test_probe_accuracy_and_backbone_probes_agree_on_a_tiny_vit():
    torch.manual_seed(0)
    model = mae_vit(
        image_size=16, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, decoder_hidden_size=8
    )
    dm = DigitsDataModule(size=16)
    scores = probe_accuracy(model, dm, split="test", max_train_images=600)
    assert 0.2 < scores["acc"] <= 1.0 and 0.1 < scores["knn_acc"] <= 1.0
    probes = BackboneProbes(max_train_images=600)
    probes.refit({"student": model}, dm)
    x, y = dm._prepare()["test"]
    batch = probes.evaluate("student", model, x, y)
    assert abs(float(batch["acc"]) - scores["acc"]) < 1e-6
    assert model.training  # left in its mode
