"""CDA / SRe2L: BN loss, first-BN multiplier, crop curriculum, frozen teacher, relabel cache, artifact, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.cli import main as cli_main
from lightning_distill.data import DigitsDataModule, RecoverDataModule
from lightning_distill.dataset_distillation import EvalSpec, SyntheticSet
from lightning_distill.dataset_distillation.recover import (
    CurriculumCrop,
    crop_schedule,
)
from lightning_distill.dataset_distillation.relabel import (
    RelabelCache,
)
from lightning_distill.recipes.cda import CDA
from tests.conftest import quiet_trainer_kwargs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes" / "cda" / "config.yaml"
SRE2L = ROOT / "recipes" / "cda" / "sre2l.yaml"


class BNNet(nn.Module):
    """conv-BN-ReLU x 2 + linear, with non-trivial running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def make(ipc: int = 2, curriculum: str = "cosine", **kwargs) -> CDA:
    torch.manual_seed(0)
    spec = EvalSpec(
        architecture=EvalSpec.convnet(in_channels=1, image_size=[8, 8], width=8, depth=2),
        epochs=2,
        label_type="soft",
    )
    synthetic = SyntheticSet(10, ipc, (1, 8, 8), init="noise", seed=0, eval_spec=spec)
    kwargs.setdefault("seed", 3)
    kwargs.setdefault("jitter", 1)
    kwargs.setdefault("flip_p", 0.0)
    kwargs.setdefault("val_epochs", 1)
    return CDA(synthetic, BNNet().eval(), curriculum=curriculum, relabel_mix="none", **kwargs)


def data(steps: int = 3) -> RecoverDataModule:
    return RecoverDataModule(DigitsDataModule(), steps_per_epoch=steps)


# ------------------------------------------------------------------------------------------- the BN loss


def test_the_recipe_taps_every_batchnorm_layer_of_the_teacher():
    recipe = make(first_bn_multiplier=4.0)
    assert recipe.bn_paths == ["teachers.0.bn1", "teachers.0.bn2"]


# ------------------------------------------------------------------------------------------- curriculum


class RecordScale(L.Callback):
    def __init__(self) -> None:
        self.scales: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.scales.append(pl_module.crop.min_scale)  # after ProgressiveSchedule (a module callback) set it


@pytest.mark.parametrize("curriculum", ["cosine", "none"])
def test_the_recipe_sets_the_crop_scale_from_the_schedule(curriculum, tmp_path):
    recipe, record = make(ipc=1, curriculum=curriculum, save_path=str(tmp_path / "set.pt")), RecordScale()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=6, limit_val_batches=0, callbacks=[record]))
    trainer.fit(recipe, datamodule=data(steps=4))
    expected = [crop_schedule(curriculum, 6).value_at(t) for t in range(6)]
    if curriculum == "cosine":  # record runs before the schedule at each batch start: one step behind
        expected = [1.0, *expected[:-1]]
        assert record.scales[1] == pytest.approx(1.0) and record.scales[-1] < 0.5
    assert record.scales == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- recover
class Record(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append({"images": pl_module.synthetic.images.detach().clone()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps[-1]["grad"] = pl_module.synthetic.images.grad.clone()
        self.steps[-1]["teacher_grads"] = [p.grad for p in pl_module.teacher.parameters()]
        self.steps[-1]["opt_params"] = [p for g in optimizer.param_groups for p in g["params"]]
        self.steps[-1]["lr"] = optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1].update(ce=float(outputs["ce"]), bn=float(outputs["bn"]))


def test_gradients_reach_only_the_images_and_the_terms_match_a_direct_computation(tmp_path):
    recipe, record = make(ipc=2, save_path=str(tmp_path / "set.pt")), Record()
    teacher_before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, callbacks=[record]))
    trainer.fit(recipe, datamodule=data())
    lo, hi = recipe._pixel_range
    for k, step in enumerate(record.steps):
        # The optimizer holds the images only; the teacher gets no gradient and does not change.
        assert len(step["opt_params"]) == 1 and step["opt_params"][0] is recipe.synthetic.images
        assert all(g is None for g in step["teacher_grads"]) and step["grad"].abs().sum() > 0
        torch.testing.assert_close(step["lr"], 0.25 * 0.5 * (1 + math.cos(math.pi * k / 3)))
        # Recompute the step's terms: two groups (image j of every class), the recipe's crops.
        generator = torch.Generator().manual_seed(recipe.step_seed(k))
        crop = CurriculumCrop((8, 8), min_scale=crop_schedule("cosine", 3).value_at(k), jitter=1, flip_p=0.0)
        net = recipe.teacher
        ce = bn = 0.0
        for j in range(2):
            rows = torch.arange(10) * 2 + j
            x = crop(step["images"][rows], generator)
            a1 = net.conv1(x)
            a2 = net.conv2(F.relu(net.bn1(a1)))
            ce += float(F.cross_entropy(net(x), recipe.synthetic.labels[rows]))
            for scale, a, layer in ((10.0, a1, net.bn1), (1.0, a2, net.bn2)):
                mean, var = a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=False)
                bn += scale * float((mean - layer.running_mean).norm() + (var - layer.running_var).norm())
        assert step["ce"] == pytest.approx(ce, rel=1e-4) and step["bn"] == pytest.approx(bn, rel=1e-4)
    for key, value in recipe.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key])
    assert not any(p.requires_grad for p in recipe.teacher.parameters()) and not recipe.teacher.training
    images = recipe.synthetic.images.detach()
    assert float(images.min()) >= lo and float(images.max()) <= hi  # clipped to the data range
    assert not recipe.synthetic.soft_labels.requires_grad


def test_the_set_starts_from_gaussian_noise():
    recipe = make(ipc=3)
    torch.testing.assert_close(
        recipe.synthetic.images.detach(), torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    )


# ------------------------------------------------------------------------------------------- relabel


# ------------------------------------------------------------------------------------------- artifact
def test_saved_set_reloads_and_evaluates_to_the_same_accuracy(tmp_path):
    recipe = make(ipc=1, save_path=str(tmp_path / "set.pt"), relabel_epochs=2)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0))
    trainer.fit(recipe, datamodule=data())
    loaded = SyntheticSet.load(tmp_path / "set.pt")
    torch.testing.assert_close(loaded.images, recipe.synthetic.images.detach())
    # The soft labels are the teacher's logits on the final images.
    torch.testing.assert_close(loaded.soft_labels, recipe.teacher(loaded.images))
    assert loaded.eval_spec.label_type == "soft" and loaded.metadata["method"] == "cda"
    cache = RelabelCache.load(tmp_path / "set.relabel.pt")
    assert cache.epochs == 2 and loaded.metadata["relabel_cache_bytes"] == cache.nbytes
    dm = DigitsDataModule()
    first = recipe.synthetic.evaluate(dm, seeds=(0,))
    second = loaded.evaluate(dm, seeds=(0,))
    assert first.accuracies == second.accuracies


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="curriculum"):
        make(curriculum="exp")
    with pytest.raises(ValueError, match="min_scale"):
        make(min_scale=0.5, max_scale=0.4)
    with pytest.raises(ValueError, match="groups"):
        make(groups="some")
    with pytest.raises(ValueError, match="BatchNorm"):
        CDA(SyntheticSet(10, 1, (1, 8, 8), init="noise"), nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(TypeError, match="SyntheticSet"):
        CDA(nn.Linear(2, 2), BNNet())
    recipe = make(ipc=1, save_path="unused.pt")
    with pytest.raises(ValueError, match="max_steps"):
        L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_val_batches=0)).fit(recipe, datamodule=data())


# ------------------------------------------------------------------------------------------- CLI
@pytest.mark.filterwarnings("ignore:The teacher cached at .* looks broken")
@pytest.mark.filterwarnings("ignore:The cached teacher .* was flagged when it was trained")
@pytest.mark.parametrize("config", [CONFIG, SRE2L])
def test_config_runs_with_fast_dev_run_through_the_cli(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run=true",
            "--model.init_args.teacher.init_args.epochs=1",
            "--model.init_args.teacher.init_args.model.init_args.width=8",
            "--model.init_args.synthetic.init_args.ipc=2",
        ]
    )
    assert not (tmp_path / "synthetic_set.pt").exists()  # fast_dev_run does not write the artifact


def test_sre2l_config_differs_from_the_cda_config_only_in_the_curriculum():
    import yaml

    cda, sre2l = yaml.safe_load(CONFIG.read_text()), yaml.safe_load(SRE2L.read_text())
    assert cda["model"]["init_args"].pop("curriculum") == "cosine"
    assert sre2l["model"]["init_args"].pop("curriculum") == "none"
    assert cda == sre2l
