"""MEAL V2: ensemble soft labels plus a logit discriminator (Shen & Savvides, arXiv 2009.08453).

Algorithm (one step, one optimizer over student and discriminator):

1. Run the frozen teachers; average their softmax outputs, ``p_T = mean_k softmax(T_k(x))``,
   and their logits, ``z_T = mean_k T_k(x)``.
2. Similarity loss: soft cross-entropy of the student to the averaged probabilities at T = 1,
   ``L_sim = -sum_c p_T,c log softmax(S(x))_c``. Hard labels are not used.
3. Discriminator loss: a small 1x1-conv network ``D`` tells student logits (class "student")
   from averaged teacher logits (class "teacher"), ``L_D = BCE(D([S(x); z_T]), onehot)``.
4. Minimise ``L_sim + L_D`` over the student and ``D`` together.

Total loss: ``w_sim * L_sim + w_disc * L_D`` (both weights 1 in the paper).

Two readings of step 4 (``mode``):

* ``"official"`` (default): what szq0214/MEAL-V2 does. The student's logits reach ``D`` without
  gradient reversal, so the student *also minimises* ``L_D``: it helps ``D`` separate it from
  the teachers rather than fooling it. This is the code that produced the paper's numbers, so it
  is the default; its effect is that of a learned regulariser on the logits.
* ``"adversarial"``: a true min-max game, as the paper's text describes it. The student's logits
  pass through a gradient-reversal layer, so ``D`` minimises ``L_D`` while the student
  maximises it (scaled by ``grl_scale``).

Hyper-parameters -> config keys (``model.init_args.*``):

================================  ===========================  ====================
paper / official code             key                          default
================================  ===========================  ====================
discriminator width factor K      ``discriminator_reduction``  8 (1000->125->15->2)
discriminator learning rate       ``discriminator_lr``         1e-4
SGD, lr 0.01, momentum 0.9, wd 0  ``optimizer``                :func:`meal_v2_sgd`
similarity / D loss weights       ``loss_weights``             {sim: 1, disc: 1}
temperature of L_sim              ``temperature``              1.0
================================  ===========================  ====================

The student starts from a supervised checkpoint in the paper (ImageNet-pretrained ResNet-50).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.losses import logit_discriminator_loss, soft_cross_entropy
from lightning_distill.module import DistillationModule

__all__ = ["MEALV2", "LogitDiscriminator", "meal_v2_sgd"]


class LogitDiscriminator(nn.Module):
    """MEAL V2's discriminator: three 1x1 convolutions on a logit vector, ReLU after each.

    Channels go ``C -> C // K -> C // K**2 -> 2``. The ReLU after the last layer is kept as in the
    official code (its two outputs are non-negative logits of the BCE).

    Args:
        num_classes: length ``C`` of the logit vectors.
        reduction: the width factor ``K``.

    Raises:
        ValueError: ``num_classes // reduction**2 < 1``.
    """

    def __init__(self, num_classes: int, reduction: int = 8) -> None:
        super().__init__()
        hidden1, hidden2 = num_classes // reduction, num_classes // reduction**2
        if reduction < 1 or hidden2 < 1:
            raise ValueError(
                f"`discriminator_reduction`={reduction} leaves no channels for {num_classes} classes "
                f"({num_classes} -> {hidden1} -> {hidden2}); use a value <= {int(num_classes**0.5)}."
            )
        self.conv1 = nn.Conv2d(num_classes, hidden1, 1)
        self.conv2 = nn.Conv2d(hidden1, hidden2, 1)
        self.conv3 = nn.Conv2d(hidden2, 2, 1)

    def forward(self, logits: Tensor) -> Tensor:
        """``(B, C)`` logits -> ``(B, 2)`` non-negative scores for (student, teacher)."""
        x = logits[:, :, None, None]
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return x.flatten(1)


def meal_v2_sgd(params: Any) -> torch.optim.Optimizer:
    """The official optimizer: SGD, lr 0.01, momentum 0.9, no weight decay, no Nesterov.

    szq0214/MEAL-V2 ``opts.py`` (``--lr 0.01``, ``--momentum 0.9``, ``--weight-decay 0``) and
    ``train.py::create_optimizer`` (``torch.optim.SGD`` without ``nesterov``).
    """
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


class MEALV2(DistillationModule):
    """MEAL V2 recipe. See the module docstring for the algorithm.

    Args:
        student: classifier ``(B, C, H, W) -> (B, K)``; start it from a supervised checkpoint.
        teachers: one or more frozen classifiers with the same ``K`` outputs.
        num_classes: ``K``; sizes the discriminator.
        mode: ``"official"`` (student also minimises L_D) or ``"adversarial"`` (gradient reversal).
        discriminator_reduction: the discriminator's width factor.
        discriminator_lr: learning rate of the discriminator's parameter group.
        temperature: temperature of the similarity loss (the paper uses 1).
        grl_scale: gradient-reversal scale in adversarial mode.
        teacher: a single teacher (instead of ``teachers``).
        loss_weights: ``{"sim": ..., "disc": ...}``.
        optimizer: optimizer for the student and discriminator groups (default :func:`meal_v2_sgd`,
            the official SGD; the discriminator group gets ``discriminator_lr`` and no weight decay).
        lr_scheduler: optional epoch-wise scheduler.

    Raises:
        ValueError: an unknown ``mode``, a non-positive ``temperature``/``discriminator_lr``, or
            teacher and student outputs of different sizes (at the first step).
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("sim", "disc")

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module] | None = None,
        num_classes: int = 1000,
        mode: Literal["official", "adversarial"] = "official",
        discriminator_reduction: int = 8,
        discriminator_lr: float = 1e-4,
        temperature: float = 1.0,
        grl_scale: float = 1.0,
        teacher: nn.Module | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = meal_v2_sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            student,
            teacher=teacher,
            teachers=teachers,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        if mode not in ("official", "adversarial"):
            raise ValueError(
                f"`mode` must be 'official' or 'adversarial', got {mode!r}; set `model.init_args.mode`."
            )
        for name, value in (("temperature", temperature), ("discriminator_lr", discriminator_lr)):
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0, got {value}; set `model.init_args.{name}`.")
        self.save_hyperparameters(ignore=["student", "teacher", "teachers", "optimizer", "lr_scheduler"])
        self.num_classes = num_classes
        self.mode = mode
        self.temperature = temperature
        self.discriminator_lr = discriminator_lr
        self.grl_scale = grl_scale
        self.discriminator = LogitDiscriminator(num_classes, discriminator_reduction)

    # ---------------------------------------------------------------- the paper
    @torch.no_grad()
    def ensemble_targets(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Step 1: ``p_T = mean_k softmax(T_k(x))`` and ``z_T = mean_k T_k(x)``, both ``(B, K)``."""
        logits = torch.stack([t(x).float() for t in self.teachers])  # (n_teachers, B, K)
        return logits.softmax(dim=-1).mean(dim=0), logits.mean(dim=0)

    def similarity_loss(self, student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
        """Step 2: ``L_sim = -sum_c p_T,c log softmax(z_S / T)_c`` (T = 1 in the paper)."""
        return soft_cross_entropy(
            student_logits, teacher_probs, target_is_logits=False, temperature=self.temperature
        )

    def adversarial_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Step 3: ``L_D = BCE(D([z_S; z_T]), [student; teacher])``.

        In ``"official"`` mode the student's logits enter ``D`` unchanged, so the student also
        minimises ``L_D``; in ``"adversarial"`` mode a gradient-reversal layer makes it maximise it.
        """
        if self.mode == "adversarial":
            student_logits = _GradReverse.apply(student_logits, self.grl_scale)
        return logit_discriminator_loss(
            self.discriminator(student_logits), self.discriminator(teacher_logits)
        )

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x = batch[0]  # labels are not used
        # 1. Teacher ensemble (frozen, no grad).
        teacher_probs, teacher_logits = self.ensemble_targets(x)
        # 2.-3. Student forward and the two losses.
        student_logits = self.student(x)
        self.check_output_shapes(student_logits, teacher_probs)
        terms = {
            "sim": self.similarity_loss(student_logits, teacher_probs),
            "disc": self.adversarial_loss(student_logits, teacher_logits),
        }
        # 4. One optimizer over student and discriminator: the base weighs, sums and logs.
        return self.log_losses(terms)

    def configure_optimizers(self) -> Any:
        disc = list(self.discriminator.parameters())
        disc_ids = {id(p) for p in disc}
        student = [p for p in self.trainable_parameters() if id(p) not in disc_ids]
        optimizer = self.optimizer(student)
        optimizer.add_param_group({"params": disc, "lr": self.discriminator_lr, "weight_decay": 0.0})
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer)}}
