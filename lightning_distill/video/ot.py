"""Entropic optimal transport between video tokens (VDOT): patch tokens, Sinkhorn plans, the OT gradient.

VDOT (arXiv 2512.06802) replaces part of DMD's KL gradient by the gradient of an entropic OT distance
between two token distributions: each video is cut into tokens (here: non-overlapping ``p × p`` patches
of every frame, the patch tokens of a video DiT such as Wan2.1's ``(1, 2, 2)`` patch embedding), a
Sinkhorn plan ``P`` couples the tokens of the two videos, and each source token is moved toward its
barycentric image ``Σⱼ Pᵢⱼ yⱼ / aᵢ`` (:func:`~lightning_distill.losses.video.barycentric_gradient`).

The plan comes from POT (``ot.batch.solve_batch``, Sinkhorn in float64, no gradient through it): a
comparison with geomloss is in this folder's README.md.

May import: ``torch``, ``ot`` (POT, inside the function that solves), ``lightning_distill.utils`` and
``lightning_distill.losses``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_distill.losses.video import barycentric_gradient
from lightning_distill.utils.checks import check_option

__all__ = ["from_patch_tokens", "ot_gradient", "patch_tokens", "sinkhorn_plan"]


def _check_video(name: str, video: Tensor, patch_size: int) -> None:
    check_option(
        isinstance(patch_size, int) and not isinstance(patch_size, bool) and patch_size >= 1,
        "patch_size",
        patch_size,
        "an integer >= 1",
    )
    if video.ndim != 5:
        raise ValueError(f"`{name}` must be a video batch (B, C, F, H, W), got {tuple(video.shape)}.")
    if video.shape[-1] % patch_size or video.shape[-2] % patch_size:
        raise ValueError(
            f"`{name}` frames {tuple(video.shape[-2:])} are not divisible by `patch_size`={patch_size}; "
            "choose a patch size that divides the frame size (`model.init_args.ot_patch_size`)."
        )


def patch_tokens(video: Tensor, patch_size: int) -> Tensor:
    """Per-frame ``p × p`` patch tokens ``(B, F·(H/p)·(W/p), C·p²)`` of a video batch ``(B, C, F, H, W)``.

    Raises:
        ValueError: not a 5-d batch, or frames the patch size does not divide.

    Example:
        >>> video = torch.arange(16.0).reshape(1, 1, 1, 4, 4)
        >>> patch_tokens(video, 2)[0, 0].tolist()  # the top-left 2x2 patch
        [0.0, 1.0, 4.0, 5.0]
    """
    _check_video("video", video, patch_size)
    B, C, F, H, W = video.shape
    p = patch_size
    x = video.reshape(B, C, F, H // p, p, W // p, p)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(B, F * (H // p) * (W // p), C * p * p)


def from_patch_tokens(tokens: Tensor, shape: tuple[int, ...] | torch.Size, patch_size: int) -> Tensor:
    """The inverse of :func:`patch_tokens`: a video ``(B, C, F, H, W)`` of ``shape`` from its tokens."""
    B, C, F, H, W = (int(s) for s in shape)
    p = patch_size
    expected = (B, F * (H // p) * (W // p), C * p * p)
    if tuple(tokens.shape) != expected:
        raise ValueError(
            f"`tokens` must be {expected} for a video {tuple(shape)}, got {tuple(tokens.shape)}."
        )
    x = tokens.reshape(B, F, H // p, W // p, C, p, p)
    return x.permute(0, 4, 1, 2, 5, 3, 6).reshape(B, C, F, H, W)


@torch.no_grad()
def sinkhorn_plan(
    source: Tensor,
    target: Tensor,
    *,
    epsilon: float = 0.05,
    max_iter: int = 200,
    tol: float = 1e-6,
    source_weights: Tensor | None = None,
    target_weights: Tensor | None = None,
) -> Tensor:
    """The entropic OT plan ``P`` ``(B, N, M)`` between token sets, squared Euclidean cost, by POT's Sinkhorn.

    ``P = argmin ⟨P, C⟩ − ε_abs H(P)`` subject to ``P 1 = a``, ``Pᵀ 1 = b`` with ``Cᵢⱼ = ‖xᵢ − yⱼ‖²``;
    ``ε_abs = epsilon · mean(C)`` per batch element (``epsilon`` is relative, so one value suits any token
    scale). Solved in float64 (no underflow of ``exp(−C/ε)``), returned in the source's float dtype.

    Args:
        source: tokens ``(B, N, D)``.
        target: tokens ``(B, M, D)``.
        epsilon: entropic regularisation relative to the mean cost, > 0.
        max_iter: Sinkhorn iterations at most.
        tol: stopping tolerance on the marginals.
        source_weights, target_weights: masses ``a`` ``(B, N)``, ``b`` ``(B, M)``, each summing to 1
            (default uniform).

    Raises:
        ValueError: bad shapes or options (named).

    Example:
        >>> x = torch.tensor([[[0.0], [1.0]]]); y = torch.tensor([[[1.1], [0.1]]])
        >>> plan = sinkhorn_plan(x, y, epsilon=0.01)
        >>> [round(v, 3) for v in plan[0].flatten().tolist()]  # 0 -> 0.1, 1 -> 1.1
        [0.0, 0.5, 0.5, 0.0]
    """
    import ot

    if (
        source.ndim != 3
        or target.ndim != 3
        or source.shape[0] != target.shape[0]
        or source.shape[2] != target.shape[2]
    ):
        raise ValueError(
            f"`source` (B, N, D) and `target` (B, M, D) must share B and D, got {tuple(source.shape)} and "
            f"{tuple(target.shape)}."
        )
    check_option(epsilon > 0, "ot_epsilon", epsilon, "> 0 (relative to the mean cost)")
    check_option(isinstance(max_iter, int) and max_iter >= 1, "ot_max_iter", max_iter, "an integer >= 1")
    x, y = source.detach().double(), target.detach().double()
    cost = torch.cdist(x, y).square()
    B, N, M = cost.shape
    a = source_weights if source_weights is not None else torch.full((B, N), 1.0 / N, dtype=torch.float64)
    b = target_weights if target_weights is not None else torch.full((B, M), 1.0 / M, dtype=torch.float64)
    for name, w, n in (("source_weights", a, N), ("target_weights", b, M)):
        if tuple(w.shape) != (B, n) or bool((w < 0).any()):
            raise ValueError(f"`{name}` must be non-negative (B, {n}) = ({B}, {n}), got {tuple(w.shape)}.")
    a, b = a.to(cost), b.to(cost)
    scale = cost.mean(dim=(1, 2)).clamp_min(1e-12)
    # one ε per batch element: solve the rescaled problem C / mean(C) with ε (the same plan)
    result = ot.batch.solve_batch(
        cost / scale.view(B, 1, 1),
        reg=float(epsilon),
        a=a,
        b=b,
        max_iter=max_iter,
        tol=tol,
        method="sinkhorn",
        grad="detach",
    )
    dtype = source.dtype if source.is_floating_point() else torch.float32
    return result.plan.to(device=source.device, dtype=dtype)


def ot_gradient(
    source: Tensor,
    target: Tensor,
    *,
    patch_size: int,
    epsilon: float = 0.05,
    max_iter: int = 200,
) -> Tensor:
    """VDOT's ``∇_OT`` ``(B, C, F, H, W)``: each patch token of ``source`` minus its barycentric image in ``target``.

    One Sinkhorn plan per video pair ``(source_b, target_b)`` between their patch tokens
    (:func:`patch_tokens`, :func:`sinkhorn_plan`), then
    :func:`~lightning_distill.losses.video.barycentric_gradient`, folded back to the video's shape.
    ``source − ∇_OT`` is the pseudo-target that moves ``source`` toward ``target``'s tokens. No grad.

    Raises:
        ValueError: videos of different shapes, or a patch size that does not divide the frames.
    """
    if source.shape != target.shape:
        raise ValueError(
            f"`source` and `target` must be videos of one shape, got {tuple(source.shape)} and {tuple(target.shape)}."
        )
    _check_video("source", source, patch_size)
    x, y = (
        patch_tokens(source.detach().float(), patch_size),
        patch_tokens(target.detach().float(), patch_size),
    )
    plan = sinkhorn_plan(x, y, epsilon=epsilon, max_iter=max_iter)
    return from_patch_tokens(barycentric_gradient(x, y, plan), source.shape, patch_size)
