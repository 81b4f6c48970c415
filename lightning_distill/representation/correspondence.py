"""Dense features and their evaluation on correspondences (DistillDIFT's toolkit).

* :class:`UNetFeatures` — a frozen diffusers UNet as a dense feature extractor: the image is noised
  to a few timesteps (fixed noise per call), the UNet runs once per timestep and the output of
  ``up_blocks[up_block]`` is read through a forward hook (removed after the call); the maps are
  averaged over the timesteps (the paper's "ensemble over timesteps" of SDXL-Turbo features).
* :class:`ViTFeatures` — the patch tokens of a transformers ViT (``ViTModel``, ``ViTMAEModel`` or
  ``ViTMAEForPreTraining``, every patch visible) at block ``layer``, as a ``(B, C, h, w)`` map.
* :func:`ensemble_features` — the teacher ensemble: each member's map L2-normalised per location,
  resized to one grid and concatenated over channels (so each member weighs equally in the cosine).
* :class:`FeatureCache` — teacher features per pair index, computed once and kept in memory (the
  paper caches the teachers' features for the whole dataset before training).
* :func:`match_points` and :class:`PCK` — nearest-neighbour matching of source keypoints in the
  target feature map (features bilinearly upsampled to the image) and PCK@α, the fraction of
  valid keypoints predicted within ``α · max(H, W)`` pixels of the truth (a torchmetrics Metric).

The pairs themselves come from :mod:`lightning_distill.data.correspondence`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_distill.representation.encoding import encode, encoder_of
from lightning_distill.utils.checks import check_int, check_positive, check_tensor

__all__ = [
    "PCK",
    "FeatureCache",
    "UNetFeatures",
    "ViTFeatures",
    "ensemble_features",
    "match_points",
    "pck",
    "vit_feature_map",
]


class UNetFeatures(nn.Module):
    """Dense features of a frozen diffusers UNet: ``up_blocks[up_block]`` output averaged over ``timesteps``.

    Args:
        unet: a diffusers ``UNet2DModel``/``UNet2DConditionModel`` (called ``unet(x_t, t)``; for a
            conditional UNet give ``encoder_hidden_states`` through ``condition``).
        schedule: anything with ``add_noise(x0, noise, t)`` (a ``NoiseSchedule``).
        timesteps: the noise levels (the paper: 51, 101, 151, 201 of 1000 for SDXL-Turbo).
        up_block: which up block's output is the feature (the paper: 1).
        noise_seed: seed of the noise (the same noise for every call, so features are deterministic).
        condition: optional ``encoder_hidden_states`` ``(1, L, D)`` repeated over the batch.

    Raises:
        ValueError: no timesteps, or ``up_block`` outside the UNet's up blocks.
    """

    def __init__(
        self,
        unet: nn.Module,
        schedule: object,
        timesteps: Sequence[int] = (51, 101, 151, 201),
        up_block: int = 1,
        noise_seed: int = 0,
        condition: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(unet, "up_blocks"):
            raise TypeError(f"`unet` must be a diffusers UNet with `up_blocks`, got {type(unet).__name__}.")
        if not callable(getattr(schedule, "add_noise", None)):
            raise TypeError(f"`schedule` must have `add_noise(x0, noise, t)`, got {type(schedule).__name__}.")
        if len(timesteps) == 0:
            raise ValueError("`timesteps` must name at least one timestep.")
        check_int("up_block", up_block, low=0, high=len(unet.up_blocks) - 1, high_name="the last up block")
        self.unet = unet
        self.schedule = schedule
        self.timesteps = [int(t) for t in timesteps]
        self.up_block = up_block
        self.noise_seed = noise_seed
        self.condition = condition

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> ``(B, C_up, h, w)`` features."""
        check_tensor("images", images, exact_ndim=4)
        captured: list[Tensor] = []
        handle = self.unet.up_blocks[self.up_block].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        generator = torch.Generator(device="cpu").manual_seed(self.noise_seed)
        kwargs = {}
        if self.condition is not None:
            kwargs["encoder_hidden_states"] = self.condition.expand(images.shape[0], -1, -1).to(images)
        try:
            for t in self.timesteps:
                noise = torch.randn(images.shape, generator=generator).to(images)
                step = torch.full((images.shape[0],), t, device=images.device, dtype=torch.long)
                self.unet(self.schedule.add_noise(images, noise, step), step, **kwargs)
        finally:
            handle.remove()
        return torch.stack(captured).mean(dim=0)


class ViTFeatures(nn.Module):
    """Patch tokens of a transformers ViT at block ``layer`` as a map ``(B, C, h, w)``.

    Args:
        model: ``ViTModel``, ``ViTMAEModel`` or ``ViTMAEForPreTraining`` (its encoder is used).
        layer: block whose output is read (1-based; ``-1`` = the last, after the final layer norm).

    Raises:
        ValueError: ``layer`` outside the model's blocks.
    """

    def __init__(self, model: nn.Module, layer: int = -1) -> None:
        super().__init__()
        encoder = encoder_of(model)
        depth = encoder.config.num_hidden_layers
        if layer != -1:
            check_int("layer", layer, low=1, high=depth, high_name=f"the model's {depth} blocks")
        self.model = encoder
        self.layer = layer

    def forward(self, images: Tensor) -> Tensor:
        return vit_feature_map(self.model, images, self.layer)


def vit_feature_map(model: nn.Module, images: Tensor, layer: int = -1) -> Tensor:
    """The patch tokens ``(B, C, h, w)`` of a transformers ViT (every patch visible) at block ``layer`` (``-1``: last)."""
    check_tensor("images", images, exact_ndim=4)
    encoder = encoder_of(model)
    size = encoder.config.patch_size
    grid = (images.shape[-2] // size, images.shape[-1] // size)
    want_hidden = layer != -1
    if hasattr(encoder.embeddings, "random_masking"):  # ViT-MAE: every patch visible, in patch order
        mask = torch.zeros(images.shape[0], grid[0] * grid[1], device=images.device)
        out = encode(encoder, images, mask, hidden_states=want_hidden)
        tokens = out.hidden_states[layer] if want_hidden else out.latent
    else:
        out = encoder(pixel_values=images, output_hidden_states=want_hidden)
        tokens = out.hidden_states[layer] if want_hidden else out.last_hidden_state
    patches = tokens[:, -grid[0] * grid[1] :]  # drop the cls token
    return patches.transpose(1, 2).reshape(images.shape[0], -1, *grid)


def ensemble_features(maps: Sequence[Tensor], size: tuple[int, int] | None = None) -> Tensor:
    """Concatenate feature maps ``(B, C_k, h_k, w_k)`` after L2-normalising each per location and resizing to ``size``.

    ``size`` defaults to the largest grid among the maps.

    Raises:
        ValueError: no maps, or different batch sizes.
    """
    if len(maps) == 0:
        raise ValueError("`maps` must hold at least one feature map.")
    for k, m in enumerate(maps):
        check_tensor(f"maps[{k}]", m, exact_ndim=4)
        if m.shape[0] != maps[0].shape[0]:
            raise ValueError(f"`maps` must share the batch size, got {[tuple(x.shape) for x in maps]}.")
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    resized = [
        F.interpolate(F.normalize(m.float(), dim=1), size=size, mode="bilinear", align_corners=False)
        if tuple(m.shape[-2:]) != tuple(size)
        else F.normalize(m.float(), dim=1)
        for m in maps
    ]
    return torch.cat(resized, dim=1)


class FeatureCache(nn.Module):
    """Features per sample index, computed on first request and kept (on CPU) for the rest of the run.

    Not saved in checkpoints (rebuilt from the frozen teachers on demand).
    """

    def __init__(self) -> None:
        super().__init__()
        self._store: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def get(self, index: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Features of the samples ``index`` ``(B,)``; ``compute(rows)`` gives the missing rows' features.

        ``rows`` is a boolean mask over the batch of the samples not cached yet.
        """
        missing = torch.tensor([int(i) not in self._store for i in index.tolist()], device=index.device)
        if bool(missing.any()):
            fresh = compute(missing)
            for i, row in zip(index[missing].tolist(), fresh):
                self._store[int(i)] = row.detach().cpu()
        return torch.stack([self._store[int(i)] for i in index.tolist()]).to(index.device)


def match_points(
    source_features: Tensor, target_features: Tensor, source_points: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """Predicted target points ``(B, K, 2)``: the target pixel whose feature is most cosine-similar to each source point's.

    Both feature maps ``(B, C, h, w)`` are bilinearly upsampled to ``image_size`` ``(H, W)``; the
    source feature is read at the keypoint ``(x, y)`` (pixel centres on integers).

    Raises:
        ValueError: mismatched maps or points not ``(B, K, 2)``.
    """
    check_tensor("source_features", source_features, exact_ndim=4)
    check_tensor("target_features", target_features, exact_ndim=4)
    check_tensor("source_points", source_points, exact_ndim=3)
    if source_features.shape[:2] != target_features.shape[:2] or source_points.shape[-1] != 2:
        raise ValueError(
            f"`source_features` {tuple(source_features.shape)} and `target_features` {tuple(target_features.shape)} "
            f"must share (B, C), and `source_points` {tuple(source_points.shape)} must be (B, K, 2)."
        )
    h, w = image_size
    up_s = F.interpolate(source_features.float(), size=(h, w), mode="bilinear", align_corners=False)
    up_t = F.interpolate(target_features.float(), size=(h, w), mode="bilinear", align_corners=False)
    grid = torch.stack(
        [source_points[..., 0] / max(w - 1, 1) * 2 - 1, source_points[..., 1] / max(h - 1, 1) * 2 - 1], dim=-1
    )
    picked = F.grid_sample(
        up_s, grid.unsqueeze(1).to(up_s), mode="bilinear", align_corners=True
    )  # (B, C, 1, K)
    query = F.normalize(picked.squeeze(2).transpose(1, 2), dim=-1)  # (B, K, C)
    keys = F.normalize(up_t.flatten(2), dim=1)  # (B, C, H*W)
    best = (query @ keys).argmax(dim=-1)  # (B, K)
    return torch.stack([(best % w).float(), torch.div(best, w, rounding_mode="floor").float()], dim=-1)


def pck(
    predicted: Tensor, target: Tensor, valid: Tensor | None, image_size: tuple[int, int], alpha: float = 0.1
) -> Tensor:
    """PCK@α: the fraction of valid keypoints with ``‖pred − true‖ ≤ α · max(H, W)`` (a float32 scalar).

    Raises:
        ValueError: shapes differ, ``alpha`` <= 0, or no valid keypoint.
    """
    metric = PCK(alpha=alpha)
    metric.update(predicted, target, valid, image_size)
    return metric.compute()


class PCK(Metric):
    """Percentage of correct keypoints at threshold ``alpha · max(H, W)``, accumulated over batches.

    ``update(predicted (B, K, 2), target (B, K, 2), valid (B, K) | None, image_size (H, W))``;
    ``compute()`` is the fraction of valid keypoints within the threshold.

    Example:
        >>> m = PCK(alpha=0.1)
        >>> m.update(torch.tensor([[[0.0, 0.0], [5.0, 5.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), None, (10, 10))
        >>> float(m.compute())
        0.5
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, alpha: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive("alpha", alpha)
        self.alpha = alpha
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self, predicted: Tensor, target: Tensor, valid: Tensor | None, image_size: tuple[int, int]
    ) -> None:
        check_tensor("predicted", predicted, exact_ndim=3)
        check_tensor("target", target, exact_ndim=3)
        if predicted.shape != target.shape or predicted.shape[-1] != 2:
            raise ValueError(
                f"`predicted` {tuple(predicted.shape)} and `target` {tuple(target.shape)} must both be (B, K, 2)."
            )
        if valid is None:
            valid = torch.ones(predicted.shape[:2], dtype=torch.bool, device=predicted.device)
        if valid.shape != predicted.shape[:2]:
            raise ValueError(
                f"`valid` must be (B, K) = {tuple(predicted.shape[:2])}, got {tuple(valid.shape)}."
            )
        threshold = self.alpha * max(image_size)
        hit = (predicted.float() - target.float()).norm(dim=-1) <= threshold
        valid = valid.bool()
        self.correct += (hit & valid).sum().float()
        self.total += valid.sum().float()

    def compute(self) -> Tensor:
        if self.total == 0:
            raise ValueError("PCK has no valid keypoint to score; check the pairs' `valid` mask.")
        return self.correct / self.total
