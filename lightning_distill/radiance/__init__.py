"""Radiance / CT toolkit: the CT part so far — a differentiable parallel-beam projector and its adjoint,
filtered back-projection, phantoms, encoder-decoder reconstruction networks and the parts of DGR
(GloReDi). See README.md in this folder. Its LightningDataModule lives in
:mod:`lightning_distill.data.ct`, its losses in :mod:`lightning_distill.losses.radiance`.

scikit-image is imported only by the functions that need it (the Shepp–Logan phantom and the
``iradon`` reference), so importing this package needs only torch and torchmetrics.
"""

from lightning_distill.radiance.ct import (
    circle_mask,
    filtered_back_projection,
    radon_backward,
    radon_forward,
    ramp_filter,
    random_ellipses,
    shepp_logan,
    skimage_fbp,
    view_angles,
)
from lightning_distill.radiance.dgr import (
    LatentMemoryBank,
    band_contrastive_loss,
    band_embeddings,
    ct_metrics,
)
from lightning_distill.radiance.networks import CTEncoderDecoder, VAEEncoderDecoder

__all__ = [
    "CTEncoderDecoder",
    "LatentMemoryBank",
    "VAEEncoderDecoder",
    "band_contrastive_loss",
    "band_embeddings",
    "circle_mask",
    "ct_metrics",
    "filtered_back_projection",
    "radon_backward",
    "radon_forward",
    "ramp_filter",
    "random_ellipses",
    "shepp_logan",
    "skimage_fbp",
    "view_angles",
]
