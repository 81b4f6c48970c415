"""DGR (GloReDi): distil a dense-view global representation into a sparse-view CT network.

"Learning to Distill Global Representation for Sparse-View CT" (Li, Ma, Chen, Zhang, Shan; ICCV 2023,
arXiv 2308.08463). Official code: longzilicart/GloReDi (``src/FreqCDL_trainer.py``
``FreqCDL_Trainer_EMA.train``, ``src/Model/Freq_GloRei.py`` ``GloRei_EMA``, ``src/MyModel/BandPass_Module.py``).

One image-domain encoder-decoder with two paths (the official ``GloRei_EMA``): the student path
``decoder(encoder(FBP_sparse))`` and the teacher path ``decoder_ema(encoder_T(FBP_dense))``, where
``encoder_T`` starts as a copy of the student encoder and trains on its own, and ``decoder_ema`` is an
EMA of the student decoder (never trained by gradient), so both latents live in one space.
Each training batch (the official order):

1. ``decoder_ema ← d · decoder_ema + (1 − d) · decoder`` (``ema_decay`` d; the official default 0 copies).
2. Teacher turn: ``L_T = pixel(T(x_dense), y) + w_f · focal(T(x_dense), y)``; steps ``encoder_T`` only.
3. ``z_T = encoder_T(x_dense)`` without gradient (after the teacher's step).
4. Student turn: ``L_S = pixel + w_f focal + w_cos (1 − cos)(z_S[:k], z_T[:k]) + w_scl SupCon_band(z_S[:k], z_T[:k])``,
   ``k`` half the latent channels; steps the student encoder and decoder.
5. After ``finetune_epoch`` epochs only the student trains, with ``pixel + focal`` (the official finetune stage).

================================  ================================  =============================
official (``Main.py``/``RUN.sh``)  config key (``model.init_args``)  default
================================  ================================  =============================
pixel loss ``sml1``                ``loss_weights.pixel``            1.0 (teacher: ``teacher_pixel``)
``theta_freq``                     ``loss_weights.freq``             1.0 (teacher: ``teacher_freq``)
``theta_tea_sup``                  ``loss_weights.cos``              0.002 (``RUN.sh``; ``Main.py`` 0.1)
``theta_scl``                      ``loss_weights.scl``              1e-6
``momentum`` (EMA decoder)         ``ema_decay``                     0.0
``channel_ratio``                  ``channel_ratio``                 0.5
``scl_freq_ratio/_out_ratio``      ``contrastive_band``              [0.1, 0.6]
``scl_temperature``                ``temperature``                   0.07
``scl_memory_length``              ``memory_length``                 300
``finetune_epoch``                 ``finetune_epoch``                140 (of 150 epochs)
Adam lr 5e-4, β (0.9, 0.999)       ``optimizer``, ``teacher_optimizer``  :func:`dgr_adam`
================================  ================================  =============================
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses.radiance import (
    focal_frequency_loss,
    latent_channels,
    latent_cosine_loss,
    smooth_l1_pixel_loss,
)
from lightning_distill.module import DistillationModule
from lightning_distill.radiance.dgr import LatentMemoryBank, band_contrastive_loss, ct_metrics
from lightning_distill.utils.checks import check_option
from lightning_distill.utils.ema import EMAUpdater

__all__ = ["DGR", "dgr_adam"]

_MODULE_ARGS = ["student", "optimizer", "teacher_optimizer", "lr_scheduler"]


def dgr_adam(params: Any) -> torch.optim.Optimizer:
    """Adam, lr 5e-4, β (0.9, 0.999): the official ``RUN.sh`` (its StepLR halves it every 45 epochs)."""
    return torch.optim.Adam(params, lr=5e-4, betas=(0.9, 0.999))


def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 3:
        raise ValueError(
            "DGR batches must be (sparse_fbp, dense_fbp, target), each (B, C, H, W), as "
            "`lightning_distill.data.ct.SparseViewCTDataModule` serves them."
        )
    sparse, dense, target = batch
    if not (sparse.shape == dense.shape == target.shape) or sparse.ndim != 4:
        raise ValueError(
            f"sparse_fbp {tuple(sparse.shape)}, dense_fbp {tuple(dense.shape)} and target {tuple(target.shape)} "
            "must be equal (B, C, H, W) shapes."
        )
    return sparse, dense, target


class DGR(DistillationModule):
    """GloReDi's dual-path distillation for sparse-view CT (manual optimization, two optimizers).

    Args:
        student: an encoder-decoder with ``encoder`` and ``decoder`` submodules, ``forward = decoder ∘ encoder``
            (:class:`~lightning_distill.radiance.networks.CTEncoderDecoder`,
            :class:`~lightning_distill.radiance.networks.VAEEncoderDecoder`).
        ema_decay: ``d`` of the teacher decoder's EMA of the student decoder (0: a copy each step).
        channel_ratio: share of the latent channels (the leading ones) the cosine and contrastive terms use.
        contrastive_band: ``(low, high]`` square band of DCT coefficients the contrastive term keeps.
        temperature: SupCon temperature.
        memory_length: student embeddings in the contrastive memory bank (the term is 0 until it is full).
        finetune_epoch: after this epoch only the student trains (pixel + focal); ``None``: never.
        max_grad_norm: gradient-norm clipping of each turn; ``None`` (official): none.
        loss_weights: ``pixel``, ``freq``, ``cos``, ``scl`` (student), ``teacher_pixel``, ``teacher_freq``.
        optimizer: the student's (encoder and decoder) optimizer.
        teacher_optimizer: the teacher encoder's optimizer (default: ``optimizer``).
        lr_scheduler: optional scheduler for each optimizer, stepped on each of its updates.

    Raises:
        ValueError: an argument out of range (naming the config key), or a student without
            ``encoder``/``decoder``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("pixel", "freq", "cos", "scl", "teacher_pixel", "teacher_freq")
    default_loss_weights: ClassVar[dict[str, float]] = {
        "pixel": 1.0,
        "freq": 1.0,
        "cos": 0.002,
        "scl": 1e-6,
        "teacher_pixel": 1.0,
        "teacher_freq": 1.0,
    }
    requires_teacher: ClassVar[bool] = False
    # the contrastive memory bank is filled with every rank's embeddings (one bank on all ranks)
    global_batch_state: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(
        self,
        student: nn.Module,
        ema_decay: float = 0.0,
        channel_ratio: float = 0.5,
        contrastive_band: Sequence[float] = (0.1, 0.6),
        temperature: float = 0.07,
        memory_length: int = 300,
        finetune_epoch: int | None = 140,
        max_grad_norm: float | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = dgr_adam,
        teacher_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(student, loss_weights=loss_weights, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.save_hyperparameters(ignore=_MODULE_ARGS)
        self.automatic_optimization = False
        for part in ("encoder", "decoder"):
            if not isinstance(getattr(student, part, None), nn.Module):
                raise ValueError(
                    f"`student` must have `encoder` and `decoder` submodules (got {type(student).__name__} "
                    f"without `{part}`); use lightning_distill.radiance.networks.CTEncoderDecoder or "
                    "VAEEncoderDecoder in `model.init_args.student`."
                )
        check_option(0.0 <= ema_decay < 1.0, "ema_decay", ema_decay, "in [0, 1)")
        check_option(0.0 < channel_ratio <= 1.0, "channel_ratio", channel_ratio, "in (0, 1]")
        band = tuple(float(v) for v in contrastive_band)
        check_option(len(band) == 2 and 0 <= band[0] < band[1] <= 1, "contrastive_band", contrastive_band,
                     "[low, high] with 0 <= low < high <= 1")  # fmt: skip
        check_option(temperature > 0, "temperature", temperature, "> 0")
        check_option(isinstance(memory_length, int) and memory_length >= 1, "memory_length", memory_length,
                     "an int >= 1")  # fmt: skip
        check_option(finetune_epoch is None or (isinstance(finetune_epoch, int) and finetune_epoch >= -1),
                     "finetune_epoch", finetune_epoch, "None or an int >= -1")  # fmt: skip
        check_option(
            max_grad_norm is None or max_grad_norm > 0, "max_grad_norm", max_grad_norm, "> 0 or null"
        )
        self.ema_decay, self.channel_ratio, self.contrastive_band = float(ema_decay), channel_ratio, band
        self.temperature, self.finetune_epoch, self.max_grad_norm = temperature, finetune_epoch, max_grad_norm
        self.teacher_optimizer = teacher_optimizer
        # The teacher path: its own encoder (a trainable copy) and an EMA copy of the student decoder.
        self.teacher_encoder = copy.deepcopy(student.encoder).requires_grad_(True).train()
        self.register_frozen("teacher_decoder", copy.deepcopy(student.decoder))
        self.memory = LatentMemoryBank(memory_length)

    # ------------------------------------------------------------------ the paper, one method per equation
    def teacher_forward(self, dense: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher path: ``z_T = encoder_T(x_dense)``, ``decoder_ema(z_T)``; returns (image, latent)."""
        latent = self.teacher_encoder(dense)
        return self._skip(self.teacher_decoder(latent), dense), latent

    def student_forward(self, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """Student path: ``z_S = encoder(x_sparse)``, ``decoder(z_S)``; returns (image, latent)."""
        latent = self.student.encoder(sparse)
        return self._skip(self.student.decoder(latent), sparse), latent

    def _skip(self, out: Tensor, x: Tensor) -> Tensor:
        """The official ``basic_forward``: ``decoder(z) + x`` when the network has ``global_skip`` on."""
        return out + x if getattr(self.student, "global_skip", False) else out

    def image_terms(self, pred: Tensor, target: Tensor, prefix: str = "") -> dict[str, Tensor]:
        """``pixel`` = mean Smooth-L1 (β = 1), ``freq`` = focal frequency loss (α = 1), to the label."""
        return {
            f"{prefix}pixel": smooth_l1_pixel_loss(pred, target),
            f"{prefix}freq": focal_frequency_loss(pred, target),
        }

    def cosine_loss(self, student_latent: Tensor, teacher_latent: Tensor) -> Tensor:
        """``mean (1 − cos)`` along channels between the leading ``channel_ratio`` of the latents; teacher detached."""
        return latent_cosine_loss(student_latent, teacher_latent, channel_ratio=self.channel_ratio)

    def contrastive_loss(self, student_latent: Tensor, teacher_latent: Tensor) -> Tensor:
        """Band-pass SupCon between student and teacher latents, against the memory bank of student latents."""
        return band_contrastive_loss(
            student_latent, teacher_latent, self.memory, channel_ratio=self.channel_ratio,
            band=self.contrastive_band, temperature=self.temperature, gather=self._gather,
        )  # fmt: skip

    def _gather(self, embeddings: Tensor) -> Tensor:
        """Every rank's embeddings in rank order ``(world · B, D)``: one memory bank on all ranks under DDP."""
        if self._trainer is None or self._trainer.world_size == 1:
            return embeddings
        return self.all_gather(embeddings).flatten(0, 1)

    @torch.no_grad()
    def update_teacher_decoder(self) -> None:
        """Step 1: ``decoder_ema ← d · decoder_ema + (1 − d) · decoder`` (buffers copied)."""
        EMAUpdater(self.student.decoder, self.teacher_decoder, buffers="copy").update(self.ema_decay)

    def in_finetune_stage(self) -> bool:
        """Whether the epoch is past ``finetune_epoch`` (the official ``epoch > finetune_epoch``)."""
        return self.finetune_epoch is not None and self.current_epoch > self.finetune_epoch

    def training_step(self, batch: Any, batch_idx: int) -> None:
        sparse, dense, target = _unpack(batch)
        student_opt, teacher_opt = self.optimizers()
        if self.in_finetune_stage():
            # 5. Finetune: the student alone.
            pred, _ = self.student_forward(sparse)
            self.update(
                student_opt, self.image_terms(pred, target), turn="student", max_grad_norm=self.max_grad_norm
            )
            return
        # 1. The teacher decoder follows the student decoder.
        self.update_teacher_decoder()
        # 2. Teacher turn on the dense-view input.
        teacher_pred, _ = self.teacher_forward(dense)
        self.update(
            teacher_opt, self.image_terms(teacher_pred, target, prefix="teacher_"), turn="teacher",
            max_grad_norm=self.max_grad_norm,
        )  # fmt: skip
        # 3. The teacher's latent after its step, without gradient.
        with torch.no_grad():
            teacher_latent = self.teacher_encoder(dense)
        # 4. Student turn: image terms plus the two latent-distillation terms.
        pred, student_latent = self.student_forward(sparse)
        terms = self.image_terms(pred, target)
        terms["cos"] = self.cosine_loss(student_latent, teacher_latent)
        terms["scl"] = self.contrastive_loss(student_latent, teacher_latent)
        self.update(student_opt, terms, turn="student", max_grad_norm=self.max_grad_norm)
        self.log_diagnostics({"memory_filled": float(self.memory.filled)})

    # -------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """PSNR/SSIM of ``model`` on the sparse-view input (data range 1)."""
        sparse, _, target = _unpack(batch)
        return ct_metrics(model(sparse), target)

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        super()._evaluation_step(batch, stage)
        sparse, dense, target = _unpack(batch)
        teacher = ct_metrics(self.teacher_forward(dense)[0], target)
        fbp = ct_metrics(sparse, target)
        values = {f"{stage}/teacher_{k}": v for k, v in teacher.items()}
        values.update({f"{stage}/fbp_{k}": v for k, v in fbp.items()})
        self.log_dict(values, on_epoch=True, sync_dist=True, batch_size=sparse.shape[0])

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        sparse = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.student(sparse).clamp(0, 1)

    def configure_optimizers(self) -> Any:
        """Two optimizers: the student (encoder, decoder), then the teacher encoder."""
        optimizers = [
            self.optimizer(list(self.student.parameters())),
            (self.teacher_optimizer or self.optimizer)(list(self.teacher_encoder.parameters())),
        ]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(opt) for opt in optimizers]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        channels = getattr(self.student, "latent_channels", None)
        if isinstance(channels, int):
            latent_channels(channels, self.channel_ratio)
