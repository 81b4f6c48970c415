"""Radiance / CT toolkit: multi-view scenes (open3d), volume rendering and four radiance-field families
(PVD); and for CT a differentiable parallel-beam projector and its adjoint, filtered back-projection,
phantoms, encoder-decoder reconstruction networks and the parts of DGR (GloReDi). See README.md in this folder. Its LightningDataModule lives in
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
from lightning_distill.radiance.fields import (
    HashEncoding,
    HashGridField,
    MLPField,
    RadianceField,
    TensorVMField,
    VoxelGridField,
)
from lightning_distill.radiance.networks import CTEncoderDecoder, VAEEncoderDecoder
from lightning_distill.radiance.rendering import (
    camera_rays,
    ray_aabb,
    render_image,
    render_rays,
    volume_weights,
)
from lightning_distill.radiance.scenes import Cameras, MultiViewScene, make_scene
from lightning_distill.radiance.training import fit_field, trained_field, view_metrics

__all__ = [
    "CTEncoderDecoder",
    "Cameras",
    "HashEncoding",
    "HashGridField",
    "MLPField",
    "MultiViewScene",
    "RadianceField",
    "TensorVMField",
    "VoxelGridField",
    "camera_rays",
    "fit_field",
    "make_scene",
    "ray_aabb",
    "render_image",
    "render_rays",
    "trained_field",
    "view_metrics",
    "volume_weights",
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
