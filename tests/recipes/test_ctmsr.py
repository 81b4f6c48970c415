"""CTMSR recipe: losses against direct formulas, the consistency pair, the self-copy schedule, gradients, bad args."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.super_resolution import SuperResolutionDataModule
from lightning_distill.losses.super_resolution import (
    distribution_trajectory_matching_loss,
    feature_distance_loss,
    inverse_l1_weight,
)
from lightning_distill.models.classifiers import SmallCNN
from lightning_distill.recipes.ctmsr import CTMSR
from lightning_distill.super_resolution.denoisers import LRConditionedUNet
from lightning_distill.super_resolution.edm_sr import annealed_num_steps, perceptual_distance
from lightning_distill.super_resolution.metrics import FeatureDistance
from tests.conftest import quiet_trainer_kwargs


def make(**kwargs) -> CTMSR:
    torch.manual_seed(0)
    args = (
        dict(
            student=LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16)),
            perceptual=FeatureDistance(SmallCNN(width=8, depth=1), ["stem", "layer1"]),
            noise_seed=0,
        )
        | kwargs
    )
    return CTMSR(**args)


def data() -> SuperResolutionDataModule:
    return SuperResolutionDataModule(scale=2, hr_size=8, source="digits", batch_size=4, test_size=8)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 4, 4, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)


# ---------------------------------------------------------------------------------------------- losses
def test_feature_distance_loss_matches_a_naive_computation():
    a = [torch.randn(2, 4, 3, 3), torch.randn(2, 2, 1, 1)]
    b = [torch.randn(2, 4, 3, 3), torch.randn(2, 2, 1, 1)]
    expected = torch.zeros(2)
    for x, y in zip(a, b):
        for i in range(2):
            for h in range(x.shape[2]):
                for w in range(x.shape[3]):
                    u, v = x[i, :, h, w], y[i, :, h, w]
                    expected[i] += ((u / u.norm() - v / v.norm()) ** 2).sum() / (x.shape[2] * x.shape[3])
    torch.testing.assert_close(feature_distance_loss(a, b, reduction="none"), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same .*number of layers"):
        feature_distance_loss(a, b[:1])


def test_dtm_loss_is_half_weighted_distance_to_the_shifted_target_and_moves_sr_by_minus_g():
    sr = torch.randn(2, 3, 4, 4, requires_grad=True)
    fake, real = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    hr = torch.randn(2, 3, 4, 4)
    w = 1 / (sr.detach() - hr).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(inverse_l1_weight(sr, hr), w)
    loss = distribution_trajectory_matching_loss(sr, fake, real, weight=w)
    g = fake - real
    torch.testing.assert_close(loss, (0.5 * w * g.pow(2).mean(dim=(1, 2, 3))).mean())
    loss.backward()
    expected_grad = w.view(-1, 1, 1, 1) * g / (3 * 4 * 4) / 2  # d/dSR of ½ w mean(g²), averaged over B = 2
    torch.testing.assert_close(sr.grad, expected_grad)
    # a per-image distance (LPIPS in the official code) is applied to (SR, SR − g)
    d = distribution_trajectory_matching_loss(
        sr, fake, real, distance=lambda a, b: (a - b).abs().sum(dim=(1, 2, 3))
    )
    torch.testing.assert_close(d, 0.5 * g.abs().sum(dim=(1, 2, 3)).mean())
    with pytest.raises(ValueError, match="weight"):
        distribution_trajectory_matching_loss(sr, fake, real, weight=torch.ones(3))


def test_consistency_loss_is_perceptual_plus_charbonnier_to_the_detached_target():
    recipe = make()
    sr, target = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 8, 8)
    terms = recipe.consistency_loss(sr, target)
    torch.testing.assert_close(terms["charbonnier"], ((sr - target) ** 2 + 1e-12).sqrt().mean())
    expected = recipe.perceptual((sr.detach() + 1) / 2, (target + 1) / 2).mean()
    torch.testing.assert_close(terms["perceptual"], expected)


# ---------------------------------------------------------------------------------------------- the step
def test_student_sees_the_noisier_neighbour_of_the_target_on_the_annealed_grid(monkeypatch):
    recipe = make()
    calls = []
    original = recipe.denoise

    def spy(network, x, sigma, lr):
        calls.append((network, sigma.clone(), torch.is_grad_enabled()))
        return original(network, x, sigma, lr)

    monkeypatch.setattr(recipe, "denoise", spy)
    recipe.log_losses = lambda terms: terms  # no trainer to log to
    terms = recipe.training_step(batch(), 0)
    assert set(terms) == {"perceptual", "charbonnier"}
    (net_t, sigma_t, grad_t), (net_s, sigma_s, grad_s) = calls
    assert net_t is recipe.student and net_s is recipe.student and not grad_t and grad_s
    step = 1.0 / recipe.num_steps  # the official grid: σ_i = i / N
    torch.testing.assert_close(sigma_s - sigma_t, torch.full_like(sigma_t, step))
    assert recipe.num_steps == 4


def test_stage_two_adds_dtm_and_gradients_reach_only_the_student():
    recipe = make()
    recipe.log_losses = lambda terms: terms
    recipe.refresh_round, recipe.num_steps = 1, 3
    frozen = {name: p.clone() for name, p in recipe.frozen_copy.named_parameters()}
    terms = recipe.training_step(batch(), 0)
    assert set(terms) == {"perceptual", "charbonnier", "dtm"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in recipe.student.parameters())
    for module in (recipe.frozen_copy, recipe.perceptual):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    for name, p in recipe.frozen_copy.named_parameters():
        torch.testing.assert_close(p, frozen[name])


def test_one_step_evaluation_of_a_tiny_unet_gives_sr_metrics():
    recipe = make()
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)  # SSIM needs 11 pixels after the border
    metrics = recipe.evaluate(recipe.student, (lr, hr))
    assert set(metrics) == {"psnr", "ssim", "psnr_rgb", "perceptual"}
    assert all(torch.isfinite(v) for v in metrics.values())


# ---------------------------------------------------------------------------------------------- schedule
class _Recording(CTMSR):
    """Records, at the start of every training step (after the schedules ran), what the step sees."""

    def training_step(self, batch, batch_idx):
        self.rows.append(
            (
                self.trainer.global_step,
                self.num_steps,
                self.refresh_round,
                copy.deepcopy(self.frozen_copy.state_dict()),
                copy.deepcopy(self.student.state_dict()),
                copy.deepcopy(self.ema_student.state_dict()),
            )
        )
        return super().training_step(batch, batch_idx)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_copy_refreshes_exactly_on_schedule_and_is_never_trained(tmp_path):
    torch.manual_seed(0)
    recipe = _Recording(
        student=LRConditionedUNet.tiny(sample_size=8, image_channels=3, block_out_channels=(8, 16)),
        perceptual=FeatureDistance(SmallCNN(width=8, depth=1), ["stem", "layer1"]),
        consistency_steps=4,
        trajectory_steps=4,
        refresh_every=2,
        ema_decay=0.5,
    )
    recipe.rows = []
    trainer = L.Trainer(max_steps=9, default_root_dir=tmp_path, limit_val_batches=0, **quiet_trainer_kwargs())
    trainer.fit(recipe, datamodule=data())
    recorder = recipe
    steps = [row[0] for row in recorder.rows]
    assert steps == list(range(9))
    assert [row[1] for row in recorder.rows] == [annealed_num_steps(s, 4) for s in steps]
    assert [row[2] for row in recorder.rows] == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    for (step, _, _, frozen, student, ema), previous in zip(recorder.rows[1:], recorder.rows[:-1]):
        if step == 4:  # stage 2 starts from the EMA (the official run loads the stage-1 params_ema)
            assert _same(frozen, ema) and not _same(frozen, student)
        elif step == 6:  # refresh from the live student
            assert _same(frozen, student)
        else:  # unchanged otherwise: never trained
            assert _same(frozen, previous[3])
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimizer_params & {id(p) for p in recipe.frozen_copy.parameters()}
    assert optimizer_params == {id(p) for p in recipe.student.parameters()}


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perceptual": None}, "perceptual"),
        ({"initial_steps": 0}, "initial_steps"),
        ({"refresh_every": 0}, "refresh_every"),
        ({"trajectory_t_range": (0.5, 0.1)}, "trajectory_t_range"),
        ({"trajectory_weighting": "lpips"}, "trajectory_weighting"),
        ({"sigma_max": 0.0}, "sigma_max"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"loss_weights": {"gan": 1.0}}, "gan"),
    ],
)
def test_bad_arguments_are_rejected_with_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_without_a_perceptual_module_the_dtm_distance_is_the_squared_error():
    recipe = make(perceptual=None, loss_weights={"perceptual": 0.0})
    recipe.log_losses = lambda terms: terms
    recipe.refresh_round = 1
    terms = recipe.training_step(batch(), 0)
    assert set(terms) == {"charbonnier", "dtm"}


def test_bad_batches_are_rejected():
    recipe = make()
    with pytest.raises(ValueError, match="integer scale"):
        recipe.training_step((torch.rand(2, 3, 3, 3), torch.rand(2, 3, 8, 8)), 0)
    with pytest.raises(ValueError, match="perceptual|same shape"):
        perceptual_distance(recipe.perceptual, torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4))


def test_pictures_show_the_student():
    from lightning_distill.callbacks.super_resolution_pictures import SuperResolutionPictures

    callback = SuperResolutionPictures(num_images=2)
    callback.setup = lambda *a, **k: setattr(callback, "_active", True)  # no image logger in the test
    kwargs = quiet_trainer_kwargs(
        max_steps=2, limit_val_batches=1, val_check_interval=1, callbacks=[callback]
    )
    dm = SuperResolutionDataModule(scale=2, hr_size=16, source="digits", batch_size=4, test_size=16)
    L.Trainer(**kwargs).fit(
        make(student=LRConditionedUNet.tiny(sample_size=16, image_channels=3, block_out_channels=(8, 16))),
        datamodule=dm,
    )
    # rows of 16 px; columns LR, bicubic, student, HR
    assert callback.last_picture is not None and callback.last_picture.shape == (2 * 16 + 2, 4 * 16 + 6, 3)
