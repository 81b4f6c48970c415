"""CDA / SRe2L: BN loss, first-BN multiplier, crop curriculum, frozen teacher, relabel cache, artifact, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_distill.callbacks import FeatureHooks
from lightning_distill.callbacks.teacher_cache import RandomResizedCropFlip
from lightning_distill.cli import main as cli_main
from lightning_distill.data import DigitsDataModule
from lightning_distill.dataset_distillation import EvalSpec, SyntheticSet
from lightning_distill.dataset_distillation.recover import (
    CurriculumCrop,
    RecoverDataModule,
    batchnorm_paths,
    bn_matching_loss,
    bn_stat_taps,
    crop_schedule,
)
from lightning_distill.dataset_distillation.relabel import RelabelCache, build_relabel_cache, evaluate_relabel_cache
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
def test_bn_loss_matches_a_hand_computation():
    # Layer 0: batch (N=2, C=1, H=1, W=2) of [1, 3] and [5, 7]: mean 4, var 5 (biased).
    x0 = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])
    # Layer 1: two channels.
    x1 = torch.tensor([[[[0.0]], [[2.0]]], [[[2.0]], [[6.0]]]])  # means (1, 4), vars (1, 4)
    stats = [(x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)) for x in (x0, x1)]
    running = [
        (torch.tensor([1.0]), torch.tensor([1.0])),
        (torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])),
    ]
    # |4 - 1| + |5 - 1| = 7 (weighted by 10); ||(0, 3)|| + ||(0, 4)|| = 3 + 4 = 7.
    loss = bn_matching_loss(stats, running, first_multiplier=10.0)
    torch.testing.assert_close(loss, torch.tensor(10 * 7.0 + 7.0))
    torch.testing.assert_close(bn_matching_loss(stats, running, first_multiplier=1.0), torch.tensor(14.0))
    with pytest.raises(ValueError, match="layers"):
        bn_matching_loss(stats, running[:1])


def test_bn_taps_on_a_teacher_give_the_official_hook_value():
    net = BNNet().eval()
    paths = batchnorm_paths(net)
    assert paths == ["bn1", "bn2"]
    x = torch.randn(5, 1, 6, 6, requires_grad=True)
    with FeatureHooks(bn_stat_taps(paths)).attach(net) as hooks:
        net(x)
        stats = [hooks["bn0"], hooks["bn1"]]
    loss = bn_matching_loss(
        stats, [(net.bn1.running_mean, net.bn1.running_var), (net.bn2.running_mean, net.bn2.running_var)]
    )

    # Independent computation: the official BNFeatureHook, written out on the conv outputs.
    def r_feature(inp, bn):
        nch = inp.shape[1]
        mean = inp.mean([0, 2, 3])
        var = inp.permute(1, 0, 2, 3).reshape(nch, -1).var(1, unbiased=False)
        return torch.norm(bn.running_var - var, 2) + torch.norm(bn.running_mean - mean, 2)

    a1 = net.conv1(x)
    a2 = net.conv2(F.relu(net.bn1(a1)))
    expected = 10.0 * r_feature(a1, net.bn1) + r_feature(a2, net.bn2)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, expected_grad)


def test_first_bn_multiplier_weighs_only_the_first_layer():
    stats = [(torch.ones(2), torch.ones(2)), (torch.ones(3), torch.ones(3))]
    running = [(torch.zeros(2), torch.ones(2)), (torch.zeros(3), torch.ones(3))]
    d0, d1 = math.sqrt(2), math.sqrt(3)
    for m in (0.0, 1.0, 10.0):
        torch.testing.assert_close(
            bn_matching_loss(stats, running, first_multiplier=m),
            torch.tensor(m * d0 + d1, dtype=torch.float32),
        )
    recipe = make(first_bn_multiplier=4.0)
    assert recipe.bn_paths == ["teachers.0.bn1", "teachers.0.bn2"]


# ------------------------------------------------------------------------------------------- curriculum
@pytest.mark.parametrize("milestone", [1.0, 0.5])
def test_cosine_curriculum_matches_the_closed_form(milestone):
    n = 40
    schedule = crop_schedule("cosine", n, milestone=milestone)
    for t in range(n + 5):
        expected = 0.08
        if t < milestone * n:  # the official formula
            expected = 0.08 + (1.0 - 0.08) * (1 + math.cos(math.pi * t / (milestone * n))) / 2
        assert schedule.value_at(t) == pytest.approx(expected, abs=1e-12)
    sre2l = crop_schedule("none", n)
    assert {sre2l.value_at(t) for t in range(n)} == {0.08}
    step = crop_schedule("step", n, milestone=0.5)
    assert step.value_at(19) == 1.0 and step.value_at(20) == 0.08
    assert crop_schedule("linear", n).value_at(10) == pytest.approx(0.08 + 0.92 * 0.75)


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


def test_curriculum_crop_is_differentiable_and_whole_at_scale_one():
    crop = CurriculumCrop((8, 8), min_scale=1.0, jitter=0, flip_p=0.0)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = crop(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    crop.min_scale = 0.08
    out = crop(x, torch.Generator().manual_seed(1))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="min_scale"):
        crop.min_scale = 0.0


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
def test_relabel_cache_replays_the_same_crops_and_labels(tmp_path):
    teacher = BNNet().eval()
    images = torch.randn(7, 1, 8, 8)
    crop = RandomResizedCropFlip(8, flip_p=0.5)
    for mix in ("none", "cutmix", "mixup"):
        cache = build_relabel_cache(teacher, images, epochs=3, batch_size=3, crop=crop, mix=mix, seed=5)
        assert cache.num_batches == 3 and cache.logits.dtype == torch.float16
        assert cache.label_bytes == 3 * 7 * 10 * 2
        for e in range(3):
            assert sorted(cache.order[e].tolist()) == list(range(7))  # every image once per epoch
        loaded = RelabelCache.load(cache.save(tmp_path / f"{mix}.pt"))
        for e, b in ((0, 0), (2, 2), (4, 1)):  # epoch 4 replays stored epoch 1
            x, soft, index = loaded.batch(images, e, b)
            pos = cache.positions(b)
            # The replayed input is the stored crop of the stored images, as an independent computation.
            manual = crop.apply(images[cache.order[e % 3, pos]], cache.crops[e % 3, pos].float())
            if mix == "mixup":
                lam = float(cache.lam[e % 3, b])
                manual = lam * manual + (1 - lam) * manual[cache.partner[e % 3, pos]]
            elif mix == "cutmix":
                top, left, bottom, right = cache.box[e % 3, b].tolist()
                partner = manual[cache.partner[e % 3, pos]]
                manual[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
            torch.testing.assert_close(x, manual)
            # The stored labels are the teacher's logits on exactly that input, in fp16.
            torch.testing.assert_close(soft, teacher(x).half().float())
            assert torch.equal(index, cache.order[e % 3, pos])
    first, again = (
        build_relabel_cache(teacher, images, epochs=3, batch_size=3, crop=crop, mix="cutmix", seed=5)
        for _ in range(2)
    )
    assert torch.equal(again.crops, first.crops) and torch.equal(again.logits, first.logits)
    assert torch.equal(again.box, first.box) and torch.equal(again.partner, first.partner)


def test_relabel_cache_trains_a_student_deterministically():
    dm = DigitsDataModule()
    teacher = BNNet().eval()
    from lightning_distill.dataset_distillation import random_real_subset

    x, y = random_real_subset(dm, 1, seed=0)
    cache = build_relabel_cache(teacher, x, epochs=2, batch_size=5, mix="cutmix")
    model_fn = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # noqa: E731
    a = evaluate_relabel_cache(x, y, cache, dm, model_fn, epochs=3, seeds=(0,))
    b = evaluate_relabel_cache(x, y, cache, dm, model_fn, epochs=3, seeds=(0,))
    assert a.accuracies == b.accuracies and 0.0 <= a.mean <= 1.0


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
