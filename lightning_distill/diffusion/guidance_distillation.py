"""Guidance distillation: one guidance-conditioned pass in place of classifier-free guidance's two.

Classifier-free guidance evaluates the teacher twice per sampling step,
``ε̃ = (1 + w) ε_T(x, c) − w ε_T(x, ∅)``. Guidance distillation (Meng et al., "On Distillation of
Guided Diffusion Models", arXiv 2210.03142, stage one) trains a student ``ε_S(x, c, w)`` that takes
``w`` as an input (:class:`~lightning_distill.diffusion.consistency.GuidanceConditioned`) to match
that combination over a range of ``w``; sampling then costs one pass per step. LoRA-enhanced
distillation (arXiv 2312.06899) trains only low-rank adapters (peft) on a student initialised from
the teacher, so the base weights are shared and only the adapters have gradients and optimizer state.

* :func:`guidance_distillation_target`: ``(1 + w) f_T(x, c) − w f_T(x, ∅)`` in the teacher's
  parameterisation (affine, so the same in ε, x₀, v), from one batched teacher pass;
* :func:`draw_guidance_scales`: ``w ~ U[w_min, w_max]`` per sample;
* :func:`inject_lora`: LoRA adapters on a module in place, everything else frozen;
* :class:`FixedGuidance`: a guidance-conditioned student called like a plain denoiser at a fixed
  ``w`` (for :func:`~lightning_distill.diffusion.sampling.sample` and export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_distill.diffusion.guidance import Cond, guided_output

__all__ = [
    "FixedGuidance",
    "draw_guidance_scales",
    "guidance_distillation_target",
    "inject_lora",
    "lora_parameters",
]

_LORA_KEY = "lora_"


@torch.no_grad()
def guidance_distillation_target(
    teacher: nn.Module, x_t: Tensor, t: Tensor, cond: Cond, null_cond: Cond, guidance: Tensor | float
) -> Tensor:
    """``(1 + w) f_T(x_t, t, c) − w f_T(x_t, t, ∅)`` ``(B, ...)``, the two passes batched into one, without grad.

    Args:
        teacher: the frozen teacher (its own parameterisation is kept).
        x_t: noisy inputs ``(B, ...)``.
        t: timesteps ``(B,)`` or a scalar.
        cond: the condition (batch ``B``).
        null_cond: the null condition (batch ``B`` or 1).
        guidance: ``w``, a number or per-sample ``(B,)``.

    Example:
        >>> from lightning_distill.diffusion.denoisers import MLPDenoiser
        >>> teacher = MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=2)
        >>> x, t, y, null = torch.randn(3, 2), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0]), torch.full((3,), 2)
        >>> target = guidance_distillation_target(teacher, x, t, y, null, 2.0)
        >>> torch.allclose(target, 3 * teacher(x, t, y) - 2 * teacher(x, t, null), atol=1e-6)
        True
    """
    scale = 1.0 + (
        guidance.to(x_t.device, torch.float32) if isinstance(guidance, Tensor) else float(guidance)
    )
    if not isinstance(scale, Tensor):
        scale = torch.tensor(scale, device=x_t.device)
    # a tensor scale forces the batched two-pass path even at w = 0 (the target is always built the same way)
    return guided_output(teacher, x_t, t, cond, null_cond, scale.expand(x_t.shape[0]))


def draw_guidance_scales(
    batch: int,
    w_min: float,
    w_max: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``w ~ U[w_min, w_max]`` ``(B,)`` float32, drawn on the generator's device and moved to ``device``.

    Raises:
        ValueError: ``w_min < 0`` or ``w_max < w_min``.
    """
    if not 0 <= w_min <= w_max:
        raise ValueError(f"Need 0 <= w_min <= w_max, got w_min={w_min}, w_max={w_max}.")
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    u = torch.rand(batch, generator=generator, device=draw_device)
    return (w_min + (w_max - w_min) * u).to(device if device is not None else draw_device)


def inject_lora(
    model: nn.Module,
    *,
    rank: int = 4,
    alpha: float = 4.0,
    target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
    dropout: float = 0.0,
) -> nn.Module:
    """Add LoRA adapters (peft) to ``model`` in place; only the adapters stay trainable.

    The adapters start at ``B = 0``, so the model's outputs are unchanged until they learn.

    Args:
        model: the module to adapt.
        rank: LoRA rank ``r``.
        alpha: LoRA alpha (the update is scaled by ``alpha / r``).
        target_modules: names (suffixes) of the adapted ``Linear``/``Conv``/``Embedding`` layers.
        dropout: LoRA dropout.

    Returns:
        ``model`` with adapters (the same object peft returns).

    Raises:
        ValueError: a non-positive rank or alpha, or no layer matching ``target_modules``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be an integer >= 1, got {rank!r}.")
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha!r}.")
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(f"`target_modules` must be a non-empty sequence of names, got {target_modules!r}.")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        init_lora_weights=True,
    )
    try:
        model = inject_adapter_in_model(config, model)
    except ValueError as error:
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))][
            :8
        ]
        raise ValueError(
            f"`target_modules`={list(target_modules)} matched no adaptable layer of {type(model).__name__}; some of "
            f"its layers: {layers}. ({error})"
        ) from error
    for name, param in model.named_parameters():
        param.requires_grad_(_LORA_KEY in name)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapter parameters of ``model`` (those :func:`inject_lora` added)."""
    return [p for n, p in model.named_parameters() if _LORA_KEY in n]


class FixedGuidance(nn.Module):
    """A guidance-conditioned student at a fixed ``w``, called like a plain denoiser ``model(x_t, t[, cond])``.

    Args:
        student: a :class:`~lightning_distill.diffusion.consistency.GuidanceConditioned` (or any module
            taking ``guidance=`` as a keyword).
        guidance: the ``w`` to sample at.
    """

    def __init__(self, student: nn.Module, guidance: float) -> None:
        super().__init__()
        self.student = student
        self.guidance = float(guidance)

    def forward(self, sample: Tensor, timestep: Tensor | int | float, cond: Cond = None) -> Tensor:
        w = torch.full((sample.shape[0],), self.guidance, device=sample.device)
        return self.student(sample, timestep, cond, guidance=w)
