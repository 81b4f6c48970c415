"""The video denoiser: a diffusers ``UNet3DConditionModel`` conditioned on (class, direction) labels.

:class:`LabelConditionedVideoUNet` turns the moving-glyph labels ``(B, 2)`` into two cross-attention
tokens (one learned embedding table per label, each with a null row for classifier-free guidance)
and calls the UNet with the diffusers convention, ``model(x_t (B, C, F, H, W), t, labels)``.
A real text-to-video UNet is the same class with text embeddings in place of the label tokens.
:func:`tiny_video_unet` builds the CPU-sized UNet; :func:`trained_video_denoiser` returns it trained
by denoising on first use (cached by :func:`~lightning_distill.models.pretrained.cached_training`,
label dropout for guidance) or loaded from the user's checkpoint.
"""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as L
import torch
from diffusers import UNet3DConditionModel
from torch import Tensor, nn

from lightning_distill.diffusion.schedule import NoiseSchedule
from lightning_distill.diffusion.teachers import denoising_batch_loss
from lightning_distill.models.first_use_cache import cached_training, load_weights, loss_summary
from lightning_distill.utils.fingerprint import file_sha256

__all__ = ["LabelConditionedVideoUNet", "tiny_video_unet", "trained_video_denoiser"]


class _Config(dict):
    """What :class:`~lightning_distill.diffusion.consistency.GuidanceConditioned` reads from a model's config."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class LabelConditionedVideoUNet(nn.Module):
    """A ``UNet3DConditionModel`` whose cross-attention tokens are learned embeddings of ``(class, direction)``.

    Label value ``null_label`` (``max(num_classes, num_directions)``) in either column selects that
    column's null embedding (the unconditional prediction of classifier-free guidance).

    Args:
        unet: the diffusers video UNet (``cross_attention_dim`` sets the token width).
        num_classes: glyph classes.
        num_directions: motion directions.

    Raises:
        TypeError: ``unet`` is not a ``UNet3DConditionModel``.

    Example:
        >>> model = LabelConditionedVideoUNet(tiny_video_unet(sample_size=8, channels=(8, 16)))
        >>> model(torch.randn(2, 1, 3, 8, 8), torch.tensor([10, 500]), torch.tensor([[3, 1], [10, 10]])).shape
        torch.Size([2, 1, 3, 8, 8])
    """

    def __init__(self, unet: UNet3DConditionModel, num_classes: int = 10, num_directions: int = 8) -> None:
        super().__init__()
        if not isinstance(unet, UNet3DConditionModel):
            raise TypeError(f"`unet` must be a diffusers UNet3DConditionModel, got {type(unet).__name__}.")
        width = int(unet.config.cross_attention_dim)
        self.unet = unet
        self.num_classes, self.num_directions = int(num_classes), int(num_directions)
        self.null_label = max(self.num_classes, self.num_directions)
        self.class_embedding = nn.Embedding(self.num_classes + 1, width)
        self.direction_embedding = nn.Embedding(self.num_directions + 1, width)
        self.config = _Config(time_cond_proj_dim=unet.config.time_cond_proj_dim)

    def tokens(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Cross-attention tokens ``(B, 2, D)`` of ``labels`` ``(B, 2)`` (``None``: both null)."""
        if labels is None:
            labels = torch.full((batch, 2), self.null_label, dtype=torch.long, device=device)
        if labels.ndim != 2 or labels.shape != (batch, 2) or labels.is_floating_point():
            raise ValueError(
                f"`labels` must be integer (B, 2) = ({batch}, 2) (class, direction), got {tuple(labels.shape)}."
            )
        c, d = labels[:, 0], labels[:, 1]
        c = torch.where(c == self.null_label, self.num_classes, c)
        d = torch.where(d == self.null_label, self.num_directions, d)
        if bool(
            (c < 0).any() or (c > self.num_classes).any() or (d < 0).any() or (d > self.num_directions).any()
        ):
            raise ValueError(
                f"labels out of range: classes must be in [0, {self.num_classes}), directions in "
                f"[0, {self.num_directions}), or {self.null_label} (null); got {labels.tolist()}."
            )
        return torch.stack([self.class_embedding(c), self.direction_embedding(d)], dim=1)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | int,
        labels: Tensor | None = None,
        timestep_cond: Tensor | None = None,
    ) -> Tensor:
        """The UNet's prediction ``(B, C, F, H, W)`` for ``sample`` at ``timestep`` given ``labels``."""
        tokens = self.tokens(labels, sample.shape[0], sample.device).to(sample.dtype)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        return self.unet(sample, t, encoder_hidden_states=tokens, timestep_cond=timestep_cond).sample


def tiny_video_unet(
    sample_size: int = 16,
    in_channels: int = 1,
    channels: tuple[int, int] = (8, 16),
    cross_attention_dim: int = 16,
    attention_head_dim: int = 8,
    norm_num_groups: int = 4,
    time_cond_proj_dim: int | None = None,
) -> UNet3DConditionModel:
    """A two-level ``UNet3DConditionModel`` small enough to train on one CPU thread (cross-attention at the low level)."""
    return UNet3DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _schedule_spec(schedule: NoiseSchedule) -> str:
    """Everything that defines the schedule, for the cache key."""
    config = {k: v for k, v in dict(schedule.scheduler.config).items() if not k.startswith("_")}
    return repr(schedule) + json.dumps(config, sort_keys=True, default=str)


def _fit(
    model: LabelConditionedVideoUNet,
    data: L.LightningDataModule,
    schedule: NoiseSchedule,
    *,
    steps: int,
    lr: float,
    warmup: int,
    label_dropout: float,
) -> list[float]:
    data.setup("fit")
    loader = data.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / max(1, warmup))
            * 0.5
            * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
        ),
    )
    generator = torch.Generator().manual_seed(int(torch.initial_seed()))
    losses: list[float] = []
    model.train()
    while len(losses) < steps:
        for batch in loader:
            if len(losses) == steps:
                break
            x0, labels = batch[0], batch[1]
            dropped = torch.rand(labels.shape, generator=generator) < label_dropout
            labels = torch.where(dropped, torch.full_like(labels, model.null_label), labels)
            loss = denoising_batch_loss(model, schedule, x0, generator, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    return losses


def trained_video_denoiser(
    model: LabelConditionedVideoUNet,
    data: L.LightningDataModule | None = None,
    schedule: NoiseSchedule | None = None,
    steps: int = 2000,
    lr: float = 2e-3,
    warmup: int = 50,
    label_dropout: float = 0.1,
    seed: int = 0,
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    retrain: bool = False,
) -> LabelConditionedVideoUNet:
    """``model`` with trained denoiser weights: from ``checkpoint``, from the cache, or trained now.

    Training minimises the schedule's denoising loss on ``data``'s ``(video, labels)`` batches with
    AdamW (warm-up then cosine decay); each label entry becomes the null label with probability
    ``label_dropout`` so that the model also learns the unconditional prediction of guidance.

    Raises:
        ValueError: neither ``checkpoint`` nor ``data``, ``steps`` < 1, ``lr`` <= 0 or ``label_dropout``
            outside [0, 1).
        TypeError: ``model`` is not a :class:`LabelConditionedVideoUNet`.
    """
    if not isinstance(model, LabelConditionedVideoUNet):
        raise TypeError(f"`model` must be a LabelConditionedVideoUNet, got {type(model).__name__}.")
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.distill_source = f"checkpoint {checkpoint} (sha256 {file_sha256(checkpoint)})"
        return model.eval()
    if data is None:
        raise ValueError(
            "`trained_video_denoiser` needs `checkpoint` or `data`; set `teacher.init_args.data`."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr!r}.")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"`label_dropout` must be in [0, 1), got {label_dropout!r}.")
    schedule = NoiseSchedule.ddpm() if schedule is None else schedule
    settings = {
        "kind": "video_denoiser",
        "schedule": _schedule_spec(schedule),
        "steps": steps,
        "lr": lr,
        "warmup": warmup,
        "label_dropout": label_dropout,
        "seed": seed,
    }

    def fit() -> dict[str, Any]:
        losses = _fit(model, data, schedule, steps=steps, lr=lr, warmup=warmup, label_dropout=label_dropout)
        return loss_summary(losses, "Video denoiser trained: loss")

    weights, info = cached_training(
        model,
        data,
        settings,
        fit,
        seed=seed,
        stem="LabelConditionedVideoUNet-denoiser",
        what=f"{steps} steps",
        cache_dir=cache_dir,
        retrain=retrain,
    )
    model.distill_source = f"trained_video_denoiser cache {weights}"
    model.training_record = info
    return model.eval()
