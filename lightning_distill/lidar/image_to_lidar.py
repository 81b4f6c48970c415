"""Parts of image-to-LiDAR distillation shared by SLidR and LiMA (no Lightning, no recipe).

Each recipe composes these in its own numbered steps; none holds state.

* :func:`check_image_to_lidar`: the argument checks both recipes share; :func:`slidr_sgd`: the
  official SLidR optimizer, their default.
* :func:`point_features` (``F3D``) and :func:`pixel_features` (``G2D``): backbone, trainable head,
  L2 normalisation; the image backbone runs without gradient.
* :func:`calibrated_pairs`: the point-pixel pairs of a batch from its calibration;
  :func:`shuffle_pair_points`: the control that permutes the points among the pairs.
* :func:`superpixel_regions` and :func:`superpixel_pool`: SLidR's superpixel pooling;
  :func:`random_pair_rows`: the ``num_matches`` pairs of the point-level loss (PPKT).
* :func:`info_nce_with_logits`: the InfoNCE step, returning the similarity matrix behind it, and
  :func:`contrastive_metrics`: the ``infonce`` / ``match_acc`` evaluation metrics.

The loss functions themselves live in :mod:`lightning_distill.losses.contrastive`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.lidar.geometry import Pairs, pair_points_with_pixels, region_pool
from lightning_distill.lidar.networks import sparse_point_features
from lightning_distill.losses.contrastive import info_nce

__all__ = [
    "calibrated_pairs",
    "check_image_to_lidar",
    "contrastive_metrics",
    "info_nce_with_logits",
    "pixel_features",
    "point_features",
    "random_pair_rows",
    "shuffle_pair_points",
    "slidr_sgd",
    "superpixel_pool",
    "superpixel_regions",
]


def slidr_sgd(params: Iterable[Any]) -> torch.optim.SGD:
    """The official SLidR optimizer: SGD, lr 0.5, momentum 0.9, dampening 0.1, weight decay 1e-4.

    From valeoai/SLidR ``config/slidr_minkunet.yaml`` (``lr``, ``sgd_momentum``, ``sgd_dampening``,
    ``weight_decay``), for batches of 4 clouds per GPU.
    """
    return torch.optim.SGD(params, lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-4)


def check_image_to_lidar(
    student: nn.Module,
    teacher: nn.Module,
    *,
    level: str,
    input_features: str,
    temperature: float,
    feature_dim: int,
    num_matches: int,
    voxel_size: float,
) -> None:
    """The argument checks of SLidR-style recipes.

    Raises:
        ValueError: an unknown ``level`` or ``input_features``, a non-positive ``temperature``,
            ``feature_dim``, ``num_matches`` or ``voxel_size``.
        TypeError: a student or teacher without an integer ``out_channels``.
    """
    if level not in ("superpixel", "point"):
        raise ValueError(
            f"`level` must be 'superpixel' or 'point', got {level!r}; set `model.init_args.level`."
        )
    if input_features not in ("ones", "intensity"):
        raise ValueError(
            f"`input_features` must be 'ones' or 'intensity', got {input_features!r}; "
            "set `model.init_args.input_features`."
        )
    for name, value in (
        ("temperature", temperature),
        ("feature_dim", feature_dim),
        ("num_matches", num_matches),
        ("voxel_size", voxel_size),
    ):
        if value <= 0:
            raise ValueError(f"`{name}` must be > 0, got {value}; set `model.init_args.{name}`.")
    for role, module in (("student", student), ("teacher", teacher)):
        if not isinstance(getattr(module, "out_channels", None), int):
            raise TypeError(
                f"The {role} ({type(module).__name__}) needs an int `out_channels` attribute (its feature "
                "width) so the recipe can build its head."
            )


def point_features(
    backbone: nn.Module, head: nn.Module, points: Tensor, *, voxel_size: float, input_features: str
) -> Tensor:
    """``F3D``: L2-normalised ``head(backbone(points))`` per point ``(N, D)`` of batched points ``(N, 4 + F)``."""
    features = sparse_point_features(backbone, points, voxel_size=voxel_size, input_features=input_features)
    return F.normalize(head(features), dim=1)


def pixel_features(backbone: nn.Module, head: nn.Module, images: Tensor) -> Tensor:
    """``G2D``: L2-normalised per-pixel features ``(B * C, D, H, W)`` of images ``(B, C, 3, H, W)``.

    The (frozen) ``backbone`` runs under ``no_grad``; the ``head`` (an
    :class:`~lightning_distill.lidar.networks.ImageHead`) learns and upsamples to the image size.
    """
    flat = images.flatten(0, 1)
    with torch.no_grad():
        features = backbone(flat)
    return F.normalize(head(features, tuple(flat.shape[-2:])), dim=1)


def calibrated_pairs(batch: dict[str, Tensor], *, min_depth: float) -> Pairs:
    """Point-pixel pairs of a batch (``points``, ``K``, ``T_cam_from_lidar``, ``images``), depth > ``min_depth``."""
    return pair_points_with_pixels(
        batch["points"],
        batch["K"],
        batch["T_cam_from_lidar"],
        tuple(batch["images"].shape[-2:]),
        min_depth=min_depth,
    )


def shuffle_pair_points(pairs: Pairs) -> Pairs:
    """The control: the points permuted among the pairs (global RNG), the pixels kept."""
    order = torch.randperm(len(pairs.point), device=pairs.point.device)
    return pairs._replace(point=pairs.point[order])


def random_pair_rows(pairs: Pairs, num_matches: int) -> Tensor:
    """Indices of up to ``num_matches`` random pairs (global RNG), for the point-level loss.

    Raises:
        ValueError: no pair at all.
    """
    count = len(pairs.point)
    if count == 0:
        raise ValueError("No point projects into any image: check the calibration or `min_depth`.")
    return torch.randperm(count, device=pairs.point.device)[:num_matches]


def superpixel_regions(superpixels: Tensor) -> tuple[Tensor, int]:
    """Batch-unique region ids: image ``i``'s superpixel ``s`` becomes ``i * S + s``.

    Args:
        superpixels: ``(I, H, W)`` int64 ids per image, each in ``[0, S)``.

    Returns:
        ``(I, H, W)`` region ids and the number of regions ``I * S``.
    """
    per_image = int(superpixels.max()) + 1
    offsets = torch.arange(superpixels.shape[0], device=superpixels.device) * per_image
    return superpixels + offsets[:, None, None], superpixels.shape[0] * per_image


def superpixel_pool(
    point_features: Tensor,
    pixel_features: Tensor,
    superpixels: Tensor,
    pair_point: Tensor,
    pair_image: Tensor,
    pair_v: Tensor,
    pair_u: Tensor,
) -> tuple[Tensor, Tensor]:
    """Superpixel-pooled 3D and 2D features of the superpixels that hold at least one paired point.

    ``f_s = mean_{p in s} F3D(p)`` over the points paired with pixels of superpixel ``s``,
    ``g_s = mean_{pixel in s} G2D(pixel)`` over every pixel of ``s`` (SLidR's
    ``loss_superpixels_average``).

    Args:
        point_features: ``(N, D)`` per-point 3D features.
        pixel_features: ``(I, D, H, W)`` per-pixel 2D features of the ``I`` images.
        superpixels: ``(I, H, W)`` int64 superpixel ids per image.
        pair_point: ``(P,)`` index of the paired point.
        pair_image: ``(P,)`` image of the pair, in ``[0, I)``.
        pair_v: ``(P,)`` pixel row.
        pair_u: ``(P,)`` pixel column.

    Returns:
        ``f`` and ``g``, both ``(S, D)``, row-aligned by superpixel.

    Raises:
        ValueError: mismatched shapes or no pair at all.
    """
    if pixel_features.ndim != 4 or superpixels.shape != (pixel_features.shape[0], *pixel_features.shape[2:]):
        raise ValueError(
            f"`pixel_features` must be (I, D, H, W) and `superpixels` (I, H, W), got "
            f"{tuple(pixel_features.shape)} and {tuple(superpixels.shape)}."
        )
    if point_features.ndim != 2 or point_features.shape[1] != pixel_features.shape[1]:
        raise ValueError(
            f"`point_features` must be (N, {pixel_features.shape[1]}), got {tuple(point_features.shape)}."
        )
    if len(pair_point) == 0:
        raise ValueError("No point projects into any image: check the calibration or `min_depth`.")
    regions, num_regions = superpixel_regions(superpixels)
    pair_region = regions[pair_image, pair_v, pair_u]
    f = region_pool(point_features[pair_point], pair_region, num_regions)
    dim = pixel_features.shape[1]
    g = region_pool(pixel_features.permute(0, 2, 3, 1).reshape(-1, dim), regions.flatten(), num_regions)
    with_points = torch.bincount(pair_region, minlength=num_regions) > 0
    return f[with_points], g[with_points]


def info_nce_with_logits(queries: Tensor, keys: Tensor, *, temperature: float) -> tuple[Tensor, Tensor]:
    """The InfoNCE step: :func:`~lightning_distill.losses.contrastive.info_nce` and the ``(M, M)`` similarities."""
    return info_nce(queries, keys, temperature=temperature), queries @ keys.T


def contrastive_metrics(loss: Tensor, similarity: Tensor) -> dict[str, Any]:
    """``infonce`` and ``match_acc`` (how often a query's most similar key is its own) of one batch."""
    target = torch.arange(len(similarity), device=similarity.device)
    return {"infonce": loss, "match_acc": (similarity.argmax(dim=1) == target).float().mean()}
