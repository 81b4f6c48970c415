"""SR fidelity and perceptual metrics: PSNR/SSIM as SR papers report them, LPIPS, a trained-feature distance.

SR papers compute PSNR and SSIM on the luma (Y) channel of ITU-R BT.601 YCbCr (MATLAB's
``rgb2ycbcr``: ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], Y in [16, 235]
of 255), after shaving ``border`` pixels (usually the scale) off each side, per image, then
average over images. :func:`sr_psnr` and :func:`sr_ssim` do that through torchmetrics'
functional metrics (data range 1, Gaussian SSIM window 11, σ 1.5); ``y_channel=False`` scores RGB.

Perceptual distance: :func:`lpips_metric` builds torchmetrics' LPIPS only when the ImageNet
backbone weights are already in the torch hub cache (nothing is downloaded; a clear error says
which file to put where). For offline benches, :class:`FeatureDistance` is an LPIPS-*like*
distance without LPIPS' learned weights: unit-normalised activations of chosen layers of a network
trained in this repository, squared differences averaged over space and summed over layers. Name
it after its network ("feature distance (SmallCNN, skimage patches)"), never "LPIPS".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lightning_distill.losses.super_resolution import feature_distance_loss

__all__ = [
    "LPIPS_BACKBONE_FILES",
    "FeatureDistance",
    "SRMetrics",
    "lpips_metric",
    "rgb_to_y",
    "sr_psnr",
    "sr_ssim",
]

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(image: Tensor) -> Tensor:
    """BT.601 luma in [16/255, 235/255] of RGB images ``(B, 3, H, W)`` in [0, 1] → ``(B, 1, H, W)``.

    A one-channel input is returned as it is (already grey).

    Example:
        >>> round(rgb_to_y(torch.ones(1, 3, 2, 2))[0, 0, 0, 0].item() * 255, 3)
        235.0
    """
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"`image` must be (B, 3, H, W) or (B, 1, H, W), got shape {tuple(image.shape)}.")
    if image.shape[1] == 1:
        return image
    w = image.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1) / 255.0
    return (image * w).sum(dim=1, keepdim=True) + 16.0 / 255.0


def _prepare(sr: Tensor, hr: Tensor, border: int, y_channel: bool) -> tuple[Tensor, Tensor]:
    if sr.shape != hr.shape or sr.ndim != 4:
        raise ValueError(
            f"`sr` and `hr` must be (B, C, H, W) of the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}."
        )
    if border < 0 or 2 * border >= min(sr.shape[-2:]):
        raise ValueError(
            f"`border`={border} must be >= 0 and leave pixels of a {tuple(sr.shape[-2:])} image."
        )
    sr, hr = sr.float().clamp(0, 1), hr.float().clamp(0, 1)
    if y_channel:
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    if border:
        sr, hr = sr[..., border:-border, border:-border], hr[..., border:-border, border:-border]
    return sr, hr


def sr_psnr(
    sr: Tensor, hr: Tensor, *, border: int = 0, y_channel: bool = True, reduction: str = "mean"
) -> Tensor:
    """PSNR (dB) per image, on Y or RGB after shaving ``border`` pixels; mean over images by default.

    Args:
        sr: ``(B, 3, H, W)`` (or one channel) super-resolved images in [0, 1] (clamped).
        hr: ``(B, 3, H, W)`` ground truth in [0, 1].
        border: pixels shaved off each side (SR papers: the scale).
        y_channel: score the BT.601 luma (SR papers) instead of RGB.
        reduction: ``"mean"`` over images or ``"none"`` (``(B,)``).

    Raises:
        ValueError: shapes differ or are not 4-D, or ``border`` leaves nothing.

    Example:
        >>> hr = torch.zeros(1, 3, 8, 8); sr = hr + 0.1
        >>> round(sr_psnr(sr, hr, y_channel=False).item(), 2)
        20.0
    """
    sr, hr = _prepare(sr, hr, border, y_channel)
    values = peak_signal_noise_ratio(sr, hr, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.mean() if reduction == "mean" else values


def sr_ssim(
    sr: Tensor, hr: Tensor, *, border: int = 0, y_channel: bool = True, reduction: str = "mean"
) -> Tensor:
    """SSIM per image (Gaussian window 11, σ 1.5, data range 1), on Y or RGB after shaving ``border``.

    Arguments as :func:`sr_psnr`; an image needs at least 11 pixels per side after the shave.

    Example:
        >>> hr = torch.rand(2, 3, 16, 16)
        >>> sr_ssim(hr, hr).item()
        1.0
    """
    sr, hr = _prepare(sr, hr, border, y_channel)
    if min(sr.shape[-2:]) < 11:
        raise ValueError(
            f"SSIM needs images of at least 11x11 pixels after shaving `border`={border}, got "
            f"{tuple(sr.shape[-2:])}; use larger `hr_size` or a smaller border."
        )
    # The SSIM map averaged over the pixels whose 11x11 window lies inside the image (as skimage and
    # MATLAB's ssim do); torchmetrics' own mean also counts part of its padded border.
    _, full = structural_similarity_index_measure(
        sr, hr, data_range=1.0, reduction="none", return_full_image=True
    )
    values = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    return values.mean() if reduction == "mean" else values


class SRMetrics:
    """PSNR and SSIM on Y and PSNR on RGB of a batch, with the border crop, as a dict of scalars.

    Args:
        border: pixels shaved off each side (``None``: the scale read from the shapes).

    Example:
        >>> hr = torch.rand(2, 3, 16, 16)
        >>> sorted(SRMetrics()(hr, hr))
        ['psnr', 'psnr_rgb', 'ssim']
    """

    def __init__(self, border: int | None = None) -> None:
        if border is not None and border < 0:
            raise ValueError(f"`border` must be >= 0 or None, got {border}.")
        self.border = border

    def __call__(self, sr: Tensor, hr: Tensor, scale: int = 1) -> dict[str, Tensor]:
        border = scale if self.border is None else self.border
        return {
            "psnr": sr_psnr(sr, hr, border=border),
            "ssim": sr_ssim(sr, hr, border=border),
            "psnr_rgb": sr_psnr(sr, hr, border=border, y_channel=False),
        }


#: torchvision's file names of the ImageNet weights LPIPS' backbones load (``<hub>/checkpoints/<name>``).
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def _backbone_weight_file(net_type: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net_type]


def lpips_metric(net_type: str = "alex") -> nn.Module:
    """torchmetrics' LPIPS (inputs in [0, 1]) when the backbone's ImageNet weights are local.

    LPIPS' linear heads ship with torchmetrics, but its AlexNet/VGG/SqueezeNet backbone weights come
    from torchvision's download URL. This checks the torch hub cache first and never downloads.

    Raises:
        ValueError: an unknown ``net_type``.
        FileNotFoundError: the backbone weights are not in the hub cache; the message names the
            file and the folder to put it in (``$TORCH_HOME/hub/checkpoints``).
        ModuleNotFoundError: the weights are there but torchvision is not installed.
    """
    if net_type not in ("alex", "vgg", "squeeze"):
        raise ValueError(f"`net_type` must be 'alex', 'vgg' or 'squeeze', got {net_type!r}.")
    path = _backbone_weight_file(net_type)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS ({net_type}) needs the ImageNet backbone weights {path.name} in {path.parent}, and nothing "
            "is downloaded here. Copy the file there (or set TORCH_HOME), or use FeatureDistance with a "
            "network trained in this repository for an offline perceptual distance."
        )
    try:
        import torchvision  # noqa: F401  (torchmetrics builds the LPIPS backbone from torchvision)
    except ImportError:
        raise ModuleNotFoundError(
            "LPIPS through torchmetrics needs torchvision (`pip install torchvision`); the backbone weights "
            f"{path.name} are already in {path.parent}."
        ) from None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=True)


class FeatureDistance(nn.Module):
    """LPIPS-like distance on a trained network's features, without LPIPS' learned layer weights.

    ``d(x, y) = Σ_l mean_hw ‖n(f_l(x)) − n(f_l(y))‖²`` where ``n`` scales each pixel's channel
    vector to unit length. The network is frozen; RGB inputs are turned to grey when it takes one
    channel.

    Args:
        network: the feature network (e.g. a :class:`~lightning_distill.models.SmallCNN` classifier
            trained on skimage patches).
        layers: names of its submodules whose outputs are compared (``["stem", "layer1"]``).
        name: what tables call it (say which network: it is not LPIPS).

    Raises:
        ValueError: no layers, or a layer name the network lacks (the message lists valid names).
    """

    def __init__(self, network: nn.Module, layers: Sequence[str], name: str = "feature distance") -> None:
        super().__init__()
        if not layers:
            raise ValueError("`layers` must name at least one submodule of `network`.")
        modules = dict(network.named_modules())
        missing = [layer for layer in layers if layer not in modules]
        if missing:
            raise ValueError(
                f"`layers` {missing} are not in the network; valid names: {sorted(modules)[:20]}."
            )
        self.network = network.eval().requires_grad_(False)
        self.layers = list(layers)
        self.name = name
        first_conv = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_channels = first_conv.in_channels if first_conv is not None else 3

    def features(self, x: Tensor) -> list[Tensor]:
        """The outputs of ``layers`` of ``network`` on images ``x`` in [0, 1] (RGB → Y for a grey network),
        with the graph kept (a perceptual training loss differentiates through them)."""
        if self.in_channels == 1 and x.shape[1] == 3:
            x = (rgb_to_y(x) - 16 / 255) * 255 / 219
        out: dict[str, Tensor] = {}
        handles = [
            dict(self.network.named_modules())[n].register_forward_hook(
                lambda _m, _i, o, n=n: out.__setitem__(n, o)
            )
            for n in self.layers
        ]
        try:
            self.network(x)
        finally:
            for h in handles:
                h.remove()
        return [out[n] for n in self.layers]

    @torch.no_grad()
    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        """Distance per image ``(B,)`` between ``sr`` and ``hr`` ``(B, C, H, W)`` in [0, 1]."""
        if sr.shape != hr.shape:
            raise ValueError(
                f"`sr` and `hr` must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}."
            )
        return feature_distance_loss(self.features(sr.float()), self.features(hr.float()), reduction="none")
