"""trained_denoiser: it learns to denoise, caches by configuration, and loads user checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_distill.data import DigitsDataModule
from lightning_distill.diffusion import ddpm_schedule, tiny_unet
from lightning_distill.diffusion.teachers import denoising_batch_loss, trained_denoiser
from lightning_distill.models.pretrained import reinitialize


def _unet() -> torch.nn.Module:
    return tiny_unet(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4)


def _data() -> DigitsDataModule:
    return DigitsDataModule(batch_size=32)


def _held_out_loss(model: torch.nn.Module, schedule) -> float:
    """Denoising MSE on validation digits with fixed t and noise, computed here from its definition."""
    data = _data()
    data.setup()
    x0 = next(iter(data.val_dataloader()))[0][:128]
    gen = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    with torch.no_grad():
        return float((model(x_t, t).sample - eps).square().mean())


def test_training_lowers_the_held_out_denoising_loss(tmp_path) -> None:
    schedule = ddpm_schedule()
    untrained = _unet()
    torch.manual_seed(0)
    reinitialize(untrained)
    before = _held_out_loss(untrained, schedule)
    model = trained_denoiser(_unet(), _data(), schedule, steps=60, lr=3e-3, warmup=5, cache_dir=str(tmp_path))
    assert not model.training
    after = _held_out_loss(model, schedule)
    assert after < 0.8 * before, (before, after)
    record = model.training_record
    assert record["last_loss"] < record["first_loss"]


def test_cache_is_reused_and_keyed_by_configuration(tmp_path, monkeypatch) -> None:
    schedule = ddpm_schedule()
    first = trained_denoiser(_unet(), _data(), schedule, steps=3, warmup=1, cache_dir=str(tmp_path))
    files = sorted((tmp_path / "teachers").glob("*.pt"))
    assert len(files) == 1

    import lightning_distill.diffusion.teachers as teachers

    def fail(*args, **kwargs):
        raise AssertionError("the cached denoiser must not be trained again")

    monkeypatch.setattr(teachers, "_fit_denoiser", fail)
    again = trained_denoiser(_unet(), _data(), ddpm_schedule(), steps=3, warmup=1, cache_dir=str(tmp_path))
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert json.loads(files[0].with_suffix(".json").read_text())["steps"] == 3
    monkeypatch.undo()

    # Another training setting, another schedule or another seed is another teacher.
    trained_denoiser(_unet(), _data(), schedule, steps=4, warmup=1, cache_dir=str(tmp_path))
    trained_denoiser(_unet(), _data(), ddpm_schedule(beta_schedule="linear"), steps=3, warmup=1,
                     cache_dir=str(tmp_path))  # fmt: skip
    trained_denoiser(_unet(), _data(), schedule, steps=3, warmup=1, seed=1, cache_dir=str(tmp_path))
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 4


def test_checkpoint_is_loaded_without_training(tmp_path) -> None:
    source = _unet()
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    model = trained_denoiser(_unet(), checkpoint=str(path))
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert str(path) in model.distill_source


def test_invalid_arguments_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        trained_denoiser(_unet())
    with pytest.raises(ValueError, match="`steps`"):
        trained_denoiser(_unet(), _data(), steps=0, cache_dir=str(tmp_path))
    with pytest.raises(TypeError, match="`schedule`"):
        trained_denoiser(_unet(), _data(), schedule="ddpm", cache_dir=str(tmp_path))


def test_denoising_batch_loss_matches_its_definition() -> None:
    schedule = ddpm_schedule()
    model = _unet()
    x0 = torch.randn(6, 1, 8, 8)
    loss = denoising_batch_loss(model, schedule, x0, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (6,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    with torch.no_grad():
        expected = (model(x_t, t).sample - eps).square().mean()
    torch.testing.assert_close(loss.detach(), expected)
