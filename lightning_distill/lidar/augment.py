"""Scan augmentations: LaserMix inclination-band mixing and random rigid/scale transforms.

* :func:`inclination` and :func:`laser_bands`: the pitch angle of every point seen from the sensor
  and the band of the LiDAR's vertical field of view it falls in (band 0 at the top).
* :func:`laser_mix_indices` / :func:`laser_mix`: LaserMix (Kong et al., CVPR 2023, arXiv
  2207.00026). Two scans ``A`` and ``B`` are cut into ``n`` inclination bands; the first mixed scan
  takes the even bands of ``A`` and the odd bands of ``B``, the second the even bands of ``B`` and
  the odd bands of ``A``. Every input point lands in exactly one output scan, with its label.
* :func:`mix_pairs`: the multi-modal variant (LaserMix++): camera correspondences follow the points,
  so each mixed point keeps the pixel of the image of the scan it came from.
* :class:`ScanAugmentation`: random rotation about z, flips of the x and y axes, isotropic scaling,
  translation and per-point jitter, drawn from a ``torch.Generator``; points keep their order, so
  labels and point-pixel pairs computed before the transform stay valid.

Batched points follow :mod:`lightning_distill.lidar.geometry`: ``(N, 4 + F)`` rows
``[batch, x, y, z, features...]``.

Example:
    >>> import torch
    >>> a = torch.tensor([[0.0, 10.0, 0.0, 1.0, 0.5], [0.0, 10.0, 0.0, -1.0, 0.5]])  # up, down
    >>> b = torch.tensor([[0.0, 5.0, 0.0, 0.5, 0.9], [0.0, 5.0, 0.0, -0.5, 0.9]])
    >>> mixed = laser_mix(a, torch.tensor([0, 1]), b, torch.tensor([2, 3]), num_bands=(2,),
    ...                   pitch_range_deg=(-10.0, 10.0))
    >>> mixed.points[:, 0].tolist(), mixed.labels.tolist()  # scan 0: top of A + bottom of B
    ([0.0, 0.0, 1.0, 1.0], [0, 3, 1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_distill.lidar.geometry import Pairs

__all__ = [
    "MixedScans",
    "ScanAugmentation",
    "inclination",
    "laser_bands",
    "laser_mix",
    "laser_mix_indices",
    "mix_pairs",
]


def inclination(xyz: Tensor) -> Tensor:
    """Pitch angle of every point seen from the sensor: ``atan2(z, sqrt(x^2 + y^2))`` in radians.

    Args:
        xyz: ``(N, 3)`` points in the LiDAR frame.

    Returns:
        ``(N,)`` angles in ``[-pi/2, pi/2]``.

    Raises:
        ValueError: ``xyz`` is not ``(N, 3)``.
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"`xyz` must be (N, 3), got {tuple(xyz.shape)}.")
    return torch.atan2(xyz[:, 2], torch.hypot(xyz[:, 0], xyz[:, 1]))


def _check_pitch_range(pitch_range_deg: Sequence[float]) -> tuple[float, float]:
    if len(pitch_range_deg) != 2 or not pitch_range_deg[0] < pitch_range_deg[1]:
        raise ValueError(
            f"`pitch_range_deg` must be (lowest, highest) with lowest < highest, got {tuple(pitch_range_deg)}."
        )
    return float(pitch_range_deg[0]), float(pitch_range_deg[1])


def laser_bands(xyz: Tensor, num_bands: int, pitch_range_deg: Sequence[float] = (-25.0, 3.0)) -> Tensor:
    """Inclination band of every point: ``n`` equal bands over the LiDAR's vertical field of view.

    Band ``i`` (``i = 0`` at the top) holds pitches in ``(up - (i + 1) w, up - i w]`` with
    ``w = (up - down) / n``; pitches outside ``[down, up]`` fall into the first or last band (the
    official code clamps them the same way).

    Args:
        xyz: ``(N, 3)`` points in the LiDAR frame.
        num_bands: ``n`` >= 1.
        pitch_range_deg: ``(down, up)`` in degrees (LaserMix: ``(-25, 3)``, the beams' range).

    Returns:
        ``(N,)`` int64 band indices in ``[0, n)``.

    Raises:
        ValueError: ``num_bands`` < 1, a bad ``pitch_range_deg`` or ``xyz`` not ``(N, 3)``.
    """
    if isinstance(num_bands, bool) or not isinstance(num_bands, int) or num_bands < 1:
        raise ValueError(f"`num_bands` must be an int >= 1, got {num_bands!r}.")
    down, up = _check_pitch_range(pitch_range_deg)
    pitch = torch.rad2deg(inclination(xyz).double())
    position = (up - pitch) / (up - down) * num_bands  # 0 at the top edge, n at the bottom edge
    return torch.floor(position).long().clamp(0, num_bands - 1)


def laser_mix_indices(
    xyz_a: Tensor, xyz_b: Tensor, num_bands: int, pitch_range_deg: Sequence[float] = (-25.0, 3.0)
) -> tuple[Tensor, Tensor]:
    """The two LaserMix scans of ``A`` and ``B`` as row indices into ``cat([A, B])``.

    Mixed scan 1 = even bands of ``A`` + odd bands of ``B``; mixed scan 2 = even bands of ``B`` +
    odd bands of ``A`` (LaserMix's ``laser_mix_transform``). Within a scan, ``A``'s points come
    first, each part in its original order.

    Args:
        xyz_a: ``(Na, 3)`` points of scan ``A``.
        xyz_b: ``(Nb, 3)`` points of scan ``B``.
        num_bands: number of inclination bands ``n``.
        pitch_range_deg: ``(down, up)`` in degrees.

    Returns:
        ``(index_1, index_2)``, int64, together a permutation of ``range(Na + Nb)``.

    Raises:
        ValueError: as :func:`laser_bands`.
    """
    even_a = laser_bands(xyz_a, num_bands, pitch_range_deg) % 2 == 0
    even_b = laser_bands(xyz_b, num_bands, pitch_range_deg) % 2 == 0
    offset = len(xyz_a)
    rows_a = torch.arange(len(xyz_a), device=xyz_a.device)
    rows_b = torch.arange(len(xyz_b), device=xyz_b.device) + offset
    first = torch.cat([rows_a[even_a], rows_b[~even_b]])
    second = torch.cat([rows_a[~even_a], rows_b[even_b]])
    return first, second


class MixedScans(NamedTuple):
    """Scans mixed by :func:`laser_mix`.

    Attributes:
        points: ``(N, 4 + F)`` batched mixed points; clouds ``2b`` and ``2b + 1`` mix pair ``b``.
        labels: ``(N,)`` labels that followed the points.
        origin: ``(N,)`` row of every mixed point in ``cat([points_a, points_b])``; a permutation,
            so any other per-point tensor ``x`` follows with ``cat([x_a, x_b])[origin]``.
        num_bands: ``(B,)`` the number of bands drawn for each pair.
    """

    points: Tensor
    labels: Tensor
    origin: Tensor
    num_bands: Tensor


def laser_mix(
    points_a: Tensor,
    labels_a: Tensor,
    points_b: Tensor,
    labels_b: Tensor,
    *,
    num_bands: Sequence[int] = (3, 4, 5, 6),
    pitch_range_deg: Sequence[float] = (-25.0, 3.0),
    generator: torch.Generator | None = None,
) -> MixedScans:
    """LaserMix of two batches: cloud ``b`` of ``A`` with cloud ``b`` of ``B``, giving ``2B`` clouds.

    For each pair the number of bands is drawn uniformly from ``num_bands`` (LaserMix's
    ``num_areas``: ``(3, 4, 5, 6)`` for MinkUNet, ``(4, ..., 8)`` for Cylinder3D).

    Args:
        points_a: ``(Na, 4 + F)`` batched points ``[batch, x, y, z, ...]`` of ``B`` clouds
            (LaserMix: the labelled scans).
        labels_a: ``(Na,)`` their labels.
        points_b: ``(Nb, 4 + F)`` ``B`` clouds (LaserMix: the unlabelled scans).
        labels_b: ``(Nb,)`` their (pseudo-)labels.
        num_bands: choices for the number of bands.
        pitch_range_deg: ``(down, up)`` in degrees.
        generator: draws the number of bands (CPU generator).

    Returns:
        :class:`MixedScans`.

    Raises:
        ValueError: mismatched shapes, different numbers of clouds, an empty or non-positive
            ``num_bands``.
    """
    for name, points, labels in (("a", points_a, labels_a), ("b", points_b, labels_b)):
        if points.ndim != 2 or points.shape[1] < 4 or labels.shape != points.shape[:1]:
            raise ValueError(
                f"`points_{name}` must be (N, 4 + F) and `labels_{name}` (N,), got {tuple(points.shape)} and "
                f"{tuple(labels.shape)}."
            )
    if points_a.shape[1] != points_b.shape[1]:
        raise ValueError(f"point widths differ: {points_a.shape[1]} and {points_b.shape[1]}.")
    choices = [int(n) for n in num_bands]
    if not choices or min(choices) < 1:
        raise ValueError(f"`num_bands` must be a non-empty list of ints >= 1, got {list(num_bands)}.")
    batch_a, batch_b = points_a[:, 0].long(), points_b[:, 0].long()
    clouds = int(batch_a.max()) + 1 if len(batch_a) else 0
    if len(batch_b) and int(batch_b.max()) + 1 != clouds:
        raise ValueError(
            f"`points_a` holds {clouds} clouds and `points_b` {int(batch_b.max()) + 1}; LaserMix pairs them one to one."
        )
    picks = torch.randint(len(choices), (clouds,), generator=generator)
    drawn = torch.tensor([choices[int(k)] for k in picks], dtype=torch.long)
    offset = len(points_a)
    origins: list[Tensor] = []
    for b in range(clouds):
        rows_a = torch.nonzero(batch_a == b).squeeze(1)
        rows_b = torch.nonzero(batch_b == b).squeeze(1)
        first, second = laser_mix_indices(
            points_a[rows_a, 1:4], points_b[rows_b, 1:4], int(drawn[b]), pitch_range_deg
        )
        rows = torch.cat([rows_a, rows_b + offset])  # local index -> row of cat([A, B])
        origins += [rows[first], rows[second]]
    origin = torch.cat(origins) if origins else torch.zeros(0, dtype=torch.long, device=points_a.device)
    sizes = torch.tensor([len(o) for o in origins], device=points_a.device)
    points = torch.cat([points_a, points_b])[origin].clone()
    points[:, 0] = torch.repeat_interleave(torch.arange(len(origins), device=points.device), sizes).to(points)
    return MixedScans(points, torch.cat([labels_a, labels_b])[origin], origin, drawn)


def mix_pairs(
    pairs_a: Pairs, pairs_b: Pairs, origin: Tensor, *, num_points_a: int, num_images_a: int
) -> Pairs:
    """Camera correspondences of mixed scans (multi-modal LaserMix): each point keeps its own pixel.

    Pairs of ``B`` are shifted to index ``cat([points_a, points_b])`` and the images
    ``cat([images_a, images_b])``, then every point index is sent to its row in the mixed scans.

    Args:
        pairs_a: pairs of scan batch ``A`` (``point`` into ``points_a``, ``image`` into its
            ``B * C`` flattened images).
        pairs_b: pairs of scan batch ``B``.
        origin: ``(N,)`` :attr:`MixedScans.origin`, a permutation of ``range(Na + Nb)``.
        num_points_a: ``Na``.
        num_images_a: number of images of ``A`` (``B * C``).

    Returns:
        :class:`~lightning_distill.lidar.geometry.Pairs` whose ``point`` indexes the mixed points and
        ``image`` the concatenated images; same order as ``cat(pairs_a, pairs_b)``.

    Raises:
        ValueError: ``origin`` is not a permutation of the right size.
    """
    total = len(origin)
    if total < num_points_a or (
        total and not torch.equal(origin.sort().values, torch.arange(total, device=origin.device))
    ):
        raise ValueError(
            f"`origin` must be a permutation of range(Na + Nb), got {total} rows with repeats or gaps."
        )
    row_of = torch.empty_like(origin)
    row_of[origin] = torch.arange(total, device=origin.device)
    point = torch.cat([pairs_a.point, pairs_b.point + num_points_a])
    image = torch.cat([pairs_a.image, pairs_b.image + num_images_a])
    return Pairs(row_of[point], image, torch.cat([pairs_a.v, pairs_b.v]), torch.cat([pairs_a.u, pairs_b.u]))


class ScanAugmentation:
    """Random global transform of each cloud: rotation about z, axis flips, scaling, translation, jitter.

    ``x' = R_z(theta) F s x + t + eps`` per cloud, with ``F = diag(+-1, +-1, 1)`` (flip of x and
    of y, each with probability ``flip_probability``), ``s`` uniform in ``scale_range``, ``t``
    Gaussian with ``translation_std`` per axis and ``eps`` per-point Gaussian jitter with
    ``jitter_std``. Everything is drawn from the generator passed to :meth:`__call__`, so a seeded
    generator reproduces the same transforms. Defaults follow LaserMix's MinkUNet pipeline
    (``GlobalRotScaleTrans`` over a full turn, scale 0.95-1.05, no translation) plus its
    Cylinder3D flips.

    Args:
        rotation_range_deg: ``(low, high)`` of the yaw angle, degrees.
        flip_probability: probability of each of the two flips, in [0, 1].
        scale_range: ``(low, high)`` of the isotropic scale, ``0 < low <= high``.
        translation_std: standard deviation of the translation, metres.
        jitter_std: standard deviation of the per-point noise, metres.

    Raises:
        ValueError: a probability outside [0, 1], a bad range or a negative standard deviation.

    Example:
        >>> aug = ScanAugmentation(jitter_std=0.0)
        >>> points = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.5]])
        >>> moved, transforms = aug(points, torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(moved[:, 1:4], points[:, 1:4] @ transforms[0, :3, :3].T + transforms[0, :3, 3]))
        True
    """

    def __init__(
        self,
        rotation_range_deg: tuple[float, float] = (0.0, 360.0),
        flip_probability: float = 0.5,
        scale_range: tuple[float, float] = (0.95, 1.05),
        translation_std: float = 0.0,
        jitter_std: float = 0.0,
    ) -> None:
        if len(rotation_range_deg) != 2 or rotation_range_deg[0] > rotation_range_deg[1]:
            raise ValueError(
                f"`rotation_range_deg` must be (low, high) with low <= high, got {rotation_range_deg}."
            )
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"`flip_probability` must be in [0, 1], got {flip_probability}.")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"`scale_range` must be (low, high) with 0 < low <= high, got {scale_range}.")
        for name, value in (("translation_std", translation_std), ("jitter_std", jitter_std)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        self.rotation_range_deg = (float(rotation_range_deg[0]), float(rotation_range_deg[1]))
        self.flip_probability = float(flip_probability)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.translation_std = float(translation_std)
        self.jitter_std = float(jitter_std)

    def sample_transforms(self, num_clouds: int, generator: torch.Generator | None = None) -> Tensor:
        """``(num_clouds, 4, 4)`` float64 affine transforms (without the per-point jitter)."""
        low, high = self.rotation_range_deg
        theta = torch.deg2rad(
            low + (high - low) * torch.rand(num_clouds, generator=generator, dtype=torch.float64)
        )
        flips = torch.rand(num_clouds, 2, generator=generator, dtype=torch.float64) < self.flip_probability
        s_low, s_high = self.scale_range
        scale = s_low + (s_high - s_low) * torch.rand(num_clouds, generator=generator, dtype=torch.float64)
        shift = torch.randn(num_clouds, 3, generator=generator, dtype=torch.float64) * self.translation_std
        cos, sin = torch.cos(theta), torch.sin(theta)
        rotation = torch.zeros(num_clouds, 3, 3, dtype=torch.float64)
        rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
        rotation[:, 2, 2] = 1.0
        diagonal = torch.ones(num_clouds, 3, dtype=torch.float64)
        diagonal[:, :2] = torch.where(flips, -1.0, 1.0)
        transforms = torch.eye(4, dtype=torch.float64).repeat(num_clouds, 1, 1)
        transforms[:, :3, :3] = rotation @ torch.diag_embed(diagonal * scale[:, None])
        transforms[:, :3, 3] = shift
        return transforms

    def __call__(self, points: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Transform every cloud of a batch; rows keep their order and features.

        Args:
            points: ``(N, 4 + F)`` batched points.
            generator: CPU generator for every random draw.

        Returns:
            The transformed points ``(N, 4 + F)`` and the transforms ``(B, 4, 4)`` (float32, on the
            points' device; the jitter is not part of them).

        Raises:
            ValueError: ``points`` not ``(N, >=4)``.
        """
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"`points` must be (N, 4 + F) [batch, x, y, z, ...], got {tuple(points.shape)}.")
        batch = points[:, 0].long()
        clouds = int(batch.max()) + 1 if len(batch) else 0
        transforms = self.sample_transforms(clouds, generator).to(points.device)
        per_point = transforms[batch]  # (N, 4, 4)
        xyz = points[:, 1:4].double()
        moved = torch.einsum("nij,nj->ni", per_point[:, :3, :3], xyz) + per_point[:, :3, 3]
        if self.jitter_std > 0:
            noise = torch.randn(len(points), 3, generator=generator, dtype=torch.float64) * self.jitter_std
            moved = moved + noise.to(points.device)
        out = points.clone()
        out[:, 1:4] = moved.to(points.dtype)
        return out, transforms.to(points.dtype)
