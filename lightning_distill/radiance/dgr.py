"""Parts of DGR (GloReDi): the band-pass contrastive step with its memory bank, and CT image metrics.

* :class:`LatentMemoryBank` — a FIFO of the last ``length`` student embeddings (detached,
  L2-normalised), kept as buffers so it is saved and restored with the checkpoint.
* :func:`band_embeddings` — latent -> first ``channel_ratio`` channels -> unnormalised 2-D DCT ->
  the square band ``(low, high]`` -> flattened and L2-normalised ``(B, D)``.
* :func:`band_contrastive_loss` — GloReDi's supervised contrastive term: the student and teacher
  embeddings of one slice share a label, the memory bank is one more class; 0 until the bank is full.
* :func:`ct_metrics` — PSNR / SSIM of reconstructions in ``[0, 1]`` (torchmetrics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lightning_distill.losses.radiance import (
    dct2,
    dct_band_mask,
    latent_channels,
    supervised_contrastive_loss,
)
from lightning_distill.utils.checks import check_int

__all__ = ["LatentMemoryBank", "band_contrastive_loss", "band_embeddings", "ct_metrics"]


class LatentMemoryBank(nn.Module):
    """FIFO of the ``length`` newest embeddings ``(length, D)``; ``D`` is fixed by the first :meth:`push`.

    Args:
        length: embeddings kept (GloReDi's ``scl_memory_length``, 300).

    Raises:
        ValueError: ``length`` < 1, or a push of another width than the bank's.
    """

    def __init__(self, length: int = 300) -> None:
        super().__init__()
        check_int("length", length, low=1)
        self.length = length
        self.register_buffer("bank", torch.zeros(length, 0))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))

    @property
    def is_full(self) -> bool:
        return int(self.filled) >= self.length

    @torch.no_grad()
    def push(self, embeddings: Tensor) -> None:
        """Insert ``embeddings`` ``(B, D)`` (detached), overwriting the oldest."""
        embeddings = embeddings.detach().float()
        if self.bank.shape[1] == 0:
            self.bank = torch.zeros(self.length, embeddings.shape[1], device=embeddings.device)
        if embeddings.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"Memory bank holds width {self.bank.shape[1]}, got embeddings {tuple(embeddings.shape)}."
            )
        for row in embeddings[-self.length :]:
            self.bank[int(self.cursor)] = row
            self.cursor.fill_((int(self.cursor) + 1) % self.length)
            self.filled.fill_(min(int(self.filled) + 1, self.length))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        saved = state_dict.get(prefix + "bank")
        if saved is not None and saved.shape != self.bank.shape:  # the width is set by the first push
            self.bank = torch.zeros_like(saved, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def band_embeddings(
    latent: Tensor, *, channel_ratio: float = 0.5, band: tuple[float, float] = (0.1, 0.6)
) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, D)``: first ``int(C·channel_ratio)`` channels, 2-D DCT, band ``(low, high]``, L2-normalised.

    Raises:
        ValueError: a non-square or non-4-D latent, a bad ratio or band.
    """
    if latent.ndim != 4 or latent.shape[-1] != latent.shape[-2]:
        raise ValueError(f"`latent` must be (B, C, h, h), got {tuple(latent.shape)}.")
    keep = latent_channels(latent.shape[1], channel_ratio)
    coeffs = dct2(latent[:, :keep])
    mask = dct_band_mask(latent.shape[-1], band[0], band[1], device=latent.device)
    return F.normalize(coeffs[..., mask].flatten(1), dim=-1)


def band_contrastive_loss(
    student_latent: Tensor,
    teacher_latent: Tensor,
    memory: LatentMemoryBank,
    *,
    channel_ratio: float = 0.5,
    band: tuple[float, float] = (0.1, 0.6),
    temperature: float = 0.07,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """GloReDi's band-pass supervised contrastive loss; pushes the student's embeddings into ``memory``.

    ``gather`` maps this process's embeddings ``(B, D)`` to every process's ``(world · B, D)`` (in rank
    order) before the push, so that under DDP every rank holds the same bank, the one a single process
    with the global batch would hold.

    Embeddings of :func:`band_embeddings`; labels: student ``i`` and teacher ``i`` share label
    ``i + 1``, every memory entry has label 0; SupCon over all ``2B + length`` anchors. While the
    bank is not yet full the loss is 0 (no gradient) and the bank only fills, as in the official code.
    The teacher side is detached.
    """
    s = band_embeddings(student_latent, channel_ratio=channel_ratio, band=band)
    t = band_embeddings(teacher_latent.detach(), channel_ratio=channel_ratio, band=band)
    pushed = s.detach() if gather is None else gather(s.detach())
    if not memory.is_full:
        memory.push(pushed)
        return s.sum() * 0.0
    b = s.shape[0]
    ids = torch.arange(1, b + 1, device=s.device)
    labels = torch.cat([ids, ids, torch.zeros(memory.length, dtype=torch.long, device=s.device)])
    loss = supervised_contrastive_loss(torch.cat([s, t, memory.bank.to(s)]), labels, temperature=temperature)
    memory.push(pushed)
    return loss


@torch.no_grad()
def ct_metrics(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Mean PSNR (dB) and SSIM of ``pred`` clamped to ``[0, 1]`` against ``target`` ``(B, C, H, W)``, data range 1."""
    pred = pred.float().clamp(0, 1)
    target = target.float()
    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    return {"psnr": psnr.mean(), "ssim": ssim.mean()}
