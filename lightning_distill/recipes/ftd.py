"""FTD: trajectory matching with flat experts and an EMA of the synthetic images (plain MTT by config).

Du, Jiang, Tan, Zhou, Li, "Minimizing the Accumulated Trajectory Error to Improve Dataset
Distillation", CVPR 2023, arXiv 2211.11004. Official code: AngusDujw/FTD-distillation
(``buffer/buffer_FTD.py``, ``distill/distill_FTD.py``), built on MTT (Cazenavette et al., "Dataset
Distillation by Matching Training Trajectories", arXiv 2203.11932, GeorgeCazenavette/mtt-distillation).

What learns is a small synthetic set ``S`` (images and a learning rate ``alpha``); there is no
teacher, but a buffer of expert trajectories ``theta*_0..T`` trained on the real data, once:

0. Experts (at setup, cached): ConvNets trained on the real data, flat parameters saved after
   every epoch. FTD trains them with GSAM, so that the trajectory is flat (MTT: plain SGD).
1. Each iteration: a random expert and start epoch ``s < max_start_epoch``.
2. From ``theta*_s``, ``N = syn_steps`` SGD steps on (augmented) minibatches of ``S`` with step
   size ``alpha``: ``theta_{k+1} = theta_k - alpha grad CE(f(x_k; theta_k), y_k)``, differentiable
   (``torch.func.functional_call`` over flat parameters).
3. ``L = ||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2`` with ``M = expert_epochs``.
4. One SGD step on the images (``lr_img``) and on ``alpha`` (``lr_lr``), backpropagated through
   the whole unrolled training.
5. FTD: ``S_ema = d S_ema + (1 - d) S`` after every step (``EMATeacher``); the EMA images are what
   is saved and evaluated, with the learned ``alpha``.

Total loss: ``L`` (term ``match``).

Hyper-parameters -> config keys (``model.init_args.*``; official ``distill_FTD.py`` argument defaults):

==========================  ================================  ===========================================
official                    key                               default
==========================  ================================  ===========================================
syn_steps                   ``syn_steps``                     20
expert_epochs               ``expert_epochs``                 3 (run script CIFAR-10: 2)
max_start_epoch             ``max_start_epoch``               25 (run script CIFAR-10: 20)
batch_syn                   ``batch_syn``                     None (all images)
lr_img                      ``optimizer``                     :func:`ftd_image_sgd`: SGD lr 1000, momentum 0.5
lr_lr                       ``lr_lr``                         1e-5 on ``alpha`` = 0.1 on ``log alpha`` at 0.01
lr_teacher (alpha init)     ``synthetic.init_args.lr_init``   0.01
ema_decay                   ``ema_decay``                     0.999 (run scripts: 0.9995); None = MTT
dsa_strategy                ``augment``                       color_crop_cutout_flip_scale_rotate
expert training             ``experts`` (ExpertSpec)          GSAM, rho 0.01, alpha 0.4, adaptive, 50 ep.
model                       ``network`` (ConvNetSpec)         ConvNet-3, width 128, instance norm
==========================  ================================  ===========================================
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_distill.callbacks import EMATeacher
from lightning_distill.dataset_distillation import (
    ConvNet,
    ConvNetSpec,
    SiameseAugment,
    SyntheticSet,
    ftd_image_sgd,
)
from lightning_distill.dataset_distillation.experts import ExpertSpec, ExpertTrajectories, expert_trajectories
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from lightning_distill.dataset_distillation.trajectory import ParamLayout, unroll_student
from lightning_distill.losses.dataset_distillation import trajectory_matching_loss

__all__ = ["FTD", "ftd_image_sgd", "image_sgd"]

#: Former name of :func:`~lightning_distill.dataset_distillation.ftd_image_sgd`, kept for configs that use it.
image_sgd = ftd_image_sgd


class FTD(SyntheticSetModule):
    """FTD (and MTT) recipe. See the module docstring for the algorithm.

    :class:`~lightning_distill.dataset_distillation.recipe_base.SyntheticSetModule` retrains students on
    :meth:`evaluated_set` at the learned learning rate (:meth:`retrain_settings`).

    Args:
        synthetic: the set being distilled; needs ``learn_lr=True`` (the learned step size).
        network: the expert and student architecture (default ConvNet-3, width 128, instance norm).
        experts: how the experts are trained on first use (default: FTD's GSAM experts).
        expert_path: a buffer saved with :meth:`ExpertTrajectories.save` to use instead of training.
        expert_cache_dir: where trained experts are cached (default ``$LIGHTNING_DISTILL_CACHE``
            or ``~/.cache/lightning_distill``).
        syn_steps: ``N``, student steps on the synthetic set per iteration.
        expert_epochs: ``M``, expert epochs the student's ``N`` steps must cover.
        max_start_epoch: start epochs are drawn uniformly from ``[0, max_start_epoch)``.
        batch_syn: synthetic images per student step (``None``: all).
        lr_lr: SGD learning rate of ``log alpha`` (momentum 0.5). The official code steps
            ``alpha`` itself with 1e-5; on ``log alpha`` that is ``1e-5 / alpha^2`` (0.1 at 0.01).
        ema_decay: decay ``d`` of the EMA of the images (FTD); ``None`` turns it off (MTT).
        augment: DSA strategy of the student's minibatches (``"none"`` to switch it off); leave
            ``flip`` out for digits.
        seed: seed of the expert/epoch draws and augmentation; ``None`` takes it from
            ``seed_everything`` at setup.
        val_epochs: epochs of the evaluation by retraining that validation runs (``val/syn_acc``).
        val_seeds: models retrained per validation.
        save_path: where the evaluated set is saved when fit ends (default
            ``<log dir>/synthetic_set.pt``; nothing under ``fast_dev_run`` or without a logger).
        loss_weights: ``{"match": ...}``.
        optimizer: optimizer of the images (default
            :func:`~lightning_distill.dataset_distillation.ftd_image_sgd`, the official SGD); ``log alpha``
            is a second parameter group with ``lr_lr``.

    Raises:
        TypeError: ``synthetic`` is not a :class:`SyntheticSet`, or ``experts`` not an :class:`ExpertSpec`.
        ValueError: a set without a learned learning rate, a network that does not fit the set,
            or a non-positive step count, epoch count, ``lr_lr`` or ``ema_decay`` outside ``[0, 1)``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("match",)
    requires_teacher: ClassVar[bool] = False
    seed_key: ClassVar[str] = "ftd_seed"

    def __init__(
        self,
        synthetic: SyntheticSet,
        network: ConvNetSpec | None = None,
        experts: ExpertSpec | None = None,
        expert_path: str | None = None,
        expert_cache_dir: str | None = None,
        syn_steps: int = 20,
        expert_epochs: int = 3,
        max_start_epoch: int = 25,
        batch_syn: int | None = None,
        lr_lr: float = 0.1,
        ema_decay: float | None = 0.999,
        augment: str = "color_crop_cutout_flip_scale_rotate",
        seed: int | None = None,
        val_epochs: int = 300,
        val_seeds: Sequence[int] = (0,),
        save_path: str | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = ftd_image_sgd,
    ) -> None:
        super().__init__(
            synthetic,
            seed=seed,
            val_epochs=val_epochs,
            val_seeds=val_seeds,
            loss_weights=loss_weights,
            optimizer=optimizer,
        )
        if synthetic.log_lr is None:
            raise ValueError(
                "FTD learns the student's learning rate: build the set with `learn_lr: true` "
                "(`model.init_args.synthetic.init_args.learn_lr`)."
            )
        experts = ExpertSpec() if experts is None else experts
        if not isinstance(experts, ExpertSpec):
            raise TypeError(f"`experts` must be an ExpertSpec, got {type(experts).__name__}.")
        for name, value in (
            ("syn_steps", syn_steps),
            ("expert_epochs", expert_epochs),
            ("max_start_epoch", max_start_epoch),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be an integer >= 1, got {value!r}; set `model.init_args.{name}`."
                )
        if batch_syn is not None and (isinstance(batch_syn, bool) or batch_syn < 1):
            raise ValueError(
                f"`batch_syn` must be None or >= 1, got {batch_syn!r}; set `model.init_args.batch_syn`."
            )
        if not lr_lr > 0:
            raise ValueError(f"`lr_lr` must be > 0, got {lr_lr!r}; set `model.init_args.lr_lr`.")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(
                f"`ema_decay` must be in [0, 1) or None (no EMA: plain MTT), got {ema_decay!r}; "
                "set `model.init_args.ema_decay`."
            )
        c, h, w = synthetic.image_shape
        if network is None:
            network = ConvNetSpec(in_channels=c, num_classes=synthetic.num_classes, image_size=(h, w))
        if (network.in_channels, *network.image_size) != (
            c,
            h,
            w,
        ) or network.num_classes != synthetic.num_classes:
            raise ValueError(
                f"`network` takes images {(network.in_channels, *network.image_size)} into {network.num_classes} "
                f"classes but the set holds {synthetic.image_shape} images of {synthetic.num_classes} classes; "
                "fix `model.init_args.network`."
            )
        self.save_hyperparameters(ignore=["synthetic", "network", "experts", "optimizer"])
        self.hparams["network"] = network.to_dict()
        self.hparams["experts"] = experts.to_dict()
        self.network_spec, self.expert_spec = network, experts
        self.expert_path, self.expert_cache_dir = expert_path, expert_cache_dir
        self.syn_steps, self.expert_epochs, self.max_start_epoch = syn_steps, expert_epochs, max_start_epoch
        self.batch_syn, self.lr_lr, self.ema_decay = batch_syn, lr_lr, ema_decay
        self.augment = None if augment.lower() in ("", "none") else SiameseAugment(augment, siamese=False)
        self.save_path = save_path
        # The student architecture: only its forward is used, with the flat parameters of step 2.
        self.student_net = ConvNet.from_spec(network).requires_grad_(False)
        self.layout = ParamLayout.of(self.student_net)
        if ema_decay is not None:  # the EMA of the set, kept up to date by EMATeacher (step 5)
            self.register_frozen("ema_synthetic", copy.deepcopy(synthetic))
        self.buffer: ExpertTrajectories | None = None
        self._train_images: tuple[Tensor, Tensor] | None = None

    # ---------------------------------------------------------------- the paper
    def sample_segment(self, generator: torch.Generator) -> tuple[Tensor, Tensor, int, int]:
        """Step 1: ``(theta*_s, theta*_{s+M}, expert, s)`` from the expert buffer."""
        if self.buffer is None:
            raise RuntimeError("The expert buffer is not loaded; it is built in `setup('fit')`.")
        start, target, expert, epoch = self.buffer.sample(
            generator, max_start_epoch=self.max_start_epoch, expert_epochs=self.expert_epochs
        )
        return start.to(self.device), target.to(self.device), expert, epoch

    def unroll(self, start: Tensor, generator: torch.Generator) -> Tensor:
        """Step 2: ``N`` differentiable SGD steps with the learned ``alpha`` on the synthetic set."""
        self.student_net.train()
        return unroll_student(
            self.student_net,
            self.layout,
            start,
            self.synthetic.images,
            self.synthetic.labels,
            self.synthetic.lr,
            self.syn_steps,
            batch_size=self.batch_syn,
            augment=self.augment,
            generator=generator,
        )

    def matching_loss(self, student_end: Tensor, start: Tensor, target: Tensor) -> Tensor:
        """Step 3: ``||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2``."""
        return trajectory_matching_loss(student_end, start, target)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        # The batch is unused: MTT sees the real data only through the experts.
        generator = torch.Generator().manual_seed(self.step_seed(self.global_step))
        # 1. A random expert segment theta*_s -> theta*_{s+M}.
        start, target, _, epoch = self.sample_segment(generator)
        # 2. The student's N steps on the synthetic set.
        student_end = self.unroll(start, generator)
        # 3. The normalised parameter distance; 4. the optimizer steps images and alpha;
        # 5. EMATeacher then updates the EMA of the set.
        terms = {"match": self.matching_loss(student_end, start, target)}
        self.log_diagnostics({"syn_lr": self.synthetic.lr, "start_epoch": float(epoch)})
        return self.log_losses(terms)

    def configure_optimizers(self) -> Any:
        return self.optimizer(
            [
                {"params": [self.synthetic.images]},
                {"params": [self.synthetic.log_lr], "lr": self.lr_lr},
            ]
        )

    def configure_callbacks(self) -> Sequence[L.Callback]:
        if self.ema_decay is None:
            return []
        return [EMATeacher(source="student", target="ema_synthetic", decay=self.ema_decay, log_name=None)]

    # ------------------------------------------------------------- the evaluated set
    @torch.no_grad()
    def evaluated_set(self) -> SyntheticSet:
        """What FTD evaluates: the EMA images with the live learned ``alpha`` (MTT: the live set).

        The official code evaluates the EMA images with the current ``syn_lr``; the EMA copy also
        averages ``log alpha`` along with the images, and that average is not used.
        """
        if self.ema_decay is None:
            return self.synthetic
        out = copy.deepcopy(self.ema_synthetic)
        out.log_lr.copy_(self.synthetic.log_lr)
        return out

    def retrain_settings(self, synthetic: SyntheticSet) -> dict[str, Any]:
        """The EvalSpec's settings, with the learned ``alpha`` as the learning rate."""
        return {**super().retrain_settings(synthetic), "lr": float(synthetic.lr)}

    # ------------------------------------------------------------- lifecycle
    def setup(self, stage: str) -> None:
        """Fill the set from real images, start the EMA there, and (for fit) load or train the experts.

        A checkpoint (``ckpt_path``) is restored after ``setup`` and replaces the images and the EMA.
        """
        self._train_images = None
        super().setup(stage)
        x, y = self._train_images or (None, None)
        self._train_images = None
        if self.ema_decay is not None and not bool(self.ema_synthetic.initialized):
            # The EMA starts at the initial images, once: a later `setup("test")` (test_after_fit) keeps it.
            self.ema_synthetic.load_state_dict(self.synthetic.state_dict())
        if stage == "fit" and self.buffer is None:
            self.buffer = self._load_experts(x, y)

    def on_train_images(self, images: Tensor, labels: Tensor) -> None:
        """Keep the labelled training images for the experts (trained in ``setup('fit')``)."""
        keep = labels >= 0
        self._train_images = (images[keep], labels[keep])

    def _load_experts(self, x: Tensor | None, y: Tensor | None) -> ExpertTrajectories:
        if self.expert_path is not None:
            buffer = ExpertTrajectories.load(self.expert_path)
            if buffer.layout != self.layout:
                raise ValueError(
                    f"The buffer {self.expert_path!r} holds {buffer.layout.numel} parameters of another "
                    f"architecture than `network` ({self.layout.numel}); fix `model.init_args.network`."
                )
        elif x is None or y is None:
            raise ValueError(
                "Training the experts needs the real training images: use a datamodule with `train_images()`, "
                "or give a saved buffer in `model.init_args.expert_path`."
            )
        else:
            start = time.perf_counter()
            buffer = expert_trajectories(
                self.network_spec, x, y, self.expert_spec, cache_dir=self.expert_cache_dir, device=self.device
            )
            rank_zero_info(
                f"Expert buffer ({buffer.num_experts} x {buffer.num_epochs} epochs, {self.expert_spec.optimizer}) "
                f"ready in {time.perf_counter() - start:.1f} s"
            )
        buffer.check_window(self.max_start_epoch, self.expert_epochs)
        return buffer

    def artifact_metadata(self) -> dict[str, Any]:
        base = super().artifact_metadata()
        return {
            "method": "mtt" if self.ema_decay is None else "ftd",
            "ema_decay": self.ema_decay,
            "experts": self.expert_spec.optimizer if self.expert_path is None else self.expert_path,
            "steps": base["steps"],
            "fit_seconds": base["fit_seconds"],
        }
