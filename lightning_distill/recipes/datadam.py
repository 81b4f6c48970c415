"""DataDAM: dataset distillation by attention matching in random networks.

Sajedi, Khaki, Amjadian, Liu, Lawryshyn, Plataniotis, "DataDAM: Efficient Dataset Distillation
with Attention Matching", ICCV 2023, arXiv 2310.00093. Official code: DataDistillation/DataDAM
(``main_DataDAM.py``, ``utils.py``).

What learns is a small synthetic set ``S`` (``ipc`` images per class, here a
:class:`~lightning_distill.dataset_distillation.SyntheticSet`); there is no teacher. Every iteration:

1. Draw a fresh randomly initialised ConvNet ``phi`` (frozen: only the images learn).
2. For every class ``c``: a batch of real images ``T_c`` and the synthetic images ``S_c``, both
   augmented with the *same* random DSA parameters.
3. Run ``phi`` on the real batch (no gradient) and on the synthetic images, tapping the output
   ``f_l`` of every ReLU (FeatureHooks) and the final embedding ``e`` (flattened last block).
4. Spatial attention ``a_l = v_l / ||v_l||_2`` with ``v_l = vec(sum_channels |f_l|^p)``.
5. ``L_SAM = sum_l sum_c || mean_{T_c} a_l - mean_{S_c} a_l ||^2`` over the layers but the last
   (whose pooled output is ``e``), and ``L_MMD = sum_c || mean_{T_c} e - mean_{S_c} e ||^2``.
6. One SGD step on the images for ``w_sam L_SAM + w_mmd L_MMD``.

Total loss: ``100 L_SAM + 100 * 0.01 L_MMD`` (official ``100 * error`` and ``task_balance`` 0.01).

Hyper-parameters -> config keys (``model.init_args.*``):

=============================  ==========================  =====================================
paper / official code          key                         default
=============================  ==========================  =====================================
attention exponent p           ``power``                   4 (paper; the official code uses 1)
layers of L_SAM                ``attention_layers``        ``all_but_last`` (official)
loss weights                   ``loss_weights``            {sam: 100, mmd: 1} (= 100 * 0.01)
random network                 ``network``                 ConvNet-3, width 128, instance norm
DSA strategy                   ``augment``                 color_crop_cutout_flip_scale_rotate
image optimizer                ``optimizer``               :func:`datadam_image_sgd`: SGD(lr 1,
                                                           momentum 0.5) (``lr_img``; 10 at IPC >= 100)
real images per class          ``data.init_args.per_class``  64 (``batch_real``)
images per class               ``synthetic.init_args.ipc``   (config)
initialisation                 ``synthetic.init_args.init``  real
=============================  ==========================  =====================================

The random network is a frozen submodule (``register_frozen``) whose weights are re-drawn in place
at every step from a generator seeded by ``(seed, global_step)``, so the FeatureHooks registered on
its ReLUs stay valid, no optimizer ever holds it, and it is left out of checkpoints: step ``k``'s
network is a function of ``(seed, k)``, so a resumed run draws the same networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_distill.callbacks import FeatureHooks
from lightning_distill.dataset_distillation import (
    ConvNet,
    ConvNetSpec,
    SiameseAugment,
    SyntheticSet,
    datadam_image_sgd,
    reset_parameters,
)
from lightning_distill.dataset_distillation.recipe_base import SyntheticSetModule
from lightning_distill.losses.dataset_distillation import attention_matching_loss, classwise_mean_discrepancy
from lightning_distill.utils.sharding import gathered, keep_every_key, shard_blocks

__all__ = ["DataDAM", "datadam_image_sgd", "image_sgd"]

#: Former name of :func:`~lightning_distill.dataset_distillation.datadam_image_sgd`, kept for configs that use it.
image_sgd = datadam_image_sgd


class DataDAM(SyntheticSetModule):
    """DataDAM recipe. See the module docstring for the algorithm.

    Its sets are judged by hard-label retraining, the default of
    :class:`~lightning_distill.dataset_distillation.recipe_base.SyntheticSetModule` (evaluation, setup, artifact, seed).

    Args:
        synthetic: the set being distilled; its images are the trainable parameters.
        network: architecture of the random networks (default: ConvNet-3, width 128, instance
            norm, for the set's image shape and classes).
        power: attention exponent ``p``.
        attention_layers: ``"all_but_last"`` (the official code: the last ReLU feeds the embedding
            of ``L_MMD``) or ``"all"``.
        augment: DSA strategy applied siamese-wise to each class's real and synthetic images
            (``"none"`` to switch it off). Leave ``flip`` out for digits.
        seed: seed of the random networks and augmentation; ``None`` takes it from
            ``seed_everything`` at setup.
        val_epochs: epochs of the cheap evaluation by retraining that validation runs
            (``val/syn_acc``).
        val_seeds: models trained per validation (their mean accuracy is logged).
        save_path: where the final set is saved (with its EvalSpec) when fit ends; default
            ``<log dir>/synthetic_set.pt``. Without a logger or under ``fast_dev_run`` nothing is
            saved unless it is given.
        loss_weights: ``{"sam": ..., "mmd": ...}``.
        optimizer: optimizer of the images (default
            :func:`~lightning_distill.dataset_distillation.datadam_image_sgd`, the official SGD).
        lr_scheduler: optional scheduler.

    Raises:
        TypeError: ``synthetic`` is not a :class:`SyntheticSet`.
        ValueError: ``power <= 0``, an unknown ``attention_layers``, a network that does not fit
            the set, ``val_epochs < 1`` or no ``val_seeds``.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("sam", "mmd")
    default_loss_weights: ClassVar[dict[str, float]] = {"sam": 100.0, "mmd": 1.0}
    requires_teacher: ClassVar[bool] = False
    method: ClassVar[str] = "datadam"
    seed_key: ClassVar[str] = "datadam_seed"

    def __init__(
        self,
        synthetic: SyntheticSet,
        network: ConvNetSpec | None = None,
        power: float = 4.0,
        attention_layers: Literal["all_but_last", "all"] = "all_but_last",
        augment: str = "color_crop_cutout_flip_scale_rotate",
        seed: int | None = None,
        val_epochs: int = 300,
        val_seeds: Sequence[int] = (0,),
        save_path: str | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = datadam_image_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            synthetic,
            seed=seed,
            val_epochs=val_epochs,
            val_seeds=val_seeds,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if not power > 0:
            raise ValueError(f"`power` must be > 0, got {power}; set `model.init_args.power`.")
        if attention_layers not in ("all_but_last", "all"):
            raise ValueError(
                f"`attention_layers` must be 'all_but_last' or 'all', got {attention_layers!r}; "
                "set `model.init_args.attention_layers`."
            )
        c, h, w = synthetic.image_shape
        if network is None:
            network = ConvNetSpec(in_channels=c, num_classes=synthetic.num_classes, image_size=(h, w))
        if (network.in_channels, *network.image_size) != (c, h, w):
            raise ValueError(
                f"`network` takes images {(network.in_channels, *network.image_size)} but the synthetic set holds "
                f"{synthetic.image_shape}; fix `model.init_args.network`."
            )
        self.save_hyperparameters(ignore=["synthetic", "network", "optimizer", "lr_scheduler"])
        self.hparams["network"] = network.to_dict()
        self.power = power
        self.attention_layers = attention_layers
        self.augment = SiameseAugment(augment, siamese=True)
        self.save_path = save_path
        # The random network: frozen, re-drawn in place every step (see the module docstring).
        self.network_spec = network
        self.register_frozen("network", ConvNet.from_spec(network))
        paths = self.network.activation_paths
        self.tap_names = tuple(f"act{k}" for k in range(len(paths)))
        self.hooks = FeatureHooks(
            {name: {"path": f"network.{path}", "detach": False} for name, path in zip(self.tap_names, paths)}
        )

    # ---------------------------------------------------------------- the paper
    def sample_network(self, generator: torch.Generator) -> ConvNet:
        """Step 1: re-draw the random network's weights in place (PyTorch's default init)."""
        reset_parameters(self.network, generator)
        # Batch norm (if chosen) normalises with the batch's statistics, as the official net.train().
        return self.network.train()

    def augment_pair(
        self, real: Tensor, synthetic: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Step 2: per class, the same DSA parameters for the real and the synthetic images.

        Args:
            real: class-blocked real images ``(K * n, C, H, W)``.
            synthetic: class-blocked synthetic images ``(K * m, C, H, W)``.
            generator: source of the augmentation parameters.

        Returns:
            The augmented ``(real, synthetic)``, still class-blocked.
        """
        k = self.synthetic.num_classes
        real_out, syn_out = [], []
        for r, s in zip(real.chunk(k), synthetic.chunk(k)):
            params = self.augment.sample(r, generator)
            real_out.append(self.augment(r, params))
            syn_out.append(self.augment(s, params))
        return torch.cat(real_out), torch.cat(syn_out)

    def features(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Step 3: the tapped ReLU outputs used by ``L_SAM`` and the final embedding ``(B, D)``."""
        embedding = self.network.embed(images)
        taps = [self.hooks[name] for name in self.tap_names]
        if self.attention_layers == "all_but_last":
            taps = taps[:-1]
        return taps, embedding

    def attention_loss(self, real_features: Sequence[Tensor], syn_features: Sequence[Tensor]) -> Tensor:
        """Steps 4-5: ``L_SAM = sum_l sum_c || mean_real a_l - mean_syn a_l ||^2``, ``a = norm(sum |f|^p)``."""
        return attention_matching_loss(
            real_features, syn_features, self.synthetic.num_classes, power=self.power
        )

    def embedding_loss(self, real_embedding: Tensor, syn_embedding: Tensor) -> Tensor:
        """Step 5: ``L_MMD = sum_c || mean_real e - mean_syn e ||^2`` on the final embeddings."""
        return classwise_mean_discrepancy(real_embedding, syn_embedding, self.synthetic.num_classes)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        real = batch[0]
        self._check_batch(real, batch[1])
        generator = torch.Generator().manual_seed(self.step_seed(self.global_step))
        # 1. A fresh random network for this step.
        self.sample_network(generator)
        # 2. Siamese augmentation, class by class (the images through the set's forward: FSDP2 gathers them).
        real, syn = self.augment_pair(real, self.synthetic()[0], generator)
        # 3. Features: real without gradient, synthetic with (through the frozen network to the images).
        with torch.no_grad():
            real_taps, real_embedding = self.features(real)
        syn_taps, syn_embedding = self.features(syn)
        # 4.-5. Attention matching and the final-embedding term.
        terms = {
            "sam": self.attention_loss(real_taps, syn_taps),
            "mmd": self.embedding_loss(real_embedding, syn_embedding),
        }
        # 6. The base weighs and sums the terms; the optimizer updates the images.
        return self.log_losses(terms)

    # ------------------------------------------------------------- lifecycle
    def configure_callbacks(self) -> Sequence[L.Callback]:
        return [self.hooks]

    def shard(self, mesh: Any) -> None:
        """FSDP2 plan under ``ModelParallelStrategy`` (docs/strategies.md, "Sharding").

        The synthetic set is ``fully_shard``-ed on the data-parallel ``mesh``: each rank holds a
        block of rows of the images (and of the optimizer's momentum). ``training_step`` reads the
        images through the set's forward, which gathers them; they stay gathered until the backward
        (``reshard_after_forward=False``: the forward returns the parameter itself), which averages
        their gradient over the ranks and keeps each rank's rows. The random network stays a
        plain frozen replica, re-drawn from ``(seed, step)`` identically on every rank. Evaluation
        by retraining, the picture and the saved artifact read the set inside
        :func:`~lightning_distill.utils.sharding.gathered` (every rank enters it).
        """
        shard_blocks(self.synthetic, mesh, reshard_after_forward=False)

    def retrain(self, epochs: int, stage: str = "test") -> list[torch.nn.Module]:
        with gathered(self.synthetic):  # a no-op unless sharded
            return super().retrain(epochs, stage)

    def on_validation_epoch_end(self) -> None:
        with gathered(self.synthetic):
            super().on_validation_epoch_end()

    def on_train_end(self) -> None:
        with gathered(self.synthetic):
            super().on_train_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        full = checkpoint.get("state_dict")
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):  # the random network is re-drawn from (seed, step): not worth saving
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("network.")}
        if self._trainer is not None:  # ... but a sharded (distributed) checkpoint loads every key
            keep_every_key(checkpoint, full, self.trainer.strategy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key, value in self.network.state_dict(prefix="network.").items():
                state.setdefault(key, value)

    # ------------------------------------------------------------- helpers
    def _check_batch(self, real: Tensor, labels: Tensor) -> None:
        k = self.synthetic.num_classes
        n = real.shape[0] // k
        expected = torch.arange(k, device=labels.device).repeat_interleave(n)
        if real.shape[0] % k or not torch.equal(labels, expected):
            raise ValueError(
                f"DataDAM needs class-blocked real batches with the same number of images per class for all "
                f"{k} classes (labels 0,..,0,1,..,1,...); got labels {labels[:12].tolist()}... of a batch of "
                f"{real.shape[0]}. Wrap the data in lightning_distill.data.ClassBalancedDataModule."
            )
