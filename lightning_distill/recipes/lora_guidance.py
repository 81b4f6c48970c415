"""LoRA-enhanced guidance distillation: one guidance-conditioned pass instead of CFG's two, trained as LoRA.

Paper: "LoRA-Enhanced Distillation on Guided Diffusion Models" (Pareesa Ameneh Golnari, arXiv
2312.06899; no official code). The distillation objective is guidance distillation (Meng et al.,
arXiv 2210.03142, stage one); the paper's addition is training it as LoRA adapters on a student
initialised from the teacher, which it reports saves about 50 % memory and, with one pass per step
instead of two, about 40 % sampling time (only the abstract could be checked; the ``w`` range, LoRA
rank and layers below are Meng et al.'s and common LoRA defaults, not verified against the paper).

Algorithm (one training step):

1. Draw data ``x₀`` with its condition ``c``, ``t ~ U[0, T)``, noise, and ``x_t``.
2. Draw ``w ~ U[guidance_min, guidance_max]`` per sample.
3. Target (frozen teacher, one batched pass for both halves): ``(1 + w) ε_T(x_t, c) − w ε_T(x_t, ∅)``.
4. The student ``ε_S(x_t, c, w)`` (the teacher's weights plus LoRA adapters, ``w`` through LCM's
   guidance embedding) regresses it: ``‖ε_S − target‖²``; only the adapters (and the ``w``
   embedding) learn. ``finetune: full`` trains every weight instead (the baseline of the claim).

Sampling: the teacher's DDIM sampler with the student at a fixed ``w``, one pass per step.

Total loss: ``w_guidance · guidance`` (``loss_weights``, 1).

Hyper-parameters -> config keys (``model.init_args.*``):

=====================================  ====================================  ==================================
paper / Meng et al.                    key                                   default
=====================================  ====================================  ==================================
guidance range ``w ∈ [2, 14]``         ``guidance_min``, ``guidance_max``    2.0, 14.0
LoRA (not full fine-tuning)            ``finetune``                          ``lora``
LoRA rank / alpha / layers             ``lora_rank`` etc.                    4 / 4 / to_q, to_k, to_v, to_out.0
``w`` embedding size                   ``embedding_dim``                     256
sampling guidance / DDIM steps         ``sample_guidance``, ``num_inference_steps``  6.5, 50
optimizer                              ``optimizer``                         AdamW, lr 1e-4
=====================================  ====================================  ==================================
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.diffusion.consistency import GuidanceConditioned
from lightning_distill.diffusion.guidance import Cond
from lightning_distill.diffusion.guidance_distillation import (
    FixedGuidance,
    draw_guidance_scales,
    guidance_distillation_target,
    inject_lora,
    lora_parameters,
)
from lightning_distill.diffusion.recipe_base import DiffusionDistillationModule, check_option
from lightning_distill.diffusion.sampling import randn_like
from lightning_distill.diffusion.sampling import sample as ddim_sample
from lightning_distill.diffusion.schedule import NoiseSchedule

__all__ = ["LoRAGuidance", "lora_guidance_adamw"]


def lora_guidance_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4, weight decay 0 (a usual LoRA setting; the paper's is not published)."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class LoRAGuidance(DiffusionDistillationModule):
    """LoRA-enhanced guidance distillation. See the module docstring for the algorithm.

    Args:
        teacher: the frozen, conditional teacher (a diffusers UNet; ``AnalyticTeacher`` on the bench).
        student: the student's base network; ``None`` copies the teacher (the paper). A teacher
            without weights (the analytic one) needs a base of its own, e.g. a trained denoiser.
        schedule: the noise schedule (``None``: the teacher's).
        guidance_min, guidance_max: range of the guidance weight ``w`` drawn per sample.
        finetune: ``"lora"`` (adapters only, the paper) or ``"full"`` (every student weight).
        lora_rank, lora_alpha, lora_target_modules: the adapters (peft ``LoraConfig``).
        embedding_dim: size of the ``w`` features (a UNet with ``time_cond_proj_dim`` uses its own).
        sample_guidance: the ``w`` ``sample`` and evaluation use (6.5: SD's CFG scale 7.5).
        num_inference_steps: DDIM steps of the student's sampler.
        null_label: the null class label (``None``: the teacher's).
        sample_shape: shape of one sample (``None``: from data or models).
        max_grad_norm: gradient-norm clipping (``None``: off).
        eval_teacher_steps: DDIM steps of the teacher's two-pass evaluation sampler.
        noise_seed: seed of the training noise (``None``: from ``seed_everything``).
        loss_weights: weight of ``guidance``.
        optimizer: optimizer of the trainable parameters (default :func:`lora_guidance_adamw`).
        lr_scheduler: optional learning-rate scheduler.

    Raises:
        ValueError: a bad option, or no student with a teacher that has no weights.
    """

    loss_terms: ClassVar[tuple[str, ...]] = ("guidance",)
    checkpoint_key: ClassVar[str] = "lora_guidance"

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module | None = None,
        schedule: NoiseSchedule | None = None,
        guidance_min: float = 2.0,
        guidance_max: float = 14.0,
        finetune: Literal["lora", "full"] = "lora",
        lora_rank: int = 4,
        lora_alpha: float = 4.0,
        lora_target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
        embedding_dim: int = 256,
        sample_guidance: float = 6.5,
        num_inference_steps: int = 50,
        null_label: int | None = None,
        sample_shape: Sequence[int] | None = None,
        max_grad_norm: float | None = 1.0,
        eval_teacher_steps: int = 50,
        noise_seed: int | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable = lora_guidance_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        check_option(finetune in ("lora", "full"), "finetune", finetune, "'lora' or 'full'")
        check_option(
            0 <= guidance_min <= guidance_max,
            "guidance_min",
            (guidance_min, guidance_max),
            "0 <= guidance_min <= guidance_max (with `guidance_max`)",
        )
        check_option(sample_guidance >= 0, "sample_guidance", sample_guidance, ">= 0")
        check_option(
            isinstance(num_inference_steps, int) and num_inference_steps >= 1,
            "num_inference_steps",
            num_inference_steps,
            "an integer >= 1",
        )
        if student is None:
            if next(teacher.parameters(), None) is None:
                raise ValueError(
                    f"The teacher ({type(teacher).__name__}) has no weights to start the student from; set "
                    "`model.init_args.student` (e.g. a trained denoiser of the same data)."
                )
            student = copy.deepcopy(teacher)
        student.requires_grad_(True)
        if finetune == "lora":
            student = inject_lora(
                student, rank=lora_rank, alpha=lora_alpha, target_modules=tuple(lora_target_modules)
            )
        wrapped = GuidanceConditioned(student, embedding_dim)
        super().__init__(
            wrapped,
            teacher,
            schedule,
            noise_seed=noise_seed,
            sample_shape=sample_shape,
            eval_teacher_steps=eval_teacher_steps,
            null_label=null_label,
            loss_weights=loss_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.save_hyperparameters(ignore=["student", "teacher", "schedule", "optimizer", "lr_scheduler"])
        if finetune == "lora" and wrapped.native:
            # the UNet's own w projection (`time_embedding.cond_proj`) is new: it learns with the adapters
            wrapped.model.time_embedding.cond_proj.requires_grad_(True)
        self.guidance_min, self.guidance_max, self.finetune = (
            float(guidance_min),
            float(guidance_max),
            finetune,
        )
        self.sample_guidance, self.num_inference_steps = float(sample_guidance), num_inference_steps
        self.max_grad_norm = max_grad_norm

    # ------------------------------------------------------------------ the paper's equations
    def guidance_loss(self, x0: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
        """Steps 1-4: ``‖ε_S(x_t, c, w) − [(1 + w) ε_T(x_t, c) − w ε_T(x_t, ∅)]‖²``, ``w ~ U[guidance_min, guidance_max]``."""
        if cond is None:
            raise ValueError(
                "Guidance distillation needs conditioned data (labels or embeddings); got no condition."
            )
        batch = x0.shape[0]
        t = self.timesteps_like(x0, 0, self.schedule.num_train_timesteps, generator)
        x_t = self.schedule.add_noise(x0, randn_like(x0, generator), t)
        w = draw_guidance_scales(
            batch, self.guidance_min, self.guidance_max, generator=generator, device=x0.device
        )
        target = guidance_distillation_target(self.teacher, x_t, t, cond, self.null_condition(cond), w)
        prediction = self.student(x_t, t, cond, guidance=w)
        return F.mse_loss(prediction.float(), target.float())

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x0, cond = self.split_batch(batch)
        self.record_sample_shape(x0)
        loss = self.guidance_loss(x0, cond, self.iteration_generator())
        self.update(self.optimizers(), {"guidance": loss}, turn="student", max_grad_norm=self.max_grad_norm)
        self.iteration += 1

    # ------------------------------------------------------------------ evaluation and sampling
    @torch.no_grad()
    def validation_losses(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``guidance``: the training loss on the batch, noise seeded ``evaluation_seed + batch_idx``."""
        x0, cond = self.split_batch(batch)
        generator = torch.Generator(device=self.device).manual_seed(self.evaluation_seed + batch_idx)
        return {"guidance": self.guidance_loss(x0, cond, generator)}

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator, cond: Cond = None, guidance: float | None = None
    ) -> Tensor:
        """``n`` samples: DDIM in ``num_inference_steps`` steps, one student pass per step at ``w`` (default ``sample_guidance``)."""
        w = self.sample_guidance if guidance is None else guidance
        model = FixedGuidance(self.student, w)
        return ddim_sample(
            model, self.schedule, self.initial_noise(n, generator), self.num_inference_steps, cond
        )

    @torch.no_grad()
    def teacher_sample(self, noise: Tensor, cond: Cond, guidance: float, steps: int | None = None) -> Tensor:
        """The baseline: the teacher's DDIM with two-pass CFG at ``w`` (scale ``1 + w``)."""
        steps = self.eval_teacher_steps if steps is None else steps
        return ddim_sample(
            self.teacher, self.schedule, noise, steps, cond, self.null_condition(cond), 1.0 + guidance
        )

    def evaluation_labels(self, cond: Cond) -> Tensor | None:
        """Class labels are scored class-conditionally."""
        return cond if isinstance(cond, Tensor) and not cond.is_floating_point() else None

    def teacher_samples(self, noise: Tensor, labels: Tensor | None) -> Tensor:
        """The teacher's two-pass guided DDIM at ``sample_guidance`` (what the student replaces)."""
        if labels is None:
            return ddim_sample(self.teacher, self.schedule, noise, self.eval_teacher_steps)
        return self.teacher_sample(noise, labels, self.sample_guidance)

    # ------------------------------------------------------------------ optimization
    def trainable_student_parameters(self) -> list[nn.Parameter]:
        """What learns: the adapters and the ``w`` embedding (``lora``), or every student weight (``full``)."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        """One optimizer over :meth:`trainable_student_parameters`."""
        optimizer = self.optimizer(self.trainable_student_parameters())
        if self.lr_scheduler is None:
            return optimizer
        return [optimizer], [self.lr_scheduler(optimizer)]

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The LoRA adapters alone (empty for ``finetune: full``)."""
        return lora_parameters(self.student)
