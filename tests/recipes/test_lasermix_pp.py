"""LaserMix++: the labelled split, each loss against an independent computation, the mean teacher, the
frozen image backbone and CLI runs of both configs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

from lightning_distill.data.lidar import SemiSupervisedLidarDataModule, SyntheticLidarDataModule
from lightning_distill.lidar.augment import laser_mix, mix_pairs
from lightning_distill.lidar.batches import collate
from lightning_distill.lidar.geometry import pair_points_with_pixels
from lightning_distill.lidar.networks import SmallImageBackbone, SparseUNet
from lightning_distill.lidar.semi import (
    confident_pseudo_labels,
    labelled_split,
    mask_labels,
)
from lightning_distill.recipes.lasermix_pp import LaserMixPP
from tests.conftest import quiet_trainer_kwargs
from tests.lidar.conftest import TINY, make_tiny_datamodule


@pytest.fixture(scope="module")
def tiny_datamodule():
    return make_tiny_datamodule()


ROOT = Path(__file__).resolve().parents[2]


def make_recipe(**kwargs) -> LaserMixPP:
    torch.manual_seed(0)
    kwargs.setdefault("voxel_size", 0.3)
    return LaserMixPP(SparseUNet(1, widths=(4, 8)), SmallImageBackbone(widths=(4, 8)), **kwargs)


def semi_datamodule(**kwargs) -> SemiSupervisedLidarDataModule:
    dm = SemiSupervisedLidarDataModule(**{**TINY, "labelled_fraction": 0.25, **kwargs})
    dm.setup("fit")
    return dm


def semi_batch(tiny_datamodule) -> dict:
    samples = tiny_datamodule.scenes("train")
    return {"labelled": collate(samples[:2]), "unlabelled": collate([mask_labels(s) for s in samples[2:4]])}


# ------------------------------------------------------------------ the split
def test_labelled_split_is_a_seeded_partition():
    labelled, unlabelled = labelled_split(200, 0.02, seed=3)
    assert len(labelled) == 4 and len(unlabelled) == 196
    assert sorted(labelled.tolist() + unlabelled.tolist()) == list(range(200))
    assert torch.equal(labelled, labelled_split(200, 0.02, seed=3)[0])
    assert not torch.equal(labelled, labelled_split(200, 0.02, seed=4)[0])
    assert len(labelled_split(10, 0.01)[0]) == 1  # at least one labelled scene
    with pytest.raises(ValueError, match="fraction"):
        labelled_split(10, 0.0)


def test_unlabelled_scans_carry_only_the_ignore_index(tiny_datamodule):
    dm = semi_datamodule()
    assert dm.settings_key == tiny_datamodule.settings_key  # the split does not regenerate the scenes
    labelled, unlabelled = dm.labelled_samples(), dm.unlabelled_samples()
    assert len(labelled) == 1 and len(unlabelled) == 3
    assert {int(s["scene"]) for s in labelled} == set(dm.labelled_scenes)
    assert all(bool((s["labels"] == -1).all()) and bool((s["pixel_labels"] == -1).all()) for s in unlabelled)
    originals = {int(s["scene"]): s for s in tiny_datamodule.scenes("train")}
    for s in labelled:
        assert torch.equal(s["labels"], originals[int(s["scene"])]["labels"])
    for s in unlabelled:  # same points, labels hidden
        assert torch.equal(s["points"], originals[int(s["scene"])]["points"])


def test_train_loaders_pair_full_batches_and_the_supervised_mode_drops_unlabelled():
    dm = semi_datamodule()
    loaders = dm.train_dataloader()
    assert (
        set(loaders) == {"labelled", "unlabelled"}
        and len(loaders["labelled"]) == len(loaders["unlabelled"]) == 1
    )
    labelled, unlabelled = next(iter(loaders["labelled"])), next(iter(loaders["unlabelled"]))
    assert labelled["images"].shape[0] == unlabelled["images"].shape[0] == 2  # the one labelled scan, twice
    assert bool((labelled["labels"] >= 0).all()) and bool((unlabelled["labels"] == -1).all())
    supervised = semi_datamodule(use_unlabelled=False).train_dataloader()
    assert set(supervised) == {"labelled"} and len(supervised["labelled"]) == 1


def test_confident_pseudo_labels_by_hand():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 5.0]])
    labels, confidence = confident_pseudo_labels(logits, 0.9)
    p = torch.softmax(logits, dim=1).max(dim=1).values
    assert labels.tolist() == [0 if p[0] >= 0.9 else -1, -1, 2]
    torch.testing.assert_close(confidence, p)


# ------------------------------------------------------------------ the losses
def manual_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    keep = labels >= 0
    log_p = logits[keep].log_softmax(dim=1)
    return -log_p[torch.arange(int(keep.sum())), labels[keep]].mean()


def test_each_loss_term_matches_an_independent_computation(tiny_datamodule):
    recipe = make_recipe(augment_scans=False)
    recipe.log = lambda *a, **k: None
    batch = semi_batch(tiny_datamodule)
    lab, unl = batch["labelled"], batch["unlabelled"]
    with torch.no_grad():  # a threshold that keeps about half of the pseudo-labels
        threshold = float(recipe.ema_student(unl["points"])[1].softmax(dim=1).max(dim=1).values.median())
    recipe.pseudo_threshold = threshold
    recipe._generator = torch.Generator().manual_seed(11)
    terms = recipe.training_step(batch, 0)

    # independent re-computation, same weights (train-mode BatchNorm uses the batch: reproducible)
    with torch.no_grad():
        teacher_u = recipe.ema_student(unl["points"])[1]
        teacher_l = recipe.ema_student(lab["points"])[1]
        probs = teacher_u.softmax(dim=1)
        pseudo = torch.where(probs.max(dim=1).values >= threshold, probs.argmax(dim=1), -1)
        assert 0.2 < float((pseudo >= 0).float().mean()) < 0.8
        mixed = laser_mix(
            lab["points"], lab["labels"], unl["points"], pseudo, generator=torch.Generator().manual_seed(11)
        )
        features_l, logits_l = recipe.student(lab["points"])
        features_m, logits_m = recipe.student(mixed.points)
        logits_u = recipe.student(unl["points"])[1]
        size = tuple(lab["images"].shape[-2:])
        pairs = mix_pairs(
            pair_points_with_pixels(lab["points"], lab["K"], lab["T_cam_from_lidar"], size),
            pair_points_with_pixels(unl["points"], unl["K"], unl["T_cam_from_lidar"], size),
            mixed.origin,
            num_points_a=len(lab["points"]),
            num_images_a=lab["images"].shape[0] * lab["images"].shape[1],
        )
        images = torch.cat([lab["images"], unl["images"]]).flatten(0, 1)
        maps = F.interpolate(recipe.teacher(images), size=size, mode="bilinear", align_corners=True)
        distances = []
        for p, i, v, u in zip(*pairs):
            f = recipe.distill_head(features_m[p][None])[0]
            g = maps[i, :, v, u]
            distances.append(1 - torch.dot(f, g) / (f.norm() * g.norm()))
        student_p = torch.cat([logits_l, logits_u]).softmax(dim=1)
        teacher_p = torch.cat([teacher_l, teacher_u]).softmax(dim=1)
    expected = {
        "ce_labelled": manual_cross_entropy(logits_l, lab["labels"]),
        "ce_mixed": manual_cross_entropy(logits_m, mixed.labels),
        "consistency": ((student_p - teacher_p) ** 2).sum() / student_p.numel(),
        "distill": torch.stack(distances).mean(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-4, atol=1e-5, msg=name)
    total = (
        expected["ce_labelled"] + expected["ce_mixed"] + 200 * expected["consistency"] + expected["distill"]
    )
    torch.testing.assert_close(terms["loss"].detach(), total, rtol=1e-4, atol=1e-5)
    # the mixed labels are ground truth where the point came from a labelled scan, else pseudo-labels
    from_labelled = mixed.origin < len(lab["points"])
    assert torch.equal(mixed.labels[from_labelled], lab["labels"][mixed.origin[from_labelled]])
    assert torch.equal(
        mixed.labels[~from_labelled], pseudo[mixed.origin[~from_labelled] - len(lab["points"])]
    )


def test_supervised_batches_give_only_the_labelled_terms(tiny_datamodule):
    recipe = make_recipe(loss_weights={"ce_mixed": 0.0, "consistency": 0.0, "distill": 0.0})
    recipe.log = lambda *a, **k: None
    out = recipe.training_step({"labelled": semi_batch(tiny_datamodule)["labelled"]}, 0)
    assert set(out) == {"loss", "ce_labelled"}
    with_camera = make_recipe()
    with_camera.log = lambda *a, **k: None
    assert set(with_camera.training_step({"labelled": semi_batch(tiny_datamodule)["labelled"]}, 0)) == {
        "loss",
        "ce_labelled",
        "distill",
    }


def test_gradients_reach_the_student_and_the_distillation_head_only(tiny_datamodule):
    recipe = make_recipe()
    recipe.log = lambda *a, **k: None
    recipe.training_step(semi_batch(tiny_datamodule), 0)["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is not None for p in recipe.distill_head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in recipe.ema_student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in recipe.teacher.parameters())


def test_unequal_cloud_counts_raise(tiny_datamodule):
    recipe = make_recipe()
    recipe.log = lambda *a, **k: None
    samples = tiny_datamodule.scenes("train")
    with pytest.raises(ValueError, match="one to one"):
        recipe.training_step({"labelled": collate(samples[:2]), "unlabelled": collate(samples[2:3])}, 0)


# ------------------------------------------------------------------ teachers
class RecordStudent(L.Callback):
    """Copies of the student's parameters after every optimizer step."""

    def __init__(self) -> None:
        self.after_step: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append([p.detach().clone() for p in pl_module.student.parameters()])


def test_mean_teacher_is_an_exact_ema_and_the_image_backbone_stays_frozen():
    dm = semi_datamodule(num_scenes=4, labelled_fraction=0.5)
    recipe = make_recipe(ema_decay=0.6)
    start = [p.detach().clone() for p in recipe.student.parameters()]
    image_before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    record = RecordStudent()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, callbacks=[record]))
    trainer.fit(recipe, datamodule=dm)
    assert len(record.after_step) == 3
    expected = start
    for live in record.after_step:
        expected = [0.6 * e + 0.4 * s for e, s in zip(expected, live)]
    for got, want in zip(recipe.ema_student.parameters(), expected):
        torch.testing.assert_close(got, want)
    assert not torch.equal(next(recipe.ema_student.parameters()), next(recipe.student.parameters()))
    for (name, buffer), live in zip(recipe.ema_student.named_buffers(), recipe.student.buffers()):
        assert torch.equal(buffer, live), name  # buffers copied ("copy" policy)
    assert not recipe.ema_student.training and not recipe.teacher.training
    for key, value in recipe.teacher.state_dict().items():
        assert torch.equal(value, image_before[key]), key
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in recipe.teacher.parameters()}
    assert not optimised & {id(p) for p in recipe.ema_student.parameters()}
    assert {id(p) for p in recipe.distill_head.parameters()} <= optimised


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_bands"):
        make_recipe(num_bands=[])
    with pytest.raises(ValueError, match="pseudo_threshold"):
        make_recipe(pseudo_threshold=1.5)
    with pytest.raises(ValueError, match="ema_decay"):
        make_recipe(ema_decay=-0.1)
    with pytest.raises(ValueError, match="unknown term"):
        make_recipe(loss_weights={"kd": 1.0})
    with pytest.raises(TypeError, match="out_channels"):
        LaserMixPP(SparseUNet(1, widths=(4,)), torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="use_unlabelled"):
        SemiSupervisedLidarDataModule(**{**TINY, "labelled_fraction": 1.0})


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("configs", [["config.yaml"], ["config.yaml", "supervised.yaml"]])
def test_configs_fit_with_fast_dev_run(configs, tmp_path, monkeypatch):
    from lightning_distill.cli import main

    monkeypatch.chdir(tmp_path)
    files = [arg for name in configs for arg in ("--config", str(ROOT / "recipes" / "lasermix_pp" / name))]
    data = [f"--data.init_args.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    main(
        [
            "fit",
            *files,
            "--trainer.fast_dev_run=true",
            "--trainer.enable_progress_bar=false",
            "--model.init_args.student.init_args.widths=[4, 8]",
            "--data.init_args.labelled_fraction=0.25",
            *data,
        ]
    )


def test_plain_datamodule_batches_train_supervised(tiny_datamodule):
    """A plain SyntheticLidarDataModule batch (no labelled/unlabelled split) trains as supervised."""
    assert isinstance(tiny_datamodule, SyntheticLidarDataModule)
    recipe = make_recipe(loss_weights={"distill": 0.0})
    recipe.log = lambda *a, **k: None
    out = recipe.training_step(collate(tiny_datamodule.scenes("train")[:2]), 0)
    assert set(out) == {"loss", "ce_labelled"}


def test_test_stage_reports_student_and_mean_teacher_miou(tmp_path, monkeypatch):
    from lightning_distill.cli import DistillCLI

    monkeypatch.chdir(tmp_path)
    data = [f"--data.init_args.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    cli = DistillCLI(
        args=[
            "--config",
            str(ROOT / "recipes" / "lasermix_pp" / "config.yaml"),
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--model.init_args.student.init_args.widths=[4, 8]",
            "--data.init_args.labelled_fraction=0.25",
            *data,
        ],
        run=False,
    )
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert {"test/miou", "test/ema_miou", "test/acc", "test/ema_acc"} <= set(metrics)
    assert 0.0 <= metrics["test/miou"] <= 1.0


def test_default_optimizer_is_the_official_sgd():
    # ldkong1205/LaserMix configs/lasermix/lasermix_minku18_semi_semantickitti_10.py (commit f7f57b2),
    # optim_wrapper: SGD(lr=0.24, weight_decay=0.0001, momentum=0.9, nesterov=True)
    import inspect

    from lightning_distill.lidar.semi import lasermix_sgd

    assert inspect.signature(LaserMixPP).parameters["optimizer"].default is lasermix_sgd
    defaults = make_recipe().configure_optimizers().defaults
    assert (defaults["lr"], defaults["momentum"], defaults["weight_decay"], defaults["nesterov"]) == (
        0.24,
        0.9,
        1e-4,
        True,
    )
    assert defaults["dampening"] == 0
    # the same config: mean-teacher hook momentum 0.01 (our decay 0.99), loss_mse weight 200
    assert inspect.signature(LaserMixPP).parameters["ema_decay"].default == 0.99
    assert LaserMixPP.default_loss_weights["consistency"] == 200.0
