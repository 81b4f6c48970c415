"""PVD: progressive volume distillation, any radiance-field architecture into any other.

"One is All: Bridging the Gap Between Neural Radiance Fields Architectures with Progressive Volume
Distillation" (Fang, Xie, Wang, Huang, Li, Zhou, Zhang; AAAI 2023, arXiv 2211.15977). Official code:
megvii-research/AAAI2023-PVD (``distill_mutual/utils.py`` ``Trainer.train_step``,
``distill_mutual/network.py`` ``NeRFNetwork.forward``, ``main_distill_mutual.py`` defaults).

Teacher and student are fields of :mod:`lightning_distill.radiance.fields` (MLP NeRF, voxel grid,
TensoRF VM, hash grid), evaluated at the same sample points of each ray batch (the official
``inherited_params``: the student reuses the teacher's samples). Per training step, at global step ``s``:

1. Stage 1 (``s < stage_steps[0]``, official 2000): only the intermediate feature,
   ``L = w_f(s) · ℓ(P(f_S(x)), f_T(x))``; the student's colour head is not run.
2. Stage 2 (``s < stage_steps[1]``, official 5000): adds the clamped density pre-activation
   ``ℓ(p_S, p_T)`` (``[−2, 7]``) and the per-sample colour ``ℓ(c_S, c_T)``.
3. Stage 3: adds the RGB of the rendered rays, ``ℓ(C_S, C_T)`` (the teacher's render is the target; the
   training images are never used), the other terms stay.

``ℓ`` is PVD's ``get_loss`` (``loss_type``; the official default ``norm_l2`` is the norm of the
difference, not a mean). ``w_f(s) = w_f · feature_decay^(s + 1)``: the official code multiplies the
feature weight by 0.995 every step (a :class:`~lightning_distill.callbacks.progressive_schedule.ProgressiveSchedule`
sets it, with ``stage``). ``P`` is the identity when both features have one width, else a learnt
linear projection (ours: the official code asserts equal shapes and skips the term for Plenoxels).
Rays: by default (the official ``use_real_data_for_train=False``) new random rays from the cameras'
sphere towards the object, since the teacher renders any ray; ``random_rays: false`` uses the
training views' rays.

================================  ================================  ===========================
official (``main_distill_mutual``)  config key (``model.init_args``)  default
================================  ================================  ===========================
``loss_rate_fea_sc``               ``loss_weights.feature``          0.002
``loss_rate_sigma``                ``loss_weights.density``          0.002
``loss_rate_color``                ``loss_weights.color``            0.002
``loss_rate_rgb``                  ``loss_weights.rgb``              1.0
``update_loss_rate(·, 0.995)``     ``feature_decay``                 0.995
``stage_iters``                    ``stage_steps``                   (2000, 5000)
``loss_type``                      ``loss_type``                     ``norm_l2``
``sigma_clip_min/max``             the fields' ``density_clip``      (−2, 7)
Adam lr 1e-2, β (0.9, 0.99)        ``optimizer``                     :func:`pvd_adam`
================================  ================================  ===========================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lightning_distill.callbacks.pictures import _image_loggers
from lightning_distill.callbacks.progressive_schedule import ProgressiveSchedule
from lightning_distill.losses.radiance import PVD_LOSS_TYPES, pvd_regression_loss
from lightning_distill.module import DistillationModule
from lightning_distill.radiance.fields import RadianceField
from lightning_distill.radiance.rendering import random_rays, render_image, render_rays, sample_points
from lightning_distill.radiance.training import views_picture
from lightning_distill.utils.checks import check_choice, check_int, check_option
from lightning_distill.utils.random import stable_seed

__all__ = ["PVD", "pvd_adam"]

_MODULE_ARGS = ["student", "teacher", "optimizer", "lr_scheduler"]


def pvd_adam(params: Any) -> torch.optim.Optimizer:
    """Adam, lr 1e-2, β (0.9, 0.99), ε 1e-15: torch-ngp's optimizer, which PVD trains with."""
    return torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-15)


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 3:
        raise ValueError(
            "PVD batches must be (origins, directions, rgb), each (..., 3), as "
            "`lightning_distill.data.multiview.MultiViewDataModule` serves them."
        )
    origins, directions, rgb = batch
    if not (origins.shape == directions.shape == rgb.shape) or origins.shape[-1] != 3:
        raise ValueError(
            f"origins {tuple(origins.shape)}, directions {tuple(directions.shape)} and rgb {tuple(rgb.shape)} "
            "must be equal (..., 3) shapes."
        )
    return origins, directions


class PVD(DistillationModule):
    """Progressive volume distillation between two radiance fields (automatic optimization).

    Args:
        student: the field that learns (a :class:`~lightning_distill.radiance.fields.RadianceField`).
        teacher: the frozen source field (e.g. :func:`~lightning_distill.radiance.training.trained_field`).
        stage_steps: the global steps where stage 2 and stage 3 begin; ``None``: set ``stage`` yourself.
        feature_decay: per-step factor of the feature weight (1: constant).
        loss_type: ``norm_l2`` (official), ``mse``, ``norm_l1`` or ``smooth_l1``.
        num_samples: stratified samples per ray (training and rendering).
        random_rays: distil on random rays around the object (official) instead of the training rays.
        background: the background colour behind the fields (the scenes' white).
        num_pictures: held-out views in the picture logged each validation (student, teacher, truth).
        noise_seed: seed of the random rays and sample jitter (drawn from ``(noise_seed, step, rank)``).
        loss_weights: ``feature``, ``density``, ``color``, ``rgb``.
        optimizer: the student's (and projection's) optimizer.
        lr_scheduler: optional, stepped every epoch.

    Raises:
        ValueError: a student or teacher that is not a radiance field, or an argument out of range
            (naming the config key).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("feature", "density", "color", "rgb")
    default_loss_weights: ClassVar[dict[str, float]] = {
        "feature": 0.002,
        "density": 0.002,
        "color": 0.002,
        "rgb": 1.0,
    }
    # stage 1 leaves the colour head (and the projection of a later stage) without gradient
    trains_parameters_by_stage: ClassVar[bool] = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        stage_steps: Sequence[int] | None = (2000, 5000),
        feature_decay: float = 0.995,
        loss_type: str = "norm_l2",
        num_samples: int = 64,
        random_rays: bool = True,
        background: float = 1.0,
        num_pictures: int = 4,
        noise_seed: int = 0,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = pvd_adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(student, teacher=teacher, loss_weights=loss_weights, optimizer=optimizer,
                         lr_scheduler=lr_scheduler)  # fmt: skip
        self.save_hyperparameters(ignore=_MODULE_ARGS)
        for role, field in (("student", student), ("teacher", teacher)):
            if not isinstance(field, RadianceField):
                raise ValueError(
                    f"`{role}` must be a radiance field of lightning_distill.radiance.fields (MLPField, VoxelGridField, "
                    f"TensorVMField, HashGridField), got {type(field).__name__}; set `model.init_args.{role}`."
                )
        if stage_steps is not None:
            steps = list(stage_steps)
            ok = len(steps) == 2 and all(isinstance(v, int) for v in steps) and 1 <= steps[0] < steps[1]
            check_option(
                ok, "stage_steps", stage_steps, "two increasing ints >= 1 (stages 2 and 3 begin) or null"
            )
        check_option(0.0 < feature_decay <= 1.0, "feature_decay", feature_decay, "in (0, 1]")
        check_choice("loss_type", loss_type, PVD_LOSS_TYPES)
        check_int("num_samples", num_samples, low=1)
        check_int("num_pictures", num_pictures, low=0)
        self.stage_steps = None if stage_steps is None else [int(s) for s in stage_steps]
        self.feature_decay, self.loss_type, self.num_samples = float(feature_decay), loss_type, num_samples
        self.random_rays, self.background, self.num_pictures = random_rays, float(background), num_pictures
        self.noise_seed = int(noise_seed)
        #: the current stage (1, 2 or 3), set by the ProgressiveSchedule of :meth:`configure_callbacks`.
        self.stage = 1 if stage_steps is not None else 3
        # P: identity when the feature widths agree, else a linear map of the student's feature to the teacher's.
        same = student.feature_dim == teacher.feature_dim
        self.projection = nn.Identity() if same else nn.Linear(student.feature_dim, teacher.feature_dim)
        self._pictures: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ the paper, one method per stage
    def sample(self, origins: Tensor, directions: Tensor) -> dict[str, Tensor]:
        """The shared sample points of a ray batch (random rays around the object if ``random_rays``)."""
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        # a function of the step (and rank): a resumed run, or DDP on equal batches, draws the same rays
        seed = stable_seed(self.noise_seed, self.global_step, self.global_rank, "pvd rays")
        generator = torch.Generator().manual_seed(seed)
        if self.random_rays:
            origins, directions = random_rays(origins, self.teacher.aabb, generator=generator)
        return sample_points(
            origins, directions, self.teacher.aabb, self.num_samples, perturb=True, generator=generator
        )

    def feature_loss(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        """Stage 1: ``ℓ(P(f_S), f_T)`` over every sample point."""
        return pvd_regression_loss(self.projection(student_features), teacher_features, self.loss_type)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        samples = self.sample(*_unpack(batch))
        with torch.no_grad():
            target = render_rays(self.teacher, samples, density=self.teacher.activate_density,
                                 background=self.background)  # fmt: skip
        if self.stage <= 1:
            features = self.student.features(samples["x"].reshape(-1, 3))
            return self.log_losses({"feature": self.feature_loss(features, target["features"].flatten(0, 1))})
        out = render_rays(
            self.student, samples, density=self.student.activate_density, background=self.background
        )
        terms = {
            "feature": self.feature_loss(out["features"], target["features"]),
            "density": pvd_regression_loss(out["density_pre"], target["density_pre"], self.loss_type),
            "color": pvd_regression_loss(out["colors"], target["colors"], self.loss_type),
        }
        if self.stage >= 3:
            terms["rgb"] = pvd_regression_loss(out["rgb"], target["rgb"], self.loss_type)
        return self.log_losses(terms)

    def configure_callbacks(self) -> list:
        if self.stage_steps is None:
            return []
        start = self.loss_weights["feature"] * self.feature_decay
        return [ProgressiveSchedule({
            "stage": {"kind": "stages", "boundaries": self.stage_steps, "values": [1, 2, 3]},
            "loss_weights.feature": {"kind": "exponential", "start": start, "gamma": self.feature_decay},
        })]  # fmt: skip

    # -------------------------------------------------------------- evaluation
    def render(self, model: nn.Module, origins: Tensor, directions: Tensor) -> Tensor:
        """RGB ``(..., 3)`` of ``model`` along rays of any leading shape, without gradient."""
        return render_image(
            model, origins, directions, self.teacher.aabb, self.num_samples, background=self.background
        )

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """PSNR/SSIM (torchmetrics, data range 1) of ``model``'s renders of whole held-out views ``(B, H, W, 3)``."""
        origins, directions = _unpack(batch)
        if origins.ndim != 4:
            raise ValueError(
                f"evaluation batches must be whole views (B, H, W, 3), got {tuple(origins.shape)}."
            )
        pred = self.render(model, origins, directions).permute(0, 3, 1, 2).clamp(0, 1)
        truth = batch[2].permute(0, 3, 1, 2)
        if model is self.student and not self._pictures and self.num_pictures:
            keep = slice(0, self.num_pictures)
            self._pictures = {"student": pred[keep], "teacher": self.render(self.teacher, origins[keep],
                              directions[keep]).permute(0, 3, 1, 2), "ground truth": truth[keep]}  # fmt: skip
        psnr = peak_signal_noise_ratio(
            pred, truth, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)
        )
        return {"psnr": psnr, "ssim": structural_similarity_index_measure(pred, truth, data_range=1.0)}

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        pictures, self._pictures = self._pictures, {}
        if not pictures or self.trainer.sanity_checking:
            return
        picture = views_picture(pictures)  # rows: student, teacher, ground truth
        for logger in _image_loggers(self.trainer):
            if hasattr(logger, "log_image"):
                logger.log_image(key="pvd/views", images=[picture], step=self.global_step)
            else:
                logger.experiment.add_image(
                    "pvd/views", picture, global_step=self.global_step, dataformats="HWC"
                )

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        origins, directions = _unpack(batch)
        return self.render(self.student, origins, directions).clamp(0, 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters and the projection's (if the feature widths differ)."""
        return list(self.student.parameters()) + list(self.projection.parameters())
