"""Metrics of moving-glyph videos: per-frame FCD, motion error from the known velocity, temporal consistency.

* :func:`center_of_mass`: the ink-weighted centre ``(row, col)`` of every frame.
* :func:`motion_error`: how far a video's frame-to-frame centre-of-mass displacement is from the
  motion its condition asks for. The expected path starts at the video's own first-frame centre
  and moves by the direction's velocity, reflecting off the box the centre of a glyph whose ink
  is centred in its square can reach (:func:`~lightning_distill.data.video.simulate_positions`);
  the error is the mean Euclidean distance between the two displacements (pixels per frame). On
  the data it is not exactly 0 near the walls (a glyph's ink is not centred in its square):
  report the data's value as the floor.
* :func:`temporal_consistency`: the mean cosine similarity of the features of consecutive frames
  (1 = every frame shows the same thing).
* :func:`frame_fcd`: the Fréchet distance of digits-classifier features
  (:class:`~lightning_distill.diffusion.frechet.FrechetClassifierDistance`) between the frames of two
  sets of videos or images (not FID); against the still-image set it is the appearance distance.
* :func:`to_classifier_input`: frames in ``[-1, 1]`` mapped to the digits classifier's normalisation.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.data.video import DIRECTIONS, simulate_positions
from lightning_distill.diffusion.frechet import FrechetClassifierDistance

__all__ = [
    "center_of_mass",
    "frame_fcd",
    "frames_of",
    "ink_histogram_distance",
    "motion_error",
    "temporal_consistency",
    "to_classifier_input",
    "video_metrics",
]


def frames_of(x: Tensor) -> Tensor:
    """Frames ``(N, C, H, W)`` of videos ``(B, C, F, H, W)`` (images pass through)."""
    if x.ndim == 5:
        b, c, f, h, w = x.shape
        return x.transpose(1, 2).reshape(b * f, c, h, w)
    if x.ndim == 4:
        return x
    raise ValueError(f"Expected videos (B, C, F, H, W) or images (N, C, H, W), got {tuple(x.shape)}.")


def center_of_mass(videos: Tensor) -> Tensor:
    """The ink-weighted centre ``(B, F, 2)`` (row, col) of videos ``(B, C, F, H, W)`` in ``[-1, 1]`` (ink = ``(x + 1) / 2``).

    Example:
        >>> v = -torch.ones(1, 1, 2, 5, 5); v[0, 0, 0, 1, 2] = 1; v[0, 0, 1, 3, 4] = 1
        >>> center_of_mass(v)[0].tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    if videos.ndim != 5:
        raise ValueError(f"`videos` must be (B, C, F, H, W), got {tuple(videos.shape)}.")
    ink = ((videos.float() + 1) / 2).clamp(min=0).sum(1)  # (B, F, H, W)
    h, w = ink.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32, device=ink.device)
    cols = torch.arange(w, dtype=torch.float32, device=ink.device)
    mass = ink.sum((-2, -1)).clamp(min=1e-6)
    r = (ink.sum(-1) * rows).sum(-1) / mass
    c = (ink.sum(-2) * cols).sum(-1) / mass
    return torch.stack([r, c], dim=-1)


def motion_error(videos: Tensor, labels: Tensor, *, speed: int = 1, glyph_size: int | None = None) -> Tensor:
    """Mean distance ``(B,)`` between each video's centre-of-mass displacements and its condition's motion.

    Args:
        videos: ``(B, C, F, S, S)`` in ``[-1, 1]``.
        labels: ``(B, 2)`` (class, direction index into :data:`~lightning_distill.data.video.DIRECTIONS`).
        speed: pixels per frame of the data.
        glyph_size: the data's glyph side (default ``S // 2``).

    Example:
        >>> from lightning_distill.data.video import moving_glyphs
        >>> data = moving_glyphs(16, size=16, num_frames=6, seed=0)
        >>> float(motion_error(data.videos, data.labels).mean()) < 0.5  # the data's floor
        True
    """
    com = center_of_mass(videos)
    size = videos.shape[-1]
    g = size // 2 if glyph_size is None else glyph_size
    velocity = (
        torch.tensor(DIRECTIONS, dtype=torch.float32, device=com.device)[labels[:, 1].to(com.device)] * speed
    )
    low, high = (g - 1) / 2, size - 1 - (g - 1) / 2
    expected = simulate_positions(com[:, 0], velocity, com.shape[1], low, high)
    step = com[:, 1:] - com[:, :-1]
    want = expected[:, 1:] - expected[:, :-1]
    return (step - want).norm(dim=-1).mean(dim=1)


def to_classifier_input(frames: Tensor, size: int | None = None) -> Tensor:
    """Frames ``(N, 1, H, W)`` in ``[-1, 1]`` in the normalisation the digits classifier was trained with.

    The classifier sees digits in ``[0, 1]`` standardised by their mean and std at its size
    (``DigitsDataModule``); the same affine map is applied here (to real and generated frames alike).
    """
    mean, std = _digits_moments(int(size or frames.shape[-1]))
    return ((frames.float() + 1) / 2 - mean) / std


@lru_cache(maxsize=4)
def _digits_moments(size: int) -> tuple[float, float]:
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return float(x.mean()), float(x.std())


@torch.no_grad()
def temporal_consistency(videos: Tensor, features: nn.Module | None = None) -> Tensor:
    """Mean cosine similarity ``(B,)`` of consecutive frames' features (raw pixels when ``features`` is ``None``).

    Example:
        >>> still = torch.randn(2, 1, 4, 8, 8)[:, :, :1].expand(2, 1, 4, 8, 8)
        >>> [round(v, 4) for v in temporal_consistency(still).tolist()]
        [1.0, 1.0]
    """
    b, _, f = videos.shape[:3]
    frames = frames_of(videos)
    if features is not None:
        extract = getattr(features, "forward_features", features)
        feats = extract(to_classifier_input(frames)).flatten(1)
    else:
        feats = frames.flatten(1).float()
    feats = feats.reshape(b, f, -1)
    sim = F.cosine_similarity(feats[:, 1:], feats[:, :-1], dim=-1)
    return sim.mean(dim=1).clamp(max=1.0)


@torch.no_grad()
def frame_fcd(real: Tensor, fake: Tensor, classifier: nn.Module, batch_size: int = 256) -> Tensor:
    """Fréchet distance of digits-classifier features between the frames of ``real`` and ``fake`` (videos or images).

    Raises:
        ValueError: inputs that are neither videos nor images.
    """
    real_frames, fake_frames = frames_of(real), frames_of(fake)
    metric = FrechetClassifierDistance(classifier, image_size=real_frames.shape[-1])
    for frames, is_real in ((real_frames, True), (fake_frames, False)):
        for chunk in frames.split(batch_size):
            metric.update(to_classifier_input(chunk).cpu(), real=is_real)
    return metric.compute()


@torch.no_grad()
def video_metrics(
    real: Tensor,
    fake: Tensor,
    labels: Tensor,
    classifier: nn.Module,
    *,
    stills: Tensor | None = None,
    speed: int = 1,
    glyph_size: int | None = None,
) -> dict[str, float]:
    """``frame_fcd`` (to ``real``), ``motion_error``, ``temporal_consistency`` and, with ``stills``,
    ``appearance_fcd`` and ``appearance_hist`` (frames to the still-image set) of generated videos ``fake`` ``(B, 1, F, S, S)``."""
    fake = fake.float().clamp(-1, 1).cpu()
    out = {
        "frame_fcd": float(frame_fcd(real.cpu(), fake, classifier)),
        "motion_error": float(motion_error(fake, labels.cpu(), speed=speed, glyph_size=glyph_size).mean()),
        "temporal_consistency": float(temporal_consistency(fake, classifier).mean()),
    }
    if stills is not None:
        out["appearance_fcd"] = float(frame_fcd(stills.cpu(), fake, classifier))
        out["appearance_hist"] = float(ink_histogram_distance(stills.cpu(), fake))
    return out


def ink_histogram_distance(real: Tensor, fake: Tensor, bins: int = 10, threshold: float = 0.1) -> Tensor:
    """L1 distance (in ``[0, 2]``) between the histograms of ink values (``(x + 1) / 2 > threshold``) of two frame sets.

    The digits classifier's features hardly see texture; this sees the grey levels the glyphs are
    drawn with (the videos' soft strokes vs the stills' stripes), so it measures appearance alone.

    Example:
        >>> a = torch.full((2, 1, 4, 4), 1.0); b = torch.full((2, 1, 4, 4), 0.0)
        >>> float(ink_histogram_distance(a, a)), float(ink_histogram_distance(a, b))
        (0.0, 2.0)
    """

    def histogram(x: Tensor) -> Tensor:
        ink = ((frames_of(x).float().clamp(-1, 1) + 1) / 2).flatten()
        ink = ink[ink > threshold]
        if ink.numel() == 0:
            return torch.zeros(bins)
        return torch.histc(ink, bins=bins, min=threshold, max=1.0) / ink.numel()

    return (histogram(real) - histogram(fake)).abs().sum()
