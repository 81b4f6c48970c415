"""Calling denoisers uniformly, and classifier-free guidance.

The call convention is diffusers': ``model(x_t, t)`` for an unconditional model,
``model(x_t, t, cond)`` with a tensor condition passed as the third positional argument (the
``class_labels`` of ``UNet2DModel``, the ``encoder_hidden_states`` of ``UNet2DConditionModel``,
the ``class_labels`` of :class:`~lightning_distill.diffusion.denoisers.MLPDenoiser`), and
``model(x_t, t, **cond)`` when ``cond`` is a mapping (e.g. ``{"encoder_hidden_states": e,
"added_cond_kwargs": {...}}`` for SDXL, or ``{"class_labels": y}`` to be explicit). The model
may return a tensor, an output object with ``.sample``, or a tuple whose first item is the
prediction; :func:`model_output` always returns the plain tensor.

Classifier-free guidance (Ho & Salimans, arXiv 2207.12598) is written
``uncond + s * (cond - uncond)``: ``s = 1`` is the conditional model, ``s = 0`` the
unconditional one. (Papers that write ``(1 + w) cond - w uncond`` use ``s = 1 + w``.) The
combination is affine with weights summing to one, so guiding ε, x₀, v or the flow velocity
gives the same guided prediction after conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_distill.diffusion.schedule import broadcast_to

__all__ = ["Cond", "cfg", "drop_condition", "first_tensor", "guided_output", "model_output"]

#: A condition: ``None``, a tensor (third positional argument), or keyword arguments.
Cond = Tensor | Mapping[str, Any] | None


def cfg(cond_out: Tensor, uncond_out: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance: ``uncond_out + scale * (cond_out - uncond_out)``.

    Args:
        cond_out: the conditional prediction ``(B, ...)``.
        uncond_out: the unconditional prediction, same shape.
        scale: the guidance scale ``s`` (a number, or per-sample ``(B,)``); 1 returns ``cond_out``.

    Returns:
        The guided prediction, shape of ``cond_out``.

    Raises:
        ValueError: if the two predictions differ in shape, or a per-sample ``scale`` is not ``(B,)``.

    Example:
        >>> cfg(torch.tensor([[3.0]]), torch.tensor([[1.0]]), 2.0)  # 1 + 2 * (3 - 1)
        tensor([[5.]])
    """
    if cond_out.shape != uncond_out.shape:
        raise ValueError(
            f"`cond_out` and `uncond_out` must have the same shape, got {tuple(cond_out.shape)} and "
            f"{tuple(uncond_out.shape)}."
        )
    if isinstance(scale, Tensor):
        scale = broadcast_to(scale.to(cond_out.dtype), cond_out)
    return uncond_out + scale * (cond_out - uncond_out)


def model_output(model: nn.Module, x_t: Tensor, t: Tensor | int | float, cond: Cond = None) -> Tensor:
    """Call a denoiser with the diffusers convention and return its prediction as a plain tensor.

    Args:
        model: a diffusers ``UNet2DModel``/``UNet2DConditionModel`` or any module called the same
            way (see the module docstring).
        x_t: the noisy input ``(B, ...)``.
        t: the timestep the model receives: a scalar or ``(B,)`` (see ``NoiseSchedule.alpha_sigma``).
        cond: ``None``, a tensor passed as the third positional argument, or a mapping of keyword
            arguments.

    Returns:
        The prediction, shape of ``x_t``.

    Raises:
        TypeError: if ``cond`` has an unsupported type or the model returns something without a tensor.
        ValueError: if the prediction's shape differs from ``x_t``'s (e.g. a model that also
            predicts its variance; wrap it so that it returns the mean prediction only).

    Example:
        >>> from lightning_distill.diffusion.denoisers import MLPDenoiser
        >>> model = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3)
        >>> model_output(model, torch.randn(4, 2), torch.tensor(10), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 2])
    """
    if cond is None:
        out = model(x_t, t)
    elif isinstance(cond, Tensor):
        out = model(x_t, t, cond)
    elif isinstance(cond, Mapping):
        out = model(x_t, t, **cond)
    else:
        raise TypeError(
            f"`cond` must be None, a tensor or a mapping of keyword arguments, got {type(cond).__name__}."
        )
    out = _unwrap_output(out)
    if out.shape != x_t.shape:
        raise ValueError(
            f"The model's prediction has shape {tuple(out.shape)} but its input `x_t` has shape {tuple(x_t.shape)}; "
            "a model that predicts more (e.g. a learned variance) must be wrapped to return the prediction only."
        )
    return out


def guided_output(
    model: nn.Module,
    x_t: Tensor,
    t: Tensor | int | float,
    cond: Cond,
    null_cond: Cond,
    scale: float | Tensor,
) -> Tensor:
    """The guided prediction ``uncond + scale * (cond - uncond)``, with cond and uncond in one forward pass.

    The batch is doubled (conditional half first) and split after the forward; with ``scale == 1``
    (a number) only the conditional forward runs. ``null_cond`` may have batch size 1 (e.g. the
    embedding of the empty prompt), in which case it is expanded to the batch.

    Args:
        model: the denoiser (see :func:`model_output`).
        x_t: the noisy input ``(B, ...)``.
        t: a scalar timestep or ``(B,)``.
        cond: the condition (tensor with batch ``B``, or a mapping of such tensors).
        null_cond: the unconditional condition, same structure as ``cond`` (batch ``B`` or 1): for
            class labels the null label, for text the empty-prompt embedding.
        scale: the guidance scale (a number, or per-sample ``(B,)``).

    Returns:
        The guided prediction, shape of ``x_t``.

    Raises:
        ValueError: if guidance is asked for (``scale != 1``) without ``cond`` and ``null_cond``, or
            their structures or batch sizes do not match.

    Example:
        >>> from lightning_distill.diffusion.denoisers import MLPDenoiser
        >>> model = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3)
        >>> x, t, y = torch.randn(4, 2), torch.tensor([5, 6, 7, 8]), torch.tensor([0, 1, 2, 0])
        >>> null = torch.full((4,), 3)
        >>> guided = guided_output(model, x, t, y, null, 2.0)
        >>> torch.allclose(guided, cfg(model(x, t, y), model(x, t, null), 2.0), atol=1e-6)
        True
    """
    if not isinstance(scale, Tensor) and float(scale) == 1.0:
        return model_output(model, x_t, t, cond)
    if cond is None or null_cond is None:
        raise ValueError(
            f"Classifier-free guidance with scale {scale} needs both `cond` and `null_cond`; got "
            f"cond={'None' if cond is None else 'given'}, null_cond={'None' if null_cond is None else 'given'}."
        )
    batch = x_t.shape[0]
    both_cond = _concat_cond(cond, null_cond, batch)
    t_tensor = torch.as_tensor(t, device=x_t.device)
    both_t = t_tensor if t_tensor.ndim == 0 else torch.cat([t_tensor, t_tensor])
    out = model_output(model, torch.cat([x_t, x_t]), both_t, both_cond)
    cond_out, uncond_out = out.chunk(2)
    return cfg(cond_out, uncond_out, scale)


def drop_condition(
    cond: Cond, null_cond: Cond, p: float, *, generator: torch.Generator | None = None
) -> Cond:
    """Replace each sample's condition by the null condition with probability ``p`` (CFG training).

    The condition dropout that makes one network both conditional and unconditional (10 % for
    SwiftBrush's LoRA fake score and for most text-to-image teachers).

    Args:
        cond: the condition, a tensor ``(B, ...)`` or a mapping of such tensors.
        null_cond: the null condition, same structure, batch ``B`` or 1.
        p: the drop probability in ``[0, 1]``.
        generator: random source (``None``: the global RNG); drawn on its device, moved to ``cond``'s.

    Returns:
        A new condition with the same structure; sample ``b`` is null where a uniform draw is ``< p``.

    Raises:
        ValueError: if ``p`` is outside ``[0, 1]`` or the structures/batch sizes do not match.

    Example:
        >>> y = torch.arange(6)
        >>> drop_condition(y, torch.full((1,), 10), 1.0).tolist()
        [10, 10, 10, 10, 10, 10]
        >>> torch.equal(drop_condition(y, torch.full((1,), 10), 0.0), y)
        True
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must be a probability in [0, 1], got {p!r}.")
    first = first_tensor(cond)
    batch = first.shape[0]
    draw_device = generator.device if generator is not None else first.device
    drop = (torch.rand((batch,), generator=generator, device=draw_device) < p).to(first.device)
    return _select(cond, null_cond, drop, batch)


def first_tensor(cond: Cond) -> Tensor:
    """The first tensor of a condition: the tensor itself, or the first value of a mapping (recursively).

    Raises:
        ValueError: a condition that holds no tensor, or a tensor without a batch dimension.

    Example:
        >>> first_tensor({"encoder_hidden_states": torch.zeros(2, 3, 4)}).shape
        torch.Size([2, 3, 4])
    """
    if isinstance(cond, Tensor):
        if cond.ndim == 0:
            raise ValueError(f"`cond` must have a batch dimension, got shape {tuple(cond.shape)}.")
        return cond
    if isinstance(cond, Mapping) and cond:
        return first_tensor(next(iter(cond.values())))
    raise ValueError(f"`cond` must be a tensor or a non-empty mapping of tensors, got {type(cond).__name__}.")


def _select(cond: Cond, null_cond: Cond, drop: Tensor, batch: int) -> Cond:
    if isinstance(cond, Tensor) and isinstance(null_cond, Tensor):
        cond = _check_batch("cond", cond, batch)
        null = _expand_null(null_cond, batch).to(cond.device, cond.dtype)
        mask = drop.reshape(batch, *([1] * (cond.ndim - 1)))
        return torch.where(mask, null, cond)
    if isinstance(cond, Mapping) and isinstance(null_cond, Mapping):
        if set(cond) != set(null_cond):
            raise ValueError(
                f"`cond` and `null_cond` must have the same keys, got {sorted(cond)} and {sorted(null_cond)}."
            )
        return {key: _select(cond[key], null_cond[key], drop, batch) for key in cond}
    raise ValueError(
        "`cond` and `null_cond` must both be tensors or both be mappings, got "
        f"{type(cond).__name__} and {type(null_cond).__name__}."
    )


def _unwrap_output(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(
        f"The model returned {type(out).__name__}; expected a tensor, an object with a `.sample` tensor, or a "
        "tuple whose first item is the prediction."
    )


def _concat_cond(cond: Cond, null_cond: Cond, batch: int) -> Cond:
    if isinstance(cond, Tensor) and isinstance(null_cond, Tensor):
        return torch.cat([_check_batch("cond", cond, batch), _expand_null(null_cond, batch)])
    if isinstance(cond, Mapping) and isinstance(null_cond, Mapping):
        if set(cond) != set(null_cond):
            raise ValueError(
                f"`cond` and `null_cond` must have the same keys, got {sorted(cond)} and {sorted(null_cond)}."
            )
        return {key: _concat_cond(cond[key], null_cond[key], batch) for key in cond}
    raise ValueError(
        "`cond` and `null_cond` must both be tensors or both be mappings (with tensor or mapping values), got "
        f"{type(cond).__name__} and {type(null_cond).__name__}."
    )


def _check_batch(name: str, value: Tensor, batch: int) -> Tensor:
    if value.ndim == 0 or value.shape[0] != batch:
        raise ValueError(
            f"`{name}` must have batch size {batch} (dimension 0), got shape {tuple(value.shape)}."
        )
    return value


def _expand_null(null_cond: Tensor, batch: int) -> Tensor:
    if null_cond.ndim > 0 and null_cond.shape[0] == 1 and batch != 1:
        return null_cond.expand(batch, *null_cond.shape[1:])
    return _check_batch("null_cond", null_cond, batch)
