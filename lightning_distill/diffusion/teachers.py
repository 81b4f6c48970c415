"""Getting a trained diffusion teacher: trained on first use by denoising, then cached.

:func:`trained_denoiser` does for denoisers what
:func:`~lightning_distill.models.trained_classifier` does for classifiers: it returns the module it
is given with trained weights, from the user's checkpoint, from the cache, or trained now with the
denoising loss of the schedule's parameterisation (ε for ε-prediction). Use it as a ``class_path``
teacher so that a config runs on a fresh clone::

    teacher:
      class_path: lightning_distill.diffusion.teachers.trained_denoiser
      init_args:
        model: {class_path: lightning_distill.diffusion.tiny_unet, init_args: {sample_size: 8}}
        data: {class_path: lightning_distill.data.DigitsDataModule, init_args: {batch_size: 128}}
        schedule: {class_path: lightning_distill.diffusion.ddpm_schedule}
        steps: 3000

The cache key covers the architecture, the data settings, the schedule and every training
setting, so a changed config trains a new teacher; a file lock makes concurrent processes (DDP
ranks) train it once.

:func:`denoising_batch_loss` is one training step's forward pass, not a loss in the sense of
:mod:`lightning_distill.losses`: it draws ``t`` and the noise, noises the batch and runs the model,
then takes the flat mean ``(pred - target).square().mean()`` over every element.
:func:`~lightning_distill.losses.distribution_matching.denoising_loss` (the pure loss) averages
per sample first; the two agree in value but not in the last bits, and the digits teacher is
trained (and cached) with this arithmetic. It stays here so that a fresh clone trains that teacher
bit for bit: the cache key does not cover the code, so other arithmetic would train other
weights under the same key.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import model_output
from lightning_distill.diffusion.plumbing import model_null_label
from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.diffusion.timesteps import uniform_timesteps
from lightning_distill.models.first_use_cache import cached_training, load_weights, loss_summary
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["denoising_batch_loss", "trained_denoiser"]


def denoising_batch_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor:
    """The denoising loss ``mean ‖model(x_t, t) − y‖²`` of one batch, t ~ U[0, T), x_t = α_t x0 + σ_t ε.

    ``y`` is the schedule's regression target (ε for ε-prediction, x0, v or the flow velocity).

    Args:
        model: a denoiser with the diffusers call signature.
        schedule: the noise schedule; its ``prediction_type`` is what ``model`` learns to predict.
        x0: clean samples ``(B, ...)``.
        generator: source of the timesteps and the noise.
        cond: optional condition (class labels ``(B,)``).

    Returns:
        A float32 scalar.

    Example:
        >>> from lightning_distill.diffusion import MLPDenoiser, ddpm_schedule
        >>> loss = denoising_batch_loss(MLPDenoiser(dim=2, hidden=8, depth=1), ddpm_schedule(), torch.randn(4, 2))
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """
    T = schedule.num_train_timesteps
    t = uniform_timesteps(x0.shape[0], 0, T, num_train_timesteps=T, generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t)
    return (model_output(model, x_t, t, cond).float() - target).square().mean()


def _schedule_spec(schedule: NoiseSchedule) -> str:
    """Everything that defines the schedule, as a string for the cache key."""
    config = {k: v for k, v in dict(schedule.scheduler.config).items() if not k.startswith("_")}
    return repr(schedule) + json.dumps(config, sort_keys=True, default=str)


def _fit_denoiser(
    model: nn.Module,
    data: L.LightningDataModule,
    schedule: NoiseSchedule,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    class_conditional: bool,
    label_dropout: float = 0.0,
) -> list[float]:
    """AdamW on the denoising loss with linear warm-up and cosine decay; returns the per-step losses."""
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + torch.cos(torch.tensor(progress * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(int(torch.initial_seed()))
    null_label = model_null_label(model) if label_dropout > 0 else None
    losses: list[float] = []
    model.train()

    def batches():
        for epoch in itertools.count():
            sampler = getattr(loader, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
            yield from loader

    for _, batch in zip(range(steps), batches()):
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        cond = None
        if class_conditional:
            cond = batch[1]
            if null_label is not None:  # classifier-free guidance training: some labels become the null label
                dropped = torch.rand(cond.shape, generator=generator) < label_dropout
                cond = torch.where(dropped.to(cond.device), torch.full_like(cond, null_label), cond)
        loss = denoising_batch_loss(model, schedule, x0, generator, cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def trained_denoiser(
    model: nn.Module,
    data: L.LightningDataModule | None = None,
    schedule: NoiseSchedule | None = None,
    steps: int = 3000,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    warmup: int = 100,
    class_conditional: bool = False,
    label_dropout: float = 0.0,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> nn.Module:
    """Return ``model`` with trained denoiser weights: from ``checkpoint``, from the cache, or trained now.

    Training re-initialises the weights from ``seed`` and minimises the denoising loss
    (:func:`denoising_batch_loss`: ``mean ‖model(x_t, t) − y‖²`` with ``t ~ U[0, T)`` and ``y`` the
    target of ``schedule.prediction_type``) on the training images of ``data`` with AdamW, a linear
    warm-up and a cosine decay. The weights are cached under ``cache_dir`` by a key of the
    architecture, the data settings, the schedule and these arguments; a later call with the same
    settings loads them and trains nothing. A record ``<name>.json`` next to the weights keeps the
    first and last training losses and the training time.

    The returned module is in eval mode and carries ``distill_source`` (where its weights came
    from) and ``training_record`` (the JSON record; empty for a ``checkpoint``).

    Args:
        model: the denoiser (e.g. :func:`~lightning_distill.diffusion.tiny_unet`), called ``model(x_t, t[, y])``.
        data: a datamodule serving ``(x, y)`` batches (e.g. ``DigitsDataModule``); required unless
            ``checkpoint`` is given.
        schedule: the noise schedule; ``None`` is ``NoiseSchedule.ddpm()`` (scaled-linear betas, ε).
        steps: optimizer steps.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps.
        class_conditional: feed the batch labels as ``class_labels`` (a class-conditional model).
        label_dropout: with ``class_conditional``, the probability that a label is replaced by the
            model's null label (:func:`~lightning_distill.diffusion.plumbing.model_null_label`), so that
            the teacher also learns the unconditional prediction of classifier-free guidance (Ho &
            Salimans use 0.1-0.2); 0 trains no null label.
        seed: seed of the initialisation, the data order and the training noise.
        checkpoint: path of the user's trained weights (a ``state_dict`` or a Lightning checkpoint).
        cache_dir: where cached teachers live (default :func:`~lightning_distill.models.default_cache_dir`).
        retrain: ignore a cached teacher and train again.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: neither ``checkpoint`` nor ``data`` is given, ``steps`` < 1, ``warmup`` < 0,
            ``lr`` <= 0, or ``label_dropout`` outside [0, 1) or set for a model without a null label.
        TypeError: ``schedule`` is not a ``NoiseSchedule``.
    """
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        model.training_record = {}
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_denoiser` needs `checkpoint` (your trained weights) or `data` (to train the denoiser on "
            "first use); set `teacher.init_args.checkpoint` or `teacher.init_args.data`."
        )
    schedule = NoiseSchedule.ddpm() if schedule is None else schedule
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"`schedule` must be a NoiseSchedule, got {type(schedule).__name__}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`warmup` must be an integer >= 0, got {warmup!r}.")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr!r}.")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"`label_dropout` must be in [0, 1), got {label_dropout!r}.")
    if label_dropout > 0 and (not class_conditional or model_null_label(model) is None):
        raise ValueError(
            "`label_dropout` > 0 needs `class_conditional: true` and a model with a null label (a UNet2DModel "
            f"with `num_class_embeds` = classes + 1, or a class-conditional MLPDenoiser); got {type(model).__name__}."
        )
    settings: dict[str, Any] = {
        "kind": "denoiser",
        "schedule": _schedule_spec(schedule),
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "class_conditional": class_conditional,
        "seed": seed,
    }
    if label_dropout > 0:  # only then, so that the cache keys of existing teachers stay as they were
        settings["label_dropout"] = label_dropout

    def fit() -> dict[str, Any]:
        losses = _fit_denoiser(
            model,
            data,
            schedule,
            steps=steps,
            lr=lr,
            weight_decay=weight_decay,
            warmup=warmup,
            class_conditional=class_conditional,
            label_dropout=label_dropout,
        )
        return loss_summary(losses, "Denoiser trained: loss")

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        stem=f"{type(model).__name__}-denoiser",
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
        record_settings={k: v for k, v in settings.items() if k != "schedule"},
    )
    last = info.get("last_loss")
    model.distill_source = f"trained_denoiser cache {weights}" + (
        f" (final denoising loss {last:.4f})" if last is not None else ""
    )
    model.training_record = info
    return model.eval()
