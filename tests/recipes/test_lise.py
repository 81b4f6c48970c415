"""LiSe recipe: trains on pseudo-labels only, what learns, re-labelling with adaptive sampling, rounds, errors."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.detection import DetectionSceneDataModule
from lightning_distill.detection.detector import VoxelDetector
from lightning_distill.detection.image_detector import ImageDetector
from lightning_distill.detection.self_training import adaptive_sample, sampling_bins
from lightning_distill.models.image_detection import held_out_loader, trained_image_detector
from lightning_distill.recipes.lise import LiSe
from tests.conftest import quiet_trainer_kwargs
from tests.detection.test_detector import TOY, fake_batch


def make_recipe(quiet: bool = True, student: torch.nn.Module | None = None, **kwargs) -> LiSe:
    torch.manual_seed(0)
    student = student if student is not None else VoxelDetector(**TOY)
    recipe = LiSe(student, ImageDetector(widths=(8, 8, 8), head_width=8), **kwargs)
    if quiet:  # outside a Trainer
        recipe.log = lambda *a, **k: None
    return recipe


def with_pseudo_labels(recipe: LiSe, batch: dict) -> dict:
    """Give the batch frame keys and the recipe pseudo-boxes that differ from the batch's ground truth."""
    batch = {
        **batch,
        "scene": torch.arange(len(batch["boxes"])),
        "frame": torch.zeros(len(batch["boxes"]), dtype=torch.long),
    }
    for i, (boxes, labels) in enumerate(zip(batch["boxes"], batch["labels"])):
        shifted = boxes[:2].clone()
        shifted[:, 0] += 1.0
        recipe.labels[(i, 0)] = {"boxes": shifted, "labels": (labels[:2] + 1) % 3, "scores": torch.ones(2)}
    return batch


def test_the_student_trains_on_the_pseudo_labels_never_the_ground_truth():
    recipe = make_recipe()
    batch = with_pseudo_labels(recipe, fake_batch())
    recipe.train()
    out = recipe.training_step(batch, 0)
    assert set(out) == {"loss", "heatmap", "box"}
    pseudo_boxes = [recipe.labels[(i, 0)]["boxes"] for i in range(2)]
    pseudo_labels = [recipe.labels[(i, 0)]["labels"] for i in range(2)]
    output = recipe.student(batch["points"], batch["batch_index"], 2)
    expected = recipe.student.loss(output, pseudo_boxes, pseudo_labels)
    truth = recipe.student.loss(output, batch["boxes"], batch["labels"])
    torch.testing.assert_close(out["heatmap"], expected["heatmap"])
    torch.testing.assert_close(out["box"], expected["box"])
    torch.testing.assert_close(out["loss"], expected["heatmap"] + 0.25 * expected["box"])
    assert not torch.isclose(out["heatmap"], truth["heatmap"])


def test_gradients_reach_the_student_only():
    recipe = make_recipe()
    out = recipe.training_step(with_pseudo_labels(recipe, fake_batch()), 0)
    out["loss"].backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    assert all(p.grad is None for p in recipe.teacher.parameters())
    assert all(p.grad is None for p in recipe.aggregate.parameters())
    trainable = {id(p) for p in recipe.trainable_parameters()}
    assert trainable == {id(p) for p in recipe.student.parameters()}


def test_frames_without_pseudo_labels_are_reported():
    recipe = make_recipe()
    batch = {**fake_batch(), "scene": torch.tensor([5, 6]), "frame": torch.tensor([0, 0])}
    with pytest.raises(RuntimeError, match="No pseudo-labels"):
        recipe.training_step(batch, 0)


class FixedDetector(torch.nn.Module):
    """A stand-in detector whose detections are given."""

    def __init__(self, detections: list[dict]) -> None:
        super().__init__()
        self.detections, self.calls = detections, 0

    def forward(self, points, batch_index, batch_size):
        return None

    def detect(self, output, nms=None):
        self.calls += 1
        return [self.detections[self.calls - 1]]


def test_relabel_keeps_a_budget_of_confident_boxes_shared_by_adaptive_sampling():
    recipe = make_recipe(score_threshold=0.5, min_score=0.1)
    near = [[5.0 + i, 0.0, -1.0, 4.0, 1.8, 1.5, 0.0] for i in range(4)]
    far = [[30.0, 2.0 * i, -1.0, 4.0, 1.8, 1.5, 0.0] for i in range(2)]
    detections = [
        {"boxes": torch.tensor(near), "labels": torch.zeros(4, dtype=torch.long), "scores": torch.tensor([0.9, 0.8, 0.7, 0.05])},
        {"boxes": torch.tensor(far), "labels": torch.ones(2, dtype=torch.long), "scores": torch.tensor([0.3, 0.2])},
    ]  # fmt: skip
    frames = [
        {"points": torch.zeros(3, 4), "scene": torch.tensor(s), "frame": torch.tensor(0)} for s in range(2)
    ]
    labels = recipe.relabel(FixedDetector(detections), frames, power=1.0)
    # budget 3 (scores >= 0.5); candidates >= 0.1: three near, two far; power 1: one each, the third slot to the best left
    assert labels[(0, 0)]["scores"].tolist() == pytest.approx([0.9, 0.8]) and labels[(1, 0)][
        "scores"
    ].tolist() == pytest.approx([0.3])
    assert (labels[(1, 0)]["labels"] == 1).all() and (labels[(0, 0)]["source"] == 2).all()
    candidates = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2])
    bins = sampling_bins(torch.tensor(near[:3] + far))
    assert adaptive_sample(candidates, bins, budget=3, power=1.0).tolist() == [0, 1, 3]


def test_sampling_power_grows_over_the_rounds():
    recipe = make_recipe(rounds=4, sampling_power=0.8)
    assert [recipe.sampling_power_at(r) for r in (1, 2, 4)] == pytest.approx([0.2, 0.4, 0.8])


def test_bad_arguments_are_rejected():
    for kwargs, name in (({"rounds": -1}, "rounds"), ({"epochs_per_round": 0}, "epochs_per_round"),
                         ({"score_threshold": 1.5}, "score_threshold"), ({"min_score": 0.5, "score_threshold": 0.3}, "min_score"),
                         ({"sampling_power": -0.1}, "sampling_power")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            make_recipe(**kwargs)


@pytest.fixture(scope="module")
def tiny_data():
    return DetectionSceneDataModule(num_scenes=2, val_scenes=1, test_scenes=0, beams=8, azimuth_steps=256,
                                    image_size=(16, 32), batch_size=2)  # fmt: skip


def test_fit_runs_the_rounds_aggregates_and_keeps_the_2d_teacher_unchanged(tiny_data):
    recipe = make_recipe(quiet=False, rounds=1, epochs_per_round=1)
    teacher_before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    snapshots = []
    real = recipe.aggregate_round

    def recording(frames):
        real(frames)
        snapshots.append({k: v.clone() for k, v in recipe.student.state_dict().items()})

    recipe.aggregate_round = recording
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2, limit_val_batches=1))
    trainer.fit(recipe, datamodule=tiny_data)
    for k, v in recipe.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert not recipe.teacher.training and int(recipe.rounds_done) == 2 and len(snapshots) == 2
    name = (
        "head.heatmap.2.weight"
        if "head.heatmap.2.weight" in snapshots[0]
        else next(k for k in snapshots[0] if k.endswith("weight") and snapshots[0][k].is_floating_point())
    )
    torch.testing.assert_close(
        recipe.aggregate.state_dict()[name], (snapshots[0][name] + snapshots[1][name]) / 2
    )
    assert recipe.final_model() is recipe.aggregate
    logged = trainer.callback_metrics
    assert (
        "val/ap_bev_loose/mean" in logged
        and "train/heatmap" in logged
        and "diag/pseudo_boxes_per_frame" in logged
    )


def test_trained_image_detector_caches_its_weights_and_needs_data(tiny_data, tmp_path):
    first = trained_image_detector(
        ImageDetector(widths=(8, 8, 8), head_width=8), tiny_data, epochs=1, cache_dir=str(tmp_path)
    )
    second = trained_image_detector(
        ImageDetector(widths=(8, 8, 8), head_width=8), tiny_data, epochs=1, cache_dir=str(tmp_path)
    )
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    assert "cached at" in second.distill_source and not second.training
    with pytest.raises(ValueError, match="checkpoint"):
        trained_image_detector(ImageDetector())


def test_real_scale_geometry_runs_a_training_step():
    student = VoxelDetector.real_scale(width_multiplier=0.125, neck_blocks=1)
    recipe = make_recipe(student=student)
    out = recipe.training_step(with_pseudo_labels(recipe, fake_batch(points_per_box=50)), 0)
    assert torch.isfinite(out["loss"])


def test_the_2d_detector_can_train_on_scenes_no_split_holds(tiny_data):
    held = [batch["points"] for batch in held_out_loader(tiny_data, 2, batch_size=1)]
    assert len(held) == 2
    tiny_data.setup("fit")
    for frame in tiny_data.frames("train") + tiny_data.frames("val"):
        assert not any(len(h) == len(frame["points"]) and torch.equal(h, frame["points"]) for h in held)
