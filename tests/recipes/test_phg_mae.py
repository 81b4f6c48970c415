"""PHG-MAE: losses against direct computations, hyperedge masks, the RGB-only student, frozen teacher."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.multimodal import MultiModalSceneDataModule
from lightning_distill.losses.multimodal import (
    masked_l1,
    modality_reconstruction_losses,
    soft_pixel_cross_entropy,
)
from lightning_distill.models.segmentation import SegformerSegmenter, SmallSegNet
from lightning_distill.recipes.phg_mae import PHGMAE
from lightning_distill.segmentation.hypergraph import (
    MultiModalMAE,
    available_modalities,
    encode_modalities,
    enumerate_hyperedges,
    phg_mae_teacher,
    sample_hyperedges,
)
from tests.conftest import quiet_trainer_kwargs

NAMES = ("rgb", "depth", "normals", "semantic")


def tiny_data() -> MultiModalSceneDataModule:
    return MultiModalSceneDataModule(
        image_size=(16, 24),
        num_cameras=2,
        num_train_scenes=2,
        num_eval_scenes=1,
        labelled_fraction=0.5,
        batch_size=4,
    )


def make(**kwargs) -> PHGMAE:
    torch.manual_seed(0)
    return PHGMAE(student=SmallSegNet(3, 7, width=4), teacher=MultiModalMAE(6, width=4).eval(), **kwargs)


def fake_batch(b: int = 2, labelled=(True, False)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "rgb": torch.rand(b, 3, 8, 12, generator=g),
        "depth": 40 * torch.rand(b, 1, 8, 12, generator=g),
        "normals": F.normalize(torch.randn(b, 3, 8, 12, generator=g), dim=1),
        "semantic": torch.randint(-1, 6, (b, 8, 12), generator=g),
        "labelled": torch.tensor(labelled),
    }


# ------------------------------------------------------------------ losses
def test_soft_pixel_cross_entropy_matches_a_hand_computation():
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2).softmax(1)
    expected = sum(
        -(t[b, :, i, j] * torch.log(torch.exp(s[b, :, i, j]) / torch.exp(s[b, :, i, j]).sum())).sum()
        for b in range(2) for i in range(2) for j in range(2)
    ) / 8  # fmt: skip
    torch.testing.assert_close(soft_pixel_cross_entropy(s, t), expected)


def test_masked_l1_averages_over_the_mask_only():
    p, t = torch.zeros(1, 1, 1, 3), torch.tensor([[[[1.0, 2.0, 9.0]]]])
    torch.testing.assert_close(masked_l1(p, t, torch.tensor([[[True, True, False]]])), torch.tensor(1.5))
    torch.testing.assert_close(masked_l1(p, t), torch.tensor(4.0))
    assert float(masked_l1(p, t, torch.zeros(1, 1, 3, dtype=torch.bool))) == 0.0


def test_reconstruction_terms_use_only_the_samples_that_have_each_modality():
    torch.manual_seed(0)
    pred = {
        "rgb": torch.randn(2, 3, 2, 2),
        "depth": torch.randn(2, 1, 2, 2),
        "semantic": torch.randn(2, 4, 2, 2),
    }
    target = {
        "rgb": torch.randn(2, 3, 2, 2),
        "depth": torch.randn(2, 1, 2, 2),
        "semantic": torch.randint(0, 4, (2, 2, 2)),
    }
    available = torch.tensor([[True, True, True], [True, False, False]])
    out = modality_reconstruction_losses(pred, target, available, ("rgb", "depth", "semantic"))
    torch.testing.assert_close(out["rgb"], ((pred["rgb"] - target["rgb"]) ** 2).mean())
    torch.testing.assert_close(out["depth"], (pred["depth"][0] - target["depth"][0]).abs().mean())
    torch.testing.assert_close(out["semantic"], F.cross_entropy(pred["semantic"][:1], target["semantic"][:1]))
    rgb_only = torch.tensor([[True, False, False]] * 2)
    assert (
        float(
            modality_reconstruction_losses(pred, target, rgb_only, ("rgb", "depth", "semantic"))["semantic"]
        )
        == 0
    )
    with pytest.raises(ValueError, match="available"):
        modality_reconstruction_losses(pred, target, available[:, :2], ("rgb", "depth", "semantic"))


# ---------------------------------------------------------------- hyperedges
def test_sampled_hyperedges_mask_whole_modalities_and_never_all():
    available = torch.tensor([[True, True, True, True], [True, False, True, False]]).repeat(500, 1)
    visible = sample_hyperedges(available, keep_prob=0.3, generator=torch.Generator().manual_seed(0))
    assert visible.shape == available.shape and visible.dtype == torch.bool
    assert bool(visible.any(1).all()) and not bool((visible & ~available).any())
    assert len({tuple(r.tolist()) for r in visible[0::2]}) == 15  # all non-empty subsets occur
    with pytest.raises(ValueError, match="keep_prob"):
        sample_hyperedges(available, keep_prob=0.0)
    with pytest.raises(ValueError, match="available"):
        sample_hyperedges(torch.zeros(1, 4, dtype=torch.bool))


def test_a_masked_modality_does_not_reach_the_teacher():
    torch.manual_seed(0)
    mae = MultiModalMAE(6, width=4).eval()
    x = encode_modalities(fake_batch(), 6, 40.0)
    visible = torch.tensor([[True, False, True, False]] * 2)
    y = dict(x, depth=torch.randn_like(x["depth"]) * 100, semantic=torch.rand_like(x["semantic"]))
    torch.testing.assert_close(mae(x, visible)["semantic"], mae(y, visible)["semantic"])
    edges = enumerate_hyperedges(NAMES, ["rgb", "normals"])
    assert edges.tolist() == [
        [True, False, False, False],
        [False, False, True, False],
        [True, False, True, False],
    ]
    probs, depth = mae.ensemble(y, edges)
    torch.testing.assert_close(probs, mae.ensemble(x, edges)[0])
    expected = sum(mae(x, e.expand(2, -1))["semantic"].softmax(1) for e in edges) / 3
    torch.testing.assert_close(probs, expected)
    assert available_modalities(fake_batch(), NAMES).tolist() == [[True] * 4, [True, False, True, False]]


# ----------------------------------------------------------------- recipe
def test_the_student_reads_rgb_only_at_inference():
    recipe = make().eval()
    batch = fake_batch()
    poisoned = dict(batch, depth=torch.full_like(batch["depth"], float("nan")),
                    normals=torch.full_like(batch["normals"], float("nan")),
                    semantic=torch.full_like(batch["semantic"], 3))  # fmt: skip
    torch.testing.assert_close(recipe.predict_step(batch, 0), recipe.predict_step(poisoned, 0))
    assert not torch.isnan(recipe.predict_step(poisoned, 0)).any()
    with pytest.raises(ValueError, match="RGB"):
        PHGMAE(student=SmallSegNet(7, 7, width=4), teacher=MultiModalMAE(6, width=4))


def test_student_is_under_one_million_parameters_in_the_config_size():
    assert sum(p.numel() for p in SmallSegNet(3, 7, width=8).parameters()) < 1_000_000


def test_loss_terms_match_their_definitions():
    recipe = make()
    batch = fake_batch()
    logits, depth = recipe.student_predict(batch)
    probs, t_depth = recipe.teacher_predict(batch)
    assert recipe.loss_terms == ("kd", "depth_kd", "ce", "depth")
    torch.testing.assert_close(
        soft_pixel_cross_entropy(logits, probs), -(probs * logits.log_softmax(1)).sum(1).mean()
    )
    torch.testing.assert_close(masked_l1(depth, t_depth), (depth - t_depth).abs().mean())


def test_only_the_student_learns_and_the_teacher_is_unchanged():
    recipe = make()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    seen = {}

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            seen["student"] = all(p.grad is not None for p in pl_module.student.parameters())
            seen["teacher"] = any(p.grad is not None for p in pl_module.teacher.parameters())

    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=1, callbacks=[Check()]))
    trainer.fit(recipe, datamodule=tiny_data())
    assert seen == {"student": True, "teacher": False}
    assert all(torch.equal(before[k], v) for k, v in recipe.teacher.state_dict().items())
    assert not recipe.teacher.training
    for key in ("val/miou", "val/depth_mae", "val/teacher_miou", "val/teacher_depth_mae"):
        assert key in trainer.callback_metrics


def test_the_teacher_trains_on_first_use_and_reconstructs_from_one_loop(tmp_path):
    torch.manual_seed(0)
    mae = phg_mae_teacher(MultiModalMAE(6, width=4), tiny_data(), epochs=1, cache_dir=str(tmp_path))
    assert not mae.training and "first use" in mae.distill_source
    with pytest.raises(ValueError, match="keep_prob"):
        phg_mae_teacher(MultiModalMAE(6, width=4), tiny_data(), keep_prob=1.5, cache_dir=str(tmp_path))


def test_a_tiny_segformer_student_runs_the_same_path():
    torch.manual_seed(0)
    recipe = PHGMAE(student=SegformerSegmenter(3, 7), teacher=MultiModalMAE(6, width=4))
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=1, limit_test_batches=1))
    trainer.fit(recipe, datamodule=tiny_data())
    trainer.test(recipe, datamodule=tiny_data(), verbose=False)
    assert 0.0 <= float(trainer.callback_metrics["test/miou"]) <= 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_depth": 0.0}, "max_depth"),
        ({"hyperedges": [["rgb", "depth"]]}, "hyperedges"),
        ({"hyperedges": [[]]}, "hyperedges"),
        ({"inputs": ["lidar"]}, "inputs"),
        ({"inputs": ["rgb", "semantic"]}, "task layers"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_a_wrong_teacher_or_student_output_is_explained():
    with pytest.raises(ValueError, match="MultiModalMAE"):
        PHGMAE(student=SmallSegNet(3, 7, width=4), teacher=SmallSegNet(3, 6, width=4))
    recipe = PHGMAE(student=SmallSegNet(3, 6, width=4), teacher=MultiModalMAE(6, width=4))
    with pytest.raises(ValueError, match="num_classes: 7"):
        recipe.student_predict(fake_batch())


def test_overlay_pictures_read_dict_batches_through_the_student():
    from types import SimpleNamespace

    from lightning_distill.segmentation.hypergraph import MultiModalPictures

    logged = []

    class Logger:
        def log_image(self, key, images, step):
            logged.append((key, images[0].shape))

    callback = MultiModalPictures(max_images=2, zoom=1)
    trainer = SimpleNamespace(loggers=[Logger()], sanity_checking=False, is_global_zero=True, global_step=3)
    callback.on_validation_batch_end(trainer, make().eval(), None, fake_batch(), 0)
    assert logged == [("val/overlays", (16, 36, 3))]


def test_the_rgb_alone_baseline_never_runs_the_teacher(monkeypatch):
    recipe = make(loss_weights={"kd": 0.0, "depth_kd": 0.0})

    def fail(batch):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(recipe, "teacher_predict", fail)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=1, limit_val_batches=0))
    trainer.fit(recipe, datamodule=tiny_data())
    assert float(trainer.callback_metrics["train/kd"]) == 0.0
